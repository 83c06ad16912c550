package devices

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// qcow2 disks: QEMU's qdisk backend.
//
// blkback serves only block devices; a qcow2 image needs QEMU, as libxl
// does it for a PV or PVH guest (libxl__need_xenpv_qemu, then
// libxl__spawn_local_dm): one dom0 QEMU per domain (the Xen PV machine,
// attached to the domain), which serves every backend directory under
// backend/qdisk/<domid>/ (QEMU's xen-block: params "qcow2:<path>"). The
// frontend is the guest's blkfront, in device/vbd/<devid> as for blkback.
//
// The QEMU is started by the domain's first qcow2 plug (the Host starts
// the process, we wait for QEMU to write "running" into
// device-model/<domid>/state) and recorded, as "<pid> <start time>", in
// the dom0-only node device-model/<domid>/xenopsd-ng-qemu: the durable
// record RemoveDomainDevices stops it from after a crash. It serves the
// domain until the domain is torn down; unplugging a qcow2 disk leaves it
// running (idle when it was the last one).

// QEMUWait bounds the wait for a new QEMU to report itself running.
const QEMUWait = 30 * time.Second

// plugQdisk plugs a qcow2 disk: the domain's QEMU (started if there is
// none), the backend and frontend directories, then QEMU's InitWait. On
// failure what it did is undone, the QEMU too if this plug started it.
func (p *Plugger) plugQdisk(ctx context.Context, rec Record, d Disk) (Record, error) {
	rec.BackendKind, rec.Format = KindQdisk, FormatQCOW2
	q, started, err := p.ensureQEMU(ctx, rec.Domid)
	if err != nil {
		return Record{}, failed(rec, "starting its QEMU", err)
	}
	rec.QEMU = q
	fail := func(u undo, step string, err error) (Record, error) {
		err = p.failPlug(ctx, rec, u, step, err)
		if started {
			if serr := p.stopQEMU(ctx, rec.Domid); serr != nil {
				err = errors.Join(err, fmt.Errorf("stopping the QEMU it started: %w", serr))
			}
		}
		return Record{}, err
	}
	if err := p.writeDirs(ctx, rec, qdiskLayout(rec, d)); err != nil {
		return fail(undo{}, "writing its xenstore directories", err)
	}
	if err := p.wait(ctx, rec, p.backendWait, "QEMU's InitWait", true, p.initWaitCond(ctx, rec)); err != nil {
		return fail(undo{dirs: true}, "waiting for QEMU's qdisk", err)
	}
	p.log.Info("disk plugged", "device", rec.name(), "path", d.Path, "format", rec.Format, "qemu_pid", q.Pid)
	return rec, nil
}

// qdiskLayout is what libxl's device_disk_add writes for a qdisk disk:
// the phy layout with type qdisk and params "<format>:<path>".
func qdiskLayout(rec Record, d Disk) layout {
	l := diskLayout(rec, d)
	for i := range l.back {
		switch l.back[i].key {
		case "type":
			l.back[i].value = string(KindQdisk)
		case "params":
			l.back[i].value = string(FormatQCOW2) + ":" + d.Path
		}
	}
	return l
}

// ensureQEMU returns domain domid's running QEMU, starting one (started)
// if none is recorded or the recorded one is gone.
func (p *Plugger) ensureQEMU(ctx context.Context, domid uint32) (q QEMUProc, started bool, err error) {
	p.qemuMu.Lock()
	defer p.qemuMu.Unlock()
	q, ok, err := p.recordedQEMU(ctx, domid)
	if err != nil {
		return q, false, err
	}
	if ok {
		alive, err := p.host.QEMUAlive(ctx, q, domid)
		if err != nil {
			return q, false, err
		}
		if alive {
			return q, false, nil
		}
		p.log.Warn("the domain's QEMU is gone; starting a new one", "domid", domid, "qemu_pid", q.Pid)
		if err := p.xs.Remove(ctx, deviceModelDir(domid)); err != nil && !errors.Is(err, syscall.ENOENT) {
			return q, false, err
		}
	}
	// QEMU writes its state below deviceModelDir: make it dom0's and
	// record the process before waiting, so a crash in between leaves
	// RemoveDomainDevices what to stop.
	dir := deviceModelDir(domid)
	if err := p.xs.Transaction(ctx, func(tx *xenstore.Tx) error {
		return tx.Batch(ctx, xenstore.MkdirOp(dir), xenstore.SetPermsOp(dir, []xenstore.Perm{{Domid: backendDomid, Access: xenstore.AccessNone}}))
	}); err != nil {
		return q, false, fmt.Errorf("creating %s: %w", dir, err)
	}
	q, err = p.host.StartQEMU(ctx, domid)
	if err != nil {
		_ = p.xs.Remove(context.WithoutCancel(ctx), dir)
		return q, false, err
	}
	if err := p.xs.Write(ctx, qemuNode(domid), []byte(q.String())); err != nil {
		return q, true, errors.Join(fmt.Errorf("recording QEMU pid %d: %w", q.Pid, err), p.stopProc(ctx, q, domid))
	}
	if err := p.waitQEMURunning(ctx, q, domid); err != nil {
		return q, true, errors.Join(err, p.stopQEMULocked(ctx, domid))
	}
	p.log.Info("QEMU started", "domid", domid, "qemu_pid", q.Pid)
	return q, true, nil
}

