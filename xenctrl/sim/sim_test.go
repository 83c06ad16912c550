package sim

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

var pv = xenctrl.DomainConfig{MaxVCPUs: 1}

func newSim(t testing.TB, cfg Config) *Hypervisor {
	t.Helper()
	h := New(cfg)
	t.Cleanup(func() { _ = h.Close() })
	return h
}

func mustCreate(t testing.TB, h *Hypervisor, cfg xenctrl.DomainConfig) xenctrl.Domid {
	t.Helper()
	d, err := h.CreateDomain(context.Background(), cfg)
	if err != nil {
		t.Fatalf("CreateDomain: %v", err)
	}
	return d
}

func info(t testing.TB, h *Hypervisor, d xenctrl.Domid) xenctrl.DomainInfo {
	t.Helper()
	di, err := h.DomainInfo(context.Background(), d)
	if err != nil {
		t.Fatalf("DomainInfo(%d): %v", d, err)
	}
	return di
}

func wantErrno(t testing.TB, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("got error %v, want %v", err, want)
	}
	var xe *xenctrl.Error
	if !errors.As(err, &xe) {
		t.Fatalf("error %v is not a *xenctrl.Error", err)
	}
}

func TestDom0AndHostMemory(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{TotalMemory: 8 << 30, NrCPUs: 4, Dom0Memory: 1 << 30, XenMemory: 64 << 20})
	doms, err := h.ListDomains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(doms) != 1 || doms[0].Domid != 0 {
		t.Fatalf("fresh host lists %+v, want only dom0", doms)
	}
	if doms[0].TotPages != (1<<30)/xenctrl.PageSize || doms[0].Paused || doms[0].Dying {
		t.Fatalf("dom0 = %+v", doms[0])
	}
	pi, err := h.PhysInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantTotal := uint64(8<<30) / xenctrl.PageSize
	wantFree := wantTotal - (1<<30)/xenctrl.PageSize - (64<<20)/xenctrl.PageSize
	if pi.TotalPages != wantTotal || pi.FreePages != wantFree || pi.NrCPUs != 4 {
		t.Fatalf("physinfo %+v, want total %d free %d cpus 4", pi, wantTotal, wantFree)
	}
	if v, _ := h.Version(ctx); v.Major != 4 || v.Minor != 17 {
		t.Fatalf("version %v", v)
	}
	wantErrno(t, h.PauseDomain(ctx, 0), syscall.EINVAL)
	wantErrno(t, h.DestroyDomain(ctx, 0), syscall.EINVAL)
}

