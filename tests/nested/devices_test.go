package nested

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The devices tests: a PVH and a PV guest, each with a read-write raw-file
// disk (xvda), a read-only one (xvdb) and a NIC on a dom0 bridge. The
// guest (nxmode=devices) writes a known word to xvda, reads the word the
// test put on xvdb, pings the bridge's address and measures dd throughput
// on xvda; the test finds the word in xvda's backing file afterwards.
//
// TestNestedDevicesByHand does dom0's part by hand, as libxl and its hotplug
// scripts do (devhost_test.go): it proves the kernel side (blkback, netback,
// blkfront, netfront) with nothing but xenstore nodes, loop devices and a
// bridge. TestNestedDevicesXL (devxl_test.go) does it with xl's own disk=
// and vif=, the baseline TestNestedDevices compares the daemon with.

const (
	rwImageSize = 64 << 20
	roImageSize = 4 << 20
	ddMiB       = 16 // what the guest writes and reads back for the throughput
)

// devGuest is what one guest with devices showed.
type devGuest struct {
	domid     string
	connected time.Duration // call -> every frontend Connected
	writeKBps int
	readKBps  int
}

// devImages are one guest's backing files and the words on them.
type devImages struct {
	rw, ro           string
	rwWord, roWord   string
	guestCmdlineArgs string
}

func newDevImages(t *testing.T, tag string) devImages {
	dir := t.TempDir()
	im := devImages{
		rw: filepath.Join(dir, "rw.img"), ro: filepath.Join(dir, "ro.img"),
		rwWord: fmt.Sprintf("NXRW%s%d", tag, time.Now().UnixNano()%1e6),
		roWord: fmt.Sprintf("NXRO%s%d", tag, time.Now().UnixNano()%1e6),
	}
	writeImage(t, im.rw, rwImageSize, "")
	writeImage(t, im.ro, roImageSize, im.roWord)
	im.guestCmdlineArgs = fmt.Sprintf("console=hvc0 nxmode=devices nxpattern=%s nxip=%s nxping=%s nxddmb=%d",
		im.rwWord, guestAddr, bridgeAddr, ddMiB)
	return im
}

// checkPattern fails unless the rw image starts with its word.
func (im devImages) checkPattern(t *testing.T) {
	t.Helper()
	b := readFrom(im.rw, 0)
	if len(b) > 64 {
		b = b[:64]
	}
	if !bytes.HasPrefix(b, []byte(im.rwWord+"\n")) {
		t.Errorf("the guest's word %q is not at the start of %s: %q", im.rwWord, im.rw, bytes.TrimRight(b, "\x00"))
	} else {
		t.Logf("%s starts with the guest's word %s", filepath.Base(im.rw), im.rwWord)
	}
}

var ddLine = regexp.MustCompile(`GUEST-DD mb=\d+ write_kbps=(\d+) read_kbps=(\d+)`)

// checkGuestDevices waits (bounded) for GUEST-DEVICES-DONE in a guest's
// console and checks every step's marker; it returns the dd figures.
func checkGuestDevices(t *testing.T, logPath string, from int64, im devImages, gone func() string) (writeKBps, readKBps int) {
	t.Helper()
	deadline := time.Now().Add(markerWait)
	var b []byte
	for {
		b = readFrom(logPath, from)
		if bytes.Contains(b, []byte("GUEST-DEVICES-DONE")) {
			break
		}
		if why := gone(); why != "" || time.Now().After(deadline) {
			if why == "" {
				why = "no GUEST-DEVICES-DONE within " + markerWait.String()
			}
			t.Fatalf("%s; console:\n%s", why, tail(b, 4000))
		}
		time.Sleep(500 * time.Millisecond)
	}
	lines := guestLines(b)
	t.Logf("guest:\n%s", lines)
	for _, want := range []string{"GUEST-DISK-WROTE " + im.rwWord, "GUEST-DISK-RO " + im.roWord, "GUEST-PING ok"} {
		if !strings.Contains(lines, want+"\n") {
			t.Errorf("the guest did not print %q", want)
		}
	}
	m := ddLine.FindStringSubmatch(lines)
	if m == nil {
		t.Errorf("no GUEST-DD line")
		return 0, 0
	}
	w, _ := strconv.Atoi(m[1])
	r, _ := strconv.Atoi(m[2])
	return w, r
}

