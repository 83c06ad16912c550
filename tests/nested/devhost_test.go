package nested

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// dom0's side of the devices tests, done by hand the way libxl and its
// hotplug scripts (block, vif-bridge) do it: a bridge with an address, loop
// devices over raw files, and the backend and frontend xenstore directories
// of a vbd and a vif, written with xenstore-write and xenstore-chmod. The
// kernel's blkback and netback in dom0 and blkfront and netfront in the
// guest do the rest.

// The test bridge and the addresses on it.
const (
	testBridge = "nxbr0"
	bridgeAddr = "10.99.0.1"
	guestAddr  = "10.99.0.2/24"
)

// Virtual device numbers of xvda and xvdb (xen/include/public/io/blkif.h:
// 202 << 8 | disk << 4).
const (
	vdevXvda = 51712
	vdevXvdb = 51728
)

// bootWait bounds how long each device step may take: a backend reaching
// InitWait, a vif appearing, the frontends connecting.
const bootWait = 60 * time.Second

// ensureBridge creates testBridge (forward delay 0, STP off as created,
// bridgeAddr/24, up) unless it exists; it stays for the rest of the boot.
func ensureBridge(t *testing.T) {
	t.Helper()
	if _, err := os.Stat("/sys/class/net/" + testBridge + "/bridge"); err == nil {
		return
	}
	for _, c := range [][]string{
		{"brctl", "addbr", testBridge},
		{"ip", "addr", "add", bridgeAddr + "/24", "dev", testBridge},
		{"ip", "link", "set", testBridge, "up"},
	} {
		if _, err := run(30*time.Second, c[0], c[1:]...); err != nil {
			t.Fatalf("dom0 bridge: %v", err)
		}
		if c[1] == "addbr" {
			// busybox's brctl has only addbr/delbr/addif/delif: STP is
			// off by default, and a port joins forwarding at once
			// without it; the forward delay goes through sysfs anyway.
			fd := "/sys/class/net/" + testBridge + "/bridge/forward_delay"
			if err := os.WriteFile(fd, []byte("0"), 0o644); err != nil {
				t.Fatalf("dom0 bridge: %v", err)
			}
		}
	}
}

