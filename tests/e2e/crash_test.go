package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// TestCrash kills the daemon with SIGKILL while a VM runs and while a
// shutdown is in flight (the guest ignores the request, the timeout is
// long), restarts it on the same state directory and checks that both VMs
// and their domains are re-adopted (same domid, exactly one domain each) and
// that the interrupted task has a final status.
func TestCrash(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	c := newAPI(d.Conn())
	ctx := testCtx(t, 3*time.Minute)

	ids := map[string]string{}
	for _, name := range []string{"steady", "stubborn"} {
		r, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec(name, 128<<20)})
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = r.GetVm().GetId()
		s, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: name, Wait: true})
		mustSucceed(t, "start "+name, s.GetTask(), err)
	}
	before := map[string]*apiv1.VM{}
	for name := range ids {
		before[name] = cliVM(t, d, name)
		if before[name].GetPowerState() != apiv1.PowerState_POWER_STATE_RUNNING {
			t.Fatalf("%s not running: %s", name, describeVM(before[name]))
		}
	}

	// 1. kill -9 while the VMs run.
	d.Kill()
	d.Start()
	checkAdopted(t, d, simc, before)

	// 2. kill -9 while a shutdown is in flight.
	stubborn := before["stubborn"]
	if err := simc.SetGuestBehaviour(ctx, xenctrl.Domid(stubborn.GetDomid()), sim.GuestBehaviour{IgnoreShutdownRequests: true}); err != nil {
		t.Fatal(err)
	}
	out := cli(t, d, "vm", "shutdown", "stubborn", "--timeout", "10m", "--no-wait")
	taskID := strings.TrimSpace(out)
	eventually(t, 30*time.Second, func() string {
		tk := getTask(t, c, taskID)
		if tk.GetState() != apiv1.TaskState_TASK_STATE_RUNNING {
			return "shutdown task is " + tk.GetState().String() + ", waiting for RUNNING"
		}
		return ""
	})
	d.Kill()
	d.Start()
	c = newAPI(d.Conn())
	tk := getTask(t, c, taskID)
	if tk.GetState() != apiv1.TaskState_TASK_STATE_INTERRUPTED {
		t.Errorf("shutdown task after the crash: %v, want INTERRUPTED", tk.GetState())
	}
	if tk.GetError().GetMessage() == "" {
		t.Errorf("interrupted task carries no error message: %v", tk)
	}
	// The guest ignored the request, so the VM still runs in its domain.
	checkAdopted(t, d, simc, before)

	// The re-adopted VMs are fully operable: a hard shutdown works.
	ds, err := c.vm.DestroyVM(ctx, &apiv1.DestroyVMRequest{Id: "stubborn", Wait: true})
	mustSucceed(t, "destroy stubborn after restart", ds.GetTask(), err)
	h := handleOf(t, ids["stubborn"])
	eventually(t, 10*time.Second, func() string {
		if _, ok := guestDomains(t, simc)[h]; ok {
			return "stubborn's domain still on the host after destroy"
		}
		return ""
	})
	// And an orderly stop (SIGTERM) loses nothing either.
	d.Stop()
	d.Start()
	if vm := cliVM(t, d, "stubborn"); vm.GetPowerState() != apiv1.PowerState_POWER_STATE_HALTED {
		t.Errorf("stubborn after SIGTERM and restart: %s, want halted", describeVM(vm))
	}
	checkAdopted(t, d, simc, map[string]*apiv1.VM{"steady": before["steady"]})
}

