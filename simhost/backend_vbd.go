package simhost

import (
	"context"
	"strconv"
	"strings"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// blkback is Linux's blkback (drivers/block/xen-blkback/xenbus.c) on one
// vbd:
//
//   - probe advertises feature-max-indirect-segments,
//     multi-queue-max-queues and max-ring-page-order and switches to
//     InitWait at once;
//   - physical-device ("%x:%x", written by the hotplug side) opens the
//     block device in the backend's mode ("r" or "w"): an unknown device is
//     fatal (ENOENT, "creating vbd structure"), writing a read-only loop
//     device too (EROFS); a later change of it is ignored;
//   - the frontend Initialised or Connected maps its ring: protocol,
//     multi-queue-num-queues, ring-page-order, ring-ref and event-channel
//     are checked as connect_ring does, a ring reference outside the
//     guest's grant table or an event channel it did not allocate for dom0
//     is fatal ("mapping ring-ref port N");
//   - with both the device and the ring, connect writes the feature-*,
//     sectors, info, sector-size and physical-sector-size keys in one
//     transaction and switches to Connected;
//   - the frontend Closing makes it Closing; Closed makes it Closed and,
//     unless online is 1, unregisters it; Unknown (the frontend vanished,
//     its domain died) unregisters it; any other state is fatal.
type blkback struct {
	bus *backendBus
	dev *backendDev

	physical string   // the physical-device value last acted on
	bdev     blockDev // opened; close is nil when none
	readOnly bool     // mode has no 'w'
	cdrom    bool
	ring     bool // the frontend's ring is mapped
	// qdisk: this is QEMU's xen-block on a backend/qdisk directory, which
	// opens the image params names ("qcow2:<path>") at probe instead of
	// a physical-device.
	qdisk   bool
	sectors uint64 // the image's size (qdisk)
}

// Limits blkback advertises: MAX_INDIRECT_SEGMENTS and the default
// max_ring_page_order (XENBUS_MAX_RING_GRANT_ORDER).
const (
	blkbackIndirectSegments = 256
	blkbackMaxRingPageOrder = 4
)

// Ring protocols (io/protocols.h).
var blkifProtocols = map[string]bool{"x86_64-abi": true, "x86_32-abi": true}

// VDISK_* flags of info (io/blkif.h).
const (
	vdiskCDROM    = 1
	vdiskReadOnly = 4
)

func (b *blkback) x() *xenbusDev { return &b.dev.x }

func (b *blkback) probe(ctx context.Context) bool {
	x := b.x()
	if err := x.writeKeys(ctx,
		"feature-max-indirect-segments", strconv.Itoa(blkbackIndirectSegments),
		"multi-queue-max-queues", strconv.FormatUint(uint64(b.bus.nrCPUs), 10),
		"max-ring-page-order", strconv.Itoa(blkbackMaxRingPageOrder)); err != nil {
		x.log.Debug("simhost: blkback: cannot advertise features", "dev", x.nodename, "err", err)
	}
	b.bus.d0.deviceAdded(b.trafficKey(), devices.KindVBD, b.dev.domid)
	if b.qdisk {
		return b.openImage(ctx)
	}
	x.switchState(ctx, devices.StateInitWait)
	b.backendChanged(ctx) // the physical-device watch fires once at once
	return true
}

// openImage is QEMU's xen_block_drive_create and realize: the image named
// by params, opened in the backend's mode, then InitWait; false after a
// fatal error.
func (b *blkback) openImage(ctx context.Context) bool {
	x := b.x()
	params, err := x.read(ctx, "params")
	if err != nil {
		x.fatal(ctx, errnoOf(err), "reading params")
		return false
	}
	mode, _ := x.read(ctx, "mode")
	if t, err := x.readOther(ctx, "device-type"); err == nil {
		b.cdrom = t == "cdrom"
	}
	b.readOnly = !strings.Contains(mode, "w")
	bdev, sectors, err := openImage(params, !b.readOnly)
	if err != nil {
		x.fatal(ctx, errnoOf(err), "opening %s", params)
		return false
	}
	b.bdev, b.sectors, b.physical = bdev, sectors, params
	x.switchState(ctx, devices.StateInitWait)
	return true
}

// backendChanged is blkback's watch on physical-device.
func (b *blkback) backendChanged(ctx context.Context) {
	if b.qdisk {
		return // QEMU watches no physical-device
	}
	x := b.x()
	v, err := x.read(ctx, "physical-device")
	if err != nil || v == b.physical {
		return // not written yet (the hotplug side has not run), or no change
	}
	b.physical = v
	major, minor, ok := scanMajorMinor(v)
	if !ok {
		x.fatal(ctx, syscall.EINVAL, "reading physical-device")
		return
	}
	if b.bdev.close != nil {
		x.log.Warn("simhost: blkback: changing physical device not supported", "dev", x.nodename, "to", v)
		return
	}
	mode, err := x.read(ctx, "mode")
	if err != nil {
		x.fatal(ctx, errnoOf(err), "reading mode")
		return
	}
	if t, err := x.readOther(ctx, "device-type"); err == nil {
		b.cdrom = t == "cdrom"
	}
	b.readOnly = !strings.Contains(mode, "w")
	bdev, err := b.bus.d0.openBlock(major, minor, !b.readOnly)
	if err != nil {
		x.fatal(ctx, errnoOf(err), "creating vbd structure")
		return
	}
	b.bdev = bdev
	b.updateStatus(ctx)
}

func (b *blkback) frontendChanged(ctx context.Context, s devices.State) bool {
	x := b.x()
	switch s {
	case devices.StateInitialising:
		if x.state == devices.StateClosed {
			x.switchState(ctx, devices.StateInitWait) // prepare for reconnect
		}
	case devices.StateInitialised, devices.StateConnected:
		if x.state == devices.StateConnected {
			break
		}
		b.ring = false
		if b.connectRing(ctx) {
			b.ring = true
			b.updateStatus(ctx)
		}
	case devices.StateClosing:
		b.bus.d0.deviceDisconnected(b.trafficKey())
		x.switchState(ctx, devices.StateClosing)
	case devices.StateClosed:
		b.bus.d0.deviceDisconnected(b.trafficKey())
		b.ring = false
		x.switchState(ctx, devices.StateClosed)
		return !x.online(ctx)
	case devices.StateUnknown:
		return true
	default:
		x.fatal(ctx, syscall.EINVAL, "saw state %d at frontend", s)
	}
	return false
}

// connectRing reads and maps the frontend's rings (connect_ring,
// read_per_ring_refs); false after a fatal error.
func (b *blkback) connectRing(ctx context.Context) bool {
	x := b.x()
	if p, err := x.readOther(ctx, "protocol"); err == nil {
		if f := strings.Fields(p); len(f) > 0 && !blkifProtocols[f[0]] {
			x.fatal(ctx, syscall.ENOSYS, "unknown fe protocol %s", f[0])
			return false
		}
	}
	queues := uint64(1)
	if q, err := x.readOther(ctx, "multi-queue-num-queues"); err == nil {
		n, ok := scanUint(q)
		if !ok || n == 0 || n > uint64(b.bus.nrCPUs) {
			x.fatal(ctx, syscall.ENOSYS, "guest requested %s queues, exceeding the maximum of %d.", q, b.bus.nrCPUs)
			return false
		}
		queues = n
	}
	refKeys := []string{"ring-ref"}
	if o, err := x.readOther(ctx, "ring-page-order"); err == nil {
		order, ok := scanUint(o)
		if !ok || order > blkbackMaxRingPageOrder {
			x.fatal(ctx, syscall.EINVAL, "requested ring page order %s exceed max:%d", o, blkbackMaxRingPageOrder)
			return false
		}
		refKeys = nil
		for i := range 1 << order {
			refKeys = append(refKeys, "ring-ref"+strconv.Itoa(i))
		}
	}
	for q := range queues {
		dir := ""
		if queues > 1 {
			dir = "queue-" + strconv.FormatUint(q, 10) + "/"
		}
		if !b.mapQueue(ctx, dir, refKeys) {
			return false
		}
	}
	return true
}

// mapQueue maps the ring of one queue, whose keys are below dir.
func (b *blkback) mapQueue(ctx context.Context, dir string, refKeys []string) bool {
	x := b.x()
	evtchn, ok := x.readOtherUint(ctx, dir+"event-channel")
	if !ok {
		x.fatal(ctx, syscall.EINVAL, "reading %s/%sevent-channel", x.otherend, dir)
		return false
	}
	var refs []uint64
	for _, k := range refKeys {
		ref, ok := x.readOtherUint(ctx, dir+k)
		if !ok {
			x.fatal(ctx, syscall.EINVAL, "reading %s/%s%s", x.otherend, dir, k)
			return false
		}
		refs = append(refs, ref)
	}
	if err := mapRing(b.bus, x.otherID, refs, []uint64{evtchn}); err != nil {
		x.fatal(ctx, errnoOf(err), "mapping ring-ref port %d", evtchn)
		return false
	}
	return true
}

// mapRing checks that dom0 could map the frontend's grant references and
// bind its event channels.
func mapRing(b *backendBus, fe uint32, refs, ports []uint64) error {
	for _, r := range refs {
		if err := b.hv.CheckGrantRef(xenctrl.Domid(fe), r); err != nil {
			return err
		}
	}
	for _, p := range ports {
		if err := b.hv.CheckInterdomainPort(xenctrl.Domid(fe), p, 0); err != nil {
			return err
		}
	}
	return nil
}

// updateStatus is xen_update_blkif_status: connect once both the device
// and the ring are there.
func (b *blkback) updateStatus(ctx context.Context) {
	x := b.x()
	if !b.ring || b.bdev.close == nil || x.state == devices.StateConnected {
		return
	}
	info := 0
	if b.cdrom {
		info |= vdiskCDROM
	}
	if b.readOnly {
		info |= vdiskReadOnly
	}
	// A loop device over a file flushes and discards (punching holes).
	err := x.writeKeys(ctx,
		"feature-flush-cache", "1",
		"discard-granularity", "4096",
		"discard-alignment", "0",
		"discard-secure", "0",
		"feature-discard", "1",
		"feature-barrier", "1",
		"feature-persistent", "1",
		"sectors", strconv.FormatUint(b.size(), 10),
		"info", strconv.Itoa(info),
		"sector-size", "512",
		"physical-sector-size", "512")
	if err != nil {
		x.fatal(ctx, errnoOf(err), "writing %s/sectors", x.nodename)
		return
	}
	x.switchState(ctx, devices.StateConnected)
	b.bus.d0.deviceConnected(b.trafficKey(), b.readOnly)
}

// trafficKey names the vbd's counters in dom0.
func (b *blkback) trafficKey() string { return vbdTrafficKey(b.dev.domid, b.dev.devid) }

func (b *blkback) remove(context.Context) {
	b.bus.d0.deviceRemoved(b.trafficKey())
	if b.bdev.close != nil {
		b.bdev.close()
		b.bdev = blockDev{}
	}
}

// size is the disk's size in sectors.
func (b *blkback) size() uint64 {
	if b.qdisk {
		return b.sectors
	}
	return b.bdev.sectors()
}