func TestCreateValidation(t *testing.T) {
	h := newSim(t, Config{})
	hvm := xenctrl.CreateHVM
	cases := []struct {
		name string
		cfg  xenctrl.DomainConfig
		want syscall.Errno
	}{
		{"no vcpus", xenctrl.DomainConfig{}, syscall.EINVAL},
		{"hvm 129 vcpus", xenctrl.DomainConfig{Flags: hvm, MaxVCPUs: 129, EmulationFlags: emuAll &^ emuVPCI}, syscall.EINVAL},
		{"pv 8193 vcpus", xenctrl.DomainConfig{MaxVCPUs: 8193}, syscall.EINVAL},
		{"hap without hvm", xenctrl.DomainConfig{Flags: xenctrl.CreateHAP, MaxVCPUs: 1}, syscall.EINVAL},
		{"unknown flag", xenctrl.DomainConfig{Flags: 1 << 12, MaxVCPUs: 1}, syscall.EINVAL},
		{"iommu unavailable", xenctrl.DomainConfig{Flags: xenctrl.CreateIOMMU, MaxVCPUs: 1}, syscall.EINVAL},
		{"grant frames", xenctrl.DomainConfig{MaxVCPUs: 1, MaxGrantFrames: 65}, syscall.EINVAL},
		{"maptrack frames", xenctrl.DomainConfig{MaxVCPUs: 1, MaxMaptrackFrames: 1025}, syscall.EINVAL},
		{"pv with lapic", xenctrl.DomainConfig{MaxVCPUs: 1, EmulationFlags: emuLAPIC}, syscall.EOPNOTSUPP},
		{"hvm without emulation", xenctrl.DomainConfig{Flags: hvm, MaxVCPUs: 1}, syscall.EOPNOTSUPP},
		{"bad emulation bit", xenctrl.DomainConfig{Flags: hvm, MaxVCPUs: 1, EmulationFlags: 1 << 20}, syscall.EINVAL},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := h.CreateDomain(context.Background(), c.cfg)
			wantErrno(t, err, c.want)
		})
	}
	doms, _ := h.ListDomains(context.Background())
	if len(doms) != 1 {
		t.Fatalf("failed creates left domains behind: %+v", doms)
	}
	// The limits themselves are accepted.
	for _, cfg := range []xenctrl.DomainConfig{
		{Flags: hvm | xenctrl.CreateHAP, MaxVCPUs: 128, EmulationFlags: emuAll &^ emuVPCI},
		{Flags: hvm | xenctrl.CreateHAP, MaxVCPUs: 1, EmulationFlags: emuLAPIC}, // PVH
		{MaxVCPUs: 8192, MaxGrantFrames: 64, MaxMaptrackFrames: 1024},
	} {
		d := mustCreate(t, h, cfg)
		di := info(t, h, d)
		if di.HVM != (cfg.Flags&hvm != 0) || di.MaxVCPUID != invalidMaxVCPUID || !di.Paused || di.TotPages != 0 || di.MaxPages != 0 {
			t.Fatalf("new domain %+v from %+v", di, cfg)
		}
		wantErrno(t, h.SetMaxVCPUs(context.Background(), d, cfg.MaxVCPUs+1), syscall.EINVAL)
		if err := h.SetMaxVCPUs(context.Background(), d, cfg.MaxVCPUs); err != nil {
			t.Fatal(err)
		}
		if di := info(t, h, d); di.MaxVCPUID != cfg.MaxVCPUs-1 || di.OnlineVCPUs != 0 {
			t.Fatalf("after max_vcpus: %+v", di)
		}
	}
}

func TestDomidRover(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{ReleaseDelay: -1})
	a, b, c := mustCreate(t, h, pv), mustCreate(t, h, pv), mustCreate(t, h, pv)
	if a != 1 || b != 2 || c != 3 {
		t.Fatalf("first domids %d %d %d, want 1 2 3", a, b, c)
	}
	if err := h.DestroyDomain(ctx, b); err != nil {
		t.Fatal(err)
	}
	if _, err := h.DomainInfo(ctx, b); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("released domain still answers: %v", err)
	}
	// Xen continues after the last domid handed out, not at the lowest free.
	if d := mustCreate(t, h, pv); d != 4 {
		t.Fatalf("next domid %d, want 4", d)
	}
	// Wrap from DOMID_FIRST_RESERVED-1 back to 1, skipping live domids.
	h.mu.Lock()
	h.rover = xenctrl.DomidFirstReserved - 2
	h.mu.Unlock()
	if d := mustCreate(t, h, pv); d != xenctrl.DomidFirstReserved-1 {
		t.Fatalf("domid %d, want %d", d, xenctrl.DomidFirstReserved-1)
	}
	if d := mustCreate(t, h, pv); d != 2 {
		t.Fatalf("after wrap got domid %d, want 2 (1 is live)", d)
	}
}

