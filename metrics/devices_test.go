package metrics

import (
	"context"
	"errors"
	"io/fs"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// fakeCounters answers each device's counters from its kind and devid, and
// counts the reads; a disk named xvdz fails and a NIC with devid 9 has no
// counters in dom0.
type fakeCounters struct{ reads atomic.Int64 }

func (f *fakeCounters) Counters(_ context.Context, rec devices.Record) (devices.Counters, error) {
	f.reads.Add(1)
	switch {
	case rec.Device == "xvdz":
		return devices.Counters{}, errors.New("sysfs says no")
	case rec.Kind == devices.KindVIF && rec.DevID == 9:
		return devices.Counters{}, fs.ErrNotExist
	case rec.Kind == devices.KindVBD:
		return devices.Counters{ReadRequests: 10, WriteRequests: 2, ReadBytes: 40960, WriteBytes: 8192, OutOfRequests: 1}, nil
	}
	return devices.Counters{RxBytes: 500, TxBytes: 1000, RxPackets: 5, TxPackets: 10, RxErrors: 1, TxErrors: 2, RxDrops: 3, TxDrops: 4}, nil
}

// TestCollectorDevicesUptimeRestarts: a VM's disks and NICs each get their
// counter series (one read per device per scrape), its domain an uptime,
// the VM its restarts by cause.
func TestCollectorDevicesUptimeRestarts(t *testing.T) {
	h := sim.New(sim.Config{})
	web := bootDomain(t, h, webID, 1)
	w := vm(webID, "web", domain.Running, web)
	w.StartedAt = time.Now().Add(-time.Hour)
	w.Restarts = domain.Restarts{Reboot: 2, Crash: 1}
	w.Devices = []devices.Record{
		{Kind: devices.KindVBD, Domid: uint32(web), DevID: 51712, Device: "xvda"},
		{Kind: devices.KindVIF, Domid: uint32(web), DevID: 0, VIF: "vif" + itoa(web) + ".0"},
		{Kind: devices.KindVIF, Domid: uint32(web), DevID: 9, VIF: "vif" + itoa(web) + ".9"},
	}
	db := vm(dbID, "db", domain.Halted, 0)
	db.Devices = []devices.Record{{Kind: devices.KindVBD, Device: "xvda"}} // no domain: not read
	fc := &fakeCounters{}
	c := NewCollector(h, fakeVMs{w, db}, CollectorOptions{MaxAge: time.Nanosecond, Devices: fc})

	webLabels := "domid=" + itoa(web) + ",name=web,uuid=" + webID
	for name, want := range map[string]float64{
		"xen_vm_disk_read_requests_total":   10,
		"xen_vm_disk_write_requests_total":  2,
		"xen_vm_disk_read_bytes_total":      40960,
		"xen_vm_disk_written_bytes_total":   8192,
		"xen_vm_disk_out_of_requests_total": 1,
	} {
		if got := series(t, c, name); len(got) != 1 || got["device=xvda,"+webLabels] != want {
			t.Errorf("%s = %v, want %v for xvda only", name, got, want)
		}
	}
	for name, want := range map[string]float64{
		"xen_vm_network_receive_bytes_total":    500,
		"xen_vm_network_transmit_bytes_total":   1000,
		"xen_vm_network_receive_packets_total":  5,
		"xen_vm_network_transmit_packets_total": 10,
		"xen_vm_network_receive_errors_total":   1,
		"xen_vm_network_transmit_errors_total":  2,
		"xen_vm_network_receive_drops_total":    3,
		"xen_vm_network_transmit_drops_total":   4,
	} {
		if got := series(t, c, name); len(got) != 1 || got["device=0,"+webLabels] != want {
			t.Errorf("%s = %v, want %v for NIC 0 only (NIC 9 has no counters)", name, got, want)
		}
	}
	before := fc.reads.Load()
	series(t, c, "xen_vm_uptime_seconds")
	if n := fc.reads.Load() - before; n != 3 {
		t.Errorf("a scrape read %d device counters, want 3 (web's devices; db has no domain)", n)
	}
	if up := series(t, c, "xen_vm_uptime_seconds"); len(up) != 1 || up[webLabels] < 3600 || up[webLabels] > 3600+600 {
		t.Errorf("uptime %v, want about an hour for web only", up)
	}
	restarts := series(t, c, "xenopsd_vm_restarts_total")
	if restarts["cause=reboot,name=web,uuid="+webID] != 2 || restarts["cause=crash,name=web,uuid="+webID] != 1 ||
		len(restarts) != 4 { // reboot and crash of both VMs; poweroff of none
		t.Errorf("restarts %v", restarts)
	}

	lint(t, NewCollector(h, fakeVMs{w}, CollectorOptions{Devices: &fakeCounters{}}))

	// A device that cannot be read is one error; the rest is exported.
	w.Devices = append(w.Devices, devices.Record{Kind: devices.KindVBD, Domid: uint32(web), DevID: 51776, Device: "xvdz"})
	c = NewCollector(h, fakeVMs{w}, CollectorOptions{MaxAge: time.Nanosecond, Devices: fc})
	if _, err := gather(t, c); err == nil || !strings.Contains(err.Error(), "xvdz") || !strings.Contains(err.Error(), "sysfs says no") {
		t.Errorf("gather with an unreadable device: %v, want its error", err)
	}
	if got := series(t, c, "xen_vm_disk_read_requests_total"); len(got) != 1 {
		t.Errorf("disk series %v, want xvda's", got)
	}
}
