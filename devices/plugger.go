package devices

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// Errors callers tell apart with errors.Is.
var (
	ErrInUse      = errors.New("already plugged")
	ErrNotPlugged = errors.New("not plugged")
)

// cleanupWait bounds an undo or teardown that runs after the caller's
// context ended.
const cleanupWait = 10 * time.Second

// Plugger plugs and unplugs devices: the xenstore side itself, dom0's side
// through a Host. It is safe for concurrent use; it keeps no state of its
// own (xenstore's backend directories are the record of what is plugged).
type Plugger struct {
	xs   Store
	host Host
	log  *slog.Logger
	// qemuMu serialises the start of a domain's QEMU (ensureQEMU), so two
	// qcow2 plugs never start two.
	qemuMu sync.Mutex

	backendWait, closeWait time.Duration // BackendWait, CloseWait; shorter in tests
	tokens                 atomic.Uint64 // watch tokens, unique on the connection
}

// NewPlugger returns a Plugger writing to xs and acting on host.
func NewPlugger(xs Store, host Host, log *slog.Logger) *Plugger {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugger{xs: xs, host: host, log: log, backendWait: BackendWait, closeWait: CloseWait}
}

// SetWaits replaces the bounds of the waits for the backend (BackendWait)
// and for a release (CloseWait), for callers that must stay within tighter
// limits. Call it before the Plugger is used.
func (p *Plugger) SetWaits(backend, close time.Duration) {
	p.backendWait, p.closeWait = backend, close
}

// node is one key of a device directory and its value.
type node struct{ key, value string }

// layout is what a plug writes in xenstore, as libxl__device_generic_add
// does: both directories in one transaction, each with its permissions.
type layout struct {
	back, front []node
	// frontReadOnly are frontend nodes owned by dom0 and only readable by
	// the guest (libxl's ro_fents: the vif's mtu).
	frontReadOnly []node
}

// writeDirs creates rec's backend and frontend directories in one
// transaction; a backend directory that exists already is ErrInUse and
// nothing changes. A frontend directory left by the guest is replaced.
func (p *Plugger) writeDirs(ctx context.Context, rec Record, l layout) error {
	be, fe := rec.BackendPath(), rec.FrontendPath()
	return p.xs.Transaction(ctx, func(tx *xenstore.Tx) error {
		_, err := tx.Read(ctx, be)
		if err == nil {
			return fmt.Errorf("%w (%s exists)", ErrInUse, be)
		}
		if !errors.Is(err, syscall.ENOENT) {
			return err
		}
		if err := tx.Remove(ctx, fe); err != nil && !errors.Is(err, syscall.ENOENT) {
			return err
		}
		ops := []xenstore.Op{
			xenstore.MkdirOp(be), xenstore.SetPermsOp(be, backendPerms(rec.Domid)),
			xenstore.WriteOp(be+"/frontend", []byte(fe)),
		}
		for _, n := range l.back {
			ops = append(ops, xenstore.WriteOp(be+"/"+n.key, []byte(n.value)))
		}
		ops = append(ops, xenstore.MkdirOp(fe), xenstore.SetPermsOp(fe, frontendPerms(rec.Domid)),
			xenstore.WriteOp(fe+"/backend", []byte(be)))
		for _, n := range l.front {
			ops = append(ops, xenstore.WriteOp(fe+"/"+n.key, []byte(n.value)))
		}
		for _, n := range l.frontReadOnly {
			ops = append(ops, xenstore.WriteOp(fe+"/"+n.key, []byte(n.value)),
				xenstore.SetPermsOp(fe+"/"+n.key, backendPerms(rec.Domid)))
		}
		return tx.Batch(ctx, ops...)
	})
}

// writeBackend writes nodes into rec's backend directory in one
// transaction, failing if the directory is gone (an unplug raced us).
func (p *Plugger) writeBackend(ctx context.Context, rec Record, nodes ...node) error {
	be := rec.BackendPath()
	return p.xs.Transaction(ctx, func(tx *xenstore.Tx) error {
		if _, err := tx.Read(ctx, be); err != nil {
			return fmt.Errorf("reading %s: %w", be, err)
		}
		ops := make([]xenstore.Op, 0, len(nodes))
		for _, n := range nodes {
			ops = append(ops, xenstore.WriteOp(be+"/"+n.key, []byte(n.value)))
		}
		return tx.Batch(ctx, ops...)
	})
}

