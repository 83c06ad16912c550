package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

var (
	bin       *harness.Binaries
	buildOnce sync.Once
	buildErr  error
	// envs caches one daemon per population size across the repeated runs
	// of a benchmark function; they are stopped when the binary exits.
	envs     = map[int]*env{}
	cleanups []func()
	finished bool
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	defer func() {
		finished = true
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}()
	return m.Run()
}

// build compiles the binaries once, on the first benchmark that needs them
// (so `go test ./...`, which runs no benchmarks, does not pay for it).
func build(b *testing.B) *harness.Binaries {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "xenopsd-bench-bin")
		if err != nil {
			buildErr = err
			return
		}
		cleanups = append(cleanups, func() { os.RemoveAll(dir) })
		bin, buildErr = harness.Build(dir)
	})
	if buildErr != nil {
		b.Fatalf("building the binaries: %v", buildErr)
	}
	return bin
}

// keepTB lets a daemon outlive the benchmark run that started it: cleanups
// and temporary directories are released when the test binary ends.
type keepTB struct {
	testing.TB
}

func (keepTB) Cleanup(f func()) { cleanups = append(cleanups, f) }
func (keepTB) TempDir() string {
	d, err := os.MkdirTemp("", "xb")
	if err != nil {
		panic(err)
	}
	cleanups = append(cleanups, func() { os.RemoveAll(d) })
	return d
}
func (k keepTB) Failed() bool {
	if finished {
		return false
	}
	return k.TB.Failed()
}
func (k keepTB) Logf(format string, args ...any) {
	if finished {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
		return
	}
	k.TB.Logf(format, args...)
}
func (k keepTB) Errorf(format string, args ...any) {
	if finished {
		fmt.Fprintf(os.Stderr, "ERROR: "+format+"\n", args...)
		return
	}
	k.TB.Errorf(format, args...)
}

type env struct {
	d    *harness.Daemon
	conn []*grpc.ClientConn
}

func setup(b *testing.B, existing int, clients int) *env {
	b.Helper()
	if e := envs[existing]; e != nil {
		for len(e.conn) < clients {
			e.conn = append(e.conn, e.d.Conn())
		}
		return e
	}
	var args []string
	if os.Getenv("BENCH_PPROF") != "" {
		args = []string{"--metrics-listen", "127.0.0.1:0", "--pprof"}
	}
	d := harness.NewDaemon(keepTB{b}, build(b), args...)
	// A roomy simulated machine, so that BENCH_EXISTING_RUNNING=1 fits.
	simArgs := []string{"--memory", "64G", "--cpus", "64"}
	if dir := os.Getenv("BENCH_PPROF"); dir != "" {
		simArgs = append(simArgs, "--cpu-profile", filepath.Join(dir, fmt.Sprintf("simhost-existing%d.cpu.pprof", existing)))
	}
	d.StartSimHost(simArgs...)
	d.Start()
	e := &env{d: d, conn: []*grpc.ClientConn{d.Conn()}}
	for len(e.conn) < 16 {
		e.conn = append(e.conn, d.Conn())
	}
	start := time.Now()
	populate(b, e, existing, os.Getenv("BENCH_EXISTING_RUNNING") == "1")
	b.Logf("existing=%d: populated in %v", existing, time.Since(start).Round(time.Millisecond))
	envs[existing] = e
	return e
}

// populate creates n VMs (and starts them if running), 16 clients at a
// time.
func populate(b *testing.B, e *env, n int, running bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	work := make(chan int)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for k := range 16 {
		vm := apiv1.NewVMServiceClient(e.conn[k])
		wg.Go(func() {
			for i := range work {
				name := fmt.Sprintf("existing-%05d", i)
				_, err := vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec(name, 1<<20)})
				if err == nil && running {
					var r *apiv1.StartVMResponse
					r, err = vm.StartVM(ctx, &apiv1.StartVMRequest{Id: name, Wait: true})
					if err == nil && r.GetTask().GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
						err = fmt.Errorf("start: %v", r.GetTask().GetError())
					}
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("%s: %w", name, err)
					}
					mu.Unlock()
				}
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		b.Fatalf("populating %d VMs: %v", n, firstErr)
	}
}

