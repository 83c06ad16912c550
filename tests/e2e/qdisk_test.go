package e2e

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// TestQdisk runs a PVH VM with a qcow2 disk (served by the domain's QEMU,
// which the sim host plays) beside a raw one: both connect, vm get names
// the QEMU; a kill -9 of the daemon keeps the same QEMU, re-adopted; a
// QEMU that dies shows as the disk's error; a destroy leaves no QEMU,
// qdisk backend, device-model directory or loop device. Bad input (qcow2
// on a PVH guest, a qcow2 image given as raw) is refused naming the field
// and builds nothing.
func TestQdisk(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	ctx := testCtx(t, 3*time.Minute)
	dir := t.TempDir()
	qcow2 := filepath.Join(dir, "a.qcow2")
	hdr := make([]byte, 64<<10)
	copy(hdr, "QFI\xfb")
	binary.BigEndian.PutUint32(hdr[4:], 3)        // version
	binary.BigEndian.PutUint64(hdr[24:], 256<<20) // virtual size
	if err := os.WriteFile(qcow2, hdr, 0o600); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(dir, "b.img")
	if err := os.WriteFile(raw, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	noQEMU := func() string {
		st, err := simc.Dom0State(ctx)
		if err != nil {
			return err.Error()
		}
		if len(st.QEMUs) != 0 || len(st.Loops) != 0 {
			return fmt.Sprintf("dom0 has QEMUs %v and loops %v", st.QEMUs, st.Loops)
		}
		return ""
	}

	// Bad input.
	if r := d.CLI("vm", "create", "--name", "bad", "--type", "hvm", "--memory", "64M", "--disk", "xvda:"+qcow2+":rw:qcow2"); r.Code == 0 ||
		!strings.Contains(r.Stderr, "spec.disks[0].format") || !strings.Contains(r.Stderr, "PV and PVH guests only") {
		t.Fatalf("qcow2 on an HVM guest: exit %d %s", r.Code, r.Stderr)
	}
	cli(t, d, "vm", "create", "--name", "asraw", "--type", "pv", "--memory", "64M", "--disk", "xvda:"+qcow2+":rw")
	if r := d.CLI("vm", "start", "asraw"); r.Code == 0 || !strings.Contains(r.Stderr, "INVALID_ARGUMENT") ||
		!strings.Contains(r.Stderr, "spec.disks[0].format") || !strings.Contains(r.Stderr, "qcow2 image, not raw") {
		t.Fatalf("a qcow2 image given as raw: exit %d %s", r.Code, r.Stderr)
	}
	if vm := cliVM(t, d, "asraw"); vm.GetDomid() != 0 || vm.GetPowerState() != apiv1.PowerState_POWER_STATE_HALTED {
		t.Fatalf("the refused start left %v domid %d", vm.GetPowerState(), vm.GetDomid())
	}
	if msg := noQEMU(); msg != "" {
		t.Fatal(msg)
	}
	cli(t, d, "vm", "delete", "asraw")

	cli(t, d, "vm", "create", "--name", "q1", "--type", "pvh", "--memory", "128M",
		"--disk", "xvda:"+qcow2+":rw:qcow2", "--disk", "xvdb:"+raw+":ro")
	cli(t, d, "vm", "start", "q1")
	connected := func() string {
		vm := cliVM(t, d, "q1")
		if len(vm.GetDevices()) != 2 {
			return fmt.Sprintf("%d devices plugged, want 2", len(vm.GetDevices()))
		}
		for _, dev := range vm.GetDevices() {
			if dev.GetBackendState() != "Connected" || dev.GetFrontendState() != "Connected" || dev.GetError() != "" {
				return fmt.Sprintf("%s: backend %q frontend %q %s", dev.GetDevice(), dev.GetBackendState(), dev.GetFrontendState(), dev.GetError())
			}
		}
		return ""
	}
	eventually(t, 30*time.Second, connected)
	vm := cliVM(t, d, "q1")
	domid := vm.GetDomid()
	qd, rd := vm.GetDevices()[0], vm.GetDevices()[1]
	if qd.GetFormat() != apiv1.DiskFormat_DISK_FORMAT_QCOW2 || qd.GetQemuPid() == 0 || qd.GetLoopDevice() != "" ||
		rd.GetFormat() != apiv1.DiskFormat_DISK_FORMAT_RAW || rd.GetQemuPid() != 0 || rd.GetLoopDevice() == "" {
		t.Fatalf("plugged as %v and %v", qd, rd)
	}
	if out := cli(t, d, "vm", "get", "q1"); !strings.Contains(out, fmt.Sprintf("via qcow2 QEMU pid %d", qd.GetQemuPid())) {
		t.Errorf("vm get does not name the QEMU:\n%s", out)
	}
	st, err := simc.Dom0State(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.QEMUs) != 1 || st.QEMUs[0].Pid != qd.GetQemuPid() || st.QEMUs[0].Domid != domid {
		t.Fatalf("dom0's QEMUs %+v, want pid %d for domain %d", st.QEMUs, qd.GetQemuPid(), domid)
	}
	if kids := xsList(t, ctx, simc, "/local/domain/0/backend/qdisk/"+strconv.Itoa(int(domid))); len(kids) != 1 {
		t.Fatalf("qdisk backends of domain %d: %v", domid, kids)
	}

	// A hot-plugged qcow2 disk is served by the same QEMU, which stays
	// when it goes.
	hot := filepath.Join(dir, "hot.qcow2")
	if err := os.WriteFile(hot, hdr, 0o600); err != nil {
		t.Fatal(err)
	}
	cli(t, d, "vm", "disk", "add", "q1", "xvdc:"+hot+":rw:qcow2")
	eventually(t, 30*time.Second, func() string {
		devs := cliVM(t, d, "q1").GetDevices()
		if len(devs) != 3 || devs[2].GetFrontendState() != "Connected" {
			return fmt.Sprintf("after disk add: %v", devs)
		}
		if devs[2].GetQemuPid() != qd.GetQemuPid() {
			return fmt.Sprintf("the hot-plugged disk names QEMU %d, want %d", devs[2].GetQemuPid(), qd.GetQemuPid())
		}
		return ""
	})
	cli(t, d, "vm", "disk", "rm", "q1", "xvdc")
	eventually(t, 30*time.Second, connected)
	if st, err := simc.Dom0State(ctx); err != nil || len(st.QEMUs) != 1 || st.QEMUs[0].Pid != qd.GetQemuPid() {
		t.Fatalf("after the hot-plug and unplug dom0's QEMUs %+v, %v", st.QEMUs, err)
	}

	// kill -9: the same QEMU, re-adopted, nothing plugged twice.
	d.Kill()
	d.Start()
	eventually(t, 30*time.Second, connected)
	if got := cliVM(t, d, "q1").GetDevices()[0].GetQemuPid(); got != qd.GetQemuPid() {
		t.Fatalf("after the restart the disk names QEMU %d, want %d", got, qd.GetQemuPid())
	}
	if st, err := simc.Dom0State(ctx); err != nil || len(st.QEMUs) != 1 || st.QEMUs[0].Pid != qd.GetQemuPid() {
		t.Fatalf("after the restart dom0's QEMUs %+v, %v", st.QEMUs, err)
	}

	// The QEMU dies: the disk says so.
	if err := simc.StopQEMU(ctx, devices.QEMUProc{Pid: int(st.QEMUs[0].Pid), Start: st.QEMUs[0].Start}, domid); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() string {
		if e := cliVM(t, d, "q1").GetDevices()[0].GetError(); !strings.Contains(e, "QEMU") {
			return fmt.Sprintf("xvda's error %q does not name its QEMU", e)
		}
		return ""
	})

	cli(t, d, "vm", "destroy", "q1")
	eventually(t, 10*time.Second, noQEMU)
	for _, p := range []string{"/local/domain/0/backend/qdisk", "/local/domain/0/backend/vbd", "/local/domain/0/device-model"} {
		if kids := xsList(t, ctx, simc, p); len(kids) != 0 {
			t.Errorf("%s after destroy: %v", p, kids)
		}
	}

	// Started again, destroyed after a kill -9: nothing left either.
	cli(t, d, "vm", "start", "q1")
	eventually(t, 30*time.Second, connected)
	d.Kill()
	d.Start()
	cli(t, d, "vm", "destroy", "q1")
	eventually(t, 10*time.Second, noQEMU)
	for _, p := range []string{"/local/domain/0/backend/qdisk", "/local/domain/0/backend/vbd", "/local/domain/0/device-model"} {
		if kids := xsList(t, ctx, simc, p); len(kids) != 0 {
			t.Errorf("%s after kill -9 and destroy: %v", p, kids)
		}
	}
}
