package nested

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// qcow2 disks through QEMU's qdisk backend (Debian's qemu-system-xen,
// packed into the 4.17 dom0 by nested-xen.sh's prepare_qemu_xen).

const (
	qemuXen = "/usr/libexec/xen-qemu-system-i386"
	qemuImg = "/usr/bin/qemu-img"
)

// TestNestedQdisk: a PV and a PVH guest of the daemon, each with a qcow2
// disk (`--disk xvda:F.qcow2:rw:qcow2`) served by the QEMU the daemon
// starts for the domain, beside a raw read-only one (`--disk xvdb:G:ro`,
// blkback). The guest
// writes its word to xvda and reads the test's word on xvdb; after `vm
// shutdown` the word is in the qcow2 image (read through qemu-img convert)
// and no QEMU, qdisk backend or device-model node is left. Then, for the
// PV guest: kill -9 of the daemon with the guest running (its QEMU must
// survive and be re-adopted: vm get shows the same pid, the disks
// Connected), destroy by the restarted daemon, nothing left. Bad input
// first: a qcow2 image given as raw, a read-only qcow2 disk and qcow2 on an
// HVM guest are refused naming the field, with nothing built.
func TestNestedQdisk(t *testing.T) {
	needNested(t)
	needGuest(t)
	if v := xlInfo(t); v["xen_major"]+"."+v["xen_minor"] != "4.17" {
		t.Skipf("Xen %s.%s: nested-xen.sh packs qemu-system-xen (Debian 12's, linked with libxenctrl 4.17) into the 4.17 boot only", v["xen_major"], v["xen_minor"])
	}
	for _, f := range []string{qemuXen, qemuImg} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v: nested-xen.sh's prepare_qemu_xen packs Debian's qemu-system-xen and qemu-utils into the 4.17 dom0", err)
		}
	}
	// QEMU itself runs in this dom0 (its libraries, its data).
	if out, err := run(30*time.Second, qemuXen, "-version"); err != nil {
		t.Fatalf("%s -version: %v\n%s", qemuXen, err, out)
	} else {
		t.Logf("%s", bytes.TrimSpace(out))
	}
	w := newStateWatcher(t)
	e := newEnv(t)
	e.start()

	t.Run("BadInput", func(t *testing.T) {
		im := newQcow2Images(t, "bad")
		name := fmt.Sprintf("nxqbad%d", time.Now().UnixNano()%1e9)
		_, err := e.ctl("vm", "create", "--name", name, "--type", "hvm", "--memory", "256M", "--vcpus", "1",
			"--kernel", guestKernel, "--ramdisk", guestInitrd, "--disk", "xvda:"+im.rw+":rw:qcow2")
		if err == nil || !strings.Contains(err.Error(), "spec.disks[0].format") || !strings.Contains(err.Error(), "INVALID_ARGUMENT") {
			t.Errorf("vm create of an HVM guest with a qcow2 disk: %v; want INVALID_ARGUMENT naming spec.disks[0].format", err)
		}
		_, err = e.ctl("vm", "create", "--name", name, "--type", "pv", "--memory", "256M", "--vcpus", "1",
			"--kernel", guestKernel, "--ramdisk", guestInitrd, "--disk", "xvda:"+im.rw+":ro:qcow2")
		if err == nil || !strings.Contains(err.Error(), "spec.disks[0].mode") || !strings.Contains(err.Error(), "INVALID_ARGUMENT") {
			t.Errorf("vm create with a read-only qcow2 disk: %v; want INVALID_ARGUMENT naming spec.disks[0].mode", err)
		}
		if out, _ := e.ctl("vm", "list"); strings.Contains(string(out), name) {
			t.Errorf("the refused VM exists:\n%s", out)
		}
		if _, err := e.ctl("vm", "create", "--name", name, "--type", "pv", "--memory", "256M", "--vcpus", "1",
			"--kernel", guestKernel, "--ramdisk", guestInitrd, "--disk", "xvda:"+im.rw+":rw"); err != nil {
			t.Fatal(err)
		}
		defer e.ctl("vm", "delete", name)
		_, err = e.ctl("vm", "start", name)
		if err == nil || !strings.Contains(err.Error(), "spec.disks[0].format") || !strings.Contains(err.Error(), "INVALID_ARGUMENT") {
			t.Errorf("vm start with a qcow2 image given as raw: %v; want INVALID_ARGUMENT naming spec.disks[0].format", err)
		}
		if d := field(e.ctlJSON("vm", "get", name), "domid", "domid"); d != "" && d != "0" {
			t.Errorf("the refused start left domain %s", d)
		}
		if p := qemuPids(""); len(p) > 0 {
			t.Errorf("QEMUs running after the refusals: %v", p)
		}
	})
	for _, typ := range []string{"pv", "pvh"} {
		t.Run(strings.ToUpper(typ), func(t *testing.T) { qdiskGuest(t, e, w, typ, typ == "pv") })
	}
}

