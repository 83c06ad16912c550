package simhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
)

// The sim's QEMU: what a dom0 QEMU started for a PV domain's qdisk
// backends does, without a process. StartQEMU registers one for a domain
// (a made-up pid and start time); the backend bus then serves the
// domain's backend/qdisk directories with qdisk (blkback's protocol over
// the image named by params, "qcow2:<path>") and the QEMU's "running" is
// written into device-model/<domid>/state. StopQEMU, or the QEMU dying,
// ends those devices without a word in xenstore, as a killed QEMU leaves
// its directories as they were.

// simQEMU is one QEMU.
type simQEMU struct {
	pid   uint32
	start uint64
	domid uint32
}

// qemuHooks are the backend bus's reactions to a QEMU starting (write its
// state, serve the domain's qdisk directories) and stopping (stop serving).
type qemuHooks struct {
	started func(domid uint32)
	stopped func(domid uint32)
}

func (d *dom0) setQEMUHooks(h qemuHooks) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.qemuHooks = h
}

// startQEMU registers a QEMU for domid; at most one per domain.
func (d *dom0) startQEMU(domid uint32) (simQEMU, error) {
	d.mu.Lock()
	for _, q := range d.qemus {
		if q.domid == domid {
			d.mu.Unlock()
			return simQEMU{}, fmt.Errorf("domain %d has a QEMU already (pid %d): %w", domid, q.pid, syscall.EEXIST)
		}
	}
	d.nextPid++
	q := simQEMU{pid: 40000 + d.nextPid, start: 1000 + 17*uint64(d.nextPid), domid: domid}
	d.qemus[q.pid] = q
	hooks := d.qemuHooks
	d.mu.Unlock()
	if hooks.started != nil {
		hooks.started(domid)
	}
	return q, nil
}

// qemuAlive is whether q runs (pid, start time and domain all match).
func (d *dom0) qemuAlive(q simQEMU) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.qemus[q.pid] == q
}

// qemuFor is whether a QEMU runs for domid.
func (d *dom0) qemuFor(domid uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, q := range d.qemus {
		if q.domid == domid {
			return true
		}
	}
	return false
}

// stopQEMU ends q, if it still runs.
func (d *dom0) stopQEMU(q simQEMU) {
	d.mu.Lock()
	if d.qemus[q.pid] != q {
		d.mu.Unlock()
		return
	}
	delete(d.qemus, q.pid)
	hooks := d.qemuHooks
	d.mu.Unlock()
	if hooks.stopped != nil {
		hooks.stopped(q.domid)
	}
}

// qcow2Magic starts every qcow2 image.
const qcow2Magic = "QFI\xfb"

// openImage opens what a qdisk backend's params names, "qcow2:<path>"
// (QEMU's xen-block: "<driver>:<file>", raw without a driver), as QEMU
// would: the file must exist and be in that format. Its size is the
// image's virtual size (the qcow2 header's size field).
func openImage(params string, write bool) (blockDev, uint64, error) {
	driver, path, ok := strings.Cut(params, ":")
	if !ok {
		driver, path = "raw", params
	}
	if driver != "qcow2" && driver != "raw" {
		return blockDev{}, 0, fmt.Errorf("unknown driver %q: %w", driver, syscall.EINVAL)
	}
	flag := os.O_RDONLY
	if write {
		flag = os.O_RDWR
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return blockDev{}, 0, err
	}
	defer f.Close()
	if driver == "raw" {
		n, err := f.Seek(0, io.SeekEnd)
		return blockDev{path: path, close: func() {}}, uint64(n) / 512, err
	}
	var hdr [32]byte
	if _, err := io.ReadFull(f, hdr[:]); err != nil || string(hdr[:4]) != qcow2Magic {
		return blockDev{}, 0, fmt.Errorf("%s: image is not in qcow2 format: %w", path, errors.Join(err, syscall.EINVAL))
	}
	return blockDev{path: path, close: func() {}}, binary.BigEndian.Uint64(hdr[24:32]) / 512, nil
}
