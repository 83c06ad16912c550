package domain

import (
	"context"
	"encoding/json"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/store"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// claims returns the VM's domain claims as recorded.
func (e *env) claims(id string) []domainClaim {
	e.t.Helper()
	ent, err := e.m.resolve(id)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.m.vmSnapshot(ent).Domains
}

// addClaim records a claim for the VM, as an operation would before its
// hypercall.
func (e *env) addClaim(id string, d xenctrl.Domid, role domainRole, state claimState) {
	e.t.Helper()
	ent, err := e.m.resolve(id)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.m.updateClaims(e.ctx, ent, func(r *vmRecord) error { r.setClaim(d, role, state); return nil }); err != nil {
		e.t.Fatal(err)
	}
}

// createDomain creates a domain with the VM's handle, as another
// toolstack (or an operation of ours before a crash) would.
func (e *env) createDomain(vm VM, d xenctrl.Domid) xenctrl.Domid {
	e.t.Helper()
	got, err := e.hv.CreateDomain(e.ctx, domainConfig(vm.Spec, d))
	if err != nil {
		e.t.Fatalf("create domain %d: %v", d, err)
	}
	return got
}

func (e *env) exists(d xenctrl.Domid) bool {
	e.t.Helper()
	info, err := e.hv.DomainInfo(e.ctx, d)
	if xenctrl.IsNoDomain(err) {
		return false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return !info.Dying
}

func TestStartClaimsTheDomainItCreates(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("claimed")
	// A domain of another toolstack sits where the next domid would be.
	foreign := e.createDomain(VM{Spec: Spec{UUID: "0a0a0a0a-0000-4000-8000-000000000001", VCPUsMax: 1, Type: TypePVH}}, 1)
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	if d == foreign {
		t.Fatalf("VM got the foreign domain's domid %d", d)
	}
	if got, want := e.claims(vm.ID), []domainClaim{{d, rolePrimary, claimLive}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("claims %+v, want %+v", got, want)
	}
	e.run(e.m.Destroy(e.ctx, vm.ID))
	if got := e.claims(vm.ID); len(got) != 0 {
		t.Fatalf("claims after destroy: %+v", got)
	}
	if !e.exists(foreign) {
		t.Fatal("foreign domain destroyed")
	}
}

// takeDomid is a hypervisor on which another toolstack creates a domain
// with the domid of the first CreateDomain that asks for one, just before
// that call: the daemon's claimed domid turns out taken (EEXIST).
type takeDomid struct {
	xenctrl.Hypervisor
	once  sync.Once
	taken xenctrl.Domid
}

func (h *takeDomid) CreateDomain(ctx context.Context, cfg xenctrl.DomainConfig) (xenctrl.Domid, error) {
	h.once.Do(func() {
		other := cfg
		other.Handle = uuidHandle("0b0b0b0b-0000-4000-8000-000000000001")
		if d, err := h.Hypervisor.CreateDomain(ctx, other); err == nil {
			h.taken = d
		}
	})
	return h.Hypervisor.CreateDomain(ctx, cfg)
}

func TestStartMovesItsClaimOffATakenDomid(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("raced")
	e.close()
	hv := &takeDomid{Hypervisor: e.hv}
	st, err := store.Open(filepath.Join(e.dir, "db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	e.st = st
	e.m, err = New(e.ctx, Config{Hypervisor: hv, Xenstore: e.xs, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	if hv.taken == 0 || d == hv.taken {
		t.Fatalf("VM domid %d, taken domid %d", d, hv.taken)
	}
	if got, want := e.claims(vm.ID), []domainClaim{{d, rolePrimary, claimLive}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("claims %+v, want %+v", got, want)
	}
	if !e.exists(hv.taken) {
		t.Fatal("the other toolstack's domain was destroyed")
	}
}

func TestReconcileActsOnClaimsOnly(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm, idle := e.create("migrating"), e.create("idle")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	primary := xenctrl.Domid(e.vm(vm.ID).Domid)
	// A localhost migration had claimed and created its target domain,
	// with the VM's handle, when the daemon was killed.
	e.addClaim(vm.ID, 200, roleMigrationTarget, claimLive)
	target := e.createDomain(vm, 200)
	// A restore's claim whose domain was never created.
	e.addClaim(vm.ID, 201, roleRestore, claimCreating)
	e.close()
	// Domains with the VMs' handles that no claim names: not ours.
	stray := e.createDomain(vm, 300)
	strayIdle := e.createDomain(idle, 301)
	e.open(0)

	got := e.vm(vm.ID)
	if got.Power != Running || got.Domid != uint32(primary) || got.Problem != "" {
		t.Fatalf("VM after restart: %+v", got)
	}
	want := []domainClaim{{primary, rolePrimary, claimLive}, {target, roleMigrationTarget, claimLive}}
	if c := e.claims(vm.ID); !reflect.DeepEqual(c, want) {
		t.Fatalf("claims after restart %+v, want %+v", c, want)
	}
	for _, d := range []xenctrl.Domid{primary, target, stray, strayIdle} {
		if !e.exists(d) {
			t.Fatalf("domain %d destroyed by the restart", d)
		}
	}
	if got := e.vm(idle.ID); got.Power != Halted || got.Domid != 0 || len(e.claims(idle.ID)) != 0 {
		t.Fatalf("a stray domain was adopted: %+v", got)
	}
	// A VM with a claimed migration target is not deleted from under it.
	e.run(e.m.Destroy(e.ctx, vm.ID))
	if err := e.m.DeleteVM(e.ctx, vm.ID); CodeOf(err) != CodeFailedPrecondition {
		t.Fatalf("delete VM with a target domain: %v", err)
	}
	if !e.exists(target) || !e.exists(stray) {
		t.Fatal("destroying the primary domain destroyed another")
	}
}

func TestGuestSuspendKeepsTheDomain(t *testing.T) {
	e := newEnv(t, envOpts{})
	s := spec("sleeper")
	s.OnCrash = ActionRestart // a suspend taken for a crash would rebuild
	vm, err := e.m.CreateVM(e.ctx, s, "")
	if err != nil {
		t.Fatal(err)
	}
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	gen := e.vm(vm.ID).Generation
	if err := e.hv.GuestShutdown(e.ctx, d, xenctrl.ShutdownSuspend); err != nil {
		t.Fatal(err)
	}
	e.eventually("VM notices the suspend", func() bool { return e.vm(vm.ID).Generation > gen })
	check := func(when string) {
		t.Helper()
		got := e.vm(vm.ID)
		if got.Power != Paused || !got.DomainSuspended || got.Domid != uint32(d) || got.Problem != "" {
			t.Fatalf("%s: VM %+v, want Paused with its suspended domain %d", when, got, d)
		}
		info, err := e.hv.DomainInfo(e.ctx, d)
		if err != nil || !info.Shutdown || info.ShutdownReason != xenctrl.ShutdownSuspend || info.Dying {
			t.Fatalf("%s: domain %+v, %v", when, info, err)
		}
		if n := len(e.guestDomains()); n != 1 {
			t.Fatalf("%s: %d domains, want the suspended one alone", when, n)
		}
	}
	check("after the suspend")
	if got := e.wait(mustSubmit(t)(e.m.Unpause(e.ctx, vm.ID))); got.State != TaskFailed || got.Err.Code != CodeFailedPrecondition {
		t.Fatalf("unpause of a suspended domain: %s %v", got.State, got.Err)
	}
	e.close()
	e.open(0)
	check("after a restart")

	// A guest that suspends while the daemon is down is found suspended.
	other := e.create("sleeper-2")
	e.run(e.m.Start(e.ctx, other.ID, false))
	d2 := xenctrl.Domid(e.vm(other.ID).Domid)
	e.close()
	if err := e.hv.GuestShutdown(e.ctx, d2, xenctrl.ShutdownSuspend); err != nil {
		t.Fatal(err)
	}
	e.open(0)
	if got := e.vm(other.ID); got.Power != Paused || !got.DomainSuspended || got.Domid != uint32(d2) {
		t.Fatalf("VM suspended while the daemon was down: %+v", got)
	}
	e.run(e.m.Destroy(e.ctx, vm.ID))
	e.run(e.m.Destroy(e.ctx, other.ID))
	if got := e.vm(vm.ID); got.Power != Halted || got.DomainSuspended || len(e.guestDomains()) != 0 {
		t.Fatalf("after destroy: %+v, %d domains", got, len(e.guestDomains()))
	}
}

func mustSubmit(t *testing.T) func(Task, error) Task {
	return func(tk Task, err error) Task {
		t.Helper()
		if err != nil {
			t.Fatalf("submit: %v", err)
		}
		return tk
	}
}

// killAfterDestroy is a hypervisor whose DestroyDomain succeeds and then
// kills the daemon (kill runs before the daemon can record the outcome).
type killAfterDestroy struct {
	xenctrl.Hypervisor
	kill func()
}

func (h *killAfterDestroy) DestroyDomain(ctx context.Context, d xenctrl.Domid) error {
	err := h.Hypervisor.DestroyDomain(ctx, d)
	h.kill()
	return err
}

func TestRestartAfterInterruptedDestroy(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("doomed")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	e.close()
	// A daemon whose state is gone the moment its destroy hypercall
	// returned: nothing after it reaches the store, as with kill -9.
	st, err := store.Open(filepath.Join(e.dir, "db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	killed := make(chan struct{})
	kill := func() { st.Close(); close(killed) }
	m, err := New(e.ctx, Config{Hypervisor: &killAfterDestroy{Hypervisor: e.hv, kill: kill}, Xenstore: e.xs, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Destroy(e.ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	select {
	case <-killed:
	case <-time.After(60 * time.Second):
		t.Fatal("no destroy hypercall")
	}
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	m.Close(ctx) // lets the rest of the destroy run: none of it is recorded
	if e.exists(d) {
		t.Fatalf("domain %d not destroyed", d)
	}
	e.open(0)
	got := e.vm(vm.ID)
	if got.Power != Halted || got.Domid != 0 || got.Problem != "" || len(e.claims(vm.ID)) != 0 {
		t.Fatalf("VM after restart: %+v (claims %+v), want Halted with no problem", got, e.claims(vm.ID))
	}
	if left := e.xsTree(domPath(d), vmPath(vm.ID), PrivatePath(vm.ID)); len(left) != 0 {
		t.Fatalf("xenstore nodes left: %v", left)
	}
	e.run(e.m.Start(e.ctx, vm.ID, false))
}

// TestReconcileFinishesDestroyOfLiveDomain: a destroy recorded but killed
// before its hypercall is carried out at restart.
func TestReconcileFinishesDestroyOfLiveDomain(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("half-destroyed")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	ent, _ := e.m.resolve(vm.ID)
	if err := e.m.markDestroying(e.ctx, ent, d); err != nil {
		t.Fatal(err)
	}
	e.close()
	e.open(0)
	if e.exists(d) {
		t.Fatalf("domain %d survived a recorded destroy", d)
	}
	if got := e.vm(vm.ID); got.Power != Halted || got.Problem != "" || len(e.claims(vm.ID)) != 0 {
		t.Fatalf("VM after restart: %+v", got)
	}
}

// TestReadsSchema1Records: a record written before claims existed (store
// schema 1) claims the domain its domid names, so an upgrade re-adopts
// running VMs.
func TestReadsSchema1Records(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("old")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	e.close()
	st, err := store.Open(filepath.Join(e.dir, "db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := st.Get(store.KindVM, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	if _, ok := rec["domains"]; !ok {
		t.Fatalf("record has no claims: %s", b)
	}
	delete(rec, "domains")
	if b, err = json.Marshal(rec); err != nil {
		t.Fatal(err)
	}
	if err := st.Commit(e.ctx, store.Change{Ops: []store.Op{{Kind: store.KindVM, ID: vm.ID, Value: b}}}, nil); err != nil {
		t.Fatal(err)
	}
	st.Close()
	e.open(0)
	if got := e.vm(vm.ID); got.Power != Running || got.Domid != uint32(d) || got.Problem != "" {
		t.Fatalf("VM after restart: %+v", got)
	}
	if got, want := e.claims(vm.ID), []domainClaim{{d, rolePrimary, claimLive}}; !reflect.DeepEqual(got, want) {
		t.Fatalf("claims %+v, want %+v", got, want)
	}
	e.run(e.m.Destroy(e.ctx, vm.ID))
	if e.exists(d) {
		t.Fatal("domain not destroyed")
	}
}

func TestReserveDomidWrapsAndRunsOut(t *testing.T) {
	e := newEnv(t, envOpts{})
	m := e.m
	m.mu.Lock()
	m.rover = xenctrl.DomidFirstReserved - 2
	m.domids[xenctrl.DomidFirstReserved-1] = "someone"
	m.mu.Unlock()
	if d, err := m.reserveDomid(e.ctx, "vm"); err != nil || d != 1 {
		t.Fatalf("after the last domid: %d, %v; want 1", d, err)
	}
	m.mu.Lock()
	for d := xenctrl.Domid(1); d < xenctrl.DomidFirstReserved; d++ {
		m.domids[d] = "someone"
	}
	m.mu.Unlock()
	if d, err := m.reserveDomid(e.ctx, "vm"); CodeOf(err) != CodeResourceExhausted {
		t.Fatalf("with every domid claimed: %d, %v", d, err)
	}
}
