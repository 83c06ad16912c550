package e2e

import (
	"strings"
	"testing"
	"time"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// TestCancel cancels, through xopsctl, a clean shutdown that a guest
// ignores: the task ends CANCELLED, task wait exits 1 saying so, and the VM
// keeps running in the same domain.
func TestCancel(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	cli(t, d, "vm", "create", "--name", "deaf", "--memory", "64M")
	cli(t, d, "vm", "start", "deaf")
	before := cliVM(t, d, "deaf")
	ctx := testCtx(t, time.Minute)
	if err := simc.SetGuestBehaviour(ctx, xenctrl.Domid(before.GetDomid()), sim.GuestBehaviour{IgnoreShutdownRequests: true}); err != nil {
		t.Fatal(err)
	}
	taskID := strings.TrimSpace(cli(t, d, "vm", "shutdown", "deaf", "--timeout", "10m", "--no-wait"))
	c := newAPI(d.Conn())
	eventually(t, 30*time.Second, func() string {
		if s := getTask(t, c, taskID).GetState(); s != apiv1.TaskState_TASK_STATE_RUNNING {
			return "shutdown task " + s.String() + ", waiting for RUNNING"
		}
		return ""
	})
	cli(t, d, "task", "cancel", taskID)
	r := d.CLI("task", "wait", taskID)
	if r.Code != 1 || !strings.Contains(r.Stderr, "cancelled") {
		t.Errorf("task wait of a cancelled task: exit %d, stderr %q; want 1 and 'cancelled'", r.Code, r.Stderr)
	}
	if s := getTask(t, c, taskID).GetState(); s != apiv1.TaskState_TASK_STATE_CANCELLED {
		t.Errorf("task state %v, want CANCELLED", s)
	}
	after := cliVM(t, d, "deaf")
	if after.GetPowerState() != apiv1.PowerState_POWER_STATE_RUNNING || after.GetDomid() != before.GetDomid() {
		t.Errorf("after the cancelled shutdown: %s, want running in domain %d", describeVM(after), before.GetDomid())
	}
	// The VM's queue is free again: a hard stop goes through.
	cli(t, d, "vm", "destroy", "deaf")
}