func TestDyingDomainKeepsDomid(t *testing.T) {
	ctx := context.Background()
	var exc atomic.Int32
	h := newSim(t, Config{OnDomainException: func(xenctrl.Domid) { exc.Add(1) }})
	d := mustCreate(t, h, pv)
	if err := h.SetMaxMem(ctx, d, 4096); err != nil {
		t.Fatal(err)
	}
	if err := h.PopulatePhysmap(ctx, d, 1024); err != nil {
		t.Fatal(err)
	}
	before, _ := h.PhysInfo(ctx)
	release, err := h.Hold(d)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.DestroyDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	di := info(t, h, d)
	if !di.Dying || di.TotPages != 0 || di.Running {
		t.Fatalf("destroyed domain %+v, want dying with no pages", di)
	}
	if dy := h.DyingDomains(); len(dy) != 1 || dy[0] != d {
		t.Fatalf("DyingDomains = %v, want [%d]", dy, d)
	}
	after, _ := h.PhysInfo(ctx)
	if after.FreePages != before.FreePages+1024 {
		t.Fatalf("free pages %d -> %d, want +1024", before.FreePages, after.FreePages)
	}
	if exc.Load() != 1 {
		t.Fatalf("%d exceptions after destroy, want 1", exc.Load())
	}
	// Destroying again while dying is fine; a dying domain cannot be held
	// or given memory.
	if err := h.DestroyDomain(ctx, d); err != nil {
		t.Fatalf("second destroy: %v", err)
	}
	if _, err := h.Hold(d); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("Hold on dying domain: %v", err)
	}
	wantErrno(t, h.PopulatePhysmap(ctx, d, 1), syscall.ENOMEM)
	if di := info(t, h, d); di.TotPages != 0 {
		t.Fatalf("dying domain got pages: %+v", di)
	}
	// Its domid is skipped while dying.
	h.mu.Lock()
	h.rover = d - 1
	h.mu.Unlock()
	if n := mustCreate(t, h, pv); n == d {
		t.Fatalf("dying domain's domid %d reused", d)
	}
	release()
	release() // idempotent
	waitGone(t, h, d)
	for i := 0; i < 10000 && exc.Load() < 2; i++ {
		time.Sleep(time.Millisecond)
	}
	if exc.Load() != 2 {
		t.Fatalf("%d exceptions after release, want 2", exc.Load())
	}
	wantErrno(t, h.DestroyDomain(ctx, d), syscall.ESRCH)
	if dy := h.DyingDomains(); len(dy) != 0 {
		t.Fatalf("DyingDomains after release = %v", dy)
	}
}

// waitGone waits (bounded) for the asynchronous final release of d.
func waitGone(t testing.TB, h *Hypervisor, d xenctrl.Domid) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := h.DomainInfo(context.Background(), d); errors.Is(err, syscall.ESRCH) {
			return
		}
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("domain %d never released", d)
}

