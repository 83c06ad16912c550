package devices

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore/xenstored"
)

const guest = 5 // the test guest's domid

// env is an embedded xenstored on a unix socket in a temp dir, a dom0
// client for the Plugger, one for the scripted backends, the guest's own
// (unprivileged) connection for its frontends, and a fake Host.
type env struct {
	t       *testing.T
	ctx     context.Context
	srv     *xenstored.Server
	xs      *xenstore.Client // the Plugger's
	dom0    *xenstore.Client // the scripted backends'
	guestXS *xenstore.Client // the guest's ring
	host    *fakeHost
	p       *Plugger
	actors  sync.WaitGroup
	actx    context.Context // the actors'; ends before the server stops
	stopAll context.CancelFunc
	tokens  atomic.Uint64
	dir     string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	e := &env{t: t, ctx: ctx, dir: t.TempDir(), host: newFakeHost()}
	actx, stop := context.WithCancel(ctx)
	e.actx, e.stopAll = actx, stop
	sock := filepath.Join(t.TempDir(), "xs.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	e.srv = xenstored.New(xenstored.Config{})
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(l) }()
	dial := func() *xenstore.Client {
		c, err := xenstore.Dial(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	e.xs, e.dom0 = dial(), dial()
	e.host.xs = e.dom0
	for _, d := range []uint32{0, guest} {
		path := "/local/domain/" + strconv.Itoa(int(d))
		if err := e.xs.Mkdir(ctx, path); err != nil {
			t.Fatal(err)
		}
		if err := e.xs.SetPerms(ctx, path, []xenstore.Perm{{Domid: d, Access: xenstore.AccessNone}}); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := e.srv.ConnectDomain(guest)
	if err != nil {
		t.Fatal(err)
	}
	e.guestXS = xenstore.NewClient(nc)
	e.p = NewPlugger(e.xs, e.host, nil)
	e.p.backendWait, e.p.closeWait = 10*time.Second, 10*time.Second
	t.Cleanup(func() {
		stop()
		e.actors.Wait()
		e.guestXS.Close()
		e.dom0.Close()
		e.xs.Close()
		e.srv.Close()
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, xenstored.ErrServerClosed) {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return e
}

// stopActors ends every scripted backend and frontend (the domain is gone).
func (e *env) stopActors() {
	e.stopAll()
	e.actors.Wait()
}

// file makes a backing file in the test's directory.
func (e *env) file(name string) string {
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, make([]byte, 4096), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// exists reports whether path is in the store.
func (e *env) exists(path string) bool {
	e.t.Helper()
	_, err := e.xs.Read(e.ctx, path)
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		e.t.Fatal(err)
	}
	return err == nil
}

// read returns a node's value ("" if missing).
func (e *env) read(path string) string {
	v, _, err := e.p.readNode(e.ctx, path)
	if err != nil {
		e.t.Fatal(err)
	}
	return v
}

// assertGone checks that nothing of rec is left: no directory, no per-domain
// backend directory, nothing attached or connected on the host.
func (e *env) assertGone(rec Record) {
	e.t.Helper()
	for _, p := range []string{rec.BackendPath(), rec.FrontendPath(), backendDomainDir(rec.Kind, rec.Domid), backendErrorPath(rec)} {
		if e.exists(p) {
			l, _ := e.xs.List(e.ctx, p)
			e.t.Errorf("%s is left in xenstore (holding %q)", p, l)
		}
	}
	if a := e.host.attached(); len(a) != 0 {
		e.t.Errorf("host still has disks attached: %v", a)
	}
	if c := e.host.connectedVIFs(); len(c) != 0 {
		e.t.Errorf("host still has vifs connected: %v", c)
	}
}

// actor runs step on every change below the watched paths (and once at
// the start) until step says it is done or the test ends: a scripted
// blkback, netback or guest frontend.
func (e *env) actor(c *xenstore.Client, paths []string, step func(ctx context.Context) bool) {
	ctx, cancel := context.WithCancel(e.actx)
	var ws []*xenstore.Watch
	for _, p := range paths {
		w, err := c.Watch(ctx, p, fmt.Sprintf("actor-%d", e.tokens.Add(1)))
		if err != nil {
			cancel()
			e.t.Fatal(err)
		}
		ws = append(ws, w)
	}
	e.actors.Add(1)
	wake := make(chan struct{}, 1)
	for _, w := range ws {
		go func() {
			for range w.Events() {
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}()
	}
	go func() {
		defer e.actors.Done()
		defer cancel()
		defer func() {
			for _, w := range ws {
				w.Close()
			}
		}()
		for {
			if step(ctx) {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-wake:
			}
		}
	}()
}

// state reads a state node through c (stateGone if missing, StateUnknown
// if garbage).
func state(ctx context.Context, c *xenstore.Client, path string) State {
	v, err := c.Read(ctx, path)
	if err != nil {
		return stateGone
	}
	s, err := parseState(string(v))
	if err != nil {
		return StateUnknown
	}
	return s
}

// switchState writes a state node only if it still exists, as the
// kernel's xenbus_switch_state does (it never recreates a removed device).
func switchState(ctx context.Context, c *xenstore.Client, path string, s State) {
	c.Transaction(ctx, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, path); err != nil {
			return err
		}
		return tx.Write(ctx, path, []byte(strconv.Itoa(int(s))))
	})
}

func put(ctx context.Context, c *xenstore.Client, path string, v any) {
	c.Write(ctx, path, []byte(fmt.Sprint(v)))
}

// backendMode scripts the fake blkback/netback.
type backendMode int

const (
	backendNormal backendMode = iota
	backendSilent             // never leaves Initialising
	backendFails              // reports an error and closes, as xenbus_dev_fatal does
)

// backend plays blkback or netback for rec over dom0's connection: InitWait
// once probed (blkback: once physical-device is there), Connected once the
// frontend published its rings (netback: and hotplug-status says
// connected), Closed once asked to close and the frontend has closed.
func (e *env) backend(kind Kind, devid int, mode backendMode) {
	rec := Record{Kind: kind, Domid: guest, DevID: devid}
	if kind == KindQdisk { // QEMU's qdisk: a vbd that needs no physical-device
		rec.Kind, rec.BackendKind = KindVBD, KindQdisk
	}
	be, fe := rec.BackendPath(), rec.FrontendPath()
	e.actor(e.dom0, []string{be, fe + "/state"}, func(ctx context.Context) bool {
		bs := state(ctx, e.dom0, be+"/state")
		if bs == stateGone {
			return false
		}
		fs := state(ctx, e.dom0, fe+"/state")
		switch {
		case mode == backendSilent:
		case mode == backendFails && bs == StateInitialising:
			put(ctx, e.dom0, backendErrorPath(rec)+"/error", "2 opening /dev/loop7")
			switchState(ctx, e.dom0, be+"/state", StateClosing)
		case bs == StateInitialising:
			if rec.Kind == KindVBD && rec.BackendKind == "" {
				if pd, _ := e.dom0.Read(ctx, be+"/physical-device"); len(pd) == 0 {
					return false
				}
			}
			switchState(ctx, e.dom0, be+"/state", StateInitWait)
		case bs == StateInitWait && (fs == StateInitialised || fs == StateConnected):
			if kind == KindVIF {
				if hs, _ := e.dom0.Read(ctx, be+"/hotplug-status"); string(hs) != "connected" {
					return false
				}
			}
			switchState(ctx, e.dom0, be+"/state", StateConnected)
		case bs == StateClosing && (fs == StateClosed || fs == stateGone):
			switchState(ctx, e.dom0, be+"/state", StateClosed)
		}
		return false
	})
}

// frontendMode scripts the fake blkfront/netfront.
type frontendMode int

const (
	frontendNormal       frontendMode = iota
	frontendSilent                    // never connects
	frontendRefusesClose              // connects, then ignores Closing
)

// frontend plays blkfront or netfront over the guest's own connection:
// it publishes its rings when the backend is in InitWait (blkfront:
// Initialised, then Connected when the backend is; netfront: Connected at
// once) and closes when the backend asks.
func (e *env) frontend(kind Kind, devid int, mode frontendMode) {
	dir := fmt.Sprintf("device/%s/%d/", kind, devid)
	watch := []string{dir + "state", fmt.Sprintf("/local/domain/0/backend/%s/%d/%d/state", kind, guest, devid)}
	if kind == KindVBD { // its backend may be QEMU's qdisk
		watch = append(watch, fmt.Sprintf("/local/domain/0/backend/%s/%d/%d/state", KindQdisk, guest, devid))
	}
	e.actor(e.guestXS, watch, func(ctx context.Context) bool {
		if mode == frontendSilent {
			return true
		}
		bev, err := e.guestXS.Read(ctx, dir+"backend")
		if err != nil {
			return false
		}
		bs := state(ctx, e.guestXS, string(bev)+"/state")
		fs := state(ctx, e.guestXS, dir+"state")
		switch {
		case bs == StateInitWait && fs == StateInitialising:
			if kind == KindVBD {
				put(ctx, e.guestXS, dir+"ring-ref", 8)
				put(ctx, e.guestXS, dir+"event-channel", 5)
				switchState(ctx, e.guestXS, dir+"state", StateInitialised)
			} else {
				put(ctx, e.guestXS, dir+"tx-ring-ref", 9)
				put(ctx, e.guestXS, dir+"rx-ring-ref", 10)
				put(ctx, e.guestXS, dir+"event-channel", 6)
				switchState(ctx, e.guestXS, dir+"state", StateConnected)
			}
		case bs == StateConnected && fs == StateInitialised:
			switchState(ctx, e.guestXS, dir+"state", StateConnected)
		case bs == StateClosing && fs != StateClosed && mode != frontendRefusesClose:
			switchState(ctx, e.guestXS, dir+"state", StateClosed)
		}
		return false
	})
}

// fakeHost is dom0's side in memory: loop devices numbered from 0, vifs
// connected to bridges; each method can be made to fail.
type fakeHost struct {
	mu      sync.Mutex
	next    int
	disks   map[string]DiskAttachment // by loop
	vifs    map[string]string         // vif -> bridge
	bridges []string
	fail    map[string]error // by method name
	calls   []string
	// The QEMUs: xs is the connection they write their state with.
	xs      *xenstore.Client
	nextPid int
	qemus   map[int]uint32 // running QEMUs: pid -> domid
	started int            // QEMUs started in all
}

// StartQEMU plays QEMU: it is "running" at once (its state node written).
func (h *fakeHost) StartQEMU(ctx context.Context, domid uint32) (QEMUProc, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("StartQEMU"); err != nil {
		return QEMUProc{}, err
	}
	h.nextPid++
	pid := 1000 + h.nextPid
	h.qemus[pid] = domid
	h.started++
	if err := h.xs.Write(ctx, deviceModelDir(domid)+"/state", []byte("running")); err != nil {
		return QEMUProc{}, err
	}
	return QEMUProc{Pid: pid, Start: uint64(pid) * 7}, nil
}

func (h *fakeHost) QEMUAlive(ctx context.Context, q QEMUProc, domid uint32) (bool, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d, ok := h.qemus[q.Pid]
	return ok && d == domid && q.Start == uint64(q.Pid)*7, nil
}

func (h *fakeHost) StopQEMU(ctx context.Context, q QEMUProc, domid uint32) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("StopQEMU"); err != nil {
		return err
	}
	delete(h.qemus, q.Pid)
	// QEMU's xen-bus removes its devices' backend directories as it goes.
	dir := backendDomainDir(KindQdisk, domid)
	names, _ := h.xs.List(ctx, dir)
	for _, n := range names {
		_ = h.xs.Remove(ctx, dir+"/"+n)
	}
	return nil
}

// running is the number of QEMUs running.
func (h *fakeHost) running() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.qemus)
}

func newFakeHost() *fakeHost {
	return &fakeHost{disks: map[string]DiskAttachment{}, vifs: map[string]string{}, bridges: []string{"xenbr0"}, fail: map[string]error{}, qemus: map[int]uint32{}}
}

func (h *fakeHost) failing(method string) error { return h.fail[method] }

func (h *fakeHost) AttachDisk(ctx context.Context, path string, readOnly bool) (DiskAttachment, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("AttachDisk"); err != nil {
		return DiskAttachment{}, err
	}
	a := DiskAttachment{PhysicalDevice: fmt.Sprintf("7:%x", h.next), Loop: fmt.Sprintf("/dev/loop%d", h.next)}
	h.next++
	h.disks[a.Loop] = a
	return a, nil
}

func (h *fakeHost) FindDisk(ctx context.Context, path string) ([]DiskAttachment, error) {
	return nil, errors.New("not used")
}

func (h *fakeHost) DetachDisk(ctx context.Context, a DiskAttachment) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("DetachDisk"); err != nil {
		return err
	}
	delete(h.disks, a.Loop)
	return nil
}

