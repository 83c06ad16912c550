package bench

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// BenchmarkScrape: a daemon with --metrics-listen and 1,000 or 10,000
// running VMs. scrape: one GET /metrics (OpenMetrics) at a time, 0.6 s
// apart so that none is answered from the 0.5 s snapshot cache; reported:
// time, bytes-per-scrape, daemon-cpu-ms-per-scrape (the daemon's user
// + system time over the scrapes, from /proc), hypercalls-per-scrape (the
// HypervisorService and DomainBuildService calls the sim host served over
// the scrapes, each a hypercall on Xen; the daemon's background calls in
// the same time count too) and xenstore-requests-per-scrape (the daemon's
// own xenopsd_xenstore_requests_total, read from the first and last
// scrape's body). lifecycle: create + start
// + destroy cycles, without and then with a scrape every second, in the same
// run: their p50 and p99 say whether scrapes delay lifecycle operations.
func BenchmarkScrape(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			d, conn, url := metricsDaemon(b, n)
			b.Run("scrape", func(b *testing.B) {
				first, err := scrape(url)
				if err != nil {
					b.Fatal(err)
				}
				calls0 := hypercallsIn(simCalls(b, d.SimDir))
				cpu0 := daemonCPU(b, d.Pid())
				var body []byte
				b.ResetTimer()
				for range b.N {
					b.StopTimer()
					time.Sleep(600 * time.Millisecond)
					b.StartTimer()
					if body, err = scrape(url); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				n := float64(b.N)
				b.ReportMetric(float64(len(body)), "bytes/scrape")
				b.ReportMetric(float64((daemonCPU(b, d.Pid())-cpu0).Milliseconds())/n, "daemon-cpu-ms/scrape")
				b.ReportMetric(float64(hypercallsIn(simCalls(b, d.SimDir))-calls0)/n, "hypercalls/scrape")
				xs := counterValue(b, body, "xenopsd_xenstore_requests_total") - counterValue(b, first, "xenopsd_xenstore_requests_total")
				b.ReportMetric(xs/n, "xenstore-requests/scrape")
			})
			for _, every := range []time.Duration{0, time.Second} {
				name := "lifecycle/scrapes=none"
				if every > 0 {
					name = "lifecycle/scrapes=" + every.String()
				}
				b.Run(name, func(b *testing.B) { lifecycleWhileScraped(b, conn, url, every) })
			}
		})
	}
}

// metricsDaemon starts a daemon serving metrics on loopback, with n
// running VMs; it returns the daemon, a connection and the metrics URL.
func metricsDaemon(b *testing.B, n int) (*harness.Daemon, *grpc.ClientConn, string) {
	d := harness.NewDaemon(keepTB{b}, build(b), "--metrics-listen", "127.0.0.1:0")
	d.StartSimHost("--memory", "64G", "--cpus", "64")
	d.Start()
	m := regexp.MustCompile(`msg="serving metrics" component=metrics addr=(127\.0\.0\.1:\d+)`).FindStringSubmatch(d.Log())
	if m == nil {
		b.Fatalf("the daemon log does not say where it serves metrics:\n%s", d.Log())
	}
	e := &env{d: d}
	for range 16 {
		e.conn = append(e.conn, d.Conn())
	}
	start := time.Now()
	populate(b, e, n, true)
	b.Logf("vms=%d: created and started in %v", n, time.Since(start).Round(time.Millisecond))
	return d, e.conn[0], "http://" + m[1] + "/metrics"
}

// simCalls is how many of each RPC the sim host in dir has served.
func simCalls(b *testing.B, dir string) map[string]uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := simhost.Dial(ctx, dir)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	calls, err := c.Calls(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return calls
}

// listDomains is the sim host's RPC of XEN_SYSCTL_getdomaininfolist.
const listDomains = "/xenopsd.simhost.v1.HypervisorService/ListDomains"

// hypercallsIn sums the hypervisor calls among calls: the HypervisorService
// and DomainBuildService RPCs, each a hypercall (or one batch) on Xen.
func hypercallsIn(calls map[string]uint64) uint64 {
	var n uint64
	for m, k := range calls {
		if strings.HasPrefix(m, "/xenopsd.simhost.v1.HypervisorService/") || strings.HasPrefix(m, "/xenopsd.simhost.v1.DomainBuildService/") {
			n += k
		}
	}
	return n
}

// counterValue is the value of the unlabelled metric name in a scrape's body.
func counterValue(b *testing.B, body []byte, name string) float64 {
	for _, l := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			f, err := strconv.ParseFloat(strings.Fields(v)[0], 64)
			if err != nil {
				b.Fatalf("%s: %q: %v", name, l, err)
			}
			return f
		}
	}
	b.Fatalf("the scrape has no %s", name)
	return 0
}

// scrape fetches url as Prometheus does and returns the body.
func scrape(url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape: %s %v", resp.Status, err)
	}
	return body, nil
}

// daemonCPU is the user + system CPU time process pid has used (/proc/PID/stat
// utime and stime, in clock ticks of 10 ms).
func daemonCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name, which is in parentheses.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// lifecycleWhileScraped runs b.N create+start+destroy cycles, scraping
// url every `every` meanwhile (never if 0), and reports their latencies.
func lifecycleWhileScraped(b *testing.B, conn *grpc.ClientConn, url string, every time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	if every > 0 {
		wg.Go(func() {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
					if _, err := scrape(url); err != nil {
						b.Error(err) // not Fatal: this is not the benchmark's goroutine
						return
					}
				}
			}
		})
	}
	vm := apiv1.NewVMServiceClient(conn)
	lats := make([]phases, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		ph, err := cycle(ctx, vm)
		if err != nil {
			b.Fatal(err)
		}
		lats = append(lats, ph)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	close(stop)
	wg.Wait()
	report(b, lats, elapsed)
}