func TestPauseRefcount(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{})
	d := mustCreate(t, h, pv)
	// Created paused once: one unpause runs it, a second is EINVAL.
	if err := h.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	if info(t, h, d).Paused {
		t.Fatal("still paused after the creation unpause")
	}
	wantErrno(t, h.UnpauseDomain(ctx, d), syscall.EINVAL)
	for i := 0; i < 3; i++ {
		if err := h.PauseDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 3; i++ {
		if !info(t, h, d).Paused {
			t.Fatalf("unpaused after %d of 3 unpauses", i)
		}
		if err := h.UnpauseDomain(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if info(t, h, d).Paused {
		t.Fatal("paused after 3 pauses and 3 unpauses")
	}
	for i := 0; i < MaxControllerPauses; i++ {
		if err := h.PauseDomain(ctx, d); err != nil {
			t.Fatalf("pause %d: %v", i+1, err)
		}
	}
	wantErrno(t, h.PauseDomain(ctx, d), syscall.EOVERFLOW)
	wantErrno(t, h.PauseDomain(ctx, 999), syscall.ESRCH)
	wantErrno(t, h.UnpauseDomain(ctx, 999), syscall.ESRCH)
}

// bootedDomain creates a domain with memory and unpauses it.
func bootedDomain(t testing.TB, h *Hypervisor) xenctrl.Domid {
	t.Helper()
	ctx := context.Background()
	d := mustCreate(t, h, pv)
	if err := h.SetMaxMem(ctx, d, 1024); err != nil {
		t.Fatal(err)
	}
	if err := h.PopulatePhysmap(ctx, d, 256); err != nil {
		t.Fatal(err)
	}
	if err := h.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestShutdownCodes(t *testing.T) {
	ctx := context.Background()
	for _, reason := range []xenctrl.ShutdownReason{
		xenctrl.ShutdownPoweroff, xenctrl.ShutdownReboot, xenctrl.ShutdownSuspend,
		xenctrl.ShutdownCrash, xenctrl.ShutdownWatchdog, xenctrl.ShutdownSoftReset,
	} {
		t.Run(reason.String(), func(t *testing.T) {
			var exc atomic.Int32
			h := newSim(t, Config{OnDomainException: func(xenctrl.Domid) { exc.Add(1) }})
			d := bootedDomain(t, h)
			if di := info(t, h, d); !di.Running || di.OnlineVCPUs != 1 || di.Shutdown {
				t.Fatalf("booted domain %+v", di)
			}
			if err := h.ShutdownDomain(ctx, d, reason); err != nil {
				t.Fatal(err)
			}
			di := info(t, h, d)
			if !di.Shutdown || di.ShutdownReason != reason || di.Running || di.Blocked || di.TotPages != 256 {
				t.Fatalf("after shutdown(%v): %+v", reason, di)
			}
			if exc.Load() != 1 {
				t.Fatalf("%d exceptions, want 1", exc.Load())
			}
			// The first reason sticks.
			other := (reason + 1) % 6
			if err := h.ShutdownDomain(ctx, d, other); err != nil {
				t.Fatal(err)
			}
			if got := info(t, h, d).ShutdownReason; got != reason {
				t.Fatalf("reason changed to %v", got)
			}
			if exc.Load() != 1 {
				t.Fatalf("second shutdown raised an exception")
			}
			// CPU time stands still once shut down.
			c1 := info(t, h, d).CPUTime
			time.Sleep(time.Millisecond)
			if c2 := info(t, h, d).CPUTime; c2 != c1 {
				t.Fatalf("cpu time moved from %d to %d while shut down", c1, c2)
			}
		})
	}
	h := newSim(t, Config{})
	d := bootedDomain(t, h)
	wantErrno(t, h.ShutdownDomain(ctx, d, 6), syscall.EINVAL)
	wantErrno(t, h.ShutdownDomain(ctx, 999, 0), syscall.ESRCH)
	wantErrno(t, h.ShutdownDomain(ctx, 0, 0), syscall.EINVAL)
}

func TestGuestShutdownNeedsRunningGuest(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{})
	d := mustCreate(t, h, pv)
	wantErrno(t, h.GuestShutdown(ctx, d, xenctrl.ShutdownCrash), syscall.EBUSY) // never booted
	d = bootedDomain(t, h)
	if err := h.PauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, h.GuestShutdown(ctx, d, xenctrl.ShutdownCrash), syscall.EBUSY) // paused
	done := make(chan error, 1)
	go func() { done <- h.WaitRunnable(ctx, d) }()
	if err := h.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("WaitRunnable: %v", err)
	}
	if err := h.GuestShutdown(ctx, d, xenctrl.ShutdownCrash); err != nil {
		t.Fatal(err)
	}
	if di := info(t, h, d); !di.Shutdown || di.ShutdownReason != xenctrl.ShutdownCrash {
		t.Fatalf("after guest crash: %+v", di)
	}
	if err := h.WaitRunnable(ctx, d); !errors.Is(err, syscall.ESHUTDOWN) {
		t.Fatalf("WaitRunnable on shut-down domain: %v", err)
	}
}