func (h *fakeHost) CheckBridge(ctx context.Context, bridge string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("CheckBridge"); err != nil {
		return err
	}
	if !slices.Contains(h.bridges, bridge) {
		return fmt.Errorf("bridge %s does not exist", bridge)
	}
	return nil
}

func (h *fakeHost) ConnectVIF(ctx context.Context, name, bridge string, mtu uint32) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("ConnectVIF"); err != nil {
		return err
	}
	h.vifs[name] = bridge
	return nil
}

func (h *fakeHost) DisconnectVIF(ctx context.Context, name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("DisconnectVIF"); err != nil {
		return err
	}
	delete(h.vifs, name)
	return nil
}

// Counters gives a connected vif a counter per byte of its name and a disk
// its loop's: enough to tell devices apart.
func (h *fakeHost) Counters(ctx context.Context, rec Record) (Counters, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("Counters"); err != nil {
		return Counters{}, err
	}
	if _, ok := h.vifs[rec.VIF]; rec.Kind == KindVIF && ok {
		return Counters{TxPackets: uint64(len(rec.VIF))}, nil
	}
	if _, ok := h.disks[rec.Disk.Loop]; rec.Kind == KindVBD && ok {
		return Counters{ReadRequests: uint64(len(rec.Disk.Loop))}, nil
	}
	return Counters{}, fs.ErrNotExist
}

func (h *fakeHost) setFail(method string, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.fail[method] = err
}

func (h *fakeHost) attached() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var l []string
	for k := range h.disks {
		l = append(l, k)
	}
	return l
}

func (h *fakeHost) connectedVIFs() map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := map[string]string{}
	for k, v := range h.vifs {
		m[k] = v
	}
	if len(m) == 0 {
		return nil
	}
	return m
}
