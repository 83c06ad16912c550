package simhost

import (
	"errors"
	"io/fs"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// TestTrafficCounters: the counters follow the connects and the guest's
// whole CPU seconds while connected, nothing else, never go back, and go
// with the device.
func TestTrafficCounters(t *testing.T) {
	d := newDom0(nil)
	cpu := map[uint32]time.Duration{3: 10 * time.Second}
	d.guestCPU = func(domid uint32) time.Duration { return cpu[domid] }
	key := vbdTrafficKey(3, 51712)
	if _, err := d.counters(key); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("counters before probe: %v, want ENOENT", err)
	}
	d.deviceAdded(key, devices.KindVBD, 3)
	cpu[3] += time.Hour // before the connect: no I/O
	if c, err := d.counters(key); err != nil || c != (devices.Counters{}) {
		t.Fatalf("counters before connect: %+v, %v; want zero", c, err)
	}
	d.deviceConnected(key, false)
	cpu[3] += 2500 * time.Millisecond
	reads, writes := uint64(diskReadsPerConnect+2*diskReadsPerSecond), uint64(2*diskWritesPerSecond)
	want := devices.Counters{ReadRequests: reads, WriteRequests: writes, ReadBytes: reads * diskIOBytes, WriteBytes: writes * diskIOBytes}
	if c, _ := d.counters(key); c != want {
		t.Errorf("after 2.5 s of guest CPU connected: %+v, want %+v", c, want)
	}
	d.deviceDisconnected(key)
	cpu[3] += time.Hour
	d.deviceConnected(key, true) // reconnected read-only: no more writes, the past ones stay
	cpu[3] += 600 * time.Millisecond
	reads = 2*diskReadsPerConnect + 3*diskReadsPerSecond // 2.5 s + 0.6 s: 3 whole seconds
	want = devices.Counters{ReadRequests: reads, WriteRequests: writes, ReadBytes: reads * diskIOBytes, WriteBytes: writes * diskIOBytes}
	if c, _ := d.counters(key); c != want {
		t.Errorf("after a reconnect read-only: %+v, want %+v", c, want)
	}
	delete(cpu, 3) // the domain is gone: its CPU time reads 0
	if c, _ := d.counters(key); c != want {
		t.Errorf("after the domain went: %+v, want %+v as before", c, want)
	}
	d.deviceRemoved(key)
	if _, err := d.counters(key); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("counters after removal: %v, want ENOENT", err)
	}

	// A vif's live as long as its interface.
	cpu[4] = 0
	if err := d.createLink("vif4.0", 4, 0); err != nil {
		t.Fatal(err)
	}
	d.deviceConnected("vif4.0", false)
	cpu[4] += time.Second
	c, err := d.counters("vif4.0")
	if err != nil || c.TxPackets != nicPacketsPerConnect+nicTxPacketsPerSecond || c.RxPackets != nicPacketsPerConnect+nicRxPacketsPerSecond ||
		c.TxBytes != nicConnectPacketBytes+nicTxPacketsPerSecond*nicSecondPacketBytes || c.ReadRequests != 0 {
		t.Errorf("vif counters after 1 s: %+v, %v", c, err)
	}
	d.removeLink("vif4.0")
	if _, err := d.counters("vif4.0"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("counters of a removed vif: %v, want ENOENT", err)
	}
}
