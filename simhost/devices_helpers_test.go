package simhost

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// The toolstack's side of devices, scripted as libxl writes it, for the
// tests of the simulated backends and frontends.

// vdev is one device the scripted toolstack plugged.
type vdev struct {
	kind     devices.Kind
	domid    xenctrl.Domid
	devid    int
	be, fe   string // backend and frontend directories
	disk     devices.DiskAttachment
	linkName string
}

func (v vdev) backendError() string {
	return fmt.Sprintf("/local/domain/0/error/backend/%s/%d/%d/error", v.kind, v.domid, v.devid)
}

// domainDirs gives a domain the directories libxl gives it: its home
// readable by it, device/ and error/ its own.
func (ts *toolstack) domainDirs(t *testing.T, d xenctrl.Domid) {
	t.Helper()
	ctx := testCtx(t)
	home := fmt.Sprintf("/local/domain/%d", d)
	ro := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: uint32(d), Access: xenstore.AccessRead}}
	rw := []xenstore.Perm{{Domid: uint32(d), Access: xenstore.AccessNone}}
	for _, p := range []struct {
		path  string
		perms []xenstore.Perm
	}{{home, ro}, {home + "/device", ro}, {home + "/error", rw}} {
		if err := ts.xs.Mkdir(ctx, p.path); err != nil {
			t.Fatal(err)
		}
		if err := ts.xs.SetPerms(ctx, p.path, p.perms); err != nil {
			t.Fatal(err)
		}
	}
}