// qcow2Images are one guest's disks and the words on them: a read-write
// qcow2 image and a read-only raw file (QEMU 7.2 cannot serve a read-only
// qcow2 image: the daemon refuses one).
type qcow2Images struct {
	rw, ro         string
	rwWord, roWord string
}

func newQcow2Images(t *testing.T, tag string) qcow2Images {
	t.Helper()
	dir := t.TempDir()
	im := qcow2Images{rw: filepath.Join(dir, "rw.qcow2"), ro: filepath.Join(dir, "ro.img"),
		rwWord: fmt.Sprintf("NXQRW%s%d", tag, time.Now().UnixNano()%1e6),
		roWord: fmt.Sprintf("NXQRO%s%d", tag, time.Now().UnixNano()%1e6)}
	writeImage(t, im.ro, roImageSize, im.roWord)
	if out, err := run(time.Minute, qemuImg, "create", "-q", "-f", "qcow2", im.rw, strconv.Itoa(rwImageSize)); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	return im
}

// qdiskGuest runs one guest with two qcow2 disks: start, the guest's
// markers, vm shutdown, the word in the image, nothing left; with kill9,
// then start, kill -9 of the daemon, restart, re-adoption, destroy,
// nothing left.
func qdiskGuest(t *testing.T, e *env, w *stateWatcher, typ string, kill9 bool) {
	im := newQcow2Images(t, typ)
	rw := im.rw
	name := fmt.Sprintf("nxqdisk%s%d", typ, time.Now().UnixNano()%1e9)
	if _, err := e.ctl("vm", "create", "--name", name, "--type", typ, "--memory", "256M", "--vcpus", "1",
		"--kernel", guestKernel, "--ramdisk", guestInitrd,
		"--cmdline", fmt.Sprintf("console=hvc0 nxmode=devices nxpattern=%s nxddmb=%d", im.rwWord, ddMiB),
		"--disk", "xvda:"+im.rw+":rw:qcow2", "--disk", "xvdb:"+im.ro+":ro"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_, _ = e.ctl("vm", "destroy", name)
		if _, err := e.ctl("vm", "delete", name); err != nil {
			t.Errorf("vm delete: %v", err)
		}
	}()
	logPath := filepath.Join(consoleDir, "guest-"+name+".log")
	fes := func(domid string) []string {
		return []string{"/local/domain/" + domid + "/device/vbd/" + strconv.Itoa(vdevXvda),
			"/local/domain/" + domid + "/device/vbd/" + strconv.Itoa(vdevXvdb)}
	}
	// start starts the VM and waits for both disks to connect; it returns
	// the domid and the domain's one QEMU, or, for a guest that died first,
	// an error made by died (its domain destroyed, for bootRetrying).
	start := func(t *testing.T) (domid string, qemu int, err error) {
		t.Helper()
		t0 := time.Now()
		if _, err := e.ctl("vm", "start", name); err != nil {
			logs, _ := filepath.Glob("/var/log/xen/qemu-dm-*.log")
			var ql strings.Builder
			for _, l := range logs {
				fmt.Fprintf(&ql, "%s:\n%s\n", l, tail(readFrom(l, 0), 1500))
			}
			t.Fatalf("vm start: %v\nQEMU logs:\n%s\ndaemon log:\n%s", err, ql.String(), tail([]byte(e.logText()), 3000))
		}
		domid = field(e.ctlJSON("vm", "get", name), "domid", "domid")
		gone := func() string {
			if d := field(e.ctlJSON("vm", "get", name), "domid", "domid"); d != domid {
				return "the VM is now domid " + d
			}
			return ""
		}
		tConn, err := w.waitConnected(time.Now().Add(markerWait), gone, fes(domid)...)
		if errors.Is(err, errGuestGone) {
			if _, derr := e.ctl("vm", "destroy", name); derr != nil {
				t.Logf("destroy after the failed boot: %v", derr)
			}
			return domid, 0, died(domid, err.Error())
		}
		if err != nil {
			xs, _ := run(30*time.Second, "xenstore-ls", "-fp", "/local/domain/0/backend/qdisk/"+domid)
			fe, _ := run(30*time.Second, "xenstore-ls", "-fp", "/local/domain/"+domid+"/device")
			dm, _ := run(30*time.Second, "xenstore-ls", "-fp", "/local/domain/0/device-model/"+domid)
			t.Fatalf("the qcow2 disks did not connect: %v\nbackends:\n%s\nfrontends:\n%s\ndevice-model:\n%s\nQEMU's log:\n%s\ndaemon log:\n%s", err,
				xs, fe, dm, tail(readFrom("/var/log/xen/qemu-dm-"+domid+".log", 0), 2000), tail([]byte(e.logText()), 3000))
		}
		pids := qemuPids(domid)
		if len(pids) != 1 {
			t.Fatalf("QEMUs of domain %s: %v, want one", domid, pids)
		}
		t.Logf("QDISK-TIMES %s vm start -> both qcow2 disks Connected %v (domain %d, QEMU pid %d)",
			typ, tConn.Sub(t0).Round(time.Millisecond), mustAtoi(t, domid), pids[0])
		if got := pluggedQEMUPids(t, e, name); len(got) != 1 || got[0] != pids[0] {
			t.Errorf("vm get's disks name QEMU pids %v, want %d for the qcow2 one", got, pids[0])
		}
		return domid, pids[0], nil
	}

	// The first boot, to the guest's GUEST-DEVICES-DONE, under the retry
	// policy (a PVH guest may triple-fault under QEMU).
	var domid string
	var from int64
	var b []byte
	g := guestBoot{what: "the daemon's " + strings.ToUpper(typ) + " qcow2 guest", typ: typ, vcpus: 1, ours: true}
	bootRetrying(t, g, func(int) error {
		from = fileSize(logPath)
		var err error
		if domid, _, err = start(t); err != nil {
			return err
		}
		deadline, lastCheck := time.Now().Add(markerWait), time.Now()
		for b = readFrom(logPath, from); !bytes.Contains(b, []byte("GUEST-DEVICES-DONE")); b = readFrom(logPath, from) {
			if time.Since(lastCheck) > 3*time.Second {
				lastCheck = time.Now()
				if d := field(e.ctlJSON("vm", "get", name), "domid", "domid"); d != domid {
					_, _ = e.ctl("vm", "destroy", name)
					return died(domid, "the VM is now domid "+d+" (the guest died: triple fault?)")
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no GUEST-DEVICES-DONE within %v; console:\n%s", markerWait, tail(b, 4000))
			}
			time.Sleep(500 * time.Millisecond)
		}
		return nil
	})
	lines := guestLines(b)
	t.Logf("guest:\n%s", lines)
	for _, want := range []string{"GUEST-DISK-WROTE " + im.rwWord, "GUEST-DISK-RO " + im.roWord} {
		if !strings.Contains(lines, want+"\n") {
			t.Errorf("the guest did not print %q", want)
		}
	}
	if m := ddLine.FindStringSubmatch(lines); m != nil {
		t.Logf("QDISK-DD %s %s", typ, m[0])
	}
	if out, err := e.ctl("vm", "get", name); err == nil {
		t.Logf("vm get:\n%s", out)
	}
	if _, err := e.ctl("vm", "shutdown", name, "--timeout", "2m"); err != nil {
		t.Errorf("vm shutdown: %v", err)
	}
	checkGone(t, "vm shutdown", domid, "")
	checkNoQdisk(t, w, domid, im.ro)
	// The word, read from the qcow2 image by QEMU's own tools.
	out := filepath.Join(filepath.Dir(rw), "rw-after.raw")
	if o, err := run(time.Minute, qemuImg, "convert", "-f", "qcow2", "-O", "raw", rw, out); err != nil {
		t.Fatalf("qemu-img convert: %v\n%s", err, o)
	}
	if head := readFrom(out, 0); !bytes.HasPrefix(head, []byte(im.rwWord+"\n")) {
		t.Errorf("the guest's word %q is not at the start of %s (qemu-img convert): %q", im.rwWord, rw, bytes.TrimRight(head[:min(len(head), 64)], "\x00"))
	} else {
		t.Logf("%s starts with the guest's word %s (read with qemu-img convert)", filepath.Base(rw), im.rwWord)
	}
	os.Remove(out)
	if o, err := run(time.Minute, qemuImg, "check", rw); err != nil {
		t.Errorf("qemu-img check %s after the shutdown: %v\n%s", rw, err, o)
	}

	if !kill9 {
		return
	}
	t.Run("Kill9ThenDestroy", func(t *testing.T) {
		domid, qemu, err := start(t)
		if err != nil {
			t.Fatal(err) // its guest died: the test's first boot had the retries
		}
		e.kill9()
		if p := qemuPids(domid); len(p) != 1 || p[0] != qemu {
			t.Fatalf("after kill -9 of the daemon: QEMUs of domain %s %v, want %d still running", domid, p, qemu)
		}
		e.start()
		if got := pluggedQEMUPids(t, e, name); len(got) != 1 || got[0] != qemu {
			t.Errorf("after the restart vm get's disks name QEMU pids %v, want %d (re-adopted)", got, qemu)
		}
		if out, err := e.ctl("vm", "get", name); err == nil {
			t.Logf("vm get after the restart:\n%s", out)
			if n := strings.Count(string(out), "backend Connected, frontend Connected"); n != 2 {
				t.Errorf("after the restart %d disks read Connected, want 2", n)
			}
		}
		if p := qemuPids(domid); len(p) != 1 || p[0] != qemu {
			t.Errorf("the restarted daemon changed the QEMUs of domain %s: %v, want %d", domid, p, qemu)
		}
		if _, err := e.ctl("vm", "destroy", name); err != nil {
			t.Fatal(err)
		}
		checkGone(t, "destroy after kill -9", domid, "")
		checkNoQdisk(t, w, domid, im.ro)
	})
}

// checkNoQdisk fails if anything of domid's qcow2 disks is left: its QEMU,
// backend directories (qdisk or vbd), device-model directory, and the loop
// device of its raw disk.
func checkNoQdisk(t *testing.T, w *stateWatcher, domid, raw string) {
	t.Helper()
	if l := loopsBacking(raw); len(l) > 0 {
		t.Errorf("loop devices still backed by %s: %v", raw, l)
	}
	if p := qemuPids(domid); len(p) > 0 {
		t.Errorf("QEMU of domain %s left: %v", domid, p)
	}
	if left := w.backendsLeft(domid, "qdisk", "vbd"); len(left) > 0 {
		t.Errorf("backend directories of domain %s left: %v", domid, left)
	}
	if xsExists(t, "/local/domain/0/device-model/"+domid) {
		t.Errorf("/local/domain/0/device-model/%s left", domid)
	}
}

// qemuPids lists the xen-qemu-system-i386 processes (not zombies) serving
// domid (any domain for "").
func qemuPids(domid string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile("/proc/" + ent.Name() + "/cmdline")
		if err != nil || !bytes.HasPrefix(cmd, []byte(qemuXen+"\x00")) {
			continue
		}
		if stat, err := os.ReadFile("/proc/" + ent.Name() + "/stat"); err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i > 0 && bytes.HasPrefix(stat[i+1:], []byte(" Z")) {
				continue
			}
		}
		if domid == "" || bytes.Contains(cmd, []byte("\x00-xen-domid\x00"+domid+"\x00")) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// pluggedQEMUPids are the QEMU pids vm get shows for the VM's disks.
func pluggedQEMUPids(t *testing.T, e *env, name string) []int {
	t.Helper()
	devs, _ := e.ctlJSON("vm", "get", name)["devices"].([]any)
	var pids []int
	for _, d := range devs {
		m, _ := d.(map[string]any)
		if p := field(m, "qemuPid", "qemu_pid"); p != "" {
			pids = append(pids, mustAtoi(t, p))
		}
	}
	return pids
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return n
}
