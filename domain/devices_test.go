package domain

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// fakeDevices plays package devices: it keeps the plugged devices per
// domain, as xenstore's backend directories would.
type fakeDevices struct {
	mu       sync.Mutex
	bridges  []string
	plugged  map[uint32][]devices.Record
	failNIC  bool // PlugNIC fails
	stuck    bool // Unplug without force fails (a guest that does not let go)
	removeOf []uint32
	// countersErr is what Counters fails with (nil: it does not).
	countersErr error
}

func newFakeDevices() *fakeDevices {
	return &fakeDevices{bridges: []string{"xenbr0", "br1"}, plugged: map[uint32][]devices.Record{}}
}

func (f *fakeDevices) CheckBridge(_ context.Context, b string) error {
	if !slices.Contains(f.bridges, b) {
		return fmt.Errorf("bridge %q does not exist", b)
	}
	return nil
}

func (f *fakeDevices) PlugDisk(_ context.Context, domid uint32, d devices.Disk) (devices.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, err := devices.VirtualDevice(d.Device)
	if err != nil {
		return devices.Record{}, err
	}
	rec := devices.Record{Kind: devices.KindVBD, Domid: domid, DevID: n, Device: d.Device, Path: d.Path, ReadOnly: d.ReadOnly,
		Disk: devices.DiskAttachment{PhysicalDevice: "7:0", Loop: "/dev/loop0"}}
	if d.Format == devices.FormatQCOW2 {
		rec.BackendKind, rec.Format, rec.Disk, rec.QEMU = devices.KindQdisk, d.Format, devices.DiskAttachment{}, devices.QEMUProc{Pid: 99, Start: 1}
	}
	f.plugged[domid] = append(f.plugged[domid], rec)
	return rec, nil
}

func (f *fakeDevices) PlugNIC(_ context.Context, domid uint32, n devices.NIC) (devices.Record, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failNIC {
		return devices.Record{}, errors.New("netback never reached InitWait")
	}
	rec := devices.Record{Kind: devices.KindVIF, Domid: domid, DevID: n.DevID, MAC: n.MAC, Bridge: n.Bridge, VIF: fmt.Sprintf("vif%d.%d", domid, n.DevID)}
	f.plugged[domid] = append(f.plugged[domid], rec)
	return rec, nil
}

func (f *fakeDevices) WaitConnected(context.Context, devices.Record) error { return nil }

func (f *fakeDevices) Status(_ context.Context, rec devices.Record) (devices.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Contains(f.plugged[rec.Domid], rec) {
		return devices.Status{}, devices.ErrNotPlugged
	}
	return devices.Status{Backend: devices.StateConnected, Frontend: devices.StateConnected}, nil
}

// Counters gives a plugged disk one read per byte of its name and a NIC
// one packet sent, unless countersErr says why they cannot be read.
func (f *fakeDevices) Counters(_ context.Context, rec devices.Record) (devices.Counters, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case !slices.Contains(f.plugged[rec.Domid], rec):
		return devices.Counters{}, fs.ErrNotExist
	case f.countersErr != nil:
		return devices.Counters{}, f.countersErr
	case rec.Kind == devices.KindVBD:
		return devices.Counters{ReadRequests: uint64(len(rec.Device))}, nil
	}
	return devices.Counters{TxPackets: 1}, nil
}

func (f *fakeDevices) Unplug(_ context.Context, rec devices.Record, force bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stuck && !force {
		return errors.New("the guest did not close the device")
	}
	f.plugged[rec.Domid] = slices.DeleteFunc(f.plugged[rec.Domid], func(r devices.Record) bool { return r == rec })
	return nil
}

func (f *fakeDevices) RemoveDomainDevices(_ context.Context, domid uint32) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.removeOf = append(f.removeOf, domid)
	delete(f.plugged, domid)
	return nil
}

func (f *fakeDevices) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, recs := range f.plugged {
		n += len(recs)
	}
	return n
}

func diskImage(t *testing.T, name string) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func (e *env) createWith(name string, disks []Disk, nics []NIC) VM {
	e.t.Helper()
	s := spec(name)
	s.Disks, s.NICs = disks, nics
	vm, err := e.m.CreateVM(e.ctx, s, "")
	if err != nil {
		e.t.Fatalf("create %s: %v", name, err)
	}
	return vm
}

