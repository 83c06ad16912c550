package devices

import (
	"context"
	"errors"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// TestDiskLifecycle: plug, connect, status, unplug of a disk, with the keys
// and permissions libxl writes.
func TestDiskLifecycle(t *testing.T) {
	e := newEnv(t)
	e.backend(KindVBD, 51712, backendNormal)
	e.frontend(KindVBD, 51712, frontendNormal)
	path := e.file("disk.img")
	rec, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: path, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	want := Record{Kind: KindVBD, Domid: guest, DevID: 51712, Device: "xvda", Path: path, ReadOnly: true,
		Disk: DiskAttachment{PhysicalDevice: "7:0", Loop: "/dev/loop0"}}
	if rec != want {
		t.Fatalf("record %+v, want %+v", rec, want)
	}
	be, fe := rec.BackendPath(), rec.FrontendPath()
	if be != "/local/domain/0/backend/vbd/5/51712" || fe != "/local/domain/5/device/vbd/51712" {
		t.Fatalf("paths %s %s", be, fe)
	}
	for k, v := range map[string]string{
		"frontend": fe, "frontend-id": "5", "online": "1", "removable": "0", "bootable": "1",
		"dev": "xvda", "type": "phy", "mode": "r", "device-type": "disk", "params": path,
		"node": "/dev/loop0", "physical-device": "7:0", "hotplug-status": "connected",
	} {
		if got := e.read(be + "/" + k); got != v {
			t.Errorf("%s/%s = %q, want %q", be, k, got, v)
		}
	}
	for k, v := range map[string]string{"backend": be, "backend-id": "0", "virtual-device": "51712", "device-type": "disk"} {
		if got := e.read(fe + "/" + k); got != v {
			t.Errorf("%s/%s = %q, want %q", fe, k, got, v)
		}
	}
	checkPerms(t, e, be, backendPerms(guest))
	checkPerms(t, e, be+"/params", backendPerms(guest))
	checkPerms(t, e, fe, frontendPerms(guest))
	if err := e.p.WaitConnected(e.ctx, rec); err != nil {
		t.Fatal(err)
	}
	st, err := e.p.Status(e.ctx, rec)
	if err != nil || st != (Status{Backend: StateConnected, Frontend: StateConnected}) {
		t.Fatalf("Status = %+v, %v", st, err)
	}
	if err := e.p.Unplug(e.ctx, rec, false); err != nil {
		t.Fatal(err)
	}
	e.assertGone(rec)
	if err := e.p.Unplug(e.ctx, rec, false); !errors.Is(err, ErrNotPlugged) {
		t.Fatalf("second Unplug: %v, want ErrNotPlugged", err)
	}
	if _, err := e.p.Status(e.ctx, rec); !errors.Is(err, ErrNotPlugged) {
		t.Fatalf("Status after unplug: %v, want ErrNotPlugged", err)
	}
}

func checkPerms(t *testing.T, e *env, path string, want []xenstore.Perm) {
	t.Helper()
	got, err := e.xs.GetPerms(e.ctx, path)
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("perms of %s = %v, %v; want %v", path, got, err, want)
	}
}

// TestNICLifecycle: a vif is plugged, put in its bridge, connects and is
// taken out again; the guest cannot change the mtu it was given.
func TestNICLifecycle(t *testing.T) {
	e := newEnv(t)
	e.backend(KindVIF, 0, backendNormal)
	e.frontend(KindVIF, 0, frontendNormal)
	rec, err := e.p.PlugNIC(e.ctx, guest, NIC{DevID: 0, MAC: "00:16:3E:01:02:03", Bridge: "xenbr0"})
	if err != nil {
		t.Fatal(err)
	}
	if rec.VIF != "vif5.0" || rec.MAC != "00:16:3e:01:02:03" || rec.MTU != 1500 {
		t.Fatalf("record %+v", rec)
	}
	if c := e.host.connectedVIFs(); c["vif5.0"] != "xenbr0" {
		t.Fatalf("host vifs %v", c)
	}
	be, fe := rec.BackendPath(), rec.FrontendPath()
	for k, v := range map[string]string{"frontend": fe, "frontend-id": "5", "online": "1", "handle": "0",
		"mac": "00:16:3e:01:02:03", "bridge": "xenbr0", "mtu": "1500", "type": "vif"} {
		if got := e.read(be + "/" + k); got != v {
			t.Errorf("%s/%s = %q, want %q", be, k, got, v)
		}
	}
	for k, v := range map[string]string{"backend": be, "backend-id": "0", "handle": "0", "mac": "00:16:3e:01:02:03", "mtu": "1500"} {
		if got := e.read(fe + "/" + k); got != v {
			t.Errorf("%s/%s = %q, want %q", fe, k, got, v)
		}
	}
	checkPerms(t, e, fe+"/mtu", backendPerms(guest))
	if err := e.guestXS.Write(e.ctx, "device/vif/0/mtu", []byte("9000")); !errors.Is(err, syscall.EACCES) {
		t.Errorf("guest wrote its mtu: %v", err)
	}
	if err := e.p.WaitConnected(e.ctx, rec); err != nil {
		t.Fatal(err)
	}
	if err := e.p.Unplug(e.ctx, rec, false); err != nil {
		t.Fatal(err)
	}
	e.assertGone(rec)
}