// writeDevice writes a device's backend and frontend directories in one
// transaction, with libxl's permissions: the backend dom0's and readable by
// the guest, the frontend the guest's and readable by dom0.
func (ts *toolstack) writeDevice(t *testing.T, v vdev, beKeys, feKeys map[string]string) {
	t.Helper()
	ctx := testCtx(t)
	bePerms := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: uint32(v.domid), Access: xenstore.AccessRead}}
	fePerms := []xenstore.Perm{{Domid: uint32(v.domid), Access: xenstore.AccessNone}, {Domid: 0, Access: xenstore.AccessRead}}
	err := ts.xs.Transaction(ctx, func(tx *xenstore.Tx) error {
		for _, dir := range []struct {
			path  string
			perms []xenstore.Perm
			keys  map[string]string
		}{{v.fe, fePerms, feKeys}, {v.be, bePerms, beKeys}} {
			if err := tx.Mkdir(ctx, dir.path); err != nil {
				return err
			}
			if err := tx.SetPerms(ctx, dir.path, dir.perms); err != nil {
				return err
			}
			for k, val := range dir.keys {
				if err := tx.Write(ctx, dir.path+"/"+k, []byte(val)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("write %s device: %v", v.kind, err)
	}
}

// newVBD writes a vbd's directories; the hotplug side (attachVBD) is
// separate.
func (ts *toolstack) newVBD(t *testing.T, d xenctrl.Domid, devid int, mode string) vdev {
	v := vdev{kind: devices.KindVBD, domid: d, devid: devid,
		be: fmt.Sprintf("/local/domain/0/backend/vbd/%d/%d", d, devid),
		fe: fmt.Sprintf("/local/domain/%d/device/vbd/%d", d, devid)}
	ts.writeDevice(t, v, map[string]string{
		"frontend": v.fe, "frontend-id": strconv.Itoa(int(d)), "online": "1", "removable": "0",
		"bootable": "1", "state": "1", "dev": "xvda", "type": "phy", "mode": mode, "device-type": "disk",
	}, map[string]string{
		"backend": v.be, "backend-id": "0", "state": "1", "virtual-device": strconv.Itoa(devid), "device-type": "disk",
	})
	return v
}

// plugVBD plugs a disk as the toolstack does: directories, AttachDisk, then
// physical-device and hotplug-status.
func (ts *toolstack) plugVBD(t *testing.T, d xenctrl.Domid, devid int, path string, readOnly bool) vdev {
	t.Helper()
	mode := "w"
	if readOnly {
		mode = "r"
	}
	v := ts.newVBD(t, d, devid, mode)
	a, err := ts.hv.AttachDisk(testCtx(t), path, readOnly)
	if err != nil {
		t.Fatalf("AttachDisk: %v", err)
	}
	v.disk = a
	ts.write(t, v.be+"/node", a.Loop)
	ts.write(t, v.be+"/physical-device", a.PhysicalDevice)
	ts.write(t, v.be+"/hotplug-status", "connected")
	return v
}

// newVIF writes a vif's directories, without the backend keys in omit.
func (ts *toolstack) newVIF(t *testing.T, d xenctrl.Domid, devid int, omit ...string) vdev {
	v := vdev{kind: devices.KindVIF, domid: d, devid: devid,
		be:       fmt.Sprintf("/local/domain/0/backend/vif/%d/%d", d, devid),
		fe:       fmt.Sprintf("/local/domain/%d/device/vif/%d", d, devid),
		linkName: fmt.Sprintf("vif%d.%d", d, devid)}
	mac := fmt.Sprintf("00:16:3e:00:%02x:%02x", d, devid)
	be := map[string]string{
		"frontend": v.fe, "frontend-id": strconv.Itoa(int(d)), "online": "1", "state": "1",
		"script": "/etc/xen/scripts/vif-bridge", "mac": mac, "bridge": "xenbr0", "handle": strconv.Itoa(devid), "type": "vif",
	}
	for _, k := range omit {
		delete(be, k)
	}
	ts.writeDevice(t, v, be, map[string]string{
		"backend": v.be, "backend-id": "0", "state": "1", "handle": strconv.Itoa(devid), "mac": mac,
	})
	return v
}

// plugVIF plugs a NIC as the toolstack does: directories, backend
// InitWait, ConnectVIF, hotplug-status.
func (ts *toolstack) plugVIF(t *testing.T, d xenctrl.Domid, devid int) vdev {
	t.Helper()
	v := ts.newVIF(t, d, devid)
	ts.waitState(t, v.be, devices.StateInitWait)
	if err := ts.hv.ConnectVIF(testCtx(t), v.linkName, "xenbr0", 0); err != nil {
		t.Fatalf("ConnectVIF: %v", err)
	}
	ts.write(t, v.be+"/hotplug-status", "connected")
	return v
}

// unplug asks the backend to close, as libxl does (online 0, Closing).
func (ts *toolstack) unplug(t *testing.T, v vdev) {
	t.Helper()
	ctx := testCtx(t)
	err := ts.xs.Transaction(ctx, func(tx *xenstore.Tx) error {
		if err := tx.Write(ctx, v.be+"/online", []byte("0")); err != nil {
			return err
		}
		return tx.Write(ctx, v.be+"/state", []byte("5"))
	})
	if err != nil {
		t.Fatal(err)
	}
}

// removeDirs removes both directories and undoes the hotplug side.
func (ts *toolstack) removeDirs(t *testing.T, v vdev) {
	t.Helper()
	ctx := testCtx(t)
	for _, p := range []string{v.be, v.fe} {
		if err := ts.xs.Remove(ctx, p); err != nil && !errors.Is(err, syscall.ENOENT) {
			t.Fatal(err)
		}
	}
	if v.kind == devices.KindVIF {
		if err := ts.hv.DisconnectVIF(ctx, v.linkName); err != nil {
			t.Fatal(err)
		}
	} else if err := ts.hv.DetachDisk(ctx, v.disk); err != nil {
		t.Fatal(err)
	}
}

func (ts *toolstack) write(t *testing.T, path, value string) {
	t.Helper()
	if err := ts.xs.Write(testCtx(t), path, []byte(value)); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}

func (ts *toolstack) read(t *testing.T, path string) string {
	t.Helper()
	v, err := ts.xs.Read(testCtx(t), path)
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("read %s: %v", path, err)
	}
	return string(v)
}

// waitNode waits (bounded by ctx) until pred holds for path's value ("",
// false when missing).
func (ts *toolstack) waitNode(t *testing.T, ctx context.Context, path string, pred func(v string, ok bool) bool) (string, bool) {
	t.Helper()
	w, err := ts.xs.Watch(ctx, path, "wait:"+path)
	if err != nil {
		if ctx.Err() != nil {
			return "", false
		}
		t.Fatal(err)
	}
	defer w.Close()
	for {
		v, err := ts.xs.Read(ctx, path)
		if err != nil && !errors.Is(err, syscall.ENOENT) && ctx.Err() == nil {
			t.Fatalf("read %s: %v", path, err)
		}
		if pred(string(v), err == nil) {
			return string(v), true
		}
		select {
		case <-w.Events():
		case <-ctx.Done():
			return string(v), false
		}
	}
}

// waitState waits until dir's state reads s.
func (ts *toolstack) waitState(t *testing.T, dir string, s devices.State) {
	t.Helper()
	want := strconv.Itoa(int(s))
	if v, ok := ts.waitNode(t, testCtx(t), dir+"/state", func(v string, _ bool) bool { return v == want }); !ok {
		t.Fatalf("%s/state never became %s: last %q", dir, want, v)
	}
}

// waitClosed waits until a failed device's backend is Closing or, once
// its frontend closed too, Closed.
func (ts *toolstack) waitClosed(t *testing.T, dir string) {
	t.Helper()
	if v, ok := ts.waitNode(t, testCtx(t), dir+"/state", func(v string, _ bool) bool { return v == "5" || v == "6" }); !ok {
		t.Fatalf("%s/state never became Closing or Closed: last %q", dir, v)
	}
}

// waitError waits for an error node and returns it.
func (ts *toolstack) waitError(t *testing.T, path string) string {
	t.Helper()
	v, ok := ts.waitNode(t, testCtx(t), path, func(_ string, ok bool) bool { return ok })
	if !ok {
		t.Fatalf("no error node %s", path)
	}
	return v
}

// waitDom0 polls the sim host's dom0 (bounded) until pred holds.
func (ts *toolstack) waitDom0(t *testing.T, what string, pred func(Dom0State) bool) Dom0State {
	t.Helper()
	ctx := testCtx(t)
	for {
		st, err := ts.hv.Dom0State(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pred(st) {
			return st
		}
		select {
		case <-ctx.Done():
			t.Fatalf("dom0 never %s: %+v", what, st)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// diskFile creates a sparse disk image of size bytes.
func diskFile(t *testing.T, size int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, size); err != nil {
		t.Fatal(err)
	}
	return p
}

// bootWithDevices boots a guest with libxl's directories.
func (ts *toolstack) bootWithDevices(t *testing.T) xenctrl.Domid {
	t.Helper()
	d := ts.boot(t)
	ts.domainDirs(t, d)
	return d
}