// removeDirs removes rec's backend and frontend directories and the
// kernel's error node for it, and then the per-domain backend directories
// if they are left empty, in one transaction (so a concurrent plug of a
// sibling is never removed with them).
func (p *Plugger) removeDirs(ctx context.Context, rec Record) error {
	return p.xs.Transaction(ctx, func(tx *xenstore.Tx) error {
		for _, path := range []string{rec.BackendPath(), rec.FrontendPath(), backendErrorPath(rec)} {
			if err := tx.Remove(ctx, path); err != nil && !errors.Is(err, syscall.ENOENT) {
				return err
			}
		}
		return removeEmpty(ctx, tx, backendDomainDir(rec.backendKind(), rec.Domid), errorDomainDir(rec.backendKind(), rec.Domid))
	})
}

func errorDomainDir(kind Kind, domid uint32) string {
	return fmt.Sprintf("/local/domain/%d/error/backend/%s/%d", backendDomid, kind, domid)
}

func removeEmpty(ctx context.Context, tx *xenstore.Tx, dirs ...string) error {
	for _, dir := range dirs {
		names, err := tx.List(ctx, dir)
		if errors.Is(err, syscall.ENOENT) {
			continue
		}
		if err != nil {
			return err
		}
		if len(names) == 0 {
			if err := tx.Remove(ctx, dir); err != nil {
				return err
			}
		}
	}
	return nil
}

// undo says what a plug did so far.
type undo struct{ dirs, attached, connected bool }

// rollback takes back what u says was done, dom0's side first: if that
// fails the directories stay, since the backend directory is what tells a
// later RemoveDomainDevices what to release. It runs even when ctx has
// ended, bounded by cleanupWait.
func (p *Plugger) rollback(ctx context.Context, rec Record, u undo) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupWait)
	defer cancel()
	if u.attached && rec.Disk != (DiskAttachment{}) {
		if err := p.host.DetachDisk(ctx, rec.Disk); err != nil {
			return fmt.Errorf("detaching %s (%s): %w", rec.Disk.Loop, rec.Disk.PhysicalDevice, err)
		}
	}
	if u.connected && rec.VIF != "" {
		if err := p.host.DisconnectVIF(ctx, rec.VIF); err != nil {
			return fmt.Errorf("disconnecting %s: %w", rec.VIF, err)
		}
	}
	if u.dirs {
		if err := p.removeDirs(ctx, rec); err != nil {
			return fmt.Errorf("removing its xenstore directories: %w", err)
		}
	}
	return nil
}

// failed is the error of a plug that failed at step with nothing to undo.
func failed(rec Record, step string, err error) error {
	if errors.Is(err, ErrInUse) {
		return fmt.Errorf("%s: %w", rec.name(), err)
	}
	return fmt.Errorf("%s: %s: %w", rec.name(), step, err)
}

// failPlug undoes a plug that failed at step and returns the error naming
// the device and the step (and the undo's failure, if any).
func (p *Plugger) failPlug(ctx context.Context, rec Record, u undo, step string, err error) error {
	err = failed(rec, step, err)
	if uerr := p.rollback(ctx, rec, u); uerr != nil {
		p.log.Error("device plug: undo failed", "device", rec.name(), "err", uerr)
		return errors.Join(err, fmt.Errorf("undoing the plug: %w", uerr))
	}
	return err
}

// initWaitCond is satisfied once the backend has reached InitWait (or
// gone further); a backend that closes fails the plug with the reason it
// reported.
func (p *Plugger) initWaitCond(ctx context.Context, rec Record) waitCond {
	return func(be, fe State) (bool, error) {
		switch be {
		case StateInitWait, StateInitialised, StateConnected:
			return true, nil
		case StateClosing, StateClosed, stateGone:
			return false, p.backendFailed(ctx, rec, be)
		}
		return false, nil
	}
}

// backendFailed describes a backend that closed or vanished on its own.
func (p *Plugger) backendFailed(ctx context.Context, rec Record, be State) error {
	if be == stateGone {
		return errors.New("its backend directory was removed")
	}
	if msg := p.backendError(ctx, rec); msg != "" {
		return fmt.Errorf("the backend went %v: %s", be, msg)
	}
	return fmt.Errorf("the backend went %v", be)
}