// TestFrontendNeverConnects: a hot-plugged disk the guest ignores fails
// WaitConnected when its bound passes, saying what it waited for.
func TestFrontendNeverConnects(t *testing.T) {
	e := newEnv(t)
	e.p.backendWait = 200 * time.Millisecond
	e.backend(KindVBD, 51728, backendNormal)
	e.frontend(KindVBD, 51728, frontendSilent)
	rec, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvdb", Path: e.file("b.img")})
	if err != nil {
		t.Fatal(err)
	}
	err = e.p.WaitConnected(e.ctx, rec)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "both ends Connected") ||
		!strings.Contains(err.Error(), "frontend Initialising") {
		t.Fatalf("WaitConnected: %v", err)
	}
	// A frontend that never got past Initialising holds nothing: no wait.
	if err := e.p.Unplug(e.ctx, rec, false); err != nil {
		t.Fatal(err)
	}
	e.assertGone(rec)
}

// TestUnplugRefused: a guest that does not release its disk makes Unplug
// time out with an error that says so and leaves the device; force tears
// it down.
func TestUnplugRefused(t *testing.T) {
	e := newEnv(t)
	e.backend(KindVBD, 51712, backendNormal)
	e.frontend(KindVBD, 51712, frontendRefusesClose)
	rec, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: e.file("a.img")})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.p.WaitConnected(e.ctx, rec); err != nil {
		t.Fatal(err)
	}
	e.p.closeWait = 200 * time.Millisecond
	err = e.p.Unplug(e.ctx, rec, false)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "did not release") ||
		!strings.Contains(err.Error(), "force") {
		t.Fatalf("Unplug: %v", err)
	}
	if !e.exists(rec.BackendPath()) || len(e.host.attached()) != 1 {
		t.Fatal("a refused unplug tore the device down")
	}
	if e.read(rec.BackendPath()+"/online") != "0" || e.read(rec.BackendPath()+"/state") != "5" {
		t.Fatal("the backend was not asked to close")
	}
	if err := e.p.Unplug(e.ctx, rec, true); err != nil {
		t.Fatal(err)
	}
	e.assertGone(rec)
}

// TestDuplicateAndBadInput: bad disks and NICs are refused with the field
// named, and nothing changes; a device name in use is ErrInUse and leaves
// the device that has it alone.
func TestDuplicateAndBadInput(t *testing.T) {
	e := newEnv(t)
	e.backend(KindVBD, 51712, backendNormal)
	file := e.file("a.img")
	rec, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: file})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: e.file("other.img")}); !errors.Is(err, ErrInUse) {
		t.Fatalf("second xvda: %v", err)
	}
	if e.read(rec.BackendPath()+"/params") != file || len(e.host.attached()) != 1 {
		t.Fatal("refusing a duplicate changed the first device")
	}
	for _, c := range []struct {
		d     Disk
		field string
		text  string
	}{
		{Disk{Device: "xvda0", Path: file}, "device", "partition"},
		{Disk{Device: "vda", Path: file}, "device", "want xvd"},
		{Disk{Device: "xvdc", Path: e.dir + "/missing.img"}, "path", "does not exist"},
		{Disk{Device: "xvdc", Path: e.dir}, "path", "is a directory"},
		{Disk{Device: "xvdc", Path: "disk.img"}, "path", "not an absolute path"},
		{Disk{Device: "xvdc", Path: "/dev/null"}, "path", "character device"},
		{Disk{Device: "xvdc"}, "path", "no backing path"},
	} {
		_, err := e.p.PlugDisk(e.ctx, guest, c.d)
		var ie *InvalidError
		if !errors.As(err, &ie) || ie.Field != c.field || !strings.Contains(err.Error(), c.text) {
			t.Errorf("PlugDisk(%+v): %v; want %s error with %q", c.d, err, c.field, c.text)
		}
	}
	for _, c := range []struct {
		n     NIC
		field string
	}{
		{NIC{MAC: "00:16:3e:00:00", Bridge: "xenbr0"}, "mac"},
		{NIC{MAC: "01:16:3e:00:00:01", Bridge: "xenbr0"}, "mac"},
		{NIC{MAC: "00:00:00:00:00:00", Bridge: "xenbr0"}, "mac"},
		{NIC{MAC: "00:16:3e:0g:00:01", Bridge: "xenbr0"}, "mac"},
		{NIC{MAC: "00:16:3e:00:00:01", Bridge: "nosuchbr"}, "bridge"},
		{NIC{MAC: "00:16:3e:00:00:01", Bridge: "a/b"}, "bridge"},
		{NIC{MAC: "00:16:3e:00:00:01", Bridge: "xenbr0", MTU: 67}, "mtu"},
		{NIC{MAC: "00:16:3e:00:00:01", Bridge: "xenbr0", MTU: 65536}, "mtu"},
		{NIC{DevID: -1, MAC: "00:16:3e:00:00:01", Bridge: "xenbr0"}, "devid"},
	} {
		_, err := e.p.PlugNIC(e.ctx, guest, c.n)
		var ie *InvalidError
		if !errors.As(err, &ie) || ie.Field != c.field {
			t.Errorf("PlugNIC(%+v): %v; want a %s error", c.n, err, c.field)
		}
	}
	if e.exists(backendDomainDir(KindVIF, guest)) || e.exists("/local/domain/5/device/vif") {
		t.Error("a refused NIC left nodes")
	}
	if _, err := e.p.PlugDisk(e.ctx, 0, Disk{Device: "xvdc", Path: file}); err == nil {
		t.Error("plugged a disk into dom0")
	}
	if err := e.p.Unplug(e.ctx, Record{Kind: KindVIF, Domid: guest, DevID: 3}, false); !errors.Is(err, ErrNotPlugged) {
		t.Errorf("Unplug of a vif never plugged: %v", err)
	}
}