func TestStartPlugsDevicesAndDestroyRemovesThem(t *testing.T) {
	f := newFakeDevices()
	e := newEnv(t, envOpts{devices: f})
	img := diskImage(t, "a.img")
	vm := e.createWith("dev-1", []Disk{{Device: "xvda", Path: img, Mode: DiskRW}}, []NIC{{Bridge: "br1"}, {}})
	e.run(e.m.Start(e.ctx, vm.ID, false))
	got := e.vm(vm.ID)
	if len(got.Devices) != 3 || got.Devices[0].Device != "xvda" || got.Devices[0].DevID != 51712 ||
		got.Devices[1].Bridge != "br1" || got.Devices[2].Bridge != DefaultBridge || got.Devices[2].DevID != 1 {
		t.Fatalf("plugged devices %+v", got.Devices)
	}
	if got.Devices[1].MAC != got.Spec.NICs[0].MAC {
		t.Fatalf("NIC plugged with MAC %q, spec says %q", got.Devices[1].MAC, got.Spec.NICs[0].MAC)
	}
	states, err := e.m.DeviceStates(e.ctx, vm.ID)
	if err != nil || len(states) != 3 || states[0].Backend != devices.StateConnected || states[2].VIF != got.Devices[2].VIF {
		t.Fatalf("device states %+v, %v", states, err)
	}
	if c := states[0].Counters; c == nil || c.ReadRequests != uint64(len("xvda")) || states[2].Counters == nil || states[2].Counters.TxPackets != 1 {
		t.Fatalf("device counters %+v, %+v", states[0].Counters, states[2].Counters)
	}
	d := got.Domid
	e.run(e.m.Destroy(e.ctx, vm.ID))
	if got := e.vm(vm.ID); len(got.Devices) != 0 {
		t.Fatalf("halted VM still lists devices %+v", got.Devices)
	}
	if f.count() != 0 || !slices.Contains(f.removeOf, d) {
		t.Fatalf("after destroy: %d devices plugged, removals for %v (want %d)", f.count(), f.removeOf, d)
	}
}

// TestDeviceStatesCountersUnreadable: a device whose counters cannot be
// read is listed with the reason; one dom0 has none for has no counters
// and no error.
func TestDeviceStatesCountersUnreadable(t *testing.T) {
	f := newFakeDevices()
	e := newEnv(t, envOpts{devices: f})
	vm := e.createWith("dev-c", []Disk{{Device: "xvda", Path: diskImage(t, "a.img")}}, nil)
	e.run(e.m.Start(e.ctx, vm.ID, false))
	f.mu.Lock()
	f.countersErr = errors.New("sysfs says no")
	f.mu.Unlock()
	states, err := e.m.DeviceStates(e.ctx, vm.ID)
	if err != nil || len(states) != 1 || states[0].Counters != nil || states[0].CountersError != "sysfs says no" {
		t.Fatalf("device states %+v, %v; want no counters and the reason", states, err)
	}
	f.mu.Lock()
	f.countersErr = nil
	f.plugged = map[uint32][]devices.Record{} // gone from dom0 behind our back
	f.mu.Unlock()
	states, err = e.m.DeviceStates(e.ctx, vm.ID)
	if err != nil || len(states) != 1 || states[0].Counters != nil || states[0].CountersError != "" {
		t.Fatalf("device states %+v, %v; want neither counters nor error", states, err)
	}
}

func TestFailedPlugUndoesTheStart(t *testing.T) {
	f := newFakeDevices()
	f.failNIC = true
	e := newEnv(t, envOpts{devices: f})
	vm := e.createWith("dev-2", []Disk{{Device: "xvda", Path: diskImage(t, "a.img")}}, []NIC{{}})
	done := e.wait(must(e.m.Start(e.ctx, vm.ID, false)))
	if done.State != TaskFailed || done.Err.Field != "spec.nics[0]" {
		t.Fatalf("start: %s %+v, want failed naming spec.nics[0]", done.State, done.Err)
	}
	if n := f.count(); n != 0 {
		t.Fatalf("%d devices left plugged after a failed start", n)
	}
	if doms := e.guestDomains(); len(doms) != 0 {
		t.Fatalf("domains left: %+v", doms)
	}
	if got := e.vm(vm.ID); got.Power != Halted || len(got.Devices) != 0 {
		t.Fatalf("VM %s with devices %+v after a failed start", got.Power, got.Devices)
	}
}