// WaitConnected waits, bounded by BackendWait, until both ends of a plugged
// device are Connected (the guest's driver took it), then checks the rings
// the frontend published. A backend that closes, a guest that closes the
// device, or a frontend that writes garbage fails it with an error that
// says so (ErrBadFrontend for the garbage).
func (p *Plugger) WaitConnected(ctx context.Context, rec Record) error {
	if err := rec.check(); err != nil {
		return err
	}
	err := p.wait(ctx, rec, p.backendWait, "both ends Connected", true, func(be, fe State) (bool, error) {
		switch {
		case be == StateClosing || be == StateClosed || be == stateGone:
			return false, p.backendFailed(ctx, rec, be)
		case fe == StateClosing || fe == StateClosed:
			return false, fmt.Errorf("the guest closed the device (frontend %v)", fe)
		}
		return be == StateConnected && fe == StateConnected, nil
	})
	if err == nil {
		_, err = p.readFrontend(ctx, rec, true)
	}
	if err != nil {
		return fmt.Errorf("%s: %w", rec.name(), err)
	}
	return nil
}

// Status reads a device's state from xenstore: both ends' states and, if
// the device failed, why (a frontend's garbage, the backend's own error).
// A device without a backend directory is ErrNotPlugged.
func (p *Plugger) Status(ctx context.Context, rec Record) (Status, error) {
	if err := rec.check(); err != nil {
		return Status{}, err
	}
	var st Status
	fe, ferr := p.readFrontend(ctx, rec, false)
	be, err := p.backendState(ctx, rec)
	if err != nil {
		return st, fmt.Errorf("%s: %w", rec.name(), err)
	}
	if rec.BackendKind == KindQdisk && !p.qemuAlive(ctx, rec) {
		// A QEMU that stops may take its backend directories with it.
		st.Backend, st.Error = max(be, StateUnknown), qemuGone(rec)
		return st, nil
	}
	if be == stateGone {
		return st, fmt.Errorf("%s: %w", rec.name(), ErrNotPlugged)
	}
	st.Backend = be
	if ferr == nil {
		st.Frontend = fe.State
		ferr = checkOrder(be, fe.State)
	}
	if ferr == nil && (fe.State == StateInitialised || fe.State == StateConnected) {
		_, ferr = p.readFrontend(ctx, rec, true)
	}
	switch {
	case errors.Is(ferr, ErrBadFrontend):
		st.Error = ferr.Error()
	case ferr != nil:
		return st, fmt.Errorf("%s: %w", rec.name(), ferr)
	case be == StateClosing || be == StateClosed:
		st.Error = p.backendError(ctx, rec)
	}
	return st, nil
}

// check refuses a Record that cannot name a device.
func (r Record) check() error {
	if r.Kind != KindVBD && r.Kind != KindVIF {
		return fmt.Errorf("devices: unknown device kind %q", r.Kind)
	}
	if r.BackendKind != "" && (r.BackendKind != KindQdisk || r.Kind != KindVBD) {
		return fmt.Errorf("devices: %s: backend %q is not qdisk", r.name(), r.BackendKind)
	}
	if r.DevID < 0 {
		return fmt.Errorf("devices: %s: negative device id", r.name())
	}
	return checkDomid(r.Domid)
}

// CheckBridge fails unless the dom0 bridge exists (the Host's check, for
// callers that validate a NIC before anything is plugged).
func (p *Plugger) CheckBridge(ctx context.Context, bridge string) error {
	return p.host.CheckBridge(ctx, bridge)
}

// Counters reads a plugged device's I/O counters from dom0 (the Host's
// Counters): no xenstore access, no hypercall.
func (p *Plugger) Counters(ctx context.Context, rec Record) (Counters, error) {
	if err := rec.check(); err != nil {
		return Counters{}, err
	}
	if rec.BackendKind == KindQdisk {
		return Counters{}, fmt.Errorf("%s: QEMU's qdisk keeps no counters dom0 can read: %w", rec.name(), fs.ErrNotExist)
	}
	return p.host.Counters(ctx, rec)
}