// waitQEMURunning waits, bounded by QEMUWait, for QEMU to write "running"
// into device-model/<domid>/state; a QEMU that exits first fails it (its
// exit writes nothing, so the process is looked at every qemuPoll too).
func (p *Plugger) waitQEMURunning(ctx context.Context, q QEMUProc, domid uint32) error {
	ctx, cancel := context.WithTimeout(ctx, QEMUWait)
	defer cancel()
	path := deviceModelDir(domid) + "/state"
	sw, err := p.watchStates(ctx, path)
	if err != nil {
		return err
	}
	defer sw.close()
	for {
		v, _, err := p.readNode(ctx, path)
		if err == nil && v == "running" {
			return nil
		}
		if err == nil {
			var alive bool
			if alive, err = p.host.QEMUAlive(ctx, q, domid); err == nil && !alive {
				return fmt.Errorf("QEMU (pid %d) exited before it was running (the daemon's log has the end of QEMU's)", q.Pid)
			}
		}
		if err == nil {
			pctx, pcancel := context.WithTimeout(ctx, qemuPoll)
			err = sw.next(pctx)
			pcancel()
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				err = nil
			}
		}
		if err != nil {
			return fmt.Errorf("QEMU (pid %d) did not report itself running within %v (state %q): %w", q.Pid, QEMUWait, v, err)
		}
	}
}

// qemuPoll is how often waitQEMURunning looks at the process.
const qemuPoll = 250 * time.Millisecond

// recordedQEMU reads the domain's QEMU record; ok is false if there is none.
func (p *Plugger) recordedQEMU(ctx context.Context, domid uint32) (QEMUProc, bool, error) {
	v, ok, err := p.readNode(ctx, qemuNode(domid))
	if err != nil || !ok {
		return QEMUProc{}, false, err
	}
	q, err := parseQEMUProc(v)
	if err != nil {
		return QEMUProc{}, false, fmt.Errorf("%s: %w", qemuNode(domid), err)
	}
	return q, true, nil
}

// qemuGone is the Status error of a qcow2 disk whose QEMU is gone.
func qemuGone(rec Record) string {
	return fmt.Sprintf("its QEMU (pid %d) is gone: the disk is not served", rec.QEMU.Pid)
}

// qemuAlive is whether rec's QEMU still runs (false if that cannot be read).
func (p *Plugger) qemuAlive(ctx context.Context, rec Record) bool {
	alive, err := p.host.QEMUAlive(ctx, rec.QEMU, rec.Domid)
	return err == nil && alive
}

// stopQEMU stops the domain's recorded QEMU, if any, and removes its
// xenstore directory; the record stays if the process could not be
// stopped, for a retry.
func (p *Plugger) stopQEMU(ctx context.Context, domid uint32) error {
	p.qemuMu.Lock()
	defer p.qemuMu.Unlock()
	return p.stopQEMULocked(ctx, domid)
}

func (p *Plugger) stopQEMULocked(ctx context.Context, domid uint32) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupWait)
	defer cancel()
	q, ok, err := p.recordedQEMU(ctx, domid)
	if err != nil {
		return err
	}
	if ok {
		if err := p.stopProc(ctx, q, domid); err != nil {
			return err
		}
	}
	if err := p.xs.Remove(ctx, deviceModelDir(domid)); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("removing %s: %w", deviceModelDir(domid), err)
	}
	return nil
}

func (p *Plugger) stopProc(ctx context.Context, q QEMUProc, domid uint32) error {
	if err := p.host.StopQEMU(ctx, q, domid); err != nil {
		return fmt.Errorf("stopping QEMU pid %d of domain %d: %w", q.Pid, domid, err)
	}
	p.log.Info("QEMU stopped", "domid", domid, "qemu_pid", q.Pid)
	return nil
}