func TestRunningBlockedAndCPUTime(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{})
	d := mustCreate(t, h, pv)
	if di := info(t, h, d); di.Running || di.Blocked || di.OnlineVCPUs != 0 || di.CPUTime != 0 {
		t.Fatalf("unbooted domain %+v", di)
	}
	d = bootedDomain(t, h)
	c1 := info(t, h, d).CPUTime
	deadline := time.Now().Add(10 * time.Second)
	for info(t, h, d).CPUTime == c1 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if info(t, h, d).CPUTime == c1 {
		t.Fatal("cpu time does not grow while running")
	}
	if err := h.SetGuestBehaviour(ctx, d, GuestBehaviour{Idle: true}); err != nil {
		t.Fatal(err)
	}
	di := info(t, h, d)
	if di.Running || !di.Blocked {
		t.Fatalf("idle guest %+v, want blocked", di)
	}
	time.Sleep(time.Millisecond)
	if c := info(t, h, d).CPUTime; c != di.CPUTime {
		t.Fatal("idle guest gains cpu time")
	}
	if err := h.PauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	if di := info(t, h, d); di.Running || di.Blocked || !di.Paused {
		t.Fatalf("paused guest %+v", di)
	}
}

func TestMemoryLimits(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{TotalMemory: 1 << 30, Dom0Memory: 256 << 20, XenMemory: 16 << 20})
	pi, _ := h.PhysInfo(ctx)
	free := pi.FreePages
	d := mustCreate(t, h, pv)
	wantErrno(t, h.PopulatePhysmap(ctx, d, 1), syscall.ENOMEM) // max_pages 0
	if err := h.SetMaxMem(ctx, d, 100*4); err != nil {
		t.Fatal(err)
	}
	if err := h.PopulatePhysmap(ctx, d, 60); err != nil {
		t.Fatal(err)
	}
	// Over the domain's limit: Xen assigns what fits, then fails.
	wantErrno(t, h.PopulatePhysmap(ctx, d, 60), syscall.ENOMEM)
	if di := info(t, h, d); di.TotPages != 100 || di.MaxPages != 100 {
		t.Fatalf("after over-allocation %+v", di)
	}
	// Lowering max below tot is allowed; further allocation fails.
	if err := h.SetMaxMem(ctx, d, 50*4); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, h.PopulatePhysmap(ctx, d, 1), syscall.ENOMEM)
	// Host exhaustion.
	e := mustCreate(t, h, pv)
	if err := h.SetMaxMem(ctx, e, 1<<30); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, h.PopulatePhysmap(ctx, e, free), syscall.ENOMEM)
	pi, _ = h.PhysInfo(ctx)
	if pi.FreePages != 0 {
		t.Fatalf("host has %d free pages after exhaustion", pi.FreePages)
	}
	if di := info(t, h, e); di.TotPages != free-100 {
		t.Fatalf("second domain got %d pages, want %d", di.TotPages, free-100)
	}
	wantErrno(t, h.PopulatePhysmap(ctx, 999, 1), syscall.ESRCH)
	wantErrno(t, h.SetMaxMem(ctx, 999, 1), syscall.ESRCH)
	if err := h.SetMaxMem(ctx, d, 1<<62); err != nil {
		t.Fatal(err)
	}
	if got := info(t, h, d).MaxPages; got != maxPagesLimit {
		t.Fatalf("max_pages %d, want capped at %d", got, uint64(maxPagesLimit))
	}
}

func TestDomidExhaustion(t *testing.T) {
	if testing.Short() {
		t.Skip("creates 32751 domains")
	}
	h := newSim(t, Config{})
	n := int(xenctrl.DomidFirstReserved) - 1
	for i := 0; i < n; i++ {
		mustCreate(t, h, pv)
	}
	_, err := h.CreateDomain(context.Background(), pv)
	wantErrno(t, err, syscall.ENOMEM)
}

