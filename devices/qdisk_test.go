package devices

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// qcow2File makes a file that starts with the qcow2 magic.
func (e *env) qcow2File(name string) string {
	p := filepath.Join(e.dir, name)
	b := make([]byte, 4096)
	copy(b, qcow2Magic)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// TestQdiskLifecycle: two qcow2 disks share the domain's one QEMU, written
// as libxl writes qdisk backends; a QEMU that dies shows in Status; a
// Plugger that never saw them (a restarted daemon) removes both disks
// and stops the QEMU from xenstore alone.
func TestQdiskLifecycle(t *testing.T) {
	e := newEnv(t)
	for _, devid := range []int{51712, 51728} {
		e.backend(KindQdisk, devid, backendNormal)
		e.frontend(KindVBD, devid, frontendNormal)
	}
	a, b := e.qcow2File("a.qcow2"), e.qcow2File("b.qcow2")
	ra, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: a, Format: FormatQCOW2})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvdb", Path: b, Format: FormatQCOW2})
	if err != nil {
		t.Fatal(err)
	}
	if e.host.started != 1 || ra.QEMU != rb.QEMU || ra.QEMU.Pid == 0 {
		t.Fatalf("QEMUs started %d, records' %+v %+v: want one, shared", e.host.started, ra.QEMU, rb.QEMU)
	}
	want := Record{Kind: KindVBD, Domid: guest, DevID: 51712, Device: "xvda", Path: a, BackendKind: KindQdisk, Format: FormatQCOW2, QEMU: ra.QEMU}
	if ra != want {
		t.Fatalf("record %+v, want %+v", ra, want)
	}
	be, fe := ra.BackendPath(), ra.FrontendPath()
	if be != "/local/domain/0/backend/qdisk/5/51712" || fe != "/local/domain/5/device/vbd/51712" {
		t.Fatalf("paths %s %s", be, fe)
	}
	for k, v := range map[string]string{"frontend": fe, "type": "qdisk", "params": "qcow2:" + a, "mode": "w", "dev": "xvda", "online": "1"} {
		if got := e.read(be + "/" + k); got != v {
			t.Errorf("%s/%s = %q, want %q", be, k, got, v)
		}
	}
	if e.exists(be + "/physical-device") {
		t.Error("a qdisk backend has a physical-device")
	}
	if got := e.read(fe + "/backend"); got != be {
		t.Errorf("frontend's backend = %q, want %q", got, be)
	}
	if got := e.read(qemuNode(guest)); got != ra.QEMU.String() {
		t.Errorf("QEMU record %q, want %q", got, ra.QEMU.String())
	}
	checkPerms(t, e, deviceModelDir(guest), backendPerms(0)[:1])
	for _, rec := range []Record{ra, rb} {
		if err := e.p.WaitConnected(e.ctx, rec); err != nil {
			t.Fatal(err)
		}
		if st, err := e.p.Status(e.ctx, rec); err != nil || st != (Status{Backend: StateConnected, Frontend: StateConnected}) {
			t.Fatalf("Status = %+v, %v", st, err)
		}
	}
	if _, err := e.p.Counters(e.ctx, ra); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Counters of a qdisk disk: %v, want ErrNotExist", err)
	}

	// Unplugging one leaves the QEMU to the other.
	if err := e.p.Unplug(e.ctx, rb, false); err != nil {
		t.Fatal(err)
	}
	if e.exists(rb.BackendPath()) || e.host.running() != 1 {
		t.Fatalf("after unplug of xvdb: backend left %v, QEMUs running %d", e.exists(rb.BackendPath()), e.host.running())
	}

	// The QEMU dies: the disk says so.
	e.host.mu.Lock()
	delete(e.host.qemus, ra.QEMU.Pid)
	e.host.mu.Unlock()
	st, err := e.p.Status(e.ctx, ra)
	if err != nil || !strings.Contains(st.Error, "QEMU") {
		t.Fatalf("Status with its QEMU gone = %+v, %v; want an error naming QEMU", st, err)
	}
	// A restarted daemon's next plug starts a new one.
	e.backend(KindQdisk, 51744, backendNormal)
	rc, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvdc", Path: b, Format: FormatQCOW2})
	if err != nil {
		t.Fatal(err)
	}
	if rc.QEMU == ra.QEMU || e.host.started != 2 || e.host.running() != 1 {
		t.Fatalf("after its QEMU died: new record %+v, started %d, running %d", rc.QEMU, e.host.started, e.host.running())
	}

	e.stopActors()
	fresh := NewPlugger(e.xs, e.host, nil)
	if err := fresh.RemoveDomainDevices(e.ctx, guest); err != nil {
		t.Fatal(err)
	}
	e.assertGone(ra)
	e.assertGone(rc)
	if e.exists(backendDomainDir(KindQdisk, guest)) {
		t.Errorf("%s left", backendDomainDir(KindQdisk, guest))
	}
	if e.host.running() != 0 || e.exists(deviceModelDir(guest)) {
		t.Fatalf("after RemoveDomainDevices: %d QEMUs running, device-model dir left %v", e.host.running(), e.exists(deviceModelDir(guest)))
	}
}

