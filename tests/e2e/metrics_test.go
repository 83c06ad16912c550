package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// TestPrometheusScrapesTheDaemon: Debian's prometheus (installed by
// scripts/test) scrapes the sim-backed daemon's --metrics-listen once a
// second. Through Prometheus's HTTP API the test finds CPU and memory series
// for the VMs it started, a busy guest's CPU time rising and an idle one's
// not, and a destroyed VM's series gone stale. promtool checks the
// daemon's output; xopsctl's vm stats and host stats read the same through
// the API.
func TestPrometheusScrapesTheDaemon(t *testing.T) {
	prom, err1 := exec.LookPath("prometheus")
	promtool, err2 := exec.LookPath("promtool")
	if err1 != nil || err2 != nil {
		t.Skip("prometheus or promtool not installed (Debian package prometheus; scripts/test installs it)")
	}
	bin := binaries(t)
	d := harness.NewDaemon(t, bin, "--metrics-listen", "127.0.0.1:0")
	d.Start()
	m := regexp.MustCompile(`msg="serving metrics" component=metrics addr=(127\.0\.0\.1:\d+)`).FindStringSubmatch(d.Log())
	if m == nil {
		t.Fatalf("the daemon log does not say where it serves metrics:\n%s", d.Log())
	}
	target := m[1]

	busy := strings.TrimSpace(cli(t, d, "vm", "create", "--name", "busy", "--memory", "64M", "--vcpus", "2"))
	idle := strings.TrimSpace(cli(t, d, "vm", "create", "--name", "idle", "--memory", "32M"))
	disk := filepath.Join(t.TempDir(), "io.img")
	if err := os.WriteFile(disk, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	ioVM := strings.TrimSpace(cli(t, d, "vm", "create", "--name", "io", "--memory", "32M", "--disk", "xvda:"+disk, "--nic", "bridge=xenbr0"))
	cli(t, d, "vm", "start", "busy")
	cli(t, d, "vm", "start", "idle")
	cli(t, d, "vm", "start", "io")
	ctx := testCtx(t, 30*time.Second)
	if err := d.Sim().SetGuestBehaviour(ctx, xenctrl.Domid(cliVM(t, d, "idle").GetDomid()), sim.GuestBehaviour{Idle: true}); err != nil {
		t.Fatalf("make idle's guest idle: %v", err)
	}

	checkMetrics(t, promtool, target)

	p := startPrometheus(t, prom, target)
	eventually(t, 60*time.Second, func() string {
		if v, ok := p.value(t, `up{job="xenopsd"}`); !ok || v != 1 {
			return fmt.Sprintf("up{job=\"xenopsd\"} is %v (found %v)", v, ok)
		}
		return ""
	})
	for _, vm := range []struct {
		id     string
		memory float64
	}{{busy, 64 << 20}, {idle, 32 << 20}} {
		eventually(t, 30*time.Second, func() string {
			if v, ok := p.value(t, `xen_vm_memory_bytes{uuid="`+vm.id+`"}`); !ok || v != vm.memory {
				return fmt.Sprintf("memory of %s: %v (found %v), want %v", vm.id, v, ok, vm.memory)
			}
			if _, ok := p.value(t, `xen_vm_cpu_seconds_total{uuid="`+vm.id+`"}`); !ok {
				return "no CPU series for " + vm.id
			}
			return ""
		})
	}

	// CPU time: the busy guest's rises from one scrape to a later one;
	// the idle guest's stands still meanwhile.
	busyCPU := `xen_vm_cpu_seconds_total{uuid="` + busy + `"}`
	idleCPU := `xen_vm_cpu_seconds_total{uuid="` + idle + `"}`
	b0, _ := p.value(t, busyCPU)
	i0, _ := p.value(t, idleCPU)
	eventually(t, 30*time.Second, func() string {
		if b, _ := p.value(t, busyCPU); b <= b0 {
			return fmt.Sprintf("busy's CPU time still %v", b)
		}
		return ""
	})
	if i1, _ := p.value(t, idleCPU); i1 != i0 {
		t.Errorf("idle's CPU time moved from %v to %v", i0, i1)
	}

	checkDeviceSeries(t, d, p, ioVM)

	// The API answers the same for callers that do not scrape.
	st := &apiv1.VMStats{}
	if err := protojson.Unmarshal([]byte(cli(t, d, "vm", "stats", "busy", "-o", "json")), st); err != nil {
		t.Fatalf("vm stats -o json: %v", err)
	}
	if !st.GetHasDomain() || st.GetCpuTime().AsDuration() <= 0 || st.GetMemoryBytes() != 64<<20 || st.GetVcpusOnline() != 2 ||
		len(st.GetVcpus()) != 2 || !st.GetVcpus()[1].GetRunning() || st.GetVcpus()[1].GetCpuTime().AsDuration() <= 0 {
		t.Errorf("vm stats busy: %v", st)
	}
	if out := cli(t, d, "host", "stats"); !strings.Contains(out, "vms:") || !strings.Contains(out, "running 2") || !strings.Contains(out, "cpu_idle:") {
		t.Errorf("host stats:\n%s", out)
	}

	// After destroy, the VM's domain series go stale; its power state
	// says halted.
	cli(t, d, "vm", "destroy", "busy")
	eventually(t, 30*time.Second, func() string {
		if v, ok := p.value(t, busyCPU); ok {
			return fmt.Sprintf("busy's CPU series still there (%v) after destroy", v)
		}
		if v, ok := p.value(t, `xenopsd_vm_power_state{uuid="`+busy+`",state="halted"}`); !ok || v != 1 {
			return "busy's power state is not halted yet"
		}
		return ""
	})
	if _, ok := p.value(t, idleCPU); !ok {
		t.Errorf("idle's CPU series went with busy's")
	}
}

// checkDeviceSeries: the VM io's disk and NIC have counter series that
// rise (the simulated guest does I/O each second it is connected), its
// domain an uptime; a reboot is counted by cause and the counters start
// again on the new domain.
func checkDeviceSeries(t *testing.T, d *harness.Daemon, p *prometheus, io string) {
	t.Helper()
	disk := `xen_vm_disk_read_requests_total{uuid="` + io + `",device="xvda"}`
	written := `xen_vm_disk_written_bytes_total{uuid="` + io + `",device="xvda"}`
	sent := `xen_vm_network_transmit_packets_total{uuid="` + io + `",device="0"}`
	received := `xen_vm_network_receive_bytes_total{uuid="` + io + `",device="0"}`
	first := map[string]float64{}
	eventually(t, 30*time.Second, func() string {
		for _, q := range []string{disk, written, sent, received, `xen_vm_uptime_seconds{uuid="` + io + `"}`} {
			v, ok := p.value(t, q)
			if !ok {
				return "no series " + q
			}
			first[q] = v
		}
		return ""
	})
	eventually(t, 30*time.Second, func() string {
		for _, q := range []string{disk, written, sent, received} {
			if v, _ := p.value(t, q); v <= first[q] {
				return fmt.Sprintf("%s still %v", q, v)
			}
		}
		return ""
	})
	if v, ok := p.value(t, `xenopsd_vm_restarts_total{uuid="`+io+`",cause="reboot"}`); !ok || v != 0 {
		t.Errorf("io's reboots before any: %v (found %v), want 0", v, ok)
	}
	cli(t, d, "vm", "reboot", "io")
	eventually(t, 30*time.Second, func() string {
		if v, ok := p.value(t, `xenopsd_vm_restarts_total{uuid="`+io+`",cause="reboot"}`); !ok || v != 1 {
			return fmt.Sprintf("io's reboots %v (found %v), want 1", v, ok)
		}
		return ""
	})
	// The API says the same.
	st := &apiv1.VMStats{}
	if err := protojson.Unmarshal([]byte(cli(t, d, "vm", "stats", "io", "-o", "json")), st); err != nil {
		t.Fatalf("vm stats -o json: %v", err)
	}
	if st.GetRestarts().GetReboot() != 1 || !st.GetHasDomain() || st.GetUptime() == nil {
		t.Errorf("vm stats io: %v, want one reboot and an uptime", st)
	}
}

// checkMetrics runs `promtool check metrics` on what the daemon serves.
func checkMetrics(t *testing.T, promtool, target string) {
	t.Helper()
	ctx := testCtx(t, 30*time.Second)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+target+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// prometheus is a Prometheus server the test started.
type prometheus struct {
	api string // http://127.0.0.1:PORT
}

// startPrometheus runs prometheus on loopback with a temporary database,
// scraping target every second, and stops it when the test ends.
func startPrometheus(t *testing.T, bin, target string) *prometheus {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"+
		"scrape_configs:\n  - job_name: xenopsd\n    static_configs:\n      - targets: [%q]\n", target)
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	for try := 1; ; try++ {
		addr := freeLoopbackPort(t)
		logFile := filepath.Join(dir, fmt.Sprintf("prometheus-%d.log", try))
		lf, err := os.Create(logFile)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "--config.file", cfgFile, "--storage.tsdb.path", filepath.Join(dir, "data"),
			"--web.listen-address", addr, "--log.level", "warn")
		cmd.Stdout, cmd.Stderr = lf, lf
		if err := cmd.Start(); err != nil {
			t.Fatalf("start prometheus: %v", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); lf.Close(); close(exited) }()
		t.Cleanup(func() { stopProcess(t, cmd, exited) })
		p := &prometheus{api: "http://" + addr}
		if p.ready(exited, 60*time.Second) {
			return p
		}
		log, _ := os.ReadFile(logFile)
		if try == 3 {
			t.Fatalf("prometheus did not become ready:\n%s", log)
		}
		t.Logf("prometheus on %s did not start (port taken meanwhile?), trying another port:\n%s", addr, log)
	}
}

