package simhost

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// toolstack is the little a toolstack does to give a domain a guest that
// can talk to it: libxl's xenstore layout and INTRODUCE.
type toolstack struct {
	t  *testing.T
	hv *Client
	xs *xenstore.Client
}

func newToolstack(t *testing.T, cfg Config) *toolstack {
	c, _ := startHost(t, cfg)
	xs, err := xenstore.Dial(testCtx(t), c.XenstoredPath())
	if err != nil {
		t.Fatalf("dial xenstored: %v", err)
	}
	t.Cleanup(func() { xs.Close() })
	return &toolstack{t: t, hv: c, xs: xs}
}

// boot creates, fills and unpauses a domain whose control/ nodes belong to
// it, as libxl creates them, and waits until its guest has advertised
// feature-poweroff.
func (ts *toolstack) boot(t *testing.T) xenctrl.Domid {
	t.Helper()
	return ts.bootWith(t, nil)
}

// bootWith is boot, running before (if not nil) before the unpause.
func (ts *toolstack) bootWith(t *testing.T, before func(xenctrl.Domid)) xenctrl.Domid {
	t.Helper()
	ctx := testCtx(t)
	d, err := ts.hv.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.hv.SetMaxMem(ctx, d, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := ts.hv.PopulatePhysmap(ctx, d, 1024); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("/local/domain/%d", d)
	own := []xenstore.Perm{{Domid: uint32(d), Access: xenstore.AccessNone}}
	for _, n := range []string{"control/shutdown", "control/feature-poweroff", "control/feature-reboot", "control/feature-suspend"} {
		if err := ts.xs.Write(ctx, base+"/"+n, nil); err != nil {
			t.Fatal(err)
		}
		if err := ts.xs.SetPerms(ctx, base+"/"+n, own); err != nil {
			t.Fatal(err)
		}
	}
	if err := ts.xs.Introduce(ctx, uint32(d), 0xfeffc, 1); err != nil {
		t.Fatal(err)
	}
	w, err := ts.xs.Watch(ctx, base+"/control/feature-poweroff", "feat")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if before != nil {
		before(d)
	}
	if err := ts.hv.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	for {
		v, err := ts.xs.Read(ctx, base+"/control/feature-poweroff")
		if err == nil && string(v) == "1" {
			return d
		}
		select {
		case <-w.Events():
		case <-ctx.Done():
			t.Fatalf("guest %d never wrote feature-poweroff", d)
		}
	}
}

// waitInfo waits until pred holds for d's DomainInfo (or ESRCH if pred
// accepts a zero DomainInfo with gone=true).
func (ts *toolstack) waitInfo(t *testing.T, d xenctrl.Domid, what string, pred func(di xenctrl.DomainInfo, gone bool) bool) xenctrl.DomainInfo {
	t.Helper()
	ctx := testCtx(t)
	for {
		di, err := ts.hv.DomainInfo(ctx, d)
		gone := errors.Is(err, syscall.ESRCH)
		if err != nil && !gone {
			t.Fatalf("DomainInfo(%d): %v", d, err)
		}
		if pred(di, gone) {
			return di
		}
		select {
		case <-ctx.Done():
			t.Fatalf("domain %d never %s: last %+v", d, what, di)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// releaseWatch watches @releaseDomain (until t ends) and swallows the
// initial event.
func (ts *toolstack) releaseWatch(t *testing.T) *xenstore.Watch {
	ctx := testCtx(t)
	w, err := ts.xs.Watch(ctx, "@releaseDomain", t.Name())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	select {
	case <-w.Events():
	case <-ctx.Done():
		t.Fatal("no initial @releaseDomain event")
	}
	return w
}

func (ts *toolstack) wantEvent(t *testing.T, w *xenstore.Watch, what string) {
	t.Helper()
	select {
	case _, ok := <-w.Events():
		if !ok {
			t.Fatalf("%s: watch closed", what)
		}
	case <-testCtx(t).Done():
		t.Fatalf("%s: no @releaseDomain event", what)
	}
}

func TestGuestAcknowledgesShutdownRequests(t *testing.T) {
	ts := newToolstack(t, Config{})
	ctx := testCtx(t)
	for cmd, want := range map[string]xenctrl.ShutdownReason{
		"poweroff": xenctrl.ShutdownPoweroff, "halt": xenctrl.ShutdownPoweroff,
		"reboot": xenctrl.ShutdownReboot, "suspend": xenctrl.ShutdownSuspend,
	} {
		t.Run(cmd, func(t *testing.T) {
			d := ts.boot(t)
			rel := ts.releaseWatch(t)
			node := fmt.Sprintf("/local/domain/%d/control/shutdown", d)
			if err := ts.xs.Write(ctx, node, []byte(cmd)); err != nil {
				t.Fatal(err)
			}
			ts.wantEvent(t, rel, "clean "+cmd)
			di := ts.waitInfo(t, d, "shut down", func(di xenctrl.DomainInfo, gone bool) bool { return di.Shutdown })
			if di.ShutdownReason != want {
				t.Fatalf("%s: shut down with %v, want %v", cmd, di.ShutdownReason, want)
			}
			if v, err := ts.xs.Read(ctx, node); err != nil || len(v) != 0 {
				t.Fatalf("control/shutdown = %q, %v; want cleared by the guest", v, err)
			}
			if err := ts.hv.DestroyDomain(ctx, d); err != nil {
				t.Fatal(err)
			}
			ts.waitInfo(t, d, "released", func(_ xenctrl.DomainInfo, gone bool) bool { return gone })
		})
	}
}

func TestGuestIgnoresShutdownWhenTold(t *testing.T) {
	ts := newToolstack(t, Config{})
	ctx := testCtx(t)
	d := ts.boot(t)
	if err := ts.hv.SetGuestBehaviour(ctx, d, sim.GuestBehaviour{IgnoreShutdownRequests: true}); err != nil {
		t.Fatal(err)
	}
	node := fmt.Sprintf("/local/domain/%d/control/shutdown", d)
	if err := ts.xs.Write(ctx, node, []byte("poweroff")); err != nil {
		t.Fatal(err)
	}
	// Nothing must happen; give a working guest ample time to misbehave.
	time.Sleep(200 * time.Millisecond)
	if di, _ := ts.hv.DomainInfo(ctx, d); di.Shutdown || !di.Running {
		t.Fatalf("ignoring guest shut down: %+v", di)
	}
	if v, _ := ts.xs.Read(ctx, node); string(v) != "poweroff" {
		t.Fatalf("ignoring guest touched control/shutdown: %q", v)
	}
	// Once it listens again, a new request is honoured.
	if err := ts.hv.SetGuestBehaviour(ctx, d, sim.GuestBehaviour{}); err != nil {
		t.Fatal(err)
	}
	if err := ts.xs.Write(ctx, node, []byte("reboot")); err != nil {
		t.Fatal(err)
	}
	di := ts.waitInfo(t, d, "shut down", func(di xenctrl.DomainInfo, _ bool) bool { return di.Shutdown })
	if di.ShutdownReason != xenctrl.ShutdownReboot {
		t.Fatalf("reason %v, want reboot", di.ShutdownReason)
	}
}

func TestPausedGuestAnswersOnceUnpaused(t *testing.T) {
	ts := newToolstack(t, Config{})
	ctx := testCtx(t)
	d := ts.boot(t)
	if err := ts.hv.PauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	node := fmt.Sprintf("/local/domain/%d/control/shutdown", d)
	if err := ts.xs.Write(ctx, node, []byte("poweroff")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if di, _ := ts.hv.DomainInfo(ctx, d); di.Shutdown {
		t.Fatal("a paused guest acted on a shutdown request")
	}
	if err := ts.hv.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	ts.waitInfo(t, d, "shut down", func(di xenctrl.DomainInfo, _ bool) bool {
		return di.Shutdown && di.ShutdownReason == xenctrl.ShutdownPoweroff
	})
}

func TestGuestInitiatedShutdownFiresReleaseDomain(t *testing.T) {
	ts := newToolstack(t, Config{})
	ctx := testCtx(t)
	for _, r := range []xenctrl.ShutdownReason{xenctrl.ShutdownCrash, xenctrl.ShutdownReboot, xenctrl.ShutdownWatchdog} {
		t.Run(r.String(), func(t *testing.T) {
			d := ts.boot(t)
			rel := ts.releaseWatch(t)
			if err := ts.hv.GuestShutdown(ctx, d, r); err != nil {
				t.Fatal(err)
			}
			ts.wantEvent(t, rel, "guest "+r.String())
			di := ts.waitInfo(t, d, "shut down", func(di xenctrl.DomainInfo, _ bool) bool { return di.Shutdown })
			if di.ShutdownReason != r || di.Running {
				t.Fatalf("after guest %v: %+v", r, di)
			}
			// The guest can no longer run: a second call is refused.
			if err := ts.hv.GuestShutdown(ctx, d, xenctrl.ShutdownPoweroff); !errors.Is(err, syscall.EBUSY) {
				t.Fatalf("shut-down guest shut down again: %v", err)
			}
		})
	}
}

func TestDestroyedDomainDyingUntilRingDropped(t *testing.T) {
	ts := newToolstack(t, Config{})
	ctx := testCtx(t)
	d := ts.boot(t)
	rel := ts.releaseWatch(t)
	pi0, _ := ts.hv.PhysInfo(ctx)
	if err := ts.hv.DestroyDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	// Right after destroy the guest's ring still holds the domain: it is
	// dying with its memory already returned; a destroy again is fine.
	di, err := ts.hv.DomainInfo(ctx, d)
	if err == nil {
		if !di.Dying || di.TotPages != 0 {
			t.Fatalf("destroyed domain %+v", di)
		}
		if err := ts.hv.DestroyDomain(ctx, d); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("destroy while dying: %v", err)
		}
	} else if !errors.Is(err, syscall.ESRCH) {
		t.Fatal(err)
	}
	pi1, _ := ts.hv.PhysInfo(ctx)
	if pi1.FreePages != pi0.FreePages+1024 {
		t.Fatalf("free pages %d -> %d after destroying a 1024-page domain", pi0.FreePages, pi1.FreePages)
	}
	ts.wantEvent(t, rel, "destroy")
	ts.waitInfo(t, d, "released", func(_ xenctrl.DomainInfo, gone bool) bool { return gone })
	if ok, err := ts.xs.IsDomainIntroduced(ctx, uint32(d)); err == nil && ok {
		t.Fatalf("xenstored still has released domain %d introduced", d)
	}
}

func TestUnbootedDomainHasNoGuest(t *testing.T) {
	ts := newToolstack(t, Config{})
	ctx := testCtx(t)
	d, err := ts.hv.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.hv.UnpauseDomain(ctx, d); err != nil { // no memory: never boots
		t.Fatal(err)
	}
	if err := ts.hv.GuestShutdown(ctx, d, xenctrl.ShutdownCrash); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("GuestShutdown in a domain with no running guest: %v", err)
	}
	if err := ts.hv.DestroyDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	ts.waitInfo(t, d, "released", func(_ xenctrl.DomainInfo, gone bool) bool { return gone })
}

// TestDestroyAmongManyReleasesOnlyThatDomain: with several guests, the
// embedded xenstored's sweep on a domain exception releases the destroyed
// one and keeps the others introduced.
func TestDestroyAmongManyReleasesOnlyThatDomain(t *testing.T) {
	ts := newToolstack(t, Config{})
	ctx := testCtx(t)
	ds := []xenctrl.Domid{ts.boot(t), ts.boot(t), ts.boot(t)}
	rel := ts.releaseWatch(t)
	if err := ts.hv.DestroyDomain(ctx, ds[1]); err != nil {
		t.Fatal(err)
	}
	ts.wantEvent(t, rel, "destroy")
	ts.waitInfo(t, ds[1], "released", func(_ xenctrl.DomainInfo, gone bool) bool { return gone })
	for i, d := range ds {
		in, err := ts.xs.IsDomainIntroduced(ctx, uint32(d))
		if err != nil {
			t.Fatal(err)
		}
		if want := i != 1; in != want {
			t.Errorf("domain %d introduced = %v, want %v", d, in, want)
		}
	}
}
