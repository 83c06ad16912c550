package domain

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/store"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore/xenstored"
)

// env is a simulated host (sim hypervisor + embedded xenstored + a guest
// per booted domain that answers control/shutdown like Linux) and a
// Manager on a Pebble store in a temp dir.
type env struct {
	t       testing.TB
	ctx     context.Context
	cancel  context.CancelFunc
	hv      *sim.Hypervisor
	srv     *xenstored.Server
	sock    string
	xs      *xenstore.Client
	dir     string
	st      *store.Store
	m       *Manager
	retain  int
	builder Builder
	devs    Devices
	onOp    func(string, error, time.Duration)
	guests  sync.WaitGroup

	resumedMu sync.Mutex
	resumed   map[xenctrl.Domid][]uint64 // per domain, what each suspend call returned to the guest
}

type envOpts struct {
	memory  uint64 // host bytes (default 64 GiB)
	retain  int
	workers int
	noGuest bool
	builder func(xenctrl.Hypervisor) Builder // nil: the Manager's default
	devices Devices
	onOp    func(op string, err error, took time.Duration) // Config.OnOperation
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	if o.memory == 0 {
		o.memory = 64 << 30
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, ctx: ctx, cancel: cancel, retain: o.retain, devs: o.devices, onOp: o.onOp, resumed: map[xenctrl.Domid][]uint64{}}
	var srvMu sync.Mutex
	var srv *xenstored.Server
	e.hv = sim.New(sim.Config{
		TotalMemory:  o.memory,
		NrCPUs:       8,
		ReleaseDelay: -1,
		OnDomainException: func(d xenctrl.Domid) {
			srvMu.Lock()
			s := srv
			srvMu.Unlock()
			if s != nil {
				s.DomainException(uint32(d))
			}
		},
		OnGuestBoot: func(d xenctrl.Domid) {
			if !o.noGuest {
				e.guests.Add(1)
				go e.guest(d)
			}
		},
	})
	if o.builder != nil {
		e.builder = o.builder(e.hv)
	}
	srvMu.Lock()
	srv = xenstored.New(xenstored.Config{DomainState: func(id uint32) (bool, bool) {
		info, err := e.hv.DomainInfo(context.Background(), xenctrl.Domid(id))
		if err != nil {
			return false, false
		}
		return true, info.Shutdown || info.Dying
	}})
	srvMu.Unlock()
	e.srv = srv
	sockDir, err := os.MkdirTemp("", "xsd")
	if err != nil {
		t.Fatal(err)
	}
	e.sock = filepath.Join(sockDir, "xs.sock")
	l, err := net.Listen("unix", e.sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	e.xs, err = xenstore.Dial(ctx, e.sock)
	if err != nil {
		t.Fatal(err)
	}
	e.dir = t.TempDir()
	e.open(o.workers)
	t.Cleanup(func() {
		e.close()
		e.xs.Close()
		srv.Close()
		cancel()
		e.guests.Wait()
		os.RemoveAll(sockDir)
	})
	return e
}

// open (re)opens the store and a Manager on it.
func (e *env) open(workers int) {
	e.t.Helper()
	st, err := store.OpenWithOptions(filepath.Join(e.dir, "db"), store.Options{RetainEvents: e.retain})
	if err != nil {
		e.t.Fatal(err)
	}
	e.st = st
	m, err := New(e.ctx, Config{Hypervisor: e.hv, Xenstore: e.xs, Store: st, Workers: workers, Builder: e.builder, Devices: e.devs, OnOperation: e.onOp})
	if err != nil {
		e.t.Fatal(err)
	}
	e.m = m
}

// close closes the Manager and the store (as a daemon exit does); the
// simulated host keeps running.
func (e *env) close() {
	if e.m == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e.m.Close(ctx)
	e.st.Close()
	e.m, e.st = nil, nil
}

// guest is a minimal Linux-like guest: it advertises feature-poweroff and
// acts on control/shutdown unless its behaviour says to ignore requests.
func (e *env) guest(d xenctrl.Domid) {
	defer e.guests.Done()
	conn, err := e.srv.ConnectDomain(uint32(d))
	if err != nil {
		return
	}
	c := xenstore.NewClient(conn)
	defer c.Close()
	base := domPath(d) + "/control/"
	c.Write(e.ctx, base+"feature-poweroff", []byte("1"))
	c.Write(e.ctx, base+"feature-suspend", []byte("1"))
	w, err := c.Watch(e.ctx, base+"shutdown", "guest")
	if err != nil {
		return
	}
	defer w.Close()
	for {
		select {
		case <-e.ctx.Done():
			return
		case _, ok := <-w.Events():
			if !ok {
				return
			}
		}
		v, err := c.Read(e.ctx, base+"shutdown")
		if err != nil {
			if errors.Is(err, os.ErrClosed) || e.ctx.Err() != nil {
				return
			}
			continue
		}
		reason := map[string]xenctrl.ShutdownReason{"poweroff": xenctrl.ShutdownPoweroff, "halt": xenctrl.ShutdownPoweroff, "reboot": xenctrl.ShutdownReboot, "suspend": xenctrl.ShutdownSuspend}
		r, ok := reason[string(v)]
		if !ok {
			continue
		}
		if b, err := e.hv.GuestBehaviour(d); err != nil || b.IgnoreShutdownRequests {
			continue
		}
		c.Write(e.ctx, base+"shutdown", nil)
		if err := e.hv.GuestShutdown(e.ctx, d, r); err != nil || r != xenctrl.ShutdownSuspend {
			return
		}
		// Suspended: carry on once resumed (counted in resumed).
		rc, err := e.hv.WaitSuspendEnds(e.ctx, d)
		if err != nil {
			return
		}
		e.resumedMu.Lock()
		e.resumed[d] = append(e.resumed[d], rc)
		e.resumedMu.Unlock()
	}
}

func spec(name string) Spec {
	return Spec{Name: name, MemoryStaticMax: 64 << 20, VCPUsMax: 1, Type: TypePVH}
}

func (e *env) create(name string) VM {
	e.t.Helper()
	vm, err := e.m.CreateVM(e.ctx, spec(name), "")
	if err != nil {
		e.t.Fatalf("create %s: %v", name, err)
	}
	return vm
}

// run waits for a task and fails the test unless it succeeded.
func (e *env) run(t Task, err error) Task {
	e.t.Helper()
	if err != nil {
		e.t.Fatalf("submit: %v", err)
	}
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	done, err := e.m.WaitTask(ctx, t.ID)
	if err != nil {
		e.t.Fatalf("wait task %s (%s): %v", t.ID, t.Op, err)
	}
	if done.State != TaskSucceeded {
		e.t.Fatalf("task %s %s: %s: %v", t.ID, t.Op, done.State, done.Err)
	}
	return done
}

// wait waits for a task to finish, whatever its outcome.
func (e *env) wait(t Task) Task {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
	defer cancel()
	done, err := e.m.WaitTask(ctx, t.ID)
	if err != nil {
		e.t.Fatalf("wait task %s: %v", t.ID, err)
	}
	return done
}

func (e *env) vm(ref string) VM {
	e.t.Helper()
	vm, err := e.m.GetVM(e.ctx, ref)
	if err != nil {
		e.t.Fatalf("get %s: %v", ref, err)
	}
	return vm
}

// eventually polls cond (bounded) — for state reached asynchronously
// (guest-initiated shutdowns), not for timing.
func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("gave up waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// guestDomains lists the hypervisor's domains except dom0, dying included.
func (e *env) guestDomains() []xenctrl.DomainInfo {
	e.t.Helper()
	ds, err := e.hv.ListDomains(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var out []xenctrl.DomainInfo
	for _, d := range ds {
		if d.Domid != 0 {
			out = append(out, d)
		}
	}
	return out
}

// xsTree returns every xenstore path under the given roots, sorted.
func (e *env) xsTree(roots ...string) []string {
	e.t.Helper()
	var out []string
	var walk func(p string)
	walk = func(p string) {
		kids, err := e.xs.List(e.ctx, p)
		if err != nil {
			return
		}
		out = append(out, p)
		for _, k := range kids {
			if p == "/" {
				walk("/" + k)
			} else {
				walk(p + "/" + k)
			}
		}
	}
	for _, r := range roots {
		walk(r)
	}
	sort.Strings(out)
	return out
}

func code(err error) string {
	if err == nil {
		return "OK"
	}
	return CodeOf(err).String()
}

func itoa(i int) string { return strconv.Itoa(i) }

var _ = fmt.Sprint

type simBehaviour = sim.GuestBehaviour
