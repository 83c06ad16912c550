package simhost

import (
	"fmt"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// The I/O the simulated guests do through their devices. A sim guest does
// no real I/O, so its blkfront and netfront are given a fixed workload:
// each connect of a device does the probing a guest does (blkfront reads
// the partition table, netfront asks DHCP), and each second of CPU time the
// guest runs while the device is Connected carries a steady trickle. A
// paused or idle guest (sim.GuestBehaviour.Idle) runs nothing and so does
// no I/O. The counters are a function of the connects and of the guest's
// CPU time alone, so a test that controls them knows every value, and one
// that waits for a busy guest sees them rise. They are kept from the
// backend's probe (blkback's sysfs device, netback's interface) until it is
// removed, as on Linux.

// The workload, per connect and per second of guest CPU time while
// connected. Disk requests are diskIOBytes each; a read-only disk gets no
// writes.
const (
	diskIOBytes           = 4096
	diskReadsPerConnect   = 4
	diskReadsPerSecond    = 8
	diskWritesPerSecond   = 2
	nicPacketsPerConnect  = 1 // each way: DHCP discover and offer
	nicConnectPacketBytes = 342
	nicTxPacketsPerSecond = 10
	nicRxPacketsPerSecond = 5
	nicSecondPacketBytes  = 100
)

// traffic is one device's I/O history: how often it connected and how
// much CPU time its guest ran while it was connected.
type traffic struct {
	kind     devices.Kind
	domid    uint32 // the guest's
	readOnly bool
	connects uint64
	done     time.Duration // guest CPU time during the past connections
	// doneWritable is the part of done while the disk was read-write.
	doneWritable time.Duration
	connected    bool
	cpuFrom      time.Duration // the guest's CPU time when it connected
	cpuLast      time.Duration // the most the guest's CPU time was seen at
}

// observe is the guest's CPU time cpu as the traffic counts it: never less
// than seen before (a guest that is gone reads 0).
func (t *traffic) observe(cpu time.Duration) time.Duration {
	t.cpuLast = max(t.cpuLast, cpu)
	return t.cpuLast
}

// connectedCPU is the guest CPU time while connected, and the part of it
// while connected read-write, cpu being the guest's CPU time now
// (observed).
func (t *traffic) connectedCPU(cpu time.Duration) (all, writable time.Duration) {
	all, writable = t.done, t.doneWritable
	if t.connected {
		all += cpu - t.cpuFrom
		if !t.readOnly {
			writable += cpu - t.cpuFrom
		}
	}
	return all, writable
}

// counters are the device's counters, from the guest's side, when the
// guest's CPU time is cpu (observed).
func (t *traffic) counters(cpu time.Duration) devices.Counters {
	all, writable := t.connectedCPU(cpu)
	s := uint64(all / time.Second)
	if t.kind == devices.KindVBD {
		reads := diskReadsPerConnect*t.connects + diskReadsPerSecond*s
		writes := diskWritesPerSecond * uint64(writable/time.Second)
		return devices.Counters{ReadRequests: reads, WriteRequests: writes,
			ReadBytes: reads * diskIOBytes, WriteBytes: writes * diskIOBytes}
	}
	tx := nicPacketsPerConnect*t.connects + nicTxPacketsPerSecond*s
	rx := nicPacketsPerConnect*t.connects + nicRxPacketsPerSecond*s
	return devices.Counters{
		TxPackets: tx, RxPackets: rx,
		TxBytes: nicConnectPacketBytes*nicPacketsPerConnect*t.connects + nicSecondPacketBytes*nicTxPacketsPerSecond*s,
		RxBytes: nicConnectPacketBytes*nicPacketsPerConnect*t.connects + nicSecondPacketBytes*nicRxPacketsPerSecond*s,
	}
}

// vbdTrafficKey names a device's counters as dom0 does: blkback's sysfs
// device vbd-<domid>-<devid>, netback's interface name.
func vbdTrafficKey(domid, devid uint32) string { return fmt.Sprintf("vbd-%d-%d", domid, devid) }

// deviceAdded gives a new backend device key of domain domid its
// counters, at zero.
func (d *dom0) deviceAdded(key string, kind devices.Kind, domid uint32) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.traffic[key] = &traffic{kind: kind, domid: domid}
}

// guestCPUOf is the CPU time of the guest behind key's device now (0 for
// none); it is read outside d.mu, which the hypervisor never waits for.
func (d *dom0) guestCPUOf(key string) time.Duration {
	d.mu.Lock()
	t := d.traffic[key]
	d.mu.Unlock()
	if t == nil || d.guestCPU == nil {
		return 0
	}
	return d.guestCPU(t.domid)
}

// deviceConnected starts (or resumes) key's traffic; a read-only disk is
// not written.
func (d *dom0) deviceConnected(key string, readOnly bool) {
	cpu := d.guestCPUOf(key)
	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.traffic[key]; t != nil && !t.connected {
		t.readOnly = readOnly
		t.connects++
		t.connected, t.cpuFrom = true, t.observe(cpu)
	}
}

// deviceDisconnected stops key's traffic; its counters stay.
func (d *dom0) deviceDisconnected(key string) {
	cpu := d.guestCPUOf(key)
	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.traffic[key]; t != nil && t.connected {
		t.done, t.doneWritable = t.connectedCPU(t.observe(cpu))
		t.connected = false
	}
}

// deviceRemoved forgets key's counters, as the backend device goes.
func (d *dom0) deviceRemoved(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.traffic, key)
}

// counters reads key's counters: ENOENT when the device has none.
func (d *dom0) counters(key string) (devices.Counters, error) {
	cpu := d.guestCPUOf(key)
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.traffic[key]
	if t == nil {
		return devices.Counters{}, fmt.Errorf("%s: no counters: %w", key, syscall.ENOENT)
	}
	return t.counters(t.observe(cpu)), nil
}
