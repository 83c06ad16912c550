package simhost

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// TestGuestSuspendThenCooperativeResume: asked through control/shutdown,
// the guest suspends (shut down, reason suspend, its CPU time stopped);
// resumed cooperatively over the sim host's socket it carries on in the
// same domain: it says so on its console, its CPU time goes on, and it
// still answers control/shutdown.
func TestGuestSuspendThenCooperativeResume(t *testing.T) {
	ts := newToolstack(t, Config{})
	ctx := testCtx(t)
	dir := ts.hv.Dir()
	d := ts.bootNamed(t, "sus-1")
	ts.waitFeature(t, d)
	node := fmt.Sprintf("/local/domain/%d/control/shutdown", d)
	if err := ts.xs.Write(ctx, node, []byte("suspend")); err != nil {
		t.Fatal(err)
	}
	di := ts.waitInfo(t, d, "suspended", func(di xenctrl.DomainInfo, gone bool) bool { return gone || di.Shutdown })
	if !di.Shutdown || di.ShutdownReason != xenctrl.ShutdownSuspend {
		t.Fatalf("after control/shutdown=suspend: %+v", di)
	}
	waitLog(t, dir, "sus-1", "PM: suspend entry", 1)
	time.Sleep(20 * time.Millisecond)
	if again := ts.waitInfo(t, d, "read", func(xenctrl.DomainInfo, bool) bool { return true }); again.CPUTime != di.CPUTime {
		t.Errorf("suspended domain's CPU time moved: %d then %d", di.CPUTime, again.CPUTime)
	}
	if err := xenctrl.ResumeCooperative(ctx, ts.hv, d); err != nil {
		t.Fatal(err)
	}
	log := waitLog(t, dir, "sus-1", ResumeMarker, 1)
	if strings.Index(log, ResumeMarker) < strings.Index(log, "PM: suspend entry") {
		t.Errorf("resume line before the suspend line: %q", log)
	}
	after := ts.waitInfo(t, d, "running with more CPU time", func(x xenctrl.DomainInfo, gone bool) bool {
		return gone || (!x.Shutdown && x.CPUTime > di.CPUTime)
	})
	if after.Shutdown || after.TotPages != di.TotPages {
		t.Errorf("after resume: %+v, before: %+v", after, di)
	}
	// Still the same guest, still listening.
	if err := ts.xs.Write(ctx, node, []byte("poweroff")); err != nil {
		t.Fatal(err)
	}
	di = ts.waitInfo(t, d, "powered off", func(x xenctrl.DomainInfo, gone bool) bool { return gone || x.Shutdown })
	if di.ShutdownReason != xenctrl.ShutdownPoweroff {
		t.Errorf("after poweroff: %+v", di)
	}
}
