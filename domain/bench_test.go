package domain

import (
	"context"
	"os"
	"runtime"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkCreateStartDestroy measures one VM's create + start + destroy
// (+ delete, to keep the VM count steady) with 0, 1000 and 10000 other VMs
// existing and running, serially and from 32 concurrent clients. It reports
// cycles per second, p50/p99 latency of a cycle, and the process RSS (the
// Manager, the store, the simulator and the embedded xenstored share it).
func BenchmarkCreateStartDestroy(b *testing.B) {
	for _, existing := range []int{0, 1000, 10000} {
		b.Run("existing="+strconv.Itoa(existing), func(b *testing.B) {
			e := newEnv(b, envOpts{memory: 4 << 40, noGuest: true, workers: 16})
			populate(b, e, existing)
			b.Run("serial", func(b *testing.B) { benchCycles(b, e, 1) })
			b.Run("clients=32", func(b *testing.B) { benchCycles(b, e, 32) })
		})
	}
}

func populate(b *testing.B, e *env, n int) {
	b.Helper()
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for c := 0; c < 64; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				s := spec("existing-" + strconv.Itoa(i))
				s.MemoryStaticMax = 16 << 20
				vm, err := e.m.CreateVM(e.ctx, s, "")
				if err != nil {
					b.Error(err)
					return
				}
				tk, err := e.m.Start(e.ctx, vm.ID, false)
				if err != nil {
					b.Error(err)
					return
				}
				if done, err := e.m.WaitTask(e.ctx, tk.ID); err != nil || done.State != TaskSucceeded {
					b.Errorf("start: %v %v", err, done.Err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
}

var benchSeq atomic.Int64

func benchCycles(b *testing.B, e *env, clients int) {
	lat := make([]time.Duration, b.N)
	phases := make([][4]time.Duration, b.N)
	var next atomic.Int64
	var wg sync.WaitGroup
	// XENOPSD_BENCH_CPUPROFILE=prefix profiles only the timed cycles (not
	// the population) into prefix + the benchmark's name.
	if pfx := os.Getenv("XENOPSD_BENCH_CPUPROFILE"); pfx != "" {
		f, err := os.Create(pfx + strings.NewReplacer("/", "_", "=", "").Replace(b.Name()) + ".prof")
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	b.ResetTimer()
	start := time.Now()
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= b.N {
					return
				}
				t0 := time.Now()
				if err := cycle(e.ctx, e.m, "bench-"+strconv.FormatInt(benchSeq.Add(1), 10), &phases[i]); err != nil {
					b.Error(err)
					return
				}
				lat[i] = time.Since(t0)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "cycles/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(rssBytes())/(1<<20), "rss-MiB")
	for p, name := range []string{"create", "start", "destroy", "delete"} {
		d := make([]time.Duration, len(phases))
		for i := range phases {
			d[i] = phases[i][p]
		}
		sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
		b.ReportMetric(float64(d[len(d)/2].Microseconds())/1000, name+"-p50-ms")
	}
}

func cycle(ctx context.Context, m *Manager, name string, ph *[4]time.Duration) error {
	t0 := time.Now()
	vm, err := m.CreateVM(ctx, spec(name), "")
	if err != nil {
		return err
	}
	ph[0] = time.Since(t0)
	for i, f := range []func() (Task, error){
		func() (Task, error) { return m.Start(ctx, vm.ID, false) },
		func() (Task, error) { return m.Destroy(ctx, vm.ID) },
	} {
		tk, err := f()
		if err != nil {
			return err
		}
		done, err := m.WaitTask(ctx, tk.ID)
		if err != nil {
			return err
		}
		if done.State != TaskSucceeded {
			return done.Err
		}
		ph[i+1] = time.Since(t0) - ph[0] - ph[1]
	}
	t1 := time.Now()
	err = m.DeleteVM(ctx, vm.ID)
	ph[3] = time.Since(t1)
	return err
}

// rssBytes is the process's resident set size (Linux), or the Go heap in
// use elsewhere.
func rssBytes() uint64 {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
				kb, _ := strconv.ParseUint(f[1], 10, 64)
				return kb << 10
			}
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}
