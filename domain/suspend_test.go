package domain

import (
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// waitFeatureSuspend waits until the guest of d has advertised
// control/feature-suspend.
func (e *env) waitFeatureSuspend(d xenctrl.Domid) {
	e.t.Helper()
	e.eventually("guest advertises feature-suspend", func() bool {
		v, err := e.xs.Read(e.ctx, domPath(d)+"/control/feature-suspend")
		return err == nil && string(v) == "1"
	})
}

// TestSuspendThenResume: a running VM's guest is asked to suspend, its
// domain is kept shut down with reason suspend (VM Paused, DomainSuspended,
// memory intact); Resume makes its suspend call return 1 (cancelled) and
// the VM Running in the same domain, which still answers and whose later
// shutdowns are noticed.
func TestSuspendThenResume(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("sus")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	e.waitFeatureSuspend(d)
	before, err := e.hv.DomainInfo(e.ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	task := e.run(e.m.Suspend(e.ctx, vm.ID, SuspendOptions{}))
	if task.Op != "suspend" {
		t.Errorf("task op %q", task.Op)
	}
	got := e.vm(vm.ID)
	if got.Power != Paused || !got.DomainSuspended || got.Domid != uint32(d) || got.Problem != "" {
		t.Fatalf("after suspend: %+v", got)
	}
	info, err := e.hv.DomainInfo(e.ctx, d)
	if err != nil || !info.Shutdown || info.ShutdownReason != xenctrl.ShutdownSuspend || info.TotPages != before.TotPages {
		t.Fatalf("suspended domain: %+v, %v (before: %d pages)", info, err, before.TotPages)
	}
	e.run(e.m.Resume(e.ctx, vm.ID))
	got = e.vm(vm.ID)
	if got.Power != Running || got.DomainSuspended || got.Domid != uint32(d) || got.Problem != "" {
		t.Fatalf("after resume: %+v", got)
	}
	info, err = e.hv.DomainInfo(e.ctx, d)
	if err != nil || info.Shutdown || info.Paused || !info.Running || info.TotPages != before.TotPages {
		t.Fatalf("resumed domain: %+v, %v", info, err)
	}
	e.eventually("guest sees its suspend return", func() bool {
		e.resumedMu.Lock()
		defer e.resumedMu.Unlock()
		return len(e.resumed[d]) == 1
	})
	if rc := e.resumed[d][0]; rc != 1 {
		t.Errorf("the guest's suspend call returned %d, want 1 (cancelled)", rc)
	}
	// Suspend and resume again: the same domain, a second time.
	e.run(e.m.Suspend(e.ctx, vm.ID, SuspendOptions{Timeout: 10 * time.Second}))
	e.run(e.m.Resume(e.ctx, vm.ID))
	// The guest still answers, and its shutdown is applied as usual.
	e.run(e.m.Shutdown(e.ctx, vm.ID, ShutdownOptions{Timeout: 10 * time.Second}))
	if got := e.vm(vm.ID); got.Power != Halted || got.Domid != 0 {
		t.Fatalf("after shutdown: %+v", got)
	}
	// A guest-initiated shutdown after a resume is noticed.
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d = xenctrl.Domid(e.vm(vm.ID).Domid)
	e.waitFeatureSuspend(d)
	e.run(e.m.Suspend(e.ctx, vm.ID, SuspendOptions{}))
	e.run(e.m.Resume(e.ctx, vm.ID))
	if err := e.hv.GuestShutdown(e.ctx, d, xenctrl.ShutdownPoweroff); err != nil {
		t.Fatal(err)
	}
	e.eventually("VM notices the poweroff after a resume", func() bool { return e.vm(vm.ID).Power == Halted })
}

// TestSuspendResumeRefusals: the wrong power state, a guest without
// feature-suspend and a guest that does not comply each fail clearly and
// leave the VM as it was.
func TestSuspendResumeRefusals(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("nosus")
	// Halted: neither applies (refused when submitted).
	if _, err := e.m.Suspend(e.ctx, vm.ID, SuspendOptions{}); CodeOf(err) != CodeFailedPrecondition {
		t.Errorf("suspend of a halted VM: %v", err)
	}
	if _, err := e.m.Resume(e.ctx, vm.ID); CodeOf(err) != CodeFailedPrecondition {
		t.Errorf("resume of a halted VM: %v", err)
	}
	if _, err := e.m.Suspend(e.ctx, vm.ID, SuspendOptions{Timeout: -time.Second}); CodeOf(err) != CodeInvalidArgument || err.(*Error).Field != "timeout" {
		t.Errorf("negative timeout: %v", err)
	}
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	e.waitFeatureSuspend(d)
	if _, err := e.m.Resume(e.ctx, vm.ID); CodeOf(err) != CodeFailedPrecondition {
		t.Errorf("resume of a running VM: %v", err)
	}
	// Paused by the toolstack, not suspended: resume is refused.
	e.run(e.m.Pause(e.ctx, vm.ID))
	if _, err := e.m.Suspend(e.ctx, vm.ID, SuspendOptions{}); CodeOf(err) != CodeFailedPrecondition {
		t.Errorf("suspend of a paused VM: %v", err)
	}
	if got := e.wait(mustSubmit(t)(e.m.Resume(e.ctx, vm.ID))); got.State != TaskFailed || got.Err.Code != CodeFailedPrecondition {
		t.Errorf("resume of a paused VM: %s %v", got.State, got.Err)
	}
	e.run(e.m.Unpause(e.ctx, vm.ID))

	stillRunning := func(when string) {
		t.Helper()
		got := e.vm(vm.ID)
		info, err := e.hv.DomainInfo(e.ctx, d)
		if got.Power != Running || got.DomainSuspended || err != nil || info.Shutdown || info.Paused {
			t.Fatalf("%s: VM %+v, domain %+v %v; want it running as before", when, got, info, err)
		}
		if v, err := e.xs.Read(e.ctx, domPath(d)+"/control/shutdown"); err != nil || len(v) != 0 {
			t.Fatalf("%s: control/shutdown = %q, %v; want no request left", when, v, err)
		}
	}
	// A guest that ignores the request: DeadlineExceeded, request withdrawn.
	if err := e.hv.SetGuestBehaviour(e.ctx, d, sim.GuestBehaviour{IgnoreShutdownRequests: true}); err != nil {
		t.Fatal(err)
	}
	if got := e.wait(mustSubmit(t)(e.m.Suspend(e.ctx, vm.ID, SuspendOptions{Timeout: 300 * time.Millisecond}))); got.State != TaskFailed || got.Err.Code != CodeDeadlineExceeded {
		t.Fatalf("suspend of a guest that ignores it: %s %v", got.State, got.Err)
	}
	stillRunning("after a suspend the guest ignored")
	if err := e.hv.SetGuestBehaviour(e.ctx, d, sim.GuestBehaviour{}); err != nil {
		t.Fatal(err)
	}
	// A guest that does not advertise feature-suspend: FailedPrecondition,
	// nothing asked of it.
	if err := e.xs.Write(e.ctx, domPath(d)+"/control/feature-suspend", nil); err != nil {
		t.Fatal(err)
	}
	if got := e.wait(mustSubmit(t)(e.m.Suspend(e.ctx, vm.ID, SuspendOptions{}))); got.State != TaskFailed || got.Err.Code != CodeFailedPrecondition {
		t.Fatalf("suspend of a guest without feature-suspend: %s %v", got.State, got.Err)
	}
	stillRunning("after a suspend of a guest without feature-suspend")
}

// TestSuspendedVMSurvivesRestart: the daemon restarting while a VM is
// suspended finds it suspended, and it can then be resumed.
func TestSuspendedVMSurvivesRestart(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("sus-restart")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	e.waitFeatureSuspend(d)
	e.run(e.m.Suspend(e.ctx, vm.ID, SuspendOptions{}))
	e.close()
	e.open(0)
	if got := e.vm(vm.ID); got.Power != Paused || !got.DomainSuspended || got.Domid != uint32(d) {
		t.Fatalf("after a restart: %+v", got)
	}
	e.run(e.m.Resume(e.ctx, vm.ID))
	if got := e.vm(vm.ID); got.Power != Running || got.DomainSuspended || got.Domid != uint32(d) {
		t.Fatalf("resumed after a restart: %+v", got)
	}
	if info, err := e.hv.DomainInfo(e.ctx, d); err != nil || info.Shutdown || !info.Running {
		t.Fatalf("domain after resume: %+v, %v", info, err)
	}
}

// TestResumeRearmsReleaseDomain: xenstored fires @releaseDomain once per
// shutdown; Resume sends it RESUME so that the resumed domain's next
// shutdown fires it again, as libxl does.
func TestResumeRearmsReleaseDomain(t *testing.T) {
	e := newEnv(t, envOpts{})
	s := spec("rearm")
	s.OnPoweroff = ActionPreserve // no destroy (which fires @releaseDomain too)
	vm, err := e.m.CreateVM(e.ctx, s, "")
	if err != nil {
		t.Fatal(err)
	}
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	e.waitFeatureSuspend(d)
	w, err := e.xs.Watch(e.ctx, "@releaseDomain", "rearm")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	release := func(what string) {
		t.Helper()
		select {
		case <-w.Events():
		case <-time.After(10 * time.Second):
			t.Fatalf("no @releaseDomain for %s", what)
		}
	}
	release("the initial event")
	e.run(e.m.Suspend(e.ctx, vm.ID, SuspendOptions{}))
	release("the suspend")
	e.run(e.m.Resume(e.ctx, vm.ID))
	e.run(e.m.Suspend(e.ctx, vm.ID, SuspendOptions{}))
	release("a second suspend after a resume")
	e.run(e.m.Resume(e.ctx, vm.ID))
	if err := e.hv.GuestShutdown(e.ctx, d, xenctrl.ShutdownPoweroff); err != nil {
		t.Fatal(err)
	}
	release("a shutdown after the resume")
}
