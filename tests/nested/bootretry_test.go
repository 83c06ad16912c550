package nested

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The one retry policy of every guest boot in this package.
//
// Under QEMU's emulated SVM a PVH guest now and then triple-faults early in
// its boot, whoever built it (xl's as ours; Xen then dumps the vCPU with
// Xen's own code segment and RIP in it). That is the harness, not the
// builder, and is worth one retry, two while the dumps show Xen's code
// segment; anything else (a guest that hangs, a guest gone without a
// triple fault, a triple fault past those retries) is not. When a boot of ours triple-faults, the same kind of guest
// through `xl create` in the same nested boot is the control: it is booted
// and its outcome logged before ours is retried. Every retry is logged as a
// line starting "NOTE: BOOT-RETRY" (the harness summary counts them).

// guestDied is what a boot attempt returns when its guest died (its domain
// went, or was replaced by a restart) before its marker; it wraps
// errGuestGone.
type guestDied struct{ domid, why string }

func (d *guestDied) Error() string        { return d.why }
func (d *guestDied) Is(target error) bool { return target == errGuestGone }

// died is the error a boot attempt returns for a guest that died.
func died(domid, why string) error { return &guestDied{domid: domid, why: why} }

// guestBoot names a boot for bootRetrying.
type guestBoot struct {
	what  string // for the log, e.g. "the daemon's PVH guest"
	typ   string // pvh or pv: the xl control's type
	vcpus int    // the xl control's vCPUs
	ours  bool   // built by the project: a triple fault gets an xl control
}

// bootRetrying runs boot (attempt 1, 2) until it returns nil, and returns
// the attempt that succeeded. boot must leave nothing of a failed attempt
// behind (its domain destroyed) and return an error made by died for a
// guest that died before its marker; any other error fails the test at
// once. A death is retried only if Xen's console shows a triple fault of
// that domain: once, or twice for a fault that cannot be the builder's
// (Xen's own code segment in the dump, xl's guest, or ours while xl's
// control faulted too); one more fails the test (for ours: a builder bug).
func bootRetrying(t testing.TB, g guestBoot, boot func(attempt int) error) int {
	t.Helper()
	controlFaulted := false // the xl control of one of our faults triple-faulted too
	for attempt := 1; ; attempt++ {
		clearXenConsole()
		err := boot(attempt)
		if err == nil {
			if attempt > 1 {
				t.Logf("NOTE: BOOT-RETRY %s: reached its marker at attempt %d", g.what, attempt)
			}
			return attempt
		}
		var d *guestDied
		if !errors.As(err, &d) {
			t.Fatalf("%s, attempt %d: %v", g.what, attempt, err)
		}
		tf, xenRIP, dm := tripleFault(d.domid)
		if !tf {
			t.Fatalf("%s died before its marker without a triple fault (not the harness's known fault, no retry): %v\nXen's console:\n%s",
				g.what, err, tail([]byte(dm), 2000))
		}
		// Faults that cannot be the builder's doing are allowed a second
		// retry: a dump with Xen's own code segment (the emulated CPU ran
		// Xen's code while in guest mode: QEMU's SVM emulation), any fault
		// of xl's guest, and one of ours while xl's control guest faulted
		// too. Any other triple fault gets one retry.
		limit := 2
		if xenRIP || !g.ours || controlFaulted {
			limit = 3
		}
		if attempt >= limit {
			blame := "the harness (xl's boot)"
			if g.ours {
				blame = "a builder bug: it reproduced on retry"
			}
			t.Fatalf("%s triple-faulted again at its retry (domain %s): %s\nXen's console:\n%s", g.what, d.domid, blame, tail([]byte(dm), 2000))
		}
		t.Logf("NOTE: BOOT-RETRY %s: domain %s triple-faulted before its marker (Xen's RIP in the dump: %v): %v\nXen's console:\n%s",
			g.what, d.domid, xenRIP, err, tail([]byte(dm), 1500))
		if g.ours {
			c := controlBoot(t, g.typ, g.vcpus)
			t.Logf("NOTE: BOOT-CONTROL %s: xl's %s guest (%d vCPUs) in the same boot: %s after %v",
				g.what, strings.ToUpper(g.typ), g.vcpus, c.outcome, c.took.Round(time.Millisecond))
			if c.outcome != "booted" {
				t.Logf("the control's evidence:\n%s", c.evidence)
			}
			controlFaulted = controlFaulted || c.outcome == "triple"
		}
	}
}

// What bootRetrying asks of dom0 (replaced by its own test): Xen's console
// ring, emptying it (`xl dmesg -c`: a triple fault found there then belongs
// to the boot that followed, even if the daemon reuses a domid; the serial
// console keeps everything), and the xl control boot.
var (
	readXenConsole = func() []byte {
		out, _ := run(30*time.Second, "xl", "dmesg")
		return out
	}
	clearXenConsole = func() { _, _ = run(30*time.Second, "xl", "dmesg", "-c") }
	controlBoot     = func(t testing.TB, typ string, vcpus int) loopBoot {
		return xlLoopBoot(t, fmt.Sprintf("nxcontrol%s%d", typ, time.Now().UnixNano()%1e9), typ, vcpus)
	}
)

// startToMarker starts the daemon's VM name (created by the caller, with
// the test's kernel) and waits until its guest prints GUEST-BOOTED, under
// bootRetrying: a guest that dies first (its VM on another domid or no
// longer running: a triple fault crashed or restarted it) is destroyed and
// started again as the policy allows; a guest that never gets there fails
// the test. It returns the domid of the boot that reached its marker and
// the console log's size before that boot.
func startToMarker(t *testing.T, e *env, name, typ string, vcpus int) (domid string, from int64) {
	t.Helper()
	logPath := filepath.Join(consoleDir, "guest-"+name+".log")
	g := guestBoot{what: "the daemon's " + strings.ToUpper(typ) + " guest " + name, typ: typ, vcpus: vcpus, ours: true}
	bootRetrying(t, g, func(attempt int) error {
		from = fileSize(logPath)
		if _, err := e.ctl("vm", "start", name); err != nil {
			t.Fatalf("vm start %s: %v\n%s", name, err, tail([]byte(e.logText()), 3000))
		}
		domid = field(e.ctlJSON("vm", "get", name), "domid", "domid")
		var gone bool
		_, why := waitMarker(logPath, from, time.Now().Add(markerWait), func() string {
			out, err := e.ctl("vm", "get", name, "-o", "json")
			if err != nil {
				return "" // a failed probe says nothing about the guest
			}
			vm := map[string]any{}
			if err := json.Unmarshal(out, &vm); err != nil {
				return ""
			}
			if d, s := field(vm, "domid", "domid"), field(vm, "powerState", "power_state"); d != domid || !strings.Contains(s, "RUNNING") {
				gone = true
				return fmt.Sprintf("the VM is now domid %q %s (the guest rebooted or died: triple fault?)", d, s)
			}
			return ""
		})
		if why == "" {
			return nil
		}
		t.Logf("%s, attempt %d: %s; console:\n%s", g.what, attempt, why, tail(readFrom(logPath, from), 2000))
		if _, err := e.ctl("vm", "destroy", name); err != nil {
			t.Logf("destroy after the failed attempt: %v", err)
		}
		if gone {
			return died(domid, why)
		}
		return errors.New(why)
	})
	return domid, from
}