// guestLines picks the GUEST-* lines of a console log but the heartbeats.
func guestLines(b []byte) string {
	var s strings.Builder
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if i := strings.Index(l, "GUEST-"); i >= 0 && !strings.Contains(l, "GUEST-ALIVE") {
			s.WriteString(l[i:] + "\n")
		}
	}
	return s.String()
}

// TestNestedDevicesByHand: blkback and netback serve a PVH and a PV guest
// whose devices dom0 sets up by hand (libxl's xenstore keys, a loop device
// per disk, the vif in a bridge), with `xl create -p` ... `xl unpause`.
func TestNestedDevicesByHand(t *testing.T) {
	if os.Getenv("NX_NESTED") == "" {
		t.Skip("not inside the nested-Xen harness (NX_NESTED unset)")
	}
	needGuest(t)
	ensureBridge(t)
	w := newStateWatcher(t)
	for _, typ := range []string{"pvh", "pv"} {
		t.Run(strings.ToUpper(typ), func(t *testing.T) {
			g := handBoot(t, w, typ)
			t.Logf("DEVICE-BASELINE %s: xl create -p -> frontends Connected %v; dd write %d kB/s, read %d kB/s",
				typ, g.connected.Round(time.Millisecond), g.writeKBps, g.readKBps)
		})
	}
}

// handBoot boots the devices guest with `xl create -p`, hand-written vbd and
// vif nodes, and `xl unpause`; it checks the guest's markers, every backend
// and frontend Connected, and, after `xl destroy` and the test's own
// clean-up, the word in the backing file and nothing left behind. A guest
// that triple-faults before its marker (PVH, now and then under QEMU) is
// retried once (bootRetrying).
func handBoot(t *testing.T, w *stateWatcher, typ string) devGuest {
	var g devGuest
	b := guestBoot{what: "the hand-made " + strings.ToUpper(typ) + " devices guest", typ: typ, vcpus: 1}
	bootRetrying(t, b, func(attempt int) error {
		var err error
		g, err = handBootOnce(t, w, typ, attempt)
		return err
	})
	return g
}

