package devices

import (
	"context"
	"errors"
	"fmt"
	"math"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// Unplug removes a device as libxl does: online=0 and state Closing in
// the backend, a wait bounded by CloseWait for the backend to be Closed
// (the guest's frontend closes first; no wait if the frontend never got
// past Initialising), then dom0's side (detach, or take the vif out of its
// bridge) and both directories. A guest that does not
// release the device in time gets an error that says so and the device
// stays (Closing). With force nothing is waited for (libxl's destroy, not
// its remove): the backend is told to close and torn down at once. A device whose
// backend directory does not exist is ErrNotPlugged (with force: dom0's
// side and the frontend directory are cleaned all the same).
func (p *Plugger) Unplug(ctx context.Context, rec Record, force bool) error {
	if err := rec.check(); err != nil {
		return err
	}
	exists, err := p.askToClose(ctx, rec)
	if err != nil {
		return fmt.Errorf("%s: asking the backend to close: %w", rec.name(), err)
	}
	if !exists && !force {
		return fmt.Errorf("%s: %w", rec.name(), ErrNotPlugged)
	}
	if exists && !force {
		err := p.wait(ctx, rec, p.closeWait, "the backend's Closed state", false, func(be, _ State) (bool, error) {
			return be == StateClosed || be == stateGone || !p.frontendEngaged(ctx, rec), nil
		})
		switch {
		case err == nil:
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			be, _ := p.backendState(ctx, rec)
			return fmt.Errorf("%s: the guest did not release the device within %v (backend %v); unplug with force to tear it down anyway: %w",
				rec.name(), p.closeWait, be, context.DeadlineExceeded)
		default:
			return fmt.Errorf("%s: %w", rec.name(), err)
		}
	}
	if err := p.rollback(ctx, rec, undo{dirs: true, attached: true, connected: true}); err != nil {
		return fmt.Errorf("%s: %w", rec.name(), err)
	}
	p.log.Info("device unplugged", "device", rec.name(), "force", force)
	return nil
}

// frontendEngaged reports whether the guest's frontend may have talked to
// the backend: it got past Initialising (a Closed one too: the backend
// follows it to Closed, and that is worth the wait). A frontend that never
// talked to the backend holds nothing, so Unplug need not wait for it (a
// guest that ignores a hot-plugged disk can be unplugged). Anything
// unreadable or garbage counts as engaged.
func (p *Plugger) frontendEngaged(ctx context.Context, rec Record) bool {
	v, ok, err := p.readNode(ctx, rec.FrontendPath()+"/state")
	if err != nil {
		return true
	}
	if !ok {
		return false
	}
	s, err := parseState(v)
	return err != nil || (s != StateUnknown && s != StateInitialising)
}

// askToClose writes online=0 and, unless it is Closed already, state
// Closing into the backend directory; exists is false if there is none.
func (p *Plugger) askToClose(ctx context.Context, rec Record) (exists bool, err error) {
	be := rec.BackendPath()
	err = p.xs.Transaction(ctx, func(tx *xenstore.Tx) error {
		exists = false
		v, err := tx.Read(ctx, be+"/state")
		if errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if err != nil {
			return err
		}
		exists = true
		ops := []xenstore.Op{xenstore.WriteOp(be+"/online", []byte("0"))}
		if s, err := parseState(string(v)); err != nil || s != StateClosed {
			ops = append(ops, xenstore.WriteOp(be+"/state", []byte(fmt.Sprint(int(StateClosing)))))
		}
		return tx.Batch(ctx, ops...)
	})
	return exists, err
}

// RemoveDomainDevices releases everything plugged into a destroyed domain,
// from xenstore alone (it needs no Record, so it works after a crash):
// first the domain's QEMU (recorded in device-model/<domid>), then for
// every backend directory of the domain it detaches the loop device named
// by the backend's node (and physical-device) or takes vif<domid>.<devid>
// out of its bridge, then removes the backend and frontend directories.
// Only dom0-owned backend nodes are read. It is idempotent; a device whose
// dom0 side cannot be released keeps its backend directory, so a retry
// finds it again.
func (p *Plugger) RemoveDomainDevices(ctx context.Context, domid uint32) error {
	if err := checkDomid(domid); err != nil {
		return err
	}
	var errs []error
	// The domain's QEMU first: it holds the qcow2 files, and once it is
	// gone nothing rewrites the qdisk directories removed below.
	if err := p.stopQEMU(ctx, domid); err != nil {
		errs = append(errs, err)
	}
	for _, kind := range []Kind{KindVBD, KindQdisk, KindVIF} {
		dir := backendDomainDir(kind, domid)
		names, err := p.xs.List(ctx, dir)
		if errors.Is(err, syscall.ENOENT) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("listing %s: %w", dir, err))
			continue
		}
		for _, name := range names {
			devid, ok := parseNumber(name, math.MaxInt32)
			if !ok {
				errs = append(errs, fmt.Errorf("%s/%s: not a device number", dir, name))
				continue
			}
			rec, err := p.recordFromBackend(ctx, kind, domid, devid)
			if err == nil {
				err = p.rollback(ctx, rec, undo{dirs: true, attached: true, connected: true})
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", rec.name(), err))
			}
		}
		// A QEMU that is stopped removes its devices' directories itself
		// (seen on real Xen), which leaves their parent empty.
		if err := p.xs.Transaction(ctx, func(tx *xenstore.Tx) error {
			return removeEmpty(ctx, tx, dir, errorDomainDir(kind, domid))
		}); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", dir, err))
		}
	}
	if err := p.removeOrphanFrontends(ctx, domid); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// removeOrphanFrontends removes the destroyed domain's vbd frontend
// directories that no backend directory names any more: those of qcow2
// disks whose QEMU removed their backend directories as it stopped. Only
// the directory names are read, nothing the guest wrote in them.
func (p *Plugger) removeOrphanFrontends(ctx context.Context, domid uint32) error {
	dir := fmt.Sprintf("/local/domain/%d/device/%s", domid, KindVBD)
	names, err := p.xs.List(ctx, dir)
	if errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("listing %s: %w", dir, err)
	}
	for _, name := range names {
		devid, ok := parseNumber(name, math.MaxInt32)
		if !ok {
			continue
		}
		orphan := true
		for _, kind := range []Kind{KindVBD, KindQdisk} {
			rec := Record{Kind: KindVBD, BackendKind: kind, Domid: domid, DevID: devid}
			if _, ok, err := p.readNode(ctx, rec.BackendPath()+"/frontend"); err != nil || ok {
				orphan = false
			}
		}
		if orphan {
			if err := p.xs.Remove(ctx, dir+"/"+name); err != nil && !errors.Is(err, syscall.ENOENT) {
				return fmt.Errorf("removing %s/%s: %w", dir, name, err)
			}
		}
	}
	return nil
}

// recordFromBackend rebuilds what teardown needs from a backend directory.
func (p *Plugger) recordFromBackend(ctx context.Context, kind Kind, domid uint32, devid int) (Record, error) {
	rec := Record{Kind: kind, Domid: domid, DevID: devid}
	if kind == KindQdisk {
		rec.Kind, rec.BackendKind = KindVBD, KindQdisk
	}
	if kind == KindVIF {
		rec.VIF = VIFName(domid, devid)
		return rec, nil
	}
	for key, dst := range map[string]*string{"node": &rec.Disk.Loop, "physical-device": &rec.Disk.PhysicalDevice, "dev": &rec.Device, "params": &rec.Path} {
		v, _, err := p.readNode(ctx, rec.BackendPath()+"/"+key)
		if err != nil {
			return rec, err
		}
		*dst = v
	}
	return rec, nil
}
