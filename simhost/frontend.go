package simhost

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// frontendBus is a simulated guest kernel's xenbus frontend bus
// (drivers/xen/xenbus/xenbus_probe_frontend.c) with blkfront and netfront
// (frontend_drivers.go). It watches the guest's device/ directory; a
// device whose state reads Initialising is probed (backend and
// backend-id read, the driver started, the backend's state watched). The
// guest's behaviour (sim.GuestBehaviour) is read at every event: with
// DevicesNeverConnect the drivers ignore their backends. A paused guest
// runs no code: its drivers act once it is unpaused, and a guest that shut
// down never acts again.
type frontendBus struct {
	g     *guest
	grefs atomic.Uint64 // the next grant reference the guest hands out

	mu   sync.Mutex
	devs map[string]*frontendDev // by nodename, device/<kind>/<devid>
	wg   sync.WaitGroup
}

// frontendDriver is blkfront or netfront on one device.
type frontendDriver interface {
	// probe starts the driver; false if it failed.
	probe(ctx context.Context) bool
	// backendChanged handles the backend's state.
	backendChanged(ctx context.Context, s devices.State, b sim.GuestBehaviour)
}

// frontendDev is one device on the bus.
type frontendDev struct {
	x    xenbusDev
	kind devices.Kind
	kick chan struct{} // its directory changed
}

// runFrontends serves the guest's frontend bus until ctx ends.
func (g *guest) runFrontends(ctx context.Context) {
	fb := &frontendBus{g: g, devs: make(map[string]*frontendDev)}
	fb.grefs.Store(grantFirstGuestRef)
	defer fb.wg.Wait()
	w, err := g.cli.Watch(ctx, g.path("device"), "frontends")
	if err != nil {
		g.h.log.Debug("simhost: guest cannot watch its devices", "domid", g.d, "err", err)
		return
	}
	defer w.Close()
	for {
		select {
		case ev, ok := <-w.Events():
			if !ok {
				return
			}
			fb.changed(ctx, ev.Path)
		case <-ctx.Done():
			return
		}
	}
}

// grantFirstGuestRef is the first grant reference a guest hands out
// (after GNTTAB_NR_RESERVED_ENTRIES).
const grantFirstGuestRef = 8

// changed is xenbus_dev_changed for a path below device/.
func (fb *frontendBus) changed(ctx context.Context, path string) {
	rel, ok := strings.CutPrefix(path, fb.g.path("device"))
	if !ok {
		return
	}
	parts := strings.Split(strings.TrimPrefix(rel, "/"), "/")
	if len(parts) >= 2 {
		fb.deviceChanged(ctx, devices.Kind(parts[0]), parts[1])
		return
	}
	for _, kind := range []devices.Kind{devices.KindVBD, devices.KindVIF} {
		ids, _ := fb.g.cli.List(ctx, fb.g.path("device/"+string(kind)))
		for _, id := range ids {
			fb.deviceChanged(ctx, kind, id)
		}
	}
	fb.mu.Lock()
	all := make([]*frontendDev, 0, len(fb.devs))
	for _, d := range fb.devs {
		all = append(all, d)
	}
	fb.mu.Unlock()
	for _, d := range all {
		d.kicked()
	}
}

func (d *frontendDev) kicked() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// deviceChanged kicks a bound device or probes a new one in Initialising.
func (fb *frontendBus) deviceChanged(ctx context.Context, kind devices.Kind, id string) {
	if kind != devices.KindVBD && kind != devices.KindVIF {
		return
	}
	nodename := "device/" + string(kind) + "/" + id
	fb.mu.Lock()
	d := fb.devs[nodename]
	fb.mu.Unlock()
	if d != nil {
		d.kicked()
		return
	}
	if readDriverState(ctx, fb.g.cli, fb.g.path(nodename)) != devices.StateInitialising {
		return
	}
	d = &frontendDev{
		x: xenbusDev{cli: fb.g.cli, home: fb.g.home(), nodename: nodename,
			state: devices.StateInitialising, log: fb.g.h.log.With("domid", fb.g.d)},
		kind: kind,
		kick: make(chan struct{}, 1),
	}
	fb.mu.Lock()
	if fb.devs[nodename] != nil {
		fb.mu.Unlock()
		return
	}
	fb.devs[nodename] = d
	fb.wg.Add(1)
	fb.mu.Unlock()
	go func() {
		defer fb.wg.Done()
		defer func() {
			fb.mu.Lock()
			delete(fb.devs, nodename)
			fb.mu.Unlock()
		}()
		fb.serve(ctx, d)
	}()
}

// serve runs one frontend until its directory goes, the guest can no
// longer run, or ctx ends.
func (fb *frontendBus) serve(ctx context.Context, d *frontendDev) {
	g := fb.g
	if g.h.hv.WaitRunnable(ctx, g.d) != nil {
		return
	}
	drv := fb.talkToOtherend(ctx, d)
	if drv == nil || !drv.probe(ctx) {
		return
	}
	w, err := g.cli.Watch(ctx, d.x.otherend+"/state", "fe:"+d.x.nodename)
	if err != nil {
		return
	}
	defer w.Close()
	for {
		select {
		case <-d.kick:
			if _, err := g.cli.Read(ctx, d.x.dir()); errors.Is(err, syscall.ENOENT) {
				return // the toolstack removed the device
			}
		case _, ok := <-w.Events():
			if !ok {
				return
			}
			if g.h.hv.WaitRunnable(ctx, g.d) != nil {
				return
			}
			b, err := g.h.hv.GuestBehaviour(g.d)
			if err != nil {
				return
			}
			drv.backendChanged(ctx, d.x.otherState(ctx), b)
		case <-ctx.Done():
			return
		}
	}
}

// talkToOtherend reads backend-id and backend (read_otherend_details) and
// picks the driver; nil after a fatal error.
func (fb *frontendBus) talkToOtherend(ctx context.Context, d *frontendDev) frontendDriver {
	if !d.x.readOtherend(ctx, "backend") {
		return nil
	}
	if d.kind == devices.KindVBD {
		return &blkfront{bus: fb, dev: d}
	}
	return &netfront{bus: fb, dev: d}
}