func TestStartRefusesBadDevicesAndChangesNothing(t *testing.T) {
	e := newEnv(t, envOpts{devices: newFakeDevices()})
	dir := t.TempDir()
	for _, c := range []struct {
		name  string
		disks []Disk
		nics  []NIC
		code  Code
		field string
	}{
		{"missing", []Disk{{Device: "xvda", Path: filepath.Join(dir, "nope.img")}}, nil, CodeFailedPrecondition, "spec.disks[0].path"},
		{"directory", []Disk{{Device: "xvda", Path: dir}}, nil, CodeInvalidArgument, "spec.disks[0].path"},
		{"no-bridge", nil, []NIC{{Bridge: "br9"}}, CodeFailedPrecondition, "spec.nics[0].bridge"},
	} {
		t.Run(c.name, func(t *testing.T) {
			vm := e.createWith("bad-"+c.name, c.disks, c.nics)
			_, err := e.m.Start(e.ctx, vm.ID, false)
			var de *Error
			if !errors.As(err, &de) || de.Code != c.code || de.Field != c.field {
				t.Fatalf("start: %v, want %s naming %s", err, c.code, c.field)
			}
			if tasks, _ := e.m.ListTasks(e.ctx, vm.ID); len(tasks) != 0 {
				t.Fatalf("a refused start left tasks %+v", tasks)
			}
		})
	}
}

func TestDiskReadWriteInOneRunningVMOnly(t *testing.T) {
	f := newFakeDevices()
	e := newEnv(t, envOpts{devices: f})
	img := diskImage(t, "shared.img")
	link := filepath.Join(t.TempDir(), "link.img")
	if err := os.Symlink(img, link); err != nil {
		t.Fatal(err)
	}
	a := e.createWith("rw-a", []Disk{{Device: "xvda", Path: img, Mode: DiskRW}}, nil)
	b := e.createWith("rw-b", []Disk{{Device: "xvdb", Path: link, Mode: DiskRW}}, nil)
	c := e.createWith("ro-c", []Disk{{Device: "xvda", Path: img, Mode: DiskRO}}, nil)
	e.run(e.m.Start(e.ctx, a.ID, false))
	for _, other := range []VM{b, c} {
		_, err := e.m.Start(e.ctx, other.ID, false)
		var de *Error
		if !errors.As(err, &de) || de.Code != CodeFailedPrecondition || de.Field != "spec.disks[0].path" {
			t.Fatalf("start %s while %s has the file rw: %v", other.Spec.Name, a.Spec.Name, err)
		}
	}
	// Read-only in several VMs is fine; read-write then is not.
	e.run(e.m.Destroy(e.ctx, a.ID))
	e.run(e.m.Start(e.ctx, c.ID, false))
	d := e.createWith("ro-d", []Disk{{Device: "xvda", Path: img, Mode: DiskRO}}, nil)
	e.run(e.m.Start(e.ctx, d.ID, false))
	if _, err := e.m.Start(e.ctx, a.ID, false); CodeOf(err) != CodeFailedPrecondition {
		t.Fatalf("rw start while the file is ro in two VMs: %v", err)
	}
	// The uses survive a daemon restart.
	e.close()
	e.open(0)
	if _, err := e.m.Start(e.ctx, b.ID, false); CodeOf(err) != CodeFailedPrecondition {
		t.Fatalf("rw start after a restart, while the file is ro in two VMs: %v", err)
	}
}

func TestMACInUseByAnotherRunningVM(t *testing.T) {
	e := newEnv(t, envOpts{devices: newFakeDevices()})
	a := e.createWith("mac-a", nil, []NIC{{MAC: "00:16:3e:00:00:01"}})
	b := e.createWith("mac-b", nil, []NIC{{MAC: "00:16:3e:00:00:01"}})
	e.run(e.m.Start(e.ctx, a.ID, false))
	_, err := e.m.Start(e.ctx, b.ID, false)
	var de *Error
	if !errors.As(err, &de) || de.Field != "spec.nics[0].mac" {
		t.Fatalf("start with a MAC in use: %v", err)
	}
}