func spec(name string, mem uint64) *apiv1.VMSpec {
	return &apiv1.VMSpec{
		Name: name, Type: apiv1.DomainType_DOMAIN_TYPE_PVH,
		MemoryStaticMax: mem, MemoryDynamicMin: mem, MemoryDynamicMax: mem,
		VcpusMax: 1, VcpusAtStartup: 1,
	}
}

var seq struct {
	sync.Mutex
	n int
}

// phases are the latencies of one cycle: create, start, destroy.
type phases [3]time.Duration

func (p phases) total() time.Duration { return p[0] + p[1] + p[2] }

// cycle creates, starts and destroys one VM and returns how long each step
// took; it then deletes the VM (untimed) so the population stays constant.
func cycle(ctx context.Context, vm apiv1.VMServiceClient) (phases, error) {
	var ph phases
	seq.Lock()
	seq.n++
	name := fmt.Sprintf("bench-%07d", seq.n)
	seq.Unlock()
	t0 := time.Now()
	c, err := vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec(name, 64<<20)})
	if err != nil {
		return ph, fmt.Errorf("create: %w", err)
	}
	ph[0] = time.Since(t0)
	id := c.GetVm().GetId()
	t0 = time.Now()
	s, err := vm.StartVM(ctx, &apiv1.StartVMRequest{Id: id, Wait: true})
	if err == nil && s.GetTask().GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
		err = fmt.Errorf("task %v: %v", s.GetTask().GetState(), s.GetTask().GetError())
	}
	if err != nil {
		return ph, fmt.Errorf("start: %w", err)
	}
	ph[1] = time.Since(t0)
	t0 = time.Now()
	dsr, err := vm.DestroyVM(ctx, &apiv1.DestroyVMRequest{Id: id, Wait: true})
	if err == nil && dsr.GetTask().GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
		err = fmt.Errorf("task %v: %v", dsr.GetTask().GetState(), dsr.GetTask().GetError())
	}
	if err != nil {
		return ph, fmt.Errorf("destroy: %w", err)
	}
	ph[2] = time.Since(t0)
	if _, err := vm.DeleteVM(ctx, &apiv1.DeleteVMRequest{Id: id}); err != nil {
		return ph, fmt.Errorf("delete: %w", err)
	}
	return ph, nil
}

// BenchmarkCreateStartDestroy: one op = create + start + destroy of a VM
// (then an untimed delete), against the daemon binary with 0, 1,000 and
// 10,000 other VMs recorded.
func BenchmarkCreateStartDestroy(b *testing.B) {
	for _, existing := range []int{0, 1000, 10000} {
		for _, clients := range []int{1, 16} {
			b.Run(fmt.Sprintf("existing=%d/clients=%d", existing, clients), func(b *testing.B) {
				e := setup(b, existing, clients)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
				defer cancel()
				lats := make([]phases, 0, b.N)
				var mu sync.Mutex
				var firstErr error
				work := make(chan struct{})
				var wg sync.WaitGroup
				stopProfile := profile(b, e.d)
				simPid := simHostPid(b, e.d)
				daemonCPU0, simCPU0 := daemonCPU(b, e.d.Pid()), daemonCPU(b, simPid)
				calls0 := simCalls(b, e.d.SimDir)
				b.ResetTimer()
				start := time.Now()
				for k := range clients {
					vm := apiv1.NewVMServiceClient(e.conn[k])
					wg.Go(func() {
						for range work {
							ph, err := cycle(ctx, vm)
							mu.Lock()
							if err != nil && firstErr == nil {
								firstErr = err
							}
							if err == nil {
								lats = append(lats, ph)
							}
							mu.Unlock()
						}
					})
				}
				for range b.N {
					work <- struct{}{}
				}
				close(work)
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				stopProfile()
				if firstErr != nil {
					b.Fatal(firstErr)
				}
				report(b, lats, elapsed)
				n := float64(len(lats))
				b.ReportMetric(float64((daemonCPU(b, e.d.Pid())-daemonCPU0).Microseconds())/1000/n, "daemon-cpu-ms/cycle")
				b.ReportMetric(float64((daemonCPU(b, simPid)-simCPU0).Microseconds())/1000/n, "simhost-cpu-ms/cycle")
				calls := simCalls(b, e.d.SimDir)
				b.ReportMetric(float64(hypercallsIn(calls)-hypercallsIn(calls0))/n, "hypercalls/cycle")
				b.ReportMetric(float64(calls[listDomains]-calls0[listDomains])/n, "listdomains/cycle")
				if rss, err := harness.RSS(e.d.Pid()); err == nil {
					b.ReportMetric(float64(rss)/(1<<20), "daemon-RSS-MB")
				}
			})
		}
	}
}