// TestDiskFormatChecked: a qcow2 image given as raw, a raw file given as
// qcow2 and an unknown format are refused naming "format", with nothing
// written and no QEMU started.
func TestDiskFormatChecked(t *testing.T) {
	e := newEnv(t)
	q, raw := e.qcow2File("q.qcow2"), e.file("r.img")
	_, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: q, Format: FormatQCOW2, ReadOnly: true})
	if inv := (*InvalidError)(nil); !errors.As(err, &inv) || inv.Field != "mode" {
		t.Errorf("PlugDisk of a read-only qcow2 disk = %v, want an InvalidError on mode", err)
	}
	for _, d := range []Disk{
		{Device: "xvda", Path: q},
		{Device: "xvda", Path: q, Format: FormatRaw},
		{Device: "xvda", Path: raw, Format: FormatQCOW2},
		{Device: "xvda", Path: raw, Format: "vhd"},
	} {
		_, err := e.p.PlugDisk(e.ctx, guest, d)
		var inv *InvalidError
		if !errors.As(err, &inv) || inv.Field != "format" {
			t.Errorf("PlugDisk(%+v) = %v, want an InvalidError on format", d, err)
		}
	}
	if e.exists(backendDomainDir(KindVBD, guest)) || e.exists(backendDomainDir(KindQdisk, guest)) || e.host.started != 0 {
		t.Fatalf("a refused disk left something: QEMUs started %d", e.host.started)
	}
}

// TestQdiskQEMUFailsToStart: a QEMU that cannot start fails the plug with
// nothing left.
func TestQdiskQEMUFailsToStart(t *testing.T) {
	e := newEnv(t)
	e.host.setFail("StartQEMU", errors.New("exec: no such file"))
	rec := Record{Kind: KindVBD, BackendKind: KindQdisk, Domid: guest, DevID: 51712}
	if _, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: e.qcow2File("a.qcow2"), Format: FormatQCOW2}); err == nil || !strings.Contains(err.Error(), "QEMU") {
		t.Fatalf("PlugDisk = %v, want a QEMU error", err)
	}
	e.assertGone(rec)
	if e.exists(deviceModelDir(guest)) {
		t.Fatal("device-model dir left")
	}
}

func TestParseQEMUProc(t *testing.T) {
	if q, err := parseQEMUProc("123 456"); err != nil || q != (QEMUProc{Pid: 123, Start: 456}) {
		t.Fatalf("parse = %+v, %v", q, err)
	}
	for _, bad := range []string{"", "123", "0 5", "-1 5", "12 34 56", " 12 34", "12  34", "012 34"} {
		if _, err := parseQEMUProc(bad); err == nil {
			t.Errorf("parseQEMUProc(%q) accepted", bad)
		}
	}
}