func TestHotplugDisksAndNICs(t *testing.T) {
	f := newFakeDevices()
	e := newEnv(t, envOpts{devices: f})
	vm := e.createWith("hp", []Disk{{Device: "xvda", Path: diskImage(t, "a.img")}}, nil)
	e.run(e.m.Start(e.ctx, vm.ID, false))
	img := diskImage(t, "b.img")

	if _, err := e.m.AddDisk(e.ctx, vm.ID, Disk{Device: "xvda", Path: img}); CodeOf(err) != CodeInvalidArgument {
		t.Fatalf("add a disk under a name in use: %v", err)
	} else if de := new(Error); errors.As(err, &de) && de.Field != "disk.device" {
		t.Fatalf("field %q, want disk.device", de.Field)
	}
	if _, err := e.m.AddNIC(e.ctx, vm.ID, NIC{Bridge: "br9"}); CodeOf(err) != CodeFailedPrecondition {
		t.Fatalf("add a NIC on a missing bridge: %v", err)
	} else if de := new(Error); errors.As(err, &de) && de.Field != "nic.bridge" {
		t.Fatalf("field %q, want nic.bridge", de.Field)
	}
	if tasks, _ := e.m.ListTasks(e.ctx, vm.ID); len(tasks) != 1 {
		t.Fatalf("refused hot-plugs left tasks: %d tasks", len(tasks))
	}
	e.run(e.m.AddDisk(e.ctx, vm.ID, Disk{Device: "xvdb", Path: img, Mode: DiskRO}))
	e.run(e.m.AddNIC(e.ctx, vm.ID, NIC{}))
	got := e.vm(vm.ID)
	if len(got.Spec.Disks) != 2 || len(got.Spec.NICs) != 1 || len(got.Devices) != 3 || f.count() != 3 {
		t.Fatalf("after hot-plug: spec %d disks %d nics, %d devices, %d plugged", len(got.Spec.Disks), len(got.Spec.NICs), len(got.Devices), f.count())
	}
	mac := got.Spec.NICs[0].MAC
	if mac == "" || got.Devices[2].MAC != mac {
		t.Fatalf("hot-plugged NIC MAC %q, device %+v", mac, got.Devices[2])
	}

	if _, err := e.m.RemoveDisk(e.ctx, vm.ID, "xvdc", false); CodeOf(err) != CodeNotFound {
		t.Fatalf("remove a disk that is not plugged: %v", err)
	}
	f.stuck = true
	done := e.wait(must(e.m.RemoveDisk(e.ctx, vm.ID, "xvdb", false)))
	if done.State != TaskFailed || len(e.vm(vm.ID).Devices) != 3 {
		t.Fatalf("remove refused by the guest: %s; devices %d", done.State, len(e.vm(vm.ID).Devices))
	}
	e.run(e.m.RemoveDisk(e.ctx, vm.ID, "xvdb", true))
	e.run(e.m.RemoveNIC(e.ctx, vm.ID, mac, true))
	got = e.vm(vm.ID)
	if len(got.Spec.Disks) != 1 || len(got.Spec.NICs) != 0 || len(got.Devices) != 1 || f.count() != 1 {
		t.Fatalf("after unplug: spec %d disks %d nics, %d devices, %d plugged", len(got.Spec.Disks), len(got.Spec.NICs), len(got.Devices), f.count())
	}
	// The unplugged file is free again: another VM may have it read-write.
	other := e.createWith("hp-2", []Disk{{Device: "xvda", Path: img}}, nil)
	e.run(e.m.Start(e.ctx, other.ID, false))
}

func TestHotplugNeedsARunningVM(t *testing.T) {
	e := newEnv(t, envOpts{devices: newFakeDevices()})
	vm := e.create("hp-halted")
	if _, err := e.m.AddDisk(e.ctx, vm.ID, Disk{Device: "xvda", Path: diskImage(t, "a.img")}); CodeOf(err) != CodeFailedPrecondition {
		t.Fatalf("add a disk to a halted VM: %v", err)
	}
}