func TestContextCancelled(t *testing.T) {
	h := newSim(t, Config{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := h.CreateDomain(ctx, pv); !errors.Is(err, context.Canceled) {
		t.Fatalf("CreateDomain on cancelled ctx: %v", err)
	}
	if doms, _ := h.ListDomains(context.Background()); len(doms) != 1 {
		t.Fatal("cancelled create made a domain")
	}
}

func TestConcurrentCreateDestroy(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{})
	const workers, each = 32, 200
	var mu sync.Mutex
	live := map[xenctrl.Domid]bool{}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				d, err := h.CreateDomain(ctx, pv)
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				if live[d] {
					mu.Unlock()
					errs <- errors.New("domid handed out twice")
					return
				}
				live[d] = true
				mu.Unlock()
				if i%2 == 0 {
					mu.Lock()
					delete(live, d)
					mu.Unlock()
					if err := h.DestroyDomain(ctx, d); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	doms, _ := h.ListDomains(ctx)
	alive := 0
	for i, di := range doms {
		if i > 0 && doms[i-1].Domid >= di.Domid {
			t.Fatal("ListDomains not in domid order")
		}
		if !di.Dying {
			alive++
		}
	}
	if alive != len(live)+1 {
		t.Fatalf("%d live domains listed, want %d", alive, len(live)+1)
	}
}

func BenchmarkCreateDestroy(b *testing.B) {
	for _, existing := range []int{0, 10000} {
		b.Run(map[int]string{0: "existing=0", 10000: "existing=10000"}[existing], func(b *testing.B) {
			ctx := context.Background()
			h := New(Config{ReleaseDelay: -1})
			for i := 0; i < existing; i++ {
				mustCreate(b, h, pv)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d, err := h.CreateDomain(ctx, pv)
				if err != nil {
					b.Fatal(err)
				}
				if err := h.DestroyDomain(ctx, d); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestCPUTimePerVCPU: a busy guest's CPU time is the sum of its vCPUs'
// running time, so four busy vCPUs gain four seconds per second. The
// bounds come from clock readings around the two DomainInfo calls, so the
// check does not depend on how long anything takes.
func TestCPUTimePerVCPU(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{})
	d := mustCreate(t, h, xenctrl.DomainConfig{MaxVCPUs: 4})
	if err := h.SetMaxMem(ctx, d, 1024); err != nil {
		t.Fatal(err)
	}
	if err := h.PopulatePhysmap(ctx, d, 256); err != nil {
		t.Fatal(err)
	}
	if err := h.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	beforeFirst := time.Now()
	c1 := info(t, h, d).CPUTime
	afterFirst := time.Now()
	time.Sleep(20 * time.Millisecond)
	beforeSecond := time.Now()
	di := info(t, h, d)
	afterSecond := time.Now()
	if di.OnlineVCPUs != 4 {
		t.Fatalf("online vCPUs %d, want 4", di.OnlineVCPUs)
	}
	gained := time.Duration(di.CPUTime - c1)
	if low, high := 4*beforeSecond.Sub(afterFirst), 4*afterSecond.Sub(beforeFirst); gained < low || gained > high {
		t.Fatalf("4 busy vCPUs gained %v of CPU time, want %v..%v (4 s per s of wall time)", gained, low, high)
	}
}

// TestCPUIdle: with nothing running every pCPU is idle all the time; a
// busy 2-vCPU guest on 4 pCPUs halves the rate; pausing it stops that. The
// bounds come from clock readings around the calls.
func TestCPUIdle(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{NrCPUs: 4})
	idle := func() time.Duration {
		t.Helper()
		got, err := h.CPUIdle(ctx)
		if err != nil || len(got) != 4 {
			t.Fatalf("CPUIdle: %v, %v; want 4 CPUs", got, err)
		}
		for _, c := range got[1:] {
			if c != got[0] {
				t.Fatalf("CPUIdle %v: want the same for every pCPU", got)
			}
		}
		return got[0]
	}
	// rate measures the idle time gained over a short sleep against the
	// wall time bracketing it.
	rate := func() (gained, low, high time.Duration) {
		beforeFirst := time.Now()
		i0 := idle()
		afterFirst := time.Now()
		time.Sleep(20 * time.Millisecond)
		beforeSecond := time.Now()
		i1 := idle()
		afterSecond := time.Now()
		return i1 - i0, beforeSecond.Sub(afterFirst), afterSecond.Sub(beforeFirst)
	}
	if g, low, high := rate(); g < low || g > high {
		t.Errorf("idle host: each pCPU gained %v of idle time in %v..%v", g, low, high)
	}
	d := mustCreate(t, h, xenctrl.DomainConfig{MaxVCPUs: 2})
	if err := h.SetMaxMem(ctx, d, 1024); err != nil {
		t.Fatal(err)
	}
	if err := h.PopulatePhysmap(ctx, d, 256); err != nil {
		t.Fatal(err)
	}
	if err := h.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	if g, low, high := rate(); g < low/2-4 || g > high/2+4 { // /2 rounds down per step
		t.Errorf("2 busy vCPUs on 4 pCPUs: each gained %v of idle time in %v..%v, want half", g, low, high)
	}
	if err := h.PauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	if g, low, high := rate(); g < low || g > high {
		t.Errorf("paused guest: each pCPU gained %v of idle time in %v..%v", g, low, high)
	}
}

// TestGetVCPUInfo: a booted 2-vCPU domain's vCPUs are online and running,
// each with half its CPU time, on pCPUs vcpu mod pCPUs; paused, neither
// runs.
func TestGetVCPUInfo(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{NrCPUs: 1})
	d := mustCreate(t, h, xenctrl.DomainConfig{MaxVCPUs: 2})
	if err := h.SetMaxMem(ctx, d, 1024); err != nil {
		t.Fatal(err)
	}
	if err := h.PopulatePhysmap(ctx, d, 256); err != nil {
		t.Fatal(err)
	}
	if err := h.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := h.PauseDomain(ctx, d); err != nil { // CPU time stands still from here
		t.Fatal(err)
	}
	total := info(t, h, d).CPUTime
	for vcpu := range uint32(2) {
		vi, err := h.GetVCPUInfo(ctx, d, vcpu)
		if err != nil {
			t.Fatal(err)
		}
		if want := (xenctrl.VCPUInfo{VCPU: vcpu, Online: true, CPUTime: total / 2}); vi != want {
			t.Errorf("paused domain's vCPU %d: %+v, want %+v", vcpu, vi, want)
		}
	}
	if err := h.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	if vi, err := h.GetVCPUInfo(ctx, d, 1); err != nil || !vi.Running || !vi.Online || vi.CPU != 0 || vi.CPUTime < total/2 {
		t.Errorf("running domain's vCPU 1: %+v, %v", vi, err)
	}
	wantErrno(t, func() error { _, err := h.GetVCPUInfo(ctx, d, 2); return err }(), syscall.EINVAL)
}

// TestDomainStatus: DomainStatus agrees with DomainInfo on whether a domain
// exists and whether it is shut down or dying, through its whole life.
func TestDomainStatus(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{})
	check := func(what string, d xenctrl.Domid) {
		t.Helper()
		exists, down := h.DomainStatus(d)
		di, err := h.DomainInfo(ctx, d)
		if exists != (err == nil) || down != (err == nil && (di.Shutdown || di.Dying)) {
			t.Fatalf("%s: DomainStatus(%d) = %v, %v; DomainInfo = %+v, %v", what, d, exists, down, di, err)
		}
	}
	d := mustCreate(t, h, pv)
	check("created", d)
	if exists, down := h.DomainStatus(d); !exists || down {
		t.Fatalf("a new domain: DomainStatus %v, %v", exists, down)
	}
	if err := h.ShutdownDomain(ctx, d, xenctrl.ShutdownPoweroff); err != nil {
		t.Fatal(err)
	}
	check("shut down", d)
	if _, down := h.DomainStatus(d); !down {
		t.Fatal("a shut-down domain is not down")
	}
	e := mustCreate(t, h, pv)
	release, err := h.Hold(e)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.DestroyDomain(ctx, e); err != nil {
		t.Fatal(err)
	}
	check("dying", e)
	release()
	waitGone(t, h, e)
	check("gone", e)
	if exists, _ := h.DomainStatus(e); exists {
		t.Fatal("a released domain still exists")
	}
}
