package metrics

import (
	"compress/gzip"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// serve scrapes h with the given request headers and returns the response
// and its (decompressed) body.
func serve(t *testing.T, h http.Handler, header map[string]string) (*http.Response, string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	resp := rec.Result()
	var body io.Reader = resp.Body
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestHandlerFormats: one scrape holds the registry's metrics and the
// host's and VMs', in the text format by default (parsed by the client's
// own parser) and in OpenMetrics when asked (counter families named
// without _total, floats as floats, "# EOF" last), gzipped when accepted.
func TestHandlerFormats(t *testing.T) {
	h := sim.New(sim.Config{})
	c := NewCollector(h, fakeVMs{vm(webID, "web", domain.Running, bootDomain(t, h, webID, 2))}, CollectorOptions{MaxAge: time.Nanosecond})
	reg := prometheus.NewRegistry()
	ours := prometheus.NewCounter(prometheus.CounterOpts{Name: "xenopsd_test_things_total", Help: "things"})
	ours.Add(3)
	reg.MustRegister(ours)
	handler := Handler(reg, c, slog.New(slog.DiscardHandler))

	resp, text := serve(t, handler, nil)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("the text scrape does not parse: %v\n%s", err, text)
	}
	for _, name := range []string{"xenopsd_test_things_total", "xen_host_memory_total_bytes", "xen_vm_cpu_seconds_total", "xenopsd_vm_power_state"} {
		if mfs[name] == nil {
			t.Errorf("the text scrape has no %s", name)
		}
	}
	if !strings.Contains(text, "# TYPE xen_vm_cpu_seconds_total counter\n") || !strings.Contains(text, `xen_vm_vcpus_online{domid="`) {
		t.Errorf("text scrape:\n%s", text)
	}

	resp, om := serve(t, handler, map[string]string{"Accept": "application/openmetrics-text;version=1.0.0", "Accept-Encoding": "gzip"})
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text; version=1.0.0") {
		t.Errorf("Content-Type %q, want OpenMetrics 1.0.0", ct)
	}
	if resp.Header.Get("Content-Encoding") != "gzip" {
		t.Errorf("not gzipped though the scraper accepts it")
	}
	for _, want := range []string{
		"# TYPE xenopsd_test_things counter\n", "xenopsd_test_things_total 3.0\n",
		"# TYPE xen_vm_cpu_seconds counter\n", "\nxen_vm_cpu_seconds_total{domid=\"",
		",name=\"web\",uuid=\"" + webID + "\"} 2.0\n", // xen_vm_vcpus_online
	} {
		if !strings.Contains(om, want) {
			t.Errorf("OpenMetrics scrape has no %q:\n%s", want, om)
		}
	}
	if !strings.HasSuffix(om, "\n# EOF\n") || strings.Count(om, "# EOF") != 1 {
		t.Errorf("OpenMetrics scrape does not end with one # EOF:\n%s", om[max(0, len(om)-300):])
	}
}

// TestHandlerProtobufFallsBack: a scraper that asks for the protobuf format
// gets the text format, which Handler writes (and says so).
func TestHandlerProtobufFallsBack(t *testing.T) {
	h := sim.New(sim.Config{})
	handler := Handler(prometheus.NewRegistry(), NewCollector(h, fakeVMs{}, CollectorOptions{}), slog.New(slog.DiscardHandler))
	resp, body := serve(t, handler, map[string]string{"Accept": "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"})
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || !strings.Contains(body, "# TYPE xen_host_cpus gauge") {
		t.Errorf("Content-Type %q, body:\n%s", ct, body)
	}
}
