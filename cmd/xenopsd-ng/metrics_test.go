package main

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/internal/testcert"
	"github.com/xenopsd-ng/xenopsd-ng/metrics"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

type noVMs struct{}

func (noVMs) ListVMs(context.Context) ([]domain.VM, uint64, error) { return nil, 0, nil }

func (noVMs) ListTasks(context.Context, string) ([]domain.Task, error) { return nil, nil }

func (noVMs) QueueDepth() (int, int) { return 0, 0 }

func (noVMs) GetVM(context.Context, string) (domain.VM, error) {
	return domain.VM{}, &domain.Error{Code: domain.CodeNotFound}
}

// get fetches url with the Accept header accept, bounded.
func get(t *testing.T, c *http.Client, url, accept string) (contentType, body string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v\n%s", url, resp.Status, err, b)
	}
	return resp.Header.Get("Content-Type"), string(b)
}

// TestMetricsServer: /metrics in the Prometheus text format, or OpenMetrics
// when asked for; the host's, the daemon's and the Go runtime's metrics; the
// port closed once stopped.
func TestMetricsServer(t *testing.T) {
	cfg, err := parseFlags([]string{"--backend=sim", "--metrics-listen", "localhost:0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cfg.metricsListen, "127.0.0.1:") && !strings.HasPrefix(cfg.metricsListen, "[::1]:") {
		t.Fatalf("--metrics-listen localhost:0 became %q, want the loopback address it was checked as", cfg.metricsListen)
	}
	dm := newDaemonMetrics(cfg)
	dm.ops.Observe("start", nil, time.Millisecond)
	dm.onCommit()(time.Millisecond, nil)
	ms, err := serveMetrics(cfg, dm, metrics.NewCollector(sim.New(sim.Config{}), noVMs{}, metrics.CollectorOptions{}), metrics.NewQueueDepth(noVMs{}), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ms.addr + "/metrics"
	ct, body := get(t, http.DefaultClient, url, "")
	if !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("plain scrape: Content-Type %q", ct)
	}
	for _, want := range []string{"xen_host_memory_total_bytes ", `xen_version_info{backend="sim"`,
		`xenopsd_operation_duration_seconds_count{operation="start",outcome="succeeded"} 1`, "go_goroutines ", "process_cpu_seconds_total ",
		`xenopsd_store_commit_duration_seconds_count{outcome="succeeded"} 1`, "xenopsd_xenstore_round_trips_total 0", "xenopsd_queued_operations 0"} {
		if !strings.Contains(body, want) {
			t.Errorf("the scrape has no %q", want)
		}
	}
	ct, body = get(t, http.DefaultClient, url, "application/openmetrics-text;version=1.0.0")
	if !strings.HasPrefix(ct, "application/openmetrics-text") || !strings.HasSuffix(body, "# EOF\n") {
		t.Errorf("OpenMetrics scrape: Content-Type %q, ends %q", ct, body[max(0, len(body)-20):])
	}
	if resp, err := http.Get("http://" + ms.addr + "/debug/pprof/"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("/debug/pprof/ without --pprof: %v %v, want 404", resp, err)
	} else {
		resp.Body.Close()
	}
	ms.stop()
	if _, err := http.Get(url); err == nil {
		t.Fatal("metrics still served after stop")
	}

	// With --pprof, the profiles are there too.
	cfg.pprof = true
	if ms, err = serveMetrics(cfg, newDaemonMetrics(cfg), metrics.NewCollector(sim.New(sim.Config{}), noVMs{}, metrics.CollectorOptions{}), metrics.NewQueueDepth(noVMs{}), testLogger(t)); err != nil {
		t.Fatal(err)
	}
	defer ms.stop()
	if _, body := get(t, http.DefaultClient, "http://"+ms.addr+"/debug/pprof/goroutine?debug=1", ""); !strings.Contains(body, "goroutine profile:") {
		t.Errorf("--pprof: the goroutine profile is not served:\n%s", body)
	}
}

func TestMetricsServerTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testcert.NewCA(t, dir)
	server := ca.Server(t, "daemon")
	cfg, err := parseFlags([]string{"--backend=sim", "--metrics-listen", "127.0.0.1:0",
		"--metrics-tls-cert", server.CertFile, "--metrics-tls-key", server.KeyFile}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ms, err := serveMetrics(cfg, newDaemonMetrics(cfg), metrics.NewCollector(sim.New(sim.Config{}), noVMs{}, metrics.CollectorOptions{}), metrics.NewQueueDepth(noVMs{}), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ms.stop()
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.Pool}}}
	if _, body := get(t, c, "https://"+ms.addr+"/metrics", ""); !strings.Contains(body, "xen_host_cpus ") {
		t.Errorf("no host metrics over HTTPS")
	}
	if resp, err := http.Get("http://" + ms.addr + "/metrics"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("plaintext served on the TLS listener")
		}
	}
}

func TestMetricsFlags(t *testing.T) {
	for _, tt := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--metrics-listen", "0.0.0.0:9100"}, "--metrics-listen host \"0.0.0.0\" is 0.0.0.0, not a loopback address"},
		{[]string{"--metrics-listen", ":9100"}, "every interface"},
		{[]string{"--metrics-listen", "9100"}, "want HOST:PORT"},
		{[]string{"--metrics-tls-cert", "c.pem", "--metrics-tls-key", "k.pem"}, "need --metrics-listen"},
		{[]string{"--metrics-listen", "0.0.0.0:9100", "--metrics-tls-cert", "c.pem"}, "needs both --metrics-tls-cert and --metrics-tls-key"},
		{[]string{"--pprof"}, "--pprof needs --metrics-listen"},
		{[]string{"--pprof", "--metrics-listen", "0.0.0.0:9100", "--metrics-tls-cert", "c.pem", "--metrics-tls-key", "k.pem"}, "--pprof needs --metrics-listen on a loopback address without TLS"},
	} {
		_, err := parseFlags(append([]string{"--backend=sim"}, tt.args...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%q: %v, want an error containing %q", tt.args, err, tt.wantErr)
		}
	}
	// With TLS, any address; without the flag, no metrics at all.
	cfg, err := parseFlags([]string{"--backend=sim", "--metrics-listen", "0.0.0.0:9100", "--metrics-tls-cert", "c.pem", "--metrics-tls-key", "k.pem"}, io.Discard)
	if err != nil || cfg.metricsListen != "0.0.0.0:9100" {
		t.Errorf("TLS metrics on 0.0.0.0: %q, %v", cfg.metricsListen, err)
	}
	if cfg, err := parseFlags([]string{"--backend=sim"}, io.Discard); err != nil || newDaemonMetrics(cfg) != nil {
		t.Errorf("metrics without --metrics-listen (%v)", err)
	}
}
