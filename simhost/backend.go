package simhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// backendBus is dom0's xenbus backend bus (drivers/xen/xenbus/
// xenbus_probe_backend.c) with two drivers: blkback for vbd devices
// (backend_vbd.go) and netback for vif devices (backend_vif.go). It watches
// /local/domain/0/backend; a device directory whose state reads
// Initialising is probed (its frontend and frontend-id read, its driver
// started), a device whose directory disappears is removed.
//
// Each bound device runs on its own goroutine, which is the only one to
// touch its driver: events from its own directory (the drivers' watches on
// physical-device and hotplug-status) and from its frontend's state node
// (xenbus's otherend watch) arrive there in order.
type backendBus struct {
	cli    *xenstore.Client // privileged, as dom0's kernel
	hv     *sim.Hypervisor
	d0     *dom0
	nrCPUs uint32
	log    *slog.Logger

	mu   sync.Mutex
	devs map[string]*backendDev // by nodename, backend/<kind>/<domid>/<devid>
	wg   sync.WaitGroup
}

// backendRoot is where the toolstack writes dom0's backends.
const backendRoot = "/local/domain/0/backend"

// backendDriver is blkback or netback on one device.
type backendDriver interface {
	// probe starts the driver; false if it failed (the device stays
	// without a driver until its directory goes).
	probe(ctx context.Context) bool
	// backendChanged handles a change in the device's own directory.
	backendChanged(ctx context.Context)
	// frontendChanged handles the frontend's state; true if the device
	// unregisters.
	frontendChanged(ctx context.Context, s devices.State) (unregister bool)
	// remove releases what the driver holds.
	remove(ctx context.Context)
}

// backendDev is one device on the bus.
type backendDev struct {
	x            xenbusDev
	kind         devices.Kind
	domid, devid uint32
	kick         chan struct{} // its directory changed
}

func newBackendBus(cli *xenstore.Client, hv *sim.Hypervisor, d0 *dom0, nrCPUs uint32, log *slog.Logger) *backendBus {
	return &backendBus{cli: cli, hv: hv, d0: d0, nrCPUs: nrCPUs, log: log.With("component", "backends"),
		devs: make(map[string]*backendDev)}
}

// run serves the bus until ctx ends, then waits for its devices.
func (b *backendBus) run(ctx context.Context) {
	defer b.wg.Wait()
	w, err := b.cli.Watch(ctx, backendRoot, "backends")
	if err != nil {
		if ctx.Err() == nil {
			b.log.Error("simhost: backends cannot watch xenstore; no device will connect", "err", err)
		}
		return
	}
	defer w.Close()
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				return
			}
			b.changed(ctx, ev.Path)
		case <-ctx.Done():
			return
		}
	}
}

// changed is xenbus_dev_changed for a path below backendRoot: the device
// it belongs to is kicked or probed; a path above devices rescans.
func (b *backendBus) changed(ctx context.Context, path string) {
	rel, ok := strings.CutPrefix(path, backendRoot)
	if !ok {
		return
	}
	parts := strings.Split(strings.TrimPrefix(rel, "/"), "/")
	if rel == "" || len(parts) < 3 {
		b.rescan(ctx, parts)
		return
	}
	b.deviceChanged(ctx, devices.Kind(parts[0]), parts[1], parts[2])
}

// rescan looks at every device below the given path prefix (kind, domid).
func (b *backendBus) rescan(ctx context.Context, prefix []string) {
	kinds := []string{string(devices.KindVBD), string(devices.KindVIF), string(devices.KindQdisk)}
	if len(prefix) > 0 && prefix[0] != "" {
		kinds = prefix[:1]
	}
	for _, kind := range kinds {
		domids, _ := b.cli.List(ctx, backendRoot+"/"+kind)
		if len(prefix) > 1 {
			domids = prefix[1:2]
		}
		for _, domid := range domids {
			devids, _ := b.cli.List(ctx, backendRoot+"/"+kind+"/"+domid)
			for _, devid := range devids {
				b.deviceChanged(ctx, devices.Kind(kind), domid, devid)
			}
		}
		// Devices whose directory went with a parent.
		b.mu.Lock()
		var gone []*backendDev
		for name, d := range b.devs {
			if strings.HasPrefix(name, "backend/"+kind+"/") {
				gone = append(gone, d)
			}
		}
		b.mu.Unlock()
		for _, d := range gone {
			d.kicked()
		}
	}
}

// deviceChanged kicks a bound device, or probes a new one whose state is
// Initialising (xenbus_probe_node).
func (b *backendBus) deviceChanged(ctx context.Context, kind devices.Kind, domidS, devidS string) {
	if kind != devices.KindVBD && kind != devices.KindVIF && kind != devices.KindQdisk {
		return // not a device class this dom0 serves
	}
	nodename := fmt.Sprintf("backend/%s/%s/%s", kind, domidS, devidS)
	b.mu.Lock()
	d := b.devs[nodename]
	b.mu.Unlock()
	if d != nil {
		d.kicked()
		return
	}
	domid, err1 := strconv.ParseUint(domidS, 10, 16)
	devid, err2 := strconv.ParseUint(devidS, 10, 32)
	if err1 != nil || err2 != nil {
		return
	}
	if kind == devices.KindQdisk && !b.d0.qemuFor(uint32(domid)) {
		return // no QEMU serves the domain (yet)
	}
	if readDriverState(ctx, b.cli, backendRoot+"/"+string(kind)+"/"+domidS+"/"+devidS) != devices.StateInitialising {
		return // not new: ignore (it may be going away after Closed)
	}
	d = &backendDev{
		x: xenbusDev{cli: b.cli, home: "/local/domain/0", nodename: nodename,
			state: devices.StateInitialising, log: b.log},
		kind: kind, domid: uint32(domid), devid: uint32(devid),
		kick: make(chan struct{}, 1),
	}
	b.mu.Lock()
	if b.devs[nodename] != nil {
		b.mu.Unlock()
		return
	}
	b.devs[nodename] = d
	b.wg.Add(1)
	b.mu.Unlock()
	go func() {
		defer b.wg.Done()
		b.serve(ctx, d)
	}()
}

