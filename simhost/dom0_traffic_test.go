package simhost

import (
	"errors"
	"io/fs"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// TestTrafficCounters: the counters follow the connects and the whole
// connected seconds, nothing else, and go with the device.
func TestTrafficCounters(t *testing.T) {
	d := newDom0(nil)
	now := time.Unix(1000, 0)
	d.now = func() time.Time { return now }
	key := vbdTrafficKey(3, 51712)
	if _, err := d.counters(key); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("counters before probe: %v, want ENOENT", err)
	}
	d.deviceAdded(key, devices.KindVBD)
	if c, err := d.counters(key); err != nil || c != (devices.Counters{}) {
		t.Fatalf("counters before connect: %+v, %v; want zero", c, err)
	}
	d.deviceConnected(key, false)
	now = now.Add(2500 * time.Millisecond)
	reads, writes := uint64(diskReadsPerConnect+2*diskReadsPerSecond), uint64(2*diskWritesPerSecond)
	want := devices.Counters{ReadRequests: reads, WriteRequests: writes, ReadBytes: reads * diskIOBytes, WriteBytes: writes * diskIOBytes}
	if c, _ := d.counters(key); c != want {
		t.Errorf("after 2.5 s connected: %+v, want %+v", c, want)
	}
	d.deviceDisconnected(key)
	now = now.Add(time.Hour)
	d.deviceConnected(key, true) // reconnected read-only: no more writes
	now = now.Add(600 * time.Millisecond)
	reads = 2*diskReadsPerConnect + 3*diskReadsPerSecond // 2.5 s + 0.6 s: 3 whole seconds
	want = devices.Counters{ReadRequests: reads, WriteRequests: 0, ReadBytes: reads * diskIOBytes}
	if c, _ := d.counters(key); c != want {
		t.Errorf("after a reconnect read-only: %+v, want %+v", c, want)
	}
	d.deviceRemoved(key)
	if _, err := d.counters(key); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("counters after removal: %v, want ENOENT", err)
	}

	// A vif's live as long as its interface.
	if err := d.createLink("vif3.0", 3, 0); err != nil {
		t.Fatal(err)
	}
	d.deviceConnected("vif3.0", false)
	now = now.Add(time.Second)
	c, err := d.counters("vif3.0")
	tx := uint64(nicPacketsPerConnect + nicTxPacketsPerSecond)
	if err != nil || c.TxPackets != tx || c.RxPackets != nicPacketsPerConnect+nicRxPacketsPerSecond ||
		c.TxBytes != nicConnectPacketBytes+nicTxPacketsPerSecond*nicSecondPacketBytes || c.ReadRequests != 0 {
		t.Errorf("vif counters after 1 s: %+v, %v", c, err)
	}
	d.removeLink("vif3.0")
	if _, err := d.counters("vif3.0"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("counters of a removed vif: %v, want ENOENT", err)
	}
}