// handBootOnce is one attempt of handBoot; an error made by died means the
// guest died before its devices connected.
func handBootOnce(t *testing.T, w *stateWatcher, typ string, attempt int) (devGuest, error) {
	im := newDevImages(t, typ)
	name := fmt.Sprintf("nxdevhand%s%d-%d", typ, time.Now().UnixNano()%1e9, attempt)
	cfg := filepath.Join(t.TempDir(), name+".cfg")
	tsc := ""
	if typ == "pvh" {
		tsc = "tsc_mode = \"native\"\n"
	}
	body := fmt.Sprintf("name = %q\ntype = %q\nkernel = %q\nramdisk = %q\nextra = %q\n"+
		"memory = 256\nmaxmem = 256\nvcpus = 1\n%son_reboot = \"destroy\"\non_crash = \"destroy\"\n",
		name, typ, guestKernel, guestInitrd, im.guestCmdlineArgs, tsc)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	rwLoop := attachLoop(t, im.rw, false)
	roLoop := attachLoop(t, im.ro, true)
	logPath := filepath.Join(consoleDir, "guest-"+name+".log")

	t0 := time.Now()
	if _, err := run(2*time.Minute, "xl", "create", "-p", cfg); err != nil {
		t.Fatal(err)
	}
	out, err := run(30*time.Second, "xl", "domid", name)
	if err != nil {
		t.Fatal(err)
	}
	domidStr := strings.TrimSpace(string(out))
	domid, _ := strconv.Atoi(domidStr)
	tCreated := time.Now()
	devs := []handDevice{
		handVBD(t, domid, vdevXvda, "xvda", rwLoop, false),
		handVBD(t, domid, vdevXvdb, "xvdb", roLoop, true),
		handVIF(t, domid, 0, fmt.Sprintf("00:16:3e:99:%02x:%02x", domid>>8&0xff, domid&0xff), testBridge),
	}
	tNodes := time.Now()
	connectVIF(t, devs[2], domid, testBridge)
	tVIF := time.Now()
	var backends, frontends []string
	for _, d := range devs {
		backends = append(backends, d.backend)
		frontends = append(frontends, d.frontend)
	}
	cleaned := false
	cleanup := func() {
		if cleaned {
			return
		}
		cleaned = true
		handCleanup(t, w, name, domidStr, devs, []loopDev{rwLoop, roLoop})
	}
	defer cleanup()
	// the backends wait for the frontend in InitWait
	for _, b := range backends {
		if s := w.read(b + "/state"); s != "2" {
			t.Logf("backend %s in state %q before unpause (InitWait=2 expected)", b, s)
		}
	}
	tUnpause := time.Now()
	if _, err := run(30*time.Second, "xl", "unpause", name); err != nil {
		t.Fatal(err)
	}
	gone := func() string {
		if !xlDomids(t)[domidStr] {
			return "domain " + domidStr + " gone (triple fault?)"
		}
		return ""
	}
	tConn, err := w.waitConnected(time.Now().Add(markerWait), gone, frontends...)
	if err != nil {
		if errors.Is(err, errGuestGone) {
			t.Logf("attempt %d: %v; console:\n%s", attempt, err, tail(readFrom(logPath, 0), 1500))
			return devGuest{}, died(domidStr, err.Error())
		}
		t.Fatalf("%v; console:\n%s", err, tail(readFrom(logPath, 0), 3000))
	}
	if _, err := w.waitConnected(time.Now().Add(bootWait), nil, backends...); err != nil {
		t.Errorf("backends: %v", err)
	}
	g := devGuest{domid: domidStr, connected: tConn.Sub(t0)}
	t.Logf("domain %s: xl create -p %v, nodes %v, vif in bridge %v, unpause -> frontends Connected %v (create -> Connected %v)",
		domidStr, tCreated.Sub(t0).Round(time.Millisecond), tNodes.Sub(tCreated).Round(time.Millisecond),
		tVIF.Sub(tNodes).Round(time.Millisecond), tConn.Sub(tUnpause).Round(time.Millisecond), g.connected.Round(time.Millisecond))
	logNodes(t, w, devs[0], devs[2])
	g.writeKBps, g.readKBps = checkGuestDevices(t, logPath, 0, im, gone)
	cleanup()
	im.checkPattern(t)
	return g, nil
}

// logNodes logs what the drivers wrote in a vbd's and a vif's directories.
func logNodes(t *testing.T, w *stateWatcher, devs ...handDevice) {
	for _, d := range devs {
		for _, dir := range []string{d.backend, d.frontend} {
			out, err := run(30*time.Second, "xenstore-ls", "-p", dir)
			if err != nil {
				t.Logf("xenstore-ls %s: %v", dir, err)
				continue
			}
			t.Logf("%s:\n%s", dir, tail(out, 3000))
		}
	}
}

