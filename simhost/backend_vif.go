package simhost

import (
	"context"
	"fmt"
	"strconv"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// netback is Linux's netback (drivers/net/xen-netback/xenbus.c) on one
// vif:
//
//   - probe advertises its features, switches to InitWait, reads script
//     (fatal "reading script" if the toolstack wrote none) and handle
//     (fatal "reading handle"), and creates the interface
//     vif<frontend domid>.<handle> in dom0 (fatal "creating interface"
//     if it exists), which is what the hotplug side waits for;
//   - its state follows set_backend_state: the frontend Connected makes it
//     connect (multi-queue-num-queues, the backend's mac, tx-ring-ref,
//     rx-ring-ref and event-channel(-tx/-rx) of each queue, checked as
//     connect and connect_data_rings do) and Connected, but the Connected
//     written to the store waits for hotplug-status "connected";
//   - the frontend Closing and Closed close it; Closed with online 0, or
//     Unknown (the frontend vanished), unregisters it, which removes
//     hotplug-status and the interface.
//
// One departure: when connecting fails (a fatal error, so Closing),
// Linux still writes Connected after it; the simulator stays Closing.
type netback struct {
	bus *backendBus
	dev *backendDev

	state        devices.State // be->state: ahead of the store while hotplug is pending
	link         string        // the interface, "" if none
	hotplugWatch bool          // the Connected write waits for hotplug-status
}

// netbackMaxQueues is the xenvif_max_queues the simulator advertises.
const netbackMaxQueues = 8

func (n *netback) x() *xenbusDev { return &n.dev.x }

func (n *netback) probe(ctx context.Context) bool {
	x := n.x()
	if err := x.writeKeys(ctx,
		"feature-sg", "1",
		"feature-gso-tcpv4", "1",
		"feature-gso-tcpv6", "1",
		"feature-ipv6-csum-offload", "1",
		"feature-rx-copy", "1",
		"feature-xdp-headroom", "1",
		"feature-rx-flip", "0",
		"feature-multicast-control", "1",
		"feature-dynamic-multicast-control", "1",
		"feature-split-event-channels", "1",
		"multi-queue-max-queues", strconv.Itoa(netbackMaxQueues),
		"feature-ctrl-ring", "1"); err != nil {
		x.fatal(ctx, errnoOf(err), "completing transaction")
		return false
	}
	n.switchTo(ctx, devices.StateInitWait)
	if _, err := x.read(ctx, "script"); err != nil {
		x.fatal(ctx, errnoOf(err), "reading script")
		n.remove(ctx)
		return false
	}
	return n.createInterface(ctx)
}

// createInterface is backend_create_xenvif.
func (n *netback) createInterface(ctx context.Context) bool {
	x := n.x()
	v, err := x.read(ctx, "handle")
	handle, ok := scanInt(v)
	if err != nil || !ok {
		e := syscall.EINVAL
		if err != nil {
			e = errnoOf(err)
		}
		x.fatal(ctx, e, "reading handle")
		n.remove(ctx)
		return false
	}
	name := fmt.Sprintf("vif%d.%d", x.otherID, handle)
	if err := n.bus.d0.createLink(name, x.otherID, uint32(handle)); err != nil {
		x.fatal(ctx, errnoOf(err), "creating interface")
		n.remove(ctx)
		return false
	}
	n.link = name
	return true
}

// switchTo is backend_switch_state.
func (n *netback) switchTo(ctx context.Context, s devices.State) {
	n.state = s
	if !n.hotplugWatch {
		n.x().switchState(ctx, s)
	}
}

// setState is set_backend_state: the shortest path to target.
func (n *netback) setState(ctx context.Context, target devices.State) {
	for n.state != target {
		switch n.state {
		case devices.StateInitialising:
			if target == devices.StateClosed {
				n.switchTo(ctx, devices.StateClosed)
			} else {
				n.switchTo(ctx, devices.StateInitWait)
			}
		case devices.StateClosed:
			if target == devices.StateClosing {
				n.switchTo(ctx, devices.StateClosing)
			} else {
				n.switchTo(ctx, devices.StateInitWait)
			}
		case devices.StateInitWait:
			if target != devices.StateConnected {
				n.switchTo(ctx, devices.StateClosing)
				continue
			}
			if !n.connect(ctx) {
				n.state = n.x().state // the fatal error closed it
				return
			}
			n.switchTo(ctx, devices.StateConnected)
			n.hotplugChanged(ctx) // the new watch fires once at once
		case devices.StateConnected:
			n.switchTo(ctx, devices.StateClosing) // backend_disconnect: rings unmapped
		default: // Closing
			n.switchTo(ctx, devices.StateClosed)
		}
	}
}

func (n *netback) frontendChanged(ctx context.Context, s devices.State) bool {
	x := n.x()
	switch s {
	case devices.StateInitialising:
		n.setState(ctx, devices.StateInitWait)
	case devices.StateInitialised:
	case devices.StateConnected:
		n.setState(ctx, devices.StateConnected)
	case devices.StateReconfiguring:
		x.switchState(ctx, devices.StateReconfigured)
	case devices.StateClosing:
		n.setState(ctx, devices.StateClosing)
	case devices.StateClosed:
		n.setState(ctx, devices.StateClosed)
		return !x.online(ctx)
	case devices.StateUnknown:
		n.setState(ctx, devices.StateClosed)
		return true
	default:
		x.fatal(ctx, syscall.EINVAL, "saw state %d at frontend", s)
	}
	return false
}

// connect maps the frontend's queues and arms the hotplug-status watch;
// false after a fatal error.
func (n *netback) connect(ctx context.Context) bool {
	x := n.x()
	if n.link == "" {
		return false
	}
	queues := uint64(1)
	if v, err := x.readOther(ctx, "multi-queue-num-queues"); err == nil {
		q, ok := scanUint(v)
		if !ok || q == 0 || q > netbackMaxQueues {
			x.fatal(ctx, syscall.EINVAL, "guest requested %s queues, but valid range is 1 - %d.", v, netbackMaxQueues)
			return false
		}
		queues = q
	}
	if mac, err := x.read(ctx, "mac"); err != nil || !validMAC(mac) {
		x.fatal(ctx, syscall.ENOENT, "parsing %s/mac", x.nodename)
		return false
	}
	if v, err := x.readOther(ctx, "request-rx-copy"); err == nil {
		if _, ok := scanUint(v); !ok {
			x.fatal(ctx, syscall.EINVAL, "reading %s/request-rx-copy", x.otherend)
		}
	}
	for q := range queues {
		dir := x.otherend
		if queues > 1 {
			dir += "/queue-" + strconv.FormatUint(q, 10)
		}
		if !n.connectDataRings(ctx, dir) {
			return false
		}
	}
	n.hotplugWatch = true
	return true
}

// connectDataRings is connect_data_rings for the queue whose keys are in
// dir.
func (n *netback) connectDataRings(ctx context.Context, dir string) bool {
	x := n.x()
	read := func(key string) (uint64, bool) {
		v, err := x.cli.Read(ctx, dir+"/"+key)
		if err != nil {
			return 0, false
		}
		u, ok := scanUint(string(v))
		return u, ok && u <= 1<<32-1
	}
	tx, ok1 := read("tx-ring-ref")
	rx, ok2 := read("rx-ring-ref")
	if !ok1 || !ok2 {
		x.fatal(ctx, syscall.EINVAL, "reading %s/ring-ref", dir)
		return false
	}
	evTx, ok1 := read("event-channel-tx")
	evRx, ok2 := read("event-channel-rx")
	if !ok1 || !ok2 {
		var ok bool
		if evTx, ok = read("event-channel"); !ok {
			x.fatal(ctx, syscall.EINVAL, "reading %s/event-channel(-tx/rx)", dir)
			return false
		}
		evRx = evTx
	}
	if err := mapRing(n.bus, x.otherID, []uint64{tx, rx}, []uint64{evTx, evRx}); err != nil {
		x.fatal(ctx, errnoOf(err), "mapping shared-frames %d/%d port tx %d rx %d", tx, rx, evTx, evRx)
		return false
	}
	return true
}

// validMAC is xen_net_read_mac's parse: six hex numbers separated by ':'.
func validMAC(s string) bool {
	for i := range 6 {
		end := 0
		for end < len(s) && digitIn(s[end], 16) {
			end++
		}
		if end == 0 {
			return false
		}
		v, err := strconv.ParseUint(s[:end], 16, 64)
		if err != nil || v > 0xff {
			return false
		}
		s = s[end:]
		if i == 5 {
			return s == ""
		}
		if s == "" || s[0] != ':' {
			return false
		}
		s = s[1:]
	}
	return false
}

// backendChanged handles the device's own directory: the hotplug-status
// watch, while armed.
func (n *netback) backendChanged(ctx context.Context) { n.hotplugChanged(ctx) }

// hotplugChanged is hotplug_status_changed: "connected" completes the
// pending state change and disarms the watch.
func (n *netback) hotplugChanged(ctx context.Context) {
	if !n.hotplugWatch {
		return
	}
	if v, err := n.x().read(ctx, "hotplug-status"); err == nil && v == "connected" {
		n.hotplugWatch = false
		n.x().switchState(ctx, n.state)
	}
}

// remove is netback_remove.
func (n *netback) remove(ctx context.Context) {
	n.hotplugWatch = false
	if err := n.x().cli.Remove(ctx, n.x().dir()+"/hotplug-status"); err != nil {
		n.x().log.Debug("simhost: netback: cannot remove hotplug-status", "dev", n.x().nodename, "err", err)
	}
	if n.link != "" {
		n.bus.d0.removeLink(n.link)
		n.link = ""
	}
}
