package domain

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/store"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

func TestRestartReadoptsDomains(t *testing.T) {
	e := newEnv(t, envOpts{})
	a, b, c := e.create("a"), e.create("b"), e.create("c")
	e.run(e.m.Start(e.ctx, a.ID, false))
	e.run(e.m.Start(e.ctx, b.ID, false))
	e.run(e.m.Pause(e.ctx, b.ID))
	e.run(e.m.Start(e.ctx, c.ID, false))
	before := map[string]VM{}
	for _, id := range []string{a.ID, b.ID, c.ID} {
		before[id] = e.vm(id)
	}
	e.close()
	// While the daemon is down, c's domain disappears.
	dc := xenctrl.Domid(before[c.ID].Domid)
	if err := e.hv.DestroyDomain(e.ctx, dc); err != nil {
		t.Fatal(err)
	}
	domainsBefore := len(e.guestDomains())
	e.open(0)
	if got := e.vm(a.ID); got.Power != Running || got.Domid != before[a.ID].Domid {
		t.Fatalf("a after restart: %v domid %d (was %d)", got.Power, got.Domid, before[a.ID].Domid)
	}
	if got := e.vm(b.ID); got.Power != Paused || got.Domid != before[b.ID].Domid {
		t.Fatalf("b after restart: %v domid %d", got.Power, got.Domid)
	}
	got := e.vm(c.ID)
	if got.Power != Halted || got.Domid != 0 || !strings.Contains(got.Problem, "vanished") {
		t.Fatalf("c after restart: %+v", got)
	}
	if left := e.xsTree(domPath(dc), vmPath(c.ID)); len(left) != 0 {
		t.Fatalf("xenstore nodes of the vanished domain left: %v", left)
	}
	if n := len(e.guestDomains()); n != domainsBefore {
		t.Fatalf("%d domains after restart, %d before: duplicated or lost", n, domainsBefore)
	}
	// The adopted VMs are fully manageable.
	e.run(e.m.Unpause(e.ctx, b.ID))
	e.run(e.m.Shutdown(e.ctx, a.ID, ShutdownOptions{Timeout: 30 * time.Second}))
	e.run(e.m.Start(e.ctx, c.ID, false))
	if n := len(e.guestDomains()); n != 2 {
		t.Fatalf("%d domains, want 2", n)
	}
}

func TestRestartCleansHalfBuiltDomain(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("half")
	// Simulate a crash in the middle of Start: the building marker and the
	// claim were synced, the domain created and part of its xenstore tree
	// written.
	ent, _ := e.m.resolve(vm.ID)
	const d = xenctrl.Domid(7)
	if err := e.m.updateVM(e.ctx, ent, func(r *vmRecord) error {
		r.Building = true
		r.setClaim(d, rolePrimary, claimCreating)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.hv.CreateDomain(e.ctx, domainConfig(vm.Spec, d)); err != nil {
		t.Fatal(err)
	}
	e.xs.Write(e.ctx, domPath(d)+"/name", []byte("half"))
	e.xs.Write(e.ctx, vmPath(vm.ID)+"/name", []byte("half"))
	e.xs.Write(e.ctx, PrivatePath(vm.ID)+"/domid", []byte("1"))
	// A task the dead daemon had running.
	tk := Task{ID: "0f0e0d0c-0000-4000-8000-000000000001", VMID: vm.ID, Op: "start", State: TaskRunning, CreatedAt: time.Now()}
	b, _ := json.Marshal(tk)
	if err := e.st.Commit(e.ctx, store.Change{Ops: []store.Op{{Kind: store.KindTask, ID: tk.ID, Value: b}}}, nil); err != nil {
		t.Fatal(err)
	}
	// A second VM crashed in a start recorded by a daemon of store schema
	// 1 (building marker, no claim) after its domain vanished: only the
	// private subtree tells which /local/domain/N was its.
	vm2 := e.create("half2")
	ent2, _ := e.m.resolve(vm2.ID)
	e.m.updateVM(e.ctx, ent2, func(r *vmRecord) error { r.Building = true; return nil })
	e.xs.Write(e.ctx, "/local/domain/4000/name", []byte("half2"))
	e.xs.Write(e.ctx, PrivatePath(vm2.ID)+"/domid", []byte("4000"))
	e.close()
	e.open(0)
	if left := e.xsTree("/local/domain/4000", PrivatePath(vm2.ID)); len(left) != 0 {
		t.Fatalf("nodes of the vanished half-built domain left: %v", left)
	}
	if got := e.vm(vm2.ID); got.Power != Halted || !strings.Contains(got.Problem, "interrupted") {
		t.Fatalf("second VM: %+v", got)
	}
	if _, err := e.hv.DomainInfo(e.ctx, d); !xenctrl.IsNoDomain(err) {
		t.Fatalf("half-built domain %d still exists: %v", d, err)
	}
	got := e.vm(vm.ID)
	if got.Power != Halted || got.Domid != 0 || !strings.Contains(got.Problem, "interrupted") {
		t.Fatalf("VM after restart: %+v", got)
	}
	if left := e.xsTree(domPath(d), vmPath(vm.ID), PrivatePath(vm.ID)); len(left) != 0 {
		t.Fatalf("xenstore nodes left: %v", left)
	}
	it, err := e.m.GetTask(e.ctx, tk.ID)
	if err != nil || it.State != TaskInterrupted || it.Err == nil || it.Err.Code != CodeAborted || !strings.Contains(it.Err.Message, "stopped while the task was Running") {
		t.Fatalf("interrupted task: %+v %v", it, err)
	}
	if _, err := e.m.WaitTask(e.ctx, tk.ID); err != nil {
		t.Fatalf("wait on interrupted task: %v", err)
	}
	// And the VM starts normally afterwards.
	e.run(e.m.Start(e.ctx, vm.ID, false))
	if n := len(e.guestDomains()); n != 1 {
		t.Fatalf("%d domains", n)
	}
}

func TestCloseRecordsInFlightTasks(t *testing.T) {
	e := newEnv(t, envOpts{workers: 1})
	vm := e.create("busy")
	other := e.create("other")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	e.hv.SetGuestBehaviour(e.ctx, d, simIgnore())
	running, err := e.m.Shutdown(e.ctx, vm.ID, ShutdownOptions{Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e.eventually("shutdown task running", func() bool {
		tk, _ := e.m.GetTask(e.ctx, running.ID)
		return tk.State == TaskRunning
	})
	queued, err := e.m.Start(e.ctx, other.ID, false) // waits for the only worker
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 100*time.Millisecond)
	defer cancel()
	if err := e.m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Start(e.ctx, other.ID, false); CodeOf(err) != CodeUnavailable {
		t.Fatalf("start after close: %v", err)
	}
	e.close()
	e.open(0)
	for _, id := range []string{running.ID, queued.ID} {
		tk, err := e.m.GetTask(e.ctx, id)
		if err != nil || tk.State != TaskInterrupted || tk.Err == nil {
			t.Fatalf("task %s after close: %+v %v", id, tk, err)
		}
	}
	if got := e.vm(vm.ID); got.Power != Running || got.Domid != uint32(d) {
		t.Fatalf("VM after restart: %+v", got)
	}
	if got := e.vm(other.ID); got.Power != Halted {
		t.Fatalf("queued VM after restart: %+v", got)
	}
	if n := len(e.guestDomains()); n != 1 {
		t.Fatalf("%d domains", n)
	}
}