// handCleanup destroys the domain and undoes what the test set up by hand:
// xl destroy does not know the hand-made devices, so the test removes the
// backend directories itself (blkback then lets go of the loop devices,
// netback removes the vifs) and detaches the loops; then nothing of the
// domain may be left.
func handCleanup(t *testing.T, w *stateWatcher, name, domid string, devs []handDevice, loops []loopDev) {
	t.Helper()
	if xlDomids(t)[domid] {
		if _, err := run(time.Minute, "xl", "destroy", name); err != nil {
			t.Errorf("xl destroy: %v", err)
		}
	}
	left := w.backendsLeft(domid)
	t.Logf("after xl destroy: backend directories left %v, vifs %v", left, vifsOf(domid))
	for _, d := range devs {
		if _, err := run(30*time.Second, "xenstore-rm", d.backend); err != nil {
			t.Logf("xenstore-rm %s: %v", d.backend, err)
		}
	}
	_, _ = run(30*time.Second, "xenstore-rm", "/local/domain/0/backend/vbd/"+domid)
	_, _ = run(30*time.Second, "xenstore-rm", "/local/domain/0/backend/vif/"+domid)
	deadline := time.Now().Add(bootWait)
	for _, l := range loops {
		for {
			_, err := run(30*time.Second, "losetup", "-d", l.path)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("losetup -d %s: %v", l.path, err)
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	for len(vifsOf(domid)) > 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	checkNoDevices(t, w, domid, nil)
}

// checkNoDevices fails if domain domid left a backend directory or a vif,
// or a loop device is still backed by one of files.
func checkNoDevices(t *testing.T, w *stateWatcher, domid string, files []string) {
	t.Helper()
	if left := w.backendsLeft(domid); len(left) > 0 {
		t.Errorf("backend directories of domain %s left: %v", domid, left)
	}
	if v := vifsOf(domid); len(v) > 0 {
		t.Errorf("vifs of domain %s left: %v", domid, v)
	}
	for _, f := range files {
		if l := loopsBacking(f); len(l) > 0 {
			t.Errorf("loop devices still backed by %s: %v", f, l)
		}
	}
}

// TestNestedDevices is the daemon's devices acceptance test: per type, the
// guest and its devices through xopsctl (--disk, --nic) and then xl's
// baseline (TestNestedDevicesXL's guest: xl create with disk= and vif=),
// checked the same way;
// then a kill -9 of the daemon with the guest running, and a destroy by the
// restarted daemon, must leave no loop device, vif or backend node behind.
// Prints DEVICE-TIMES: call -> frontends Connected and the guest's dd
// throughput, ours/xl.
func TestNestedDevices(t *testing.T) {
	needNested(t)
	needGuest(t)
	ensureBridge(t)
	w := newStateWatcher(t)
	e := newEnv(t)
	e.start()
	for _, typ := range []string{"pvh", "pv"} {
		t.Run(strings.ToUpper(typ), func(t *testing.T) {
			ours := daemonDevices(t, e, w, typ)
			xl := xlDevicesBoot(t, w, typ)
			ratio := func(a, b float64) string {
				if b == 0 {
					return "n/a"
				}
				return fmt.Sprintf("%.2f", a/b)
			}
			t.Logf("DEVICE-TIMES %s ours/xl: call->frontends-connected %v / %v = %s; dd write kB/s %d / %d = %s; dd read kB/s %d / %d = %s",
				typ, ours.connected.Round(time.Millisecond), xl.connected.Round(time.Millisecond),
				ratio(ours.connected.Seconds(), xl.connected.Seconds()),
				ours.writeKBps, xl.writeKBps, ratio(float64(ours.writeKBps), float64(xl.writeKBps)),
				ours.readKBps, xl.readKBps, ratio(float64(ours.readKBps), float64(xl.readKBps)))
		})
	}
}

// daemonDevices runs the devices guest through the daemon: create with two
// disks and a NIC, start, markers, clean shutdown, the word in the backing
// file, nothing left; then start again, kill -9 the daemon, restart it,
// destroy, nothing left.
func daemonDevices(t *testing.T, e *env, w *stateWatcher, typ string) devGuest {
	im := newDevImages(t, typ)
	name := fmt.Sprintf("nxdev%s%d", typ, time.Now().UnixNano()%1e9)
	if _, err := e.ctl("vm", "create", "--name", name, "--type", typ, "--memory", "256M", "--vcpus", "1",
		"--kernel", guestKernel, "--ramdisk", guestInitrd, "--cmdline", im.guestCmdlineArgs,
		"--disk", "xvda:"+im.rw+":rw", "--disk", "xvdb:"+im.ro+":ro", "--nic", "bridge="+testBridge); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if _, err := e.ctl("vm", "delete", name); err != nil {
			t.Errorf("vm delete: %v", err)
		}
	}()
	logPath := filepath.Join(consoleDir, "guest-"+name+".log")
	files := []string{im.rw, im.ro}
	var g devGuest
	b := guestBoot{what: "the daemon's " + strings.ToUpper(typ) + " devices guest", typ: typ, vcpus: 1, ours: true}
	bootRetrying(t, b, func(attempt int) error {
		from := fileSize(logPath)
		t0 := time.Now()
		if _, err := e.ctl("vm", "start", name); err != nil {
			t.Fatalf("vm start: %v\n%s", err, tail([]byte(e.logText()), 3000))
		}
		domid := field(e.ctlJSON("vm", "get", name), "domid", "domid")
		fes := []string{
			"/local/domain/" + domid + "/device/vbd/" + strconv.Itoa(vdevXvda),
			"/local/domain/" + domid + "/device/vbd/" + strconv.Itoa(vdevXvdb),
			"/local/domain/" + domid + "/device/vif/0",
		}
		// the daemon restarts a guest that reboots (on_reboot=restart), and
		// a triple fault reads as a reboot: a new domid means the guest died
		gone := func() string {
			vm := e.ctlJSON("vm", "get", name)
			if d, s := field(vm, "domid", "domid"), field(vm, "powerState", "power_state"); d != domid || !strings.Contains(s, "RUNNING") {
				return fmt.Sprintf("the VM is now domid %q %s (the guest rebooted or died: triple fault?)", d, s)
			}
			return ""
		}
		tConn, err := w.waitConnected(time.Now().Add(markerWait), gone, fes...)
		if err != nil {
			t.Logf("attempt %d: %v; console:\n%s", attempt, err, tail(readFrom(logPath, from), 2000))
			if _, derr := e.ctl("vm", "destroy", name); derr != nil {
				t.Logf("destroy: %v", derr)
			}
			if errors.Is(err, errGuestGone) {
				return died(domid, err.Error())
			}
			return fmt.Errorf("the daemon's %s guest's devices did not connect: %v\n%s", typ, err, tail([]byte(e.logText()), 3000))
		}
		g = devGuest{domid: domid, connected: tConn.Sub(t0)}
		g.writeKBps, g.readKBps = checkGuestDevices(t, logPath, from, im, func() string {
			if !xlDomids(t)[domid] {
				return "domain " + domid + " gone"
			}
			return ""
		})
		if out, err := e.ctl("vm", "get", name, "-o", "json"); err == nil {
			t.Logf("vm get: %s", tail(out, 3000))
		}
		if _, err := e.ctl("vm", "shutdown", name, "--timeout", "2m"); err != nil {
			t.Errorf("vm shutdown: %v", err)
		}
		checkGone(t, "vm shutdown", domid, "")
		checkNoDevices(t, w, domid, files)
		im.checkPattern(t)
		return nil
	})

	t.Run("Kill9ThenDestroy", func(t *testing.T) {
		freeBefore := freeMiB(t)
		if _, err := e.ctl("vm", "start", name); err != nil {
			t.Fatalf("vm start: %v", err)
		}
		domid := field(e.ctlJSON("vm", "get", name), "domid", "domid")
		gone := func() string {
			if d := field(e.ctlJSON("vm", "get", name), "domid", "domid"); d != domid {
				return "the VM is now domid " + d
			}
			return ""
		}
		if _, err := w.waitConnected(time.Now().Add(markerWait), gone, "/local/domain/"+domid+"/device/vif/0"); err != nil {
			t.Logf("before the kill: %v", err)
		}
		e.kill9()
		e.start()
		if _, err := e.ctl("vm", "destroy", name); err != nil {
			t.Fatal(err)
		}
		checkGone(t, "destroy after kill -9", domid, "")
		checkNoDevices(t, w, domid, files)
		checkFreeMemory(t, freeBefore)
	})
	return g
}

// TestNestedDevicesHotplug: a running daemon guest (nxmode=hotplug) gets a
// disk and a NIC with `xopsctl vm disk add` / `vm nic add` and sees them
// appear, loses them with `vm disk remove` / `vm nic remove`, and dom0
// keeps no backend directory, vif or loop device of them. xl's
// block-attach/network-attach of the same devices is TestNestedDevicesXL's
// Hotplug; both print how long the guest took to see each device.
func TestNestedDevicesHotplug(t *testing.T) {
	needNested(t)
	needGuest(t)
	ensureBridge(t)
	w := newStateWatcher(t)
	e := newEnv(t)
	e.start()
	im := newDevImages(t, "hp")
	name := fmt.Sprintf("nxdevhp%d", os.Getpid())
	if _, err := e.ctl("vm", "create", "--name", name, "--type", "pvh", "--memory", "256M", "--vcpus", "1",
		"--kernel", guestKernel, "--ramdisk", guestInitrd, "--cmdline", "console=hvc0 nxmode=hotplug"); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_, _ = e.ctl("vm", "destroy", name)
		if _, err := e.ctl("vm", "delete", name); err != nil {
			t.Errorf("vm delete: %v", err)
		}
	}()
	logPath := filepath.Join(consoleDir, "guest-"+name+".log")
	var from int64
	var domid string
	b := guestBoot{what: "the daemon's PVH hot-plug guest", typ: "pvh", vcpus: 1, ours: true}
	bootRetrying(t, b, func(attempt int) error {
		from = fileSize(logPath)
		if _, err := e.ctl("vm", "start", name); err != nil {
			t.Fatalf("vm start: %v", err)
		}
		domid = field(e.ctlJSON("vm", "get", name), "domid", "domid")
		m, why := waitMarker(logPath, from, time.Now().Add(markerWait), func() string {
			vm := e.ctlJSON("vm", "get", name)
			if d, s := field(vm, "domid", "domid"), field(vm, "powerState", "power_state"); d != domid || !strings.Contains(s, "RUNNING") {
				return fmt.Sprintf("the VM is now domid %q %s (the guest rebooted or died: triple fault?)", d, s)
			}
			return ""
		})
		if why == "" {
			return nil
		}
		t.Logf("attempt %d: %s; console:\n%s", attempt, why, tail(readFrom(logPath, from), 2000))
		if _, err := e.ctl("vm", "destroy", name); err != nil {
			t.Logf("destroy: %v", err)
		}
		if m.booted.IsZero() && !strings.HasPrefix(why, "no marker") {
			return died(domid, why)
		}
		return errors.New(why)
	})
	waitGuest := func(what string) {
		t.Helper()
		deadline := time.Now().Add(bootWait)
		for !strings.Contains(string(readFrom(logPath, from)), what) {
			if time.Now().After(deadline) {
				t.Fatalf("the guest did not print %q within %v; console:\n%s\ndaemon log:\n%s", what, bootWait,
					tail(readFrom(logPath, from), 2000), tail([]byte(e.logText()), 2000))
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	step := func(what, guestSays string, args ...string) {
		t.Helper()
		t0 := time.Now()
		if _, err := e.ctl(args...); err != nil {
			t.Fatalf("%s: %v\n%s", what, err, tail([]byte(e.logText()), 2000))
		}
		t1 := time.Now()
		waitGuest(guestSays)
		t.Logf("%s returned after %v, the guest printed %s %v after the call", what,
			t1.Sub(t0).Round(time.Millisecond), guestSays, time.Since(t0).Round(time.Millisecond))
	}
	mac := "00:16:3e:5a:00:01"
	step("vm disk add", "GUEST-DEVICE-ADDED xvdb", "vm", "disk", "add", name, "xvdb:"+im.ro+":ro")
	step("vm nic add", "GUEST-DEVICE-ADDED eth0", "vm", "nic", "add", name, "bridge="+testBridge+",mac="+mac)
	if out, err := e.ctl("vm", "get", name); err == nil {
		t.Logf("vm get:\n%s", out)
	}
	step("vm disk remove", "GUEST-DEVICE-REMOVED xvdb", "vm", "disk", "remove", name, "xvdb")
	step("vm nic remove", "GUEST-DEVICE-REMOVED eth0", "vm", "nic", "remove", name, mac)
	if left := w.backendsLeft(domid, "vbd", "vif"); len(left) > 0 {
		t.Errorf("after the removes: backend directories left %v", left)
	}
	if v := vifsOf(domid); len(v) > 0 {
		t.Errorf("after vm nic remove: vifs left %v", v)
	}
	if l := loopsBacking(im.ro); len(l) > 0 {
		t.Errorf("after vm disk remove: loop devices left %v", l)
	}
}

// freeMiB is Xen's free memory in MiB (xl info free_memory).
func freeMiB(t *testing.T) int {
	t.Helper()
	n, err := strconv.Atoi(xlInfo(t)["free_memory"])
	if err != nil {
		t.Fatalf("xl info free_memory: %v", err)
	}
	return n
}

// checkFreeMemory waits (bounded: Xen scrubs a dead domain's pages before
// it counts them free) until the host's free memory is back to before
// (within 1 MiB, xl's rounding).
func checkFreeMemory(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		now := freeMiB(t)
		if now >= before-1 {
			t.Logf("host free memory %d MiB, %d MiB before the guest", now, before)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("host free memory %d MiB a minute after the destroy, %d MiB before the guest", now, before)
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}
