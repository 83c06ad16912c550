package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// TestSuspendResume drives xopsctl vm suspend / vm resume against the
// daemon on the simulator: the guest suspends in place (vm get shows it
// paused with its guest suspended, the domain shut down with reason
// suspend), resumes in the same domain and carries on (its console says
// so, its CPU time goes on); a kill -9 of the daemon while the VM is
// suspended leaves it suspended and resumable; the wrong state, a guest
// that does not suspend and a guest without feature-suspend are clear
// errors that leave the VM running.
func TestSuspendResume(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	ctx := testCtx(t, 2*time.Minute)
	xs, err := xenstore.Dial(ctx, simc.XenstoredPath())
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	id := strings.TrimSpace(cli(t, d, "vm", "create", "--name", "sus-e2e", "--memory", "128M", "--type", "pvh"))
	h := handleOf(t, id)

	// Halted: refused, with the state named.
	for _, op := range []string{"suspend", "resume"} {
		r := d.CLI("vm", op, "sus-e2e")
		if r.Code == 0 || !strings.Contains(r.Stderr, "FAILED_PRECONDITION") || !strings.Contains(r.Stderr, "Halted") {
			t.Errorf("vm %s of a halted VM: exit %d, stderr %q", op, r.Code, r.Stderr)
		}
	}
	cli(t, d, "vm", "start", "sus-e2e")
	vm := cliVM(t, d, id)
	domid := xenctrl.Domid(vm.GetDomid())
	feature := fmt.Sprintf("/local/domain/%d/control/feature-suspend", domid)
	eventually(t, 30*time.Second, func() string {
		if v, err := xs.Read(ctx, feature); err != nil || string(v) != "1" {
			return fmt.Sprintf("guest has not advertised feature-suspend: %q, %v", v, err)
		}
		return ""
	})
	if r := d.CLI("vm", "resume", "sus-e2e"); r.Code == 0 || !strings.Contains(r.Stderr, "FAILED_PRECONDITION") || !strings.Contains(r.Stderr, "Running") {
		t.Errorf("vm resume of a running VM: exit %d, stderr %q", r.Code, r.Stderr)
	}
	if r := d.CLI("vm", "suspend", "sus-e2e", "--timeout", "-1s"); r.Code == 0 {
		t.Errorf("vm suspend --timeout -1s: exit 0")
	}
	before := guestDomains(t, simc)[h]

	out := cli(t, d, "vm", "suspend", "sus-e2e")
	if !strings.Contains(out, "succeeded") {
		t.Errorf("vm suspend printed %q", out)
	}
	suspended := func(when string) {
		t.Helper()
		vm := cliVM(t, d, id)
		if vm.GetPowerState() != apiv1.PowerState_POWER_STATE_PAUSED || !vm.GetDomainSuspended() || xenctrl.Domid(vm.GetDomid()) != domid {
			t.Fatalf("%s: %s, want paused with its guest suspended in domain %d", when, describeVM(vm), domid)
		}
		if get := cli(t, d, "vm", "get", "sus-e2e"); !strings.Contains(get, "guest suspended") {
			t.Errorf("%s: vm get does not say the guest is suspended:\n%s", when, get)
		}
		di, ok := guestDomains(t, simc)[h]
		if !ok || !di.Shutdown || di.ShutdownReason != xenctrl.ShutdownSuspend || di.Dying || di.TotPages != before.TotPages {
			t.Fatalf("%s: domain %+v (found %v), want shut down with reason suspend and its %d pages", when, di, ok, before.TotPages)
		}
	}
	suspended("after vm suspend")
	if r := d.CLI("vm", "unpause", "sus-e2e"); r.Code == 0 || !strings.Contains(r.Stderr, "resume") {
		t.Errorf("vm unpause of a suspended VM: exit %d, stderr %q; want a refusal pointing to resume", r.Code, r.Stderr)
	}

	// kill -9 while suspended: still suspended after the restart.
	d.Kill()
	d.Start()
	suspended("after kill -9 and restart")

	cpuBefore := guestDomains(t, simc)[h].CPUTime
	out = cli(t, d, "vm", "resume", "sus-e2e")
	if !strings.Contains(out, "succeeded") {
		t.Errorf("vm resume printed %q", out)
	}
	vm = cliVM(t, d, id)
	if vm.GetPowerState() != apiv1.PowerState_POWER_STATE_RUNNING || vm.GetDomainSuspended() || xenctrl.Domid(vm.GetDomid()) != domid {
		t.Fatalf("after vm resume: %s, want running in domain %d", describeVM(vm), domid)
	}
	// The guest carries on: it says so, and its CPU time goes on.
	logPath := filepath.Join(d.SimDir, simhost.ConsoleDir, "guest-sus-e2e.log")
	eventually(t, 30*time.Second, func() string {
		b, _ := os.ReadFile(logPath)
		if !strings.Contains(string(b), simhost.ResumeMarker) {
			return "console log has no resume line: " + string(b)
		}
		if di := guestDomains(t, simc)[h]; di.Shutdown || di.CPUTime <= cpuBefore {
			return fmt.Sprintf("domain after resume: %+v (CPU time before %d)", di, cpuBefore)
		}
		return ""
	})

	// A guest that ignores the request: DEADLINE_EXCEEDED, still running.
	if err := simc.SetGuestBehaviour(ctx, domid, sim.GuestBehaviour{IgnoreShutdownRequests: true}); err != nil {
		t.Fatal(err)
	}
	r := d.CLI("vm", "suspend", "sus-e2e", "--timeout", "1s")
	if r.Code == 0 || !strings.Contains(r.Stderr+r.Stdout, "DEADLINE_EXCEEDED") {
		t.Errorf("vm suspend of a guest that ignores it: exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	running := func(when string) {
		t.Helper()
		vm := cliVM(t, d, id)
		di := guestDomains(t, simc)[h]
		if vm.GetPowerState() != apiv1.PowerState_POWER_STATE_RUNNING || vm.GetDomainSuspended() || di.Shutdown || di.Paused {
			t.Fatalf("%s: %s, domain %+v; want it running as before", when, describeVM(vm), di)
		}
	}
	running("after a suspend the guest ignored")
	if err := simc.SetGuestBehaviour(ctx, domid, sim.GuestBehaviour{}); err != nil {
		t.Fatal(err)
	}
	// A guest without feature-suspend: FAILED_PRECONDITION, still running.
	if err := xs.Write(ctx, feature, nil); err != nil {
		t.Fatal(err)
	}
	r = d.CLI("vm", "suspend", "sus-e2e")
	if r.Code == 0 || !strings.Contains(r.Stderr+r.Stdout, "FAILED_PRECONDITION") || !strings.Contains(r.Stderr+r.Stdout, "feature-suspend") {
		t.Errorf("vm suspend of a guest without feature-suspend: exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
	}
	running("after a suspend of a guest without feature-suspend")
	cli(t, d, "vm", "destroy", "sus-e2e")
}