func (d *backendDev) kicked() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// serve is xenbus_dev_probe and then the device's life until it
// unregisters, its directory goes, or ctx ends.
func (b *backendBus) serve(ctx context.Context, d *backendDev) {
	defer func() {
		b.mu.Lock()
		delete(b.devs, d.x.nodename)
		b.mu.Unlock()
	}()
	drv := b.talkToOtherend(ctx, d)
	if drv != nil && !drv.probe(ctx) {
		drv = nil
	}
	if drv == nil {
		// Bound to no driver: the device stays until its directory goes.
		b.waitGone(ctx, d)
		return
	}
	w, err := b.cli.Watch(ctx, d.x.otherend+"/state", "be:"+d.x.nodename)
	if err != nil {
		drv.remove(ctx)
		return
	}
	defer w.Close()
	for {
		select {
		case <-d.kick:
			if d.kind == devices.KindQdisk && !b.d0.qemuFor(d.domid) {
				drv.remove(ctx) // its QEMU is gone: nothing more is written
				return
			}
			if !b.exists(ctx, d) {
				b.unregister(ctx, d, drv)
				return
			}
			drv.backendChanged(ctx)
		case _, ok := <-w.Events():
			if !ok {
				return
			}
			if drv.frontendChanged(ctx, d.x.otherState(ctx)) {
				b.unregister(ctx, d, drv)
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// talkToOtherend reads frontend-id and frontend (read_otherend_details)
// and picks the driver; nil after a fatal error.
func (b *backendBus) talkToOtherend(ctx context.Context, d *backendDev) backendDriver {
	if !d.x.readOtherend(ctx, "frontend") {
		return nil
	}
	switch d.kind {
	case devices.KindVBD:
		return &blkback{bus: b, dev: d}
	case devices.KindQdisk:
		return &blkback{bus: b, dev: d, qdisk: true}
	}
	return &netback{bus: b, dev: d}
}

func (b *backendBus) exists(ctx context.Context, d *backendDev) bool {
	_, err := b.cli.Read(ctx, d.x.dir())
	return !errors.Is(err, syscall.ENOENT)
}

// waitGone waits for the directory of a device without driver to go.
func (b *backendBus) waitGone(ctx context.Context, d *backendDev) {
	for {
		select {
		case <-d.kick:
			if !b.exists(ctx, d) || d.kind == devices.KindQdisk && !b.d0.qemuFor(d.domid) {
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// unregister is device_unregister: the driver's remove, then
// xenbus_dev_remove's rule that a device the toolstack forced to Closing
// is switched to Closed.
func (b *backendBus) unregister(ctx context.Context, d *backendDev, drv backendDriver) {
	drv.remove(ctx)
	if v, err := d.x.read(ctx, "state"); err == nil {
		if n, ok := scanInt(v); ok && devices.State(n) == devices.StateClosing {
			d.x.switchState(ctx, devices.StateClosed)
		}
	}
	b.log.Debug("simhost: backend removed", "dev", d.x.nodename)
}

// qemuStarted is a QEMU starting for domid: it reports itself running in
// device-model/<domid>/state and serves the domain's qdisk directories.
func (b *backendBus) qemuStarted(ctx context.Context, domid uint32) {
	dm := fmt.Sprintf("/local/domain/0/device-model/%d/state", domid)
	if err := b.cli.Write(ctx, dm, []byte("running")); err != nil {
		b.log.Warn("simhost: QEMU cannot write its state", "domid", domid, "err", err)
	}
	b.rescan(ctx, []string{string(devices.KindQdisk), strconv.FormatUint(uint64(domid), 10)})
}

// qemuStopped is domid's QEMU gone: its devices stop being served. A
// stopped QEMU (SIGTERM) removes its devices' backend directories on its
// way out, as QEMU 7.2 does on real Xen; their parent stays.
func (b *backendBus) qemuStopped(ctx context.Context, domid uint32) {
	prefix := fmt.Sprintf("backend/%s/%d/", devices.KindQdisk, domid)
	b.mu.Lock()
	for name, d := range b.devs {
		if strings.HasPrefix(name, prefix) {
			d.kicked()
		}
	}
	b.mu.Unlock()
	dir := fmt.Sprintf("%s/%s/%d", backendRoot, devices.KindQdisk, domid)
	names, _ := b.cli.List(ctx, dir)
	for _, n := range names {
		_ = b.cli.Remove(ctx, dir+"/"+n)
	}
}