// TestRemoveDomainDevicesAfterCrash: with the domain gone and no Record
// (a daemon that restarted), everything is released from xenstore alone,
// and a second call finds nothing to do.
func TestRemoveDomainDevicesAfterCrash(t *testing.T) {
	e := newEnv(t)
	e.backend(KindVBD, 51712, backendNormal)
	e.backend(KindVBD, 51728, backendNormal)
	e.backend(KindVIF, 0, backendNormal)
	e.frontend(KindVIF, 0, frontendNormal)
	var recs []Record
	for _, d := range []Disk{{Device: "xvda", Path: e.file("a.img")}, {Device: "xvdb", Path: e.file("b.img"), ReadOnly: true}} {
		rec, err := e.p.PlugDisk(e.ctx, guest, d)
		if err != nil {
			t.Fatal(err)
		}
		recs = append(recs, rec)
	}
	rec, err := e.p.PlugNIC(e.ctx, guest, NIC{MAC: "00:16:3e:00:00:01", Bridge: "xenbr0"})
	if err != nil {
		t.Fatal(err)
	}
	recs = append(recs, rec)
	e.stopActors()
	restarted := NewPlugger(e.xs, e.host, nil)
	if err := restarted.RemoveDomainDevices(e.ctx, guest); err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		e.assertGone(rec)
	}
	if err := restarted.RemoveDomainDevices(e.ctx, guest); err != nil {
		t.Fatalf("second RemoveDomainDevices: %v", err)
	}
}

// TestRemoveDomainDevicesKeepsWhatItCannotRelease: a loop the host cannot
// detach keeps its backend directory, so that a retry finds it.
func TestRemoveDomainDevicesKeepsWhatItCannotRelease(t *testing.T) {
	e := newEnv(t)
	e.backend(KindVBD, 51712, backendNormal)
	rec, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: e.file("a.img")})
	if err != nil {
		t.Fatal(err)
	}
	e.stopActors()
	e.host.setFail("DetachDisk", errors.New("device busy"))
	if err := e.p.RemoveDomainDevices(e.ctx, guest); err == nil || !strings.Contains(err.Error(), "device busy") {
		t.Fatalf("RemoveDomainDevices: %v", err)
	}
	if !e.exists(rec.BackendPath()) {
		t.Fatal("the backend directory went with the loop still attached")
	}
	e.host.setFail("DetachDisk", nil)
	if err := e.p.RemoveDomainDevices(e.ctx, guest); err != nil {
		t.Fatal(err)
	}
	e.assertGone(rec)
}

// TestConcurrentSiblings: disks plugged and unplugged at the same time in
// one domain (their transactions touch the same parent directories) all
// end up plugged, then all gone with their parents.
func TestConcurrentSiblings(t *testing.T) {
	e := newEnv(t)
	names := []string{"xvda", "xvdb", "xvdc", "xvdd", "xvde", "xvdf"}
	for _, n := range names {
		devid, _ := VirtualDevice(n)
		e.backend(KindVBD, devid, backendNormal)
	}
	recs := make([]Record, len(names))
	errs := make(chan error, len(names))
	for i, n := range names {
		go func() {
			var err error
			recs[i], err = e.p.PlugDisk(e.ctx, guest, Disk{Device: n, Path: e.file(n + ".img")})
			errs <- err
		}()
	}
	for range names {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if n := len(e.host.attached()); n != len(names) {
		t.Fatalf("%d disks attached, want %d", n, len(names))
	}
	for _, rec := range recs {
		go func() { errs <- e.p.Unplug(e.ctx, rec, false) }()
	}
	for range names {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, rec := range recs {
		e.assertGone(rec)
	}
}
