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
// the partition table, netfront asks DHCP), and each whole second the
// device stays Connected carries a steady trickle. The counters are a
// function of the connects and of the connected time alone, so a test that
// controls the clock knows every value, and one that waits sees them rise.
// They are kept from the backend's probe (blkback's sysfs device, netback's
// interface) until it is removed, as on Linux.

// The workload, per connect and per connected second. Disk requests are
// diskIOBytes each; a read-only disk gets no writes.
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
// long it has been connected.
type traffic struct {
	kind     devices.Kind
	readOnly bool
	connects uint64
	done     time.Duration // connected time of the past connections
	since    time.Time     // start of the current connection; zero if none
}

// seconds is the whole seconds the device has been connected at now.
func (t *traffic) seconds(now time.Time) uint64 {
	d := t.done
	if !t.since.IsZero() {
		d += now.Sub(t.since)
	}
	return uint64(d / time.Second)
}

// counters are the device's counters at now, from the guest's side.
func (t *traffic) counters(now time.Time) devices.Counters {
	s := t.seconds(now)
	if t.kind == devices.KindVBD {
		reads := diskReadsPerConnect*t.connects + diskReadsPerSecond*s
		var writes uint64
		if !t.readOnly {
			writes = diskWritesPerSecond * s
		}
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

// deviceAdded gives a new backend device key its counters, at zero.
func (d *dom0) deviceAdded(key string, kind devices.Kind) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.traffic[key] = &traffic{kind: kind}
}

// deviceConnected starts (or resumes) key's traffic; a read-only disk is
// not written.
func (d *dom0) deviceConnected(key string, readOnly bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.traffic[key]; t != nil && t.since.IsZero() {
		t.readOnly = readOnly
		t.connects++
		t.since = d.now()
	}
}

// deviceDisconnected stops key's traffic; its counters stay.
func (d *dom0) deviceDisconnected(key string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.traffic[key]; t != nil && !t.since.IsZero() {
		t.done += d.now().Sub(t.since)
		t.since = time.Time{}
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
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.traffic[key]
	if t == nil {
		return devices.Counters{}, fmt.Errorf("%s: no counters: %w", key, syscall.ENOENT)
	}
	return t.counters(d.now()), nil
}