// TestCrashDuringStarts kills the daemon while 20 starts are queued or in
// flight. After the restart every VM is either running in exactly one domain
// or halted with none, no domain is left without a VM, and every task has a
// final status.
func TestCrashDuringStarts(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	c := newAPI(d.Conn())
	ctx := testCtx(t, 3*time.Minute)

	const n = 20
	var taskIDs []string
	for i := range n {
		name := fmt.Sprintf("burst%02d", i)
		if _, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec(name, 64<<20)}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		r, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: fmt.Sprintf("burst%02d", i)})
		if err != nil {
			t.Fatal(err)
		}
		taskIDs = append(taskIDs, r.GetTask().GetId())
	}
	d.Kill()
	d.Start()
	c = newAPI(d.Conn())

	for _, id := range taskIDs {
		tk := getTask(t, c, id)
		switch tk.GetState() {
		case apiv1.TaskState_TASK_STATE_SUCCEEDED, apiv1.TaskState_TASK_STATE_INTERRUPTED,
			apiv1.TaskState_TASK_STATE_FAILED, apiv1.TaskState_TASK_STATE_CANCELLED:
		default:
			t.Errorf("task %s after restart: %v, want a final state", id, tk.GetState())
		}
	}
	list, err := c.vm.ListVMs(ctx, &apiv1.ListVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	doms := guestDomains(t, simc)
	running := 0
	for _, vm := range list.GetVms() {
		di, has := doms[handleOf(t, vm.GetId())]
		switch vm.GetPowerState() {
		case apiv1.PowerState_POWER_STATE_RUNNING, apiv1.PowerState_POWER_STATE_PAUSED:
			running++
			if !has || uint32(di.Domid) != vm.GetDomid() {
				t.Errorf("%s: host has domain %v (present %t)", describeVM(vm), di.Domid, has)
			}
		case apiv1.PowerState_POWER_STATE_HALTED:
			// A half-built domain is destroyed on restart; it may linger
			// as dying until released.
			if has && !di.Dying {
				t.Errorf("%s is halted but the host has live domain %d", describeVM(vm), di.Domid)
			}
		default:
			t.Errorf("%s: unexpected power state", describeVM(vm))
		}
	}
	eventually(t, 10*time.Second, func() string {
		if got := len(guestDomains(t, simc)); got != running {
			return fmt.Sprintf("%d domains on the host for %d running VMs", got, running)
		}
		return ""
	})
	t.Logf("after the crash: %d of %d VMs running", running, n)

	// Everything still works: start whatever is halted.
	for _, vm := range list.GetVms() {
		if vm.GetPowerState() == apiv1.PowerState_POWER_STATE_HALTED {
			r, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: vm.GetId(), Wait: true})
			mustSucceed(t, "start "+vm.GetSpec().GetName()+" after restart", r.GetTask(), err)
		}
	}
	if got := len(guestDomains(t, simc)); got != n {
		t.Errorf("%d domains on the host, want %d", got, n)
	}
}

// checkAdopted checks that each VM runs again after a restart in the very
// domain it had before, and that the host has exactly one domain per VM.
func checkAdopted(t *testing.T, d *harness.Daemon, simc xenctrl.Hypervisor, before map[string]*apiv1.VM) {
	t.Helper()
	doms := guestDomains(t, simc)
	for name, b := range before {
		vm := cliVM(t, d, name)
		if vm.GetPowerState() != b.GetPowerState() || vm.GetDomid() != b.GetDomid() {
			t.Errorf("%s after restart: %s; before: %s", name, describeVM(vm), describeVM(b))
		}
		if vm.GetProblem() != "" {
			t.Errorf("%s after restart has a problem: %s", name, vm.GetProblem())
		}
		di, ok := doms[handleOf(t, b.GetId())]
		if !ok || uint32(di.Domid) != b.GetDomid() {
			t.Errorf("%s: host domain with its handle: %v (present %t), want domid %d", name, di.Domid, ok, b.GetDomid())
		}
	}
	live := 0
	for _, di := range doms {
		if !di.Dying {
			live++
		}
	}
	if live != len(before) {
		t.Errorf("%d live guest domains on the host, want %d", live, len(before))
	}
}

func getTask(t *testing.T, c *api, id string) *apiv1.Task {
	t.Helper()
	r, err := c.task.GetTask(testCtx(t, 30*time.Second), &apiv1.GetTaskRequest{Id: id})
	if err != nil {
		t.Fatalf("get task %s: %v", id, err)
	}
	return r.GetTask()
}
