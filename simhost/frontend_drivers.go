package simhost

import (
	"context"
	"strconv"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// blkfront is Linux's blkfront (drivers/block/xen-blkfront.c) on one vbd:
// at the backend's InitWait it grants a one-page ring, allocates an event
// channel for the backend and writes ring-ref, event-channel, protocol and
// feature-persistent, then Initialised; at the backend's Connected it
// reads sectors, info and sector-size (fatal "reading backend fields at
// <backend>" if missing) and goes Connected; at the backend's Closing it
// closes. With DevicesRefuseClose the disk is in use, as a mounted one:
// blkfront_closing then reports "Device in use; refusing to close" and
// stays Closing.
type blkfront struct {
	bus *frontendBus
	dev *frontendDev
}

func (f *blkfront) x() *xenbusDev { return &f.dev.x }

func (f *blkfront) probe(ctx context.Context) bool {
	x := f.x()
	for _, k := range []string{"virtual-device", "virtual-device-ext"} {
		if v, err := x.read(ctx, k); err == nil {
			if _, ok := scanInt(v); ok {
				return true
			}
		}
	}
	x.fatal(ctx, syscall.ENOENT, "reading virtual-device")
	return false
}

func (f *blkfront) backendChanged(ctx context.Context, s devices.State, b sim.GuestBehaviour) {
	x := f.x()
	if b.DevicesNeverConnect {
		return
	}
	switch s {
	case devices.StateInitWait:
		if x.state == devices.StateInitialising {
			f.talkToBlkback(ctx)
		}
	case devices.StateConnected:
		if x.state != devices.StateInitialised && x.state != devices.StateConnected && !f.talkToBlkback(ctx) {
			return
		}
		f.connect(ctx)
	case devices.StateClosed:
		if x.state == devices.StateClosed {
			return
		}
		fallthrough
	case devices.StateClosing:
		f.closing(ctx, b)
	}
}

// talkToBlkback sets up the ring; false after a fatal error.
func (f *blkfront) talkToBlkback(ctx context.Context) bool {
	x := f.x()
	port, err := f.bus.g.h.hv.AllocUnboundEvtchn(ctx, f.bus.g.d, xenctrl.Domid(x.otherID))
	if err != nil {
		x.fatal(ctx, errnoOf(err), "allocating event channel")
		return false
	}
	ref := f.bus.grefs.Add(1) - 1
	if err := x.writeKeys(ctx,
		"ring-ref", strconv.FormatUint(ref, 10),
		"event-channel", strconv.FormatUint(uint64(port), 10),
		"protocol", "x86_64-abi",
		"feature-persistent", "1"); err != nil {
		x.fatal(ctx, errnoOf(err), "writing ring-ref")
		return false
	}
	x.switchState(ctx, devices.StateInitialised)
	return true
}

// connect is blkfront_connect.
func (f *blkfront) connect(ctx context.Context) {
	x := f.x()
	for _, k := range []string{"sectors", "info", "sector-size"} {
		if _, ok := x.readOtherUint64(ctx, k); !ok {
			x.fatal(ctx, syscall.EINVAL, "reading backend fields at %s", x.otherend)
			return
		}
	}
	x.switchState(ctx, devices.StateConnected)
}

// closing is blkfront_closing.
func (f *blkfront) closing(ctx context.Context, b sim.GuestBehaviour) {
	x := f.x()
	if x.state == devices.StateClosing {
		return
	}
	if b.DevicesRefuseClose && x.state == devices.StateConnected {
		msg := "Device in use; refusing to close"
		if err := x.cli.Write(ctx, x.errorPath(), []byte(strconv.Itoa(int(syscall.EBUSY))+" "+msg)); err != nil {
			x.log.Debug("simhost: blkfront: cannot write error node", "dev", x.dir(), "err", err)
		}
		x.switchState(ctx, devices.StateClosing)
		return
	}
	x.switchState(ctx, devices.StateClosed)
}

// netfront is Linux's netfront (drivers/net/xen-netfront.c) on one vif: at
// the backend's InitWait it reads its mac (fatal "parsing <dev>/mac" if
// bad), grants tx and rx rings, allocates an event channel and writes
// tx-ring-ref, rx-ring-ref, event-channel, request-rx-copy and its
// features (and multi-queue-num-queues=1 when the backend offers queues:
// one queue's nodes stay at the top level, as on real Xen), then goes
// straight to Connected; at the backend's Closing it
// closes. With DevicesRefuseClose it ignores the backend closing, as a
// hung guest would.
type netfront struct {
	bus *frontendBus
	dev *frontendDev
}

func (f *netfront) x() *xenbusDev { return &f.dev.x }

func (f *netfront) probe(context.Context) bool { return true }

func (f *netfront) backendChanged(ctx context.Context, s devices.State, b sim.GuestBehaviour) {
	x := f.x()
	if b.DevicesNeverConnect {
		return
	}
	switch s {
	case devices.StateInitWait:
		if x.state == devices.StateInitialising && f.connect(ctx) {
			x.switchState(ctx, devices.StateConnected)
		}
	case devices.StateClosed:
		if x.state == devices.StateClosed {
			return
		}
		fallthrough
	case devices.StateClosing:
		if !b.DevicesRefuseClose {
			x.switchState(ctx, devices.StateClosed)
		}
	}
}

// connect is xennet_connect's xenstore part; false after a fatal error.
func (f *netfront) connect(ctx context.Context) bool {
	x := f.x()
	if mac, err := x.read(ctx, "mac"); err != nil || !validMAC(mac) {
		x.fatal(ctx, syscall.ENOENT, "parsing %s/mac", x.nodename)
		return false
	}
	port, err := f.bus.g.h.hv.AllocUnboundEvtchn(ctx, f.bus.g.d, xenctrl.Domid(x.otherID))
	if err != nil {
		x.fatal(ctx, errnoOf(err), "allocating event channel")
		return false
	}
	tx := f.bus.grefs.Add(2) - 2
	if _, err := x.readOther(ctx, "multi-queue-max-queues"); err == nil {
		if err := x.writeKeys(ctx, "multi-queue-num-queues", "1"); err != nil {
			x.fatal(ctx, errnoOf(err), "writing multi-queue-num-queues")
			return false
		}
	}
	if err := x.writeKeys(ctx,
		"tx-ring-ref", strconv.FormatUint(tx, 10),
		"rx-ring-ref", strconv.FormatUint(tx+1, 10),
		"event-channel", strconv.FormatUint(uint64(port), 10),
		"request-rx-copy", "1",
		"feature-rx-notify", "1",
		"feature-sg", "1",
		"feature-gso-tcpv4", "1",
		"feature-gso-tcpv6", "1",
		"feature-ipv6-csum-offload", "1"); err != nil {
		x.fatal(ctx, errnoOf(err), "writing tx-ring-ref")
		return false
	}
	return true
}