func must(t Task, err error) Task {
	if err != nil {
		panic(err)
	}
	return t
}

// TestQCOW2Disks: a qcow2 disk is plugged as qcow2 (PV guests only); its
// format must match the file's first bytes; bad input names the field and
// builds nothing.
func TestQCOW2Disks(t *testing.T) {
	f := newFakeDevices()
	e := newEnv(t, envOpts{devices: f})
	raw := diskImage(t, "a.img")
	q := diskImage(t, "b.qcow2")
	if err := os.WriteFile(q, []byte("QFI\xfb\x00\x00\x00\x03"), 0o600); err != nil {
		t.Fatal(err)
	}
	hvm := spec("q-hvm")
	hvm.Type, hvm.Disks = TypeHVM, []Disk{{Device: "xvda", Path: q, Format: DiskQCOW2}}
	_, err := e.m.CreateVM(e.ctx, hvm, "")
	var de *Error
	if !errors.As(err, &de) || de.Code != CodeInvalidArgument || de.Field != "spec.disks[0].format" || !strings.Contains(de.Message, "PV and PVH guests only") {
		t.Fatalf("create HVM with a qcow2 disk: %v", err)
	}
	ro := spec("q-ro")
	ro.Disks = []Disk{{Device: "xvda", Path: q, Format: DiskQCOW2, Mode: DiskRO}}
	if _, err := e.m.CreateVM(e.ctx, ro, ""); !errors.As(err, &de) || de.Field != "spec.disks[0].mode" || !strings.Contains(de.Message, "read-only qcow2") {
		t.Fatalf("create with a read-only qcow2 disk: %v", err)
	}
	bad := spec("q-bad")
	bad.Disks = []Disk{{Device: "xvda", Path: q, Format: 7}}
	if _, err := e.m.CreateVM(e.ctx, bad, ""); !errors.As(err, &de) || de.Field != "spec.disks[0].format" {
		t.Fatalf("create with format 7: %v", err)
	}
	for _, c := range []struct {
		name string
		disk Disk
	}{
		{"qcow2-as-raw", Disk{Device: "xvda", Path: q}},
		{"qcow2-as-explicit-raw", Disk{Device: "xvda", Path: q, Format: DiskRaw}},
		{"raw-as-qcow2", Disk{Device: "xvda", Path: raw, Format: DiskQCOW2}},
	} {
		s := spec(c.name)
		s.Type, s.Disks = TypePV, []Disk{c.disk}
		vm, err := e.m.CreateVM(e.ctx, s, "")
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.m.Start(e.ctx, vm.ID, false)
		if !errors.As(err, &de) || de.Code != CodeInvalidArgument || de.Field != "spec.disks[0].format" {
			t.Fatalf("%s: start: %v, want InvalidArgument naming spec.disks[0].format", c.name, err)
		}
		if got := e.vm(vm.ID); got.Power != Halted || got.Domid != 0 {
			t.Fatalf("%s: VM %s domid %d after a refused start", c.name, got.Power, got.Domid)
		}
	}
	if doms := e.guestDomains(); len(doms) != 0 {
		t.Fatalf("refused starts left domains %+v", doms)
	}
	s := spec("q-ok") // PVH
	s.Disks = []Disk{{Device: "xvda", Path: q, Format: DiskQCOW2}, {Device: "xvdb", Path: raw, Mode: DiskRO}}
	vm, err := e.m.CreateVM(e.ctx, s, "")
	if err != nil {
		t.Fatal(err)
	}
	e.run(e.m.Start(e.ctx, vm.ID, false))
	got := e.vm(vm.ID)
	if len(got.Devices) != 2 || got.Devices[0].Format != devices.FormatQCOW2 || got.Devices[0].QEMU.Pid == 0 || got.Devices[1].Format == devices.FormatQCOW2 {
		t.Fatalf("plugged %+v", got.Devices)
	}
	if got.Spec.Disks[0].Format != DiskQCOW2 {
		t.Fatalf("spec disk %+v", got.Spec.Disks[0])
	}
}