// freeLoopbackPort is a port that was free a moment ago; prometheus cannot
// be told to pick one and say which.
func freeLoopbackPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ready waits, bounded, until prometheus answers /-/ready; false if it
// exited or did not answer in time.
func (p *prometheus) ready(exited <-chan struct{}, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		if resp, err := http.Get(p.api + "/-/ready"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// value runs an instant query that names one series; ok is false when
// the query finds none.
func (p *prometheus) value(t *testing.T, query string) (v float64, ok bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.api+"/api/v1/query?query="+url.QueryEscape(query), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("query %s: %v", query, err)
	}
	defer resp.Body.Close()
	var ans struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&ans); err != nil || ans.Status != "success" {
		t.Fatalf("query %s: %v %s %s", query, err, ans.Status, ans.Error)
	}
	switch len(ans.Data.Result) {
	case 0:
		return 0, false
	case 1:
	default:
		t.Fatalf("query %s found %d series, want one", query, len(ans.Data.Result))
	}
	s, _ := ans.Data.Result[0].Value[1].(string)
	v, err = strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("query %s: value %v", query, ans.Data.Result[0].Value)
	}
	return v, true
}

// stopProcess stops a process the test started: SIGTERM, then SIGKILL if
// it has not exited within 30 s.
func stopProcess(t *testing.T, cmd *exec.Cmd, exited <-chan struct{}) {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		t.Errorf("%s did not stop within 30 s of SIGTERM; killed", cmd.Path)
		cmd.Process.Kill()
		<-exited
	}
}
