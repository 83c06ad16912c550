package dom0

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// vifMAC is the address vif-bridge gives every vif: the numerically
// largest unicast address, so a bridge, which takes the lowest address of
// its ports as its own, never takes a vif's.
var vifMAC = net.HardwareAddr{0xfe, 0xff, 0xff, 0xff, 0xff, 0xff}

// linkPoll is how often a wait for a link looks again whatever the link
// subscription said (a subscription can drop events when it overflows).
const linkPoll = time.Second

// CheckBridge fails unless bridge exists and is a bridge.
func (h *Host) CheckBridge(ctx context.Context, bridge string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := h.bridge(bridge)
	return err
}

// bridge returns the bridge link named name.
func (h *Host) bridge(name string) (netlink.Link, error) {
	if err := checkLinkName(name); err != nil {
		return nil, fmt.Errorf("bridge %q: %w", name, err)
	}
	link, err := h.nl.LinkByName(name)
	if isLinkGone(err) {
		return nil, fmt.Errorf("bridge %q does not exist", name)
	}
	if err != nil {
		return nil, fmt.Errorf("bridge %q: %w", name, err)
	}
	if link.Type() != "bridge" {
		return nil, fmt.Errorf("%q is a %s link, not a bridge", name, link.Type())
	}
	return link, nil
}

// ConnectVIF waits (until ctx ends) for netback's interface name, then
// does what vif-bridge does: it gives it the MAC fe:ff:ff:ff:ff:ff, the
// MTU mtu (0: the bridge's, as vif-bridge does when libxl wrote no "mtu"),
// makes it a port of bridge and brings it up. It changes only what
// differs, so running it again on a connected vif leaves it undisturbed.
func (h *Host) ConnectVIF(ctx context.Context, name, bridge string, mtu uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkLinkName(name); err != nil {
		return fmt.Errorf("vif %q: %w", name, err)
	}
	br, err := h.bridge(bridge)
	if err != nil {
		return err
	}
	vif, err := h.waitLink(ctx, name)
	if err != nil {
		return err
	}
	if mtu == 0 {
		mtu = uint32(br.Attrs().MTU)
	}
	attrs := vif.Attrs()
	if !bytes.Equal(attrs.HardwareAddr, vifMAC) {
		// A running interface may refuse a new address (EBUSY): netback's
		// does.
		if err := h.nl.LinkSetDown(vif); err != nil {
			return fmt.Errorf("vif %s: down: %w", name, err)
		}
		if err := h.nl.LinkSetHardwareAddr(vif, vifMAC); err != nil {
			return fmt.Errorf("vif %s: set MAC %s: %w", name, vifMAC, err)
		}
	}
	if attrs.MTU != int(mtu) {
		if err := h.nl.LinkSetMTU(vif, int(mtu)); err != nil {
			return fmt.Errorf("vif %s: set MTU %d: %w", name, mtu, err)
		}
	}
	if attrs.MasterIndex != br.Attrs().Index {
		if err := h.nl.LinkSetMaster(vif, br); err != nil {
			return fmt.Errorf("vif %s: add to bridge %s: %w", name, bridge, err)
		}
	}
	if err := h.nl.LinkSetUp(vif); err != nil {
		return fmt.Errorf("vif %s: up: %w", name, err)
	}
	h.log.Info("vif connected", "vif", name, "bridge", bridge, "mtu", mtu)
	return nil
}

// waitLink returns the link name once it exists, or fails when ctx ends.
func (h *Host) waitLink(ctx context.Context, name string) (netlink.Link, error) {
	// Subscribe before the first look, so that a link created in between
	// is not missed.
	sub := make(chan netlink.LinkUpdate, 16)
	done := make(chan struct{})
	var updates <-chan netlink.LinkUpdate // nil when not subscribed: poll only
	err := netlink.LinkSubscribeWithOptions(sub, done, netlink.LinkSubscribeOptions{Namespace: h.netns})
	if err != nil {
		h.log.Warn("no link subscription: polling", "vif", name, "err", err)
		defer close(done)
	} else {
		updates = sub
		defer func() {
			close(done)
			for range sub { // the subscription's reader closes sub when it ends
			}
		}()
	}
	poll := time.NewTicker(linkPoll)
	defer poll.Stop()
	for first := true; ; first = false {
		link, err := h.nl.LinkByName(name)
		if err == nil {
			return link, nil
		}
		if !isLinkGone(err) {
			return nil, fmt.Errorf("vif %s: %w", name, err)
		}
		if first {
			h.log.Debug("waiting for the vif to appear", "vif", name)
		}
		if err := awaitLink(ctx, name, &updates, poll.C); err != nil {
			return nil, fmt.Errorf("vif %s did not appear: %w", name, err)
		}
	}
}

// awaitLink returns when *updates announces a link name, at the next poll
// tick, or with the cause when ctx ends. It sets *updates to nil when the
// subscription ends.
func awaitLink(ctx context.Context, name string, updates *<-chan netlink.LinkUpdate, poll <-chan time.Time) error {
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-poll:
			return nil
		case u, ok := <-*updates:
			if !ok {
				*updates = nil // keep polling
			} else if u.Header.Type == unix.RTM_NEWLINK && u.Attrs().Name == name {
				return nil
			}
		}
	}
}

// DisconnectVIF takes name out of its bridge and down, as vif-bridge's
// offline does; a missing interface is no error.
func (h *Host) DisconnectVIF(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkLinkName(name); err != nil {
		return fmt.Errorf("vif %q: %w", name, err)
	}
	vif, err := h.nl.LinkByName(name)
	if isLinkGone(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("vif %s: %w", name, err)
	}
	if vif.Attrs().MasterIndex != 0 {
		if err := h.nl.LinkSetNoMaster(vif); err != nil && !isLinkGone(err) {
			return fmt.Errorf("vif %s: remove from bridge: %w", name, err)
		}
	}
	if err := h.nl.LinkSetDown(vif); err != nil && !isLinkGone(err) {
		return fmt.Errorf("vif %s: down: %w", name, err)
	}
	h.log.Info("vif disconnected", "vif", name)
	return nil
}

// isLinkGone tells whether err says the link does not exist.
func isLinkGone(err error) bool {
	var notFound netlink.LinkNotFoundError
	return errors.As(err, &notFound) || errors.Is(err, unix.ENODEV)
}

// checkLinkName refuses what the kernel would not take as an interface
// name (dev_valid_name), before it reaches netlink.
func checkLinkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty interface name")
	case len(name) >= unix.IFNAMSIZ:
		return fmt.Errorf("interface name longer than %d bytes", unix.IFNAMSIZ-1)
	case name == "." || name == "..", strings.ContainsAny(name, "/: \t\n\v\f\r"):
		return errors.New("not a valid interface name")
	}
	return nil
}