// writeImage makes a raw disk image of size bytes whose first line is word
// ("" for zeros).
func writeImage(t *testing.T, path string, size int64, word string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if word != "" {
		if _, err := f.WriteString(word + "\n"); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
}

// loopDev is a loop device over a file and its device number.
type loopDev struct {
	path         string // /dev/loopN
	major, minor uint32
}

// physicalDevice is blkback's "physical-device" value: major:minor in hex.
func (l loopDev) physicalDevice() string { return fmt.Sprintf("%x:%x", l.major, l.minor) }

// attachLoop attaches file to the first free loop device (busybox losetup;
// -r for read-only).
func attachLoop(t *testing.T, file string, readOnly bool) loopDev {
	t.Helper()
	out, err := run(30*time.Second, "losetup", "-f")
	if err != nil {
		t.Fatal(err)
	}
	dev := strings.TrimSpace(string(out))
	args := []string{dev, file}
	if readOnly {
		args = append([]string{"-r"}, args...)
	}
	if _, err := run(30*time.Second, "losetup", args...); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	return loopDev{path: dev, major: unix.Major(st.Rdev), minor: unix.Minor(st.Rdev)}
}

// loopsBacking lists the loop devices whose backing file is file (sysfs).
func loopsBacking(file string) []string {
	var devs []string
	bfs, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, bf := range bfs {
		b, err := os.ReadFile(bf)
		if err == nil && strings.TrimSpace(string(b)) == file {
			devs = append(devs, "/dev/"+filepath.Base(filepath.Dir(filepath.Dir(bf))))
		}
	}
	return devs
}

// xsWrite writes key/value pairs with one xenstore-write (one transaction).
func xsWrite(t *testing.T, kv ...string) {
	t.Helper()
	if _, err := run(30*time.Second, "xenstore-write", kv...); err != nil {
		t.Fatal(err)
	}
}

// xsDir creates dir with the permissions given (xenstore-chmod syntax: the
// first is the owner and everyone else's access, e.g. "n0", "r5"). Debian's
// xenstore-utils has no xenstore-mkdir: an empty write makes the node.
func xsDir(t *testing.T, dir string, perms ...string) {
	t.Helper()
	if _, err := run(30*time.Second, "xenstore-write", dir, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := run(30*time.Second, "xenstore-chmod", append([]string{dir}, perms...)...); err != nil {
		t.Fatal(err)
	}
}

// handDevice is one device whose xenstore directories the test wrote.
type handDevice struct {
	kind     string // vbd | vif
	devid    int
	frontend string
	backend  string
}

func newHandDevice(kind string, domid, devid int) handDevice {
	return handDevice{
		kind: kind, devid: devid,
		frontend: fmt.Sprintf("/local/domain/%d/device/%s/%d", domid, kind, devid),
		backend:  fmt.Sprintf("/local/domain/0/backend/%s/%d/%d", kind, domid, devid),
	}
}

// dirs creates both directories with libxl's permissions: the backend owned
// by dom0 and readable by the guest, the frontend owned by the guest and
// readable by dom0. Keys written below inherit them.
func (d handDevice) dirs(t *testing.T, domid int) {
	xsDir(t, d.backend, "n0", fmt.Sprintf("r%d", domid))
	xsDir(t, d.frontend, fmt.Sprintf("n%d", domid), "r0")
}

// handVBD writes what libxl writes for a phy disk (plus what its block
// script adds: physical-device, hotplug-status) in one transaction, both
// directories at state 1 (Initialising).
func handVBD(t *testing.T, domid, vdev int, name string, loop loopDev, readOnly bool) handDevice {
	d := newHandDevice("vbd", domid, vdev)
	d.dirs(t, domid)
	mode := "w"
	if readOnly {
		mode = "r"
	}
	be, fe := d.backend+"/", d.frontend+"/"
	xsWrite(t,
		be+"frontend", d.frontend, be+"frontend-id", strconv.Itoa(domid),
		be+"online", "1", be+"removable", "0", be+"bootable", "1", be+"state", "1",
		be+"dev", name, be+"type", "phy", be+"mode", mode, be+"device-type", "disk",
		be+"params", loop.path, be+"physical-device", loop.physicalDevice(),
		be+"physical-device-path", loop.path, be+"hotplug-status", "connected",
		fe+"backend", d.backend, fe+"backend-id", "0", fe+"state", "1",
		fe+"virtual-device", strconv.Itoa(vdev), fe+"device-type", "disk")
	return d
}

// handVIF writes what libxl writes for a bridged vif, both directories at
// state 1; hotplug-status comes later (connectVIF), as vif-bridge writes it
// once the vif is in the bridge, and netback waits for it.
func handVIF(t *testing.T, domid, devid int, mac, bridge string) handDevice {
	d := newHandDevice("vif", domid, devid)
	d.dirs(t, domid)
	be, fe := d.backend+"/", d.frontend+"/"
	xsWrite(t,
		be+"frontend", d.frontend, be+"frontend-id", strconv.Itoa(domid),
		be+"online", "1", be+"state", "1", be+"handle", strconv.Itoa(devid),
		be+"mac", mac, be+"bridge", bridge, be+"mtu", "1500", be+"type", "vif",
		be+"script", "/etc/xen/scripts/vif-bridge",
		fe+"backend", d.backend, fe+"backend-id", "0", fe+"state", "1",
		fe+"handle", strconv.Itoa(devid), fe+"mac", mac, fe+"mtu", "1500")
	return d
}

// vifName is netback's interface for a vif.
func vifName(domid, devid int) string { return fmt.Sprintf("vif%d.%d", domid, devid) }

// connectVIF does vif-bridge's part: waits (bounded) for netback's
// interface, puts it in the bridge, brings it up, writes hotplug-status.
func connectVIF(t *testing.T, d handDevice, domid int, bridge string) {
	t.Helper()
	name := vifName(domid, d.devid)
	deadline := time.Now().Add(bootWait)
	for {
		if _, err := os.Stat("/sys/class/net/" + name); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("netback made no %s within %v (backend state %s)", name, bootWait, xsRead(d.backend+"/state"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range [][]string{{"brctl", "addif", bridge, name}, {"ip", "link", "set", name, "up"}} {
		if _, err := run(30*time.Second, c[0], c[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	xsWrite(t, d.backend+"/hotplug-status", "connected")
}

// xsRead reads a node with xenstore-read ("" if it cannot).
func xsRead(path string) string {
	out, err := run(30*time.Second, "xenstore-read", path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// stateWatcher polls xenstore state nodes through one connection (cheaper
// than a process per read under emulation).
type stateWatcher struct{ c *xenstore.Client }

func newStateWatcher(t *testing.T) *stateWatcher {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := xenstore.Dial(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &stateWatcher{c: c}
}

func (w *stateWatcher) read(path string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b, err := w.c.Read(ctx, path)
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(b))
}

// errGuestGone: the guest died or rebooted (triple fault?) before its
// devices connected; worth one retry.
var errGuestGone = errors.New("the guest is gone")

// waitConnected polls every path's state node until all read 4 (Connected)
// or the deadline passes; it returns when the last one got there, or an
// error naming the ones that did not. Every 3 s it asks gone whether the
// guest is still the one that was started (an answer wraps errGuestGone).
func (w *stateWatcher) waitConnected(deadline time.Time, gone func() string, dirs ...string) (time.Time, error) {
	lastCheck := time.Now()
	for {
		var late []string
		for _, d := range dirs {
			if s := w.read(d + "/state"); s != "4" {
				late = append(late, fmt.Sprintf("%s=%q", d, s))
			}
		}
		if len(late) == 0 {
			return time.Now(), nil
		}
		if time.Now().After(deadline) {
			return time.Time{}, fmt.Errorf("not Connected: %s", strings.Join(late, ", "))
		}
		if gone != nil && time.Since(lastCheck) > 3*time.Second {
			lastCheck = time.Now()
			if why := gone(); why != "" {
				return time.Time{}, fmt.Errorf("%w: %s; not Connected: %s", errGuestGone, why, strings.Join(late, ", "))
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// backendsLeft lists the backend directories dom0 still has for domid, of
// the kinds given (all kinds if none).
func (w *stateWatcher) backendsLeft(domid string, kinds ...string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if len(kinds) == 0 {
		kinds, _ = w.c.List(ctx, "/local/domain/0/backend")
	}
	var left []string
	for _, k := range kinds {
		p := "/local/domain/0/backend/" + k + "/" + domid
		if _, err := w.c.Read(ctx, p); err == nil {
			left = append(left, p)
		}
	}
	return left
}

// vifsOf lists dom0's vif interfaces of domid.
func vifsOf(domid string) []string {
	m, _ := filepath.Glob("/sys/class/net/vif" + domid + ".*")
	return m
}

// stateTrace records the values a few nodes take, polled every 20 ms.
type stateTrace struct {
	stopc chan struct{}
	done  chan string
}

// traceStates starts recording the values of paths ("-" when absent).
func (w *stateWatcher) traceStates(paths ...string) *stateTrace {
	tr := &stateTrace{stopc: make(chan struct{}), done: make(chan string, 1)}
	go func() {
		t0 := time.Now()
		last := map[string]string{}
		var b strings.Builder
		for {
			for _, p := range paths {
				v := w.read(p)
				if v == "" {
					v = "-"
				}
				if old, seen := last[p]; !seen || old != v {
					last[p] = v
					fmt.Fprintf(&b, "\n  +%v %s=%s", time.Since(t0).Round(time.Millisecond), p, v)
				}
			}
			select {
			case <-tr.stopc:
				tr.done <- b.String()
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return tr
}

// stop ends the trace and returns what it saw, one change a line.
func (tr *stateTrace) stop() string {
	close(tr.stopc)
	return <-tr.done
}