// report adds cycles/s (whole cycles, the untimed delete included, per
// second of wall time), p50/p99 of a cycle's create+start+destroy latency,
// and the p50 and p99 of each step.
func report(b *testing.B, lats []phases, elapsed time.Duration) {
	if len(lats) == 0 {
		return
	}
	pct := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[int(float64(len(d)-1)*p)].Microseconds()) / 1000
	}
	col := func(f func(phases) time.Duration) []time.Duration {
		out := make([]time.Duration, len(lats))
		for i, p := range lats {
			out[i] = f(p)
		}
		return out
	}
	totals := col(phases.total)
	b.ReportMetric(float64(len(lats))/elapsed.Seconds(), "cycles/s")
	b.ReportMetric(pct(totals, 0.50), "p50-ms")
	b.ReportMetric(pct(totals, 0.99), "p99-ms")
	for i, name := range []string{"create", "start", "destroy"} {
		b.ReportMetric(pct(col(func(p phases) time.Duration { return p[i] }), 0.50), name+"-p50-ms")
		b.ReportMetric(pct(col(func(p phases) time.Duration { return p[i] }), 0.99), name+"-p99-ms")
	}
}

// profile, with BENCH_PPROF=DIR, records the daemon's CPU profile while a
// run goes (its first BENCH_PPROF_SECONDS, default 20) and its heap once
// the run is over, as DIR/<benchmark>.{cpu,heap}.pprof (go tool pprof
// reads them). Without BENCH_PPROF it does nothing.
func profile(b *testing.B, d *harness.Daemon) (stop func()) {
	dir := os.Getenv("BENCH_PPROF")
	if dir == "" {
		return func() {}
	}
	m := regexp.MustCompile(`msg="serving metrics" component=metrics addr=(127\.0\.0\.1:\d+)`).FindStringSubmatch(d.Log())
	if m == nil {
		b.Fatalf("BENCH_PPROF: the daemon log does not say where it serves metrics")
	}
	base := "http://" + m[1] + "/debug/pprof/"
	name := filepath.Join(dir, strings.NewReplacer("/", "_", "=", "").Replace(b.Name()))
	secs := cmp.Or(os.Getenv("BENCH_PPROF_SECONDS"), "20")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := fetchTo(base+"profile?seconds="+secs, name+".cpu.pprof"); err != nil {
			b.Logf("BENCH_PPROF: %v", err)
		}
	}()
	return func() {
		<-done
		if err := fetchTo(base+"heap?gc=1", name+".heap.pprof"); err != nil {
			b.Logf("BENCH_PPROF: %v", err)
		}
		// The same in text, ending with the runtime's MemStats.
		if err := fetchTo(base+"heap?debug=1", name+".heap.txt"); err != nil {
			b.Logf("BENCH_PPROF: %v", err)
		}
	}
}

// fetchTo saves what url answers in file.
func fetchTo(url, file string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return os.WriteFile(file, data, 0o644)
}

// simHostPid is the process id of d's sim host.
func simHostPid(b *testing.B, d *harness.Daemon) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := simhost.Dial(ctx, d.SimDir)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	return c.PID()
}
