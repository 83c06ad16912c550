package nested

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// xl's own devices (disk=, vif=, xl block-attach, xl network-attach) as the
// baseline. libxl runs a hotplug script per device (/etc/xen/scripts/block
// and vif-bridge by default); Debian's are bash scripts that need bash,
// flock and more, which the busybox dom0 lacks. The test gives each device
// script= pointing at the two sh stand-ins below, which do what those do
// for a raw file on a loop device and a vif on a bridge, with busybox. The
// xenstore nodes, the states and the order are libxl's own.

// blockScript: "add" attaches params (a raw file) to a loop device (rw or
// ro by mode) or takes a block device as it is, and writes physical-device
// (hex major:minor, what blkback waits for) and hotplug-status; "remove"
// detaches the loop device. libxl runs it with XENBUS_PATH set to the
// backend directory, relative to dom0's home (backend/vbd/<domid>/<vdev>).
const blockScript = `#!/bin/sh
p=$XENBUS_PATH
case $1 in
add)
  params=$(xenstore-read "$p/params") || exit 1
  dev=$params
  if [ -f "$params" ]; then
    ro=""; [ "$(xenstore-read "$p/mode")" = w ] || ro=-r
    # one loop attach at a time: libxl runs the scripts of a domain's disks concurrently
    while ! mkdir /run/nx-block.lock 2>/dev/null; do usleep 10000; done
    dev=$(losetup -f) && losetup $ro "$dev" "$params"; rc=$?
    rmdir /run/nx-block.lock
    [ $rc = 0 ] || { xenstore-write "$p/hotplug-error" "losetup $params failed" "$p/hotplug-status" error; exit 1; }
  fi
  xenstore-write "$p/physical-device" "$(stat -L -c %t:%T "$dev")" "$p/physical-device-path" "$dev" \
    "$p/hotplug-status" connected ;;
remove)
  dev=$(xenstore-read "$p/physical-device-path")
  case $dev in /dev/loop*) losetup -d "$dev" ;; esac ;;
esac
`

// vifScript: "online" puts $vif (netback's interface) in the bridge named
// in the backend directory, brings it up and writes hotplug-status, which
// netback waits for before it connects; "offline" takes it out.
const vifScript = `#!/bin/sh
p=$XENBUS_PATH
case $1 in
online|add)
  bridge=$(xenstore-read "$p/bridge") || exit 1
  brctl addif "$bridge" "$vif" && ip link set "$vif" up || { xenstore-write "$p/hotplug-status" error; exit 1; }
  xenstore-write "$p/hotplug-status" connected ;;
offline|remove)
  bridge=$(xenstore-read "$p/bridge")
  brctl delif "$bridge" "$vif" 2>/dev/null
  xenstore-rm "$p/hotplug-status" 2>/dev/null
  exit 0 ;;
esac
`

// xlScripts writes the two scripts and returns their paths.
func xlScripts(t *testing.T) (block, vif string) {
	t.Helper()
	dir := t.TempDir()
	block, vif = filepath.Join(dir, "nx-block"), filepath.Join(dir, "nx-vif-bridge")
	for p, s := range map[string]string{block: blockScript, vif: vifScript} {
		if err := os.WriteFile(p, []byte(s), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return block, vif
}

// xlDiskSpec is an xl disk= entry for a raw file through the block stand-in.
func xlDiskSpec(vdev, file string, readOnly bool, script string) string {
	access := "rw"
	if readOnly {
		access = "ro"
	}
	return fmt.Sprintf("format=raw,vdev=%s,access=%s,backendtype=phy,script=%s,target=%s", vdev, access, script, file)
}

// xlNICSpec is an xl vif= entry on bridge through the vif stand-in.
func xlNICSpec(bridge, script string) string {
	return fmt.Sprintf("bridge=%s,script=%s", bridge, script)
}

// TestNestedDevicesXL: `xl create` of the devices guest with disk= and vif=
// (a PVH and a PV guest), the same checks as the hand-made and the
// daemon's guests; then xl block-attach / network-attach / block-detach /
// network-detach on a running guest (nxmode=hotplug) that reports the
// devices coming and going.
func TestNestedDevicesXL(t *testing.T) {
	if os.Getenv("NX_NESTED") == "" {
		t.Skip("not inside the nested-Xen harness (NX_NESTED unset)")
	}
	needGuest(t)
	ensureBridge(t)
	w := newStateWatcher(t)
	for _, typ := range []string{"pvh", "pv"} {
		t.Run(strings.ToUpper(typ), func(t *testing.T) {
			g := xlDevicesBoot(t, w, typ)
			t.Logf("DEVICE-BASELINE-XL %s: xl create -> frontends Connected %v; dd write %d kB/s, read %d kB/s",
				typ, g.connected.Round(time.Millisecond), g.writeKBps, g.readKBps)
		})
	}
	t.Run("Hotplug", func(t *testing.T) { xlHotplug(t, w, "pvh") })
}

// xlGuestConfig is an xl config of the test guest.
func xlGuestConfig(t *testing.T, name, typ, cmdline string, disks, nics []string) string {
	t.Helper()
	tsc := ""
	if typ == "pvh" {
		tsc = "tsc_mode = \"native\"\n"
	}
	quote := func(ss []string) string {
		var q []string
		for _, s := range ss {
			q = append(q, fmt.Sprintf("%q", s))
		}
		return "[" + strings.Join(q, ", ") + "]"
	}
	body := fmt.Sprintf("name = %q\ntype = %q\nkernel = %q\nramdisk = %q\nextra = %q\n"+
		"memory = 256\nmaxmem = 256\nvcpus = 1\n%son_reboot = \"destroy\"\non_crash = \"destroy\"\ndisk = %s\nvif = %s\n",
		name, typ, guestKernel, guestInitrd, cmdline, tsc, quote(disks), quote(nics))
	cfg := filepath.Join(t.TempDir(), name+".cfg")
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// xlDevicesBoot boots the devices guest with xl's own disk= and vif=: call
// (xl create, which adds the devices and unpauses) -> frontends Connected,
// the guest's markers, xl shutdown, the word in the file, nothing left.
func xlDevicesBoot(t *testing.T, w *stateWatcher, typ string) devGuest {
	blk, vif := xlScripts(t)
	var g devGuest
	b := guestBoot{what: "xl's " + strings.ToUpper(typ) + " devices guest", typ: typ, vcpus: 1}
	bootRetrying(t, b, func(attempt int) error {
		im := newDevImages(t, typ)
		// unique per boot: TestNestedDevices boots the same guest, and
		// xenconsoled appends to the console log of a name used before
		name := fmt.Sprintf("nxdevxl%s%d-%d", typ, time.Now().UnixNano()%1e9, attempt)
		cfg := xlGuestConfig(t, name, typ, im.guestCmdlineArgs,
			[]string{xlDiskSpec("xvda", im.rw, false, blk), xlDiskSpec("xvdb", im.ro, true, blk)},
			[]string{xlNICSpec(testBridge, vif)})
		logPath := filepath.Join(consoleDir, "guest-"+name+".log")
		t0 := time.Now()
		if out, err := run(2*time.Minute, "xl", "create", cfg); err != nil {
			t.Fatalf("xl create: %v\n%s", err, out)
		}
		tCreated := time.Now()
		out, err := run(30*time.Second, "xl", "domid", name)
		if err != nil {
			t.Fatal(err)
		}
		domid := strings.TrimSpace(string(out))
		dev := func(kind string, id int) handDevice {
			var n int
			fmt.Sscan(domid, &n)
			return newHandDevice(kind, n, id)
		}
		devs := []handDevice{dev("vbd", vdevXvda), dev("vbd", vdevXvdb), dev("vif", 0)}
		var fes, bes []string
		for _, d := range devs {
			fes, bes = append(fes, d.frontend), append(bes, d.backend)
		}
		gone := func() string {
			if !xlDomids(t)[domid] {
				return "domain " + domid + " gone (triple fault?)"
			}
			return ""
		}
		tConn, err := w.waitConnected(time.Now().Add(markerWait), gone, fes...)
		if err != nil {
			t.Logf("attempt %d: %v; console:\n%s", attempt, err, tail(readFrom(logPath, 0), 2000))
			_, _ = run(time.Minute, "xl", "destroy", name)
			if errors.Is(err, errGuestGone) {
				return died(domid, err.Error())
			}
			return fmt.Errorf("xl's %s guest's devices did not connect: %v", typ, err)
		}
		if _, err := w.waitConnected(time.Now().Add(bootWait), nil, bes...); err != nil {
			t.Errorf("backends: %v", err)
		}
		g = devGuest{domid: domid, connected: tConn.Sub(t0)}
		t.Logf("domain %s: xl create returned after %v; frontends Connected %v after the call", domid,
			tCreated.Sub(t0).Round(time.Millisecond), g.connected.Round(time.Millisecond))
		logNodes(t, w, devs[0], devs[2])
		g.writeKBps, g.readKBps = checkGuestDevices(t, logPath, 0, im, gone)
		ts := time.Now()
		if _, err := run(3*time.Minute, "xl", "shutdown", "-w", name); err != nil {
			t.Errorf("xl shutdown -w: %v", err)
		}
		t.Logf("xl shutdown -w took %v", time.Since(ts).Round(time.Millisecond))
		checkGone(t, "xl shutdown", domid, "")
		checkNoDevices(t, w, domid, []string{im.rw, im.ro})
		im.checkPattern(t)
		return nil
	})
	return g
}

// xlHotplug: a running guest (nxmode=hotplug) gets a disk and a NIC with
// xl block-attach and network-attach and sees them appear, then loses them
// with block-detach and network-detach; the backend's states during the
// detach are logged (libxl's unplug: online=0, state 5, wait for 6, remove).
func xlHotplug(t *testing.T, w *stateWatcher, typ string) {
	blk, vif := xlScripts(t)
	im := newDevImages(t, "hp")
	var name, logPath, domid string
	b := guestBoot{what: "xl's " + strings.ToUpper(typ) + " hot-plug guest", typ: typ, vcpus: 1}
	bootRetrying(t, b, func(attempt int) error {
		name = fmt.Sprintf("nxhp%s%d-%d", typ, time.Now().UnixNano()%1e9, attempt)
		cfg := xlGuestConfig(t, name, typ, "console=hvc0 nxmode=hotplug", nil, nil)
		logPath = filepath.Join(consoleDir, "guest-"+name+".log")
		if out, err := run(2*time.Minute, "xl", "create", cfg); err != nil {
			t.Fatalf("xl create: %v\n%s", err, out)
		}
		out, err := run(30*time.Second, "xl", "domid", name)
		if err != nil {
			return died("?", fmt.Sprintf("xl domid right after xl create: %v", err))
		}
		domid = strings.TrimSpace(string(out))
		m, why := waitMarker(logPath, 0, time.Now().Add(markerWait), func() string {
			if !xlDomids(t)[domid] {
				return "domain " + domid + " gone (on_reboot/on_crash destroy: triple fault?)"
			}
			return ""
		})
		if why == "" {
			return nil
		}
		t.Logf("attempt %d: %s; console:\n%s", attempt, why, tail(readFrom(logPath, 0), 2000))
		_, _ = run(time.Minute, "xl", "destroy", name)
		if m.booted.IsZero() && !strings.HasPrefix(why, "no marker") {
			return died(domid, why)
		}
		return errors.New(why)
	})
	defer func() { _, _ = run(time.Minute, "xl", "destroy", name) }()
	waitGuest := func(what string) {
		t.Helper()
		deadline := time.Now().Add(bootWait)
		for !strings.Contains(string(readFrom(logPath, 0)), what) {
			if time.Now().After(deadline) {
				t.Fatalf("the guest did not print %q within %v; console:\n%s", what, bootWait, tail(readFrom(logPath, 0), 2000))
			}
			time.Sleep(250 * time.Millisecond)
		}
	}
	be := "/local/domain/0/backend/vbd/" + domid + "/" + fmt.Sprint(vdevXvdb)
	vbe := "/local/domain/0/backend/vif/" + domid + "/0"
	t0 := time.Now()
	if _, err := run(2*time.Minute, "xl", "block-attach", name, xlDiskSpec("xvdb", im.ro, true, blk)); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	waitGuest("GUEST-DEVICE-ADDED xvdb")
	t.Logf("xl block-attach returned after %v, the guest saw xvdb %v after the call", t1.Sub(t0).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	t0 = time.Now()
	// network-attach takes the vif= keys as separate arguments (one
	// "bridge=..,script=.." argument makes the bridge "nxbr0,script=..").
	if _, err := run(2*time.Minute, "xl", append([]string{"network-attach", name}, strings.Split(xlNICSpec(testBridge, vif), ",")...)...); err != nil {
		t.Fatal(err)
	}
	t1 = time.Now()
	waitGuest("GUEST-DEVICE-ADDED eth0")
	t.Logf("xl network-attach returned after %v, the guest saw eth0 %v after the call", t1.Sub(t0).Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))

	trace := w.traceStates(be+"/state", be+"/online", "/local/domain/"+domid+"/device/vbd/"+fmt.Sprint(vdevXvdb)+"/state")
	t0 = time.Now()
	if _, err := run(2*time.Minute, "xl", "block-detach", name, "xvdb"); err != nil {
		t.Error(err)
	}
	t.Logf("xl block-detach took %v; states seen: %s", time.Since(t0).Round(time.Millisecond), trace.stop())
	waitGuest("GUEST-DEVICE-REMOVED xvdb")
	trace = w.traceStates(vbe+"/state", vbe+"/online", vbe+"/hotplug-status", "/local/domain/"+domid+"/device/vif/0/state")
	t0 = time.Now()
	if _, err := run(2*time.Minute, "xl", "network-detach", name, "0"); err != nil {
		t.Error(err)
	}
	t.Logf("xl network-detach took %v; states seen: %s", time.Since(t0).Round(time.Millisecond), trace.stop())
	waitGuest("GUEST-DEVICE-REMOVED eth0")
	// the domain still runs: its console backend stays
	if left := w.backendsLeft(domid, "vbd", "vif"); len(left) > 0 {
		t.Errorf("after the detaches: backend directories left %v", left)
	}
	if v := vifsOf(domid); len(v) > 0 {
		t.Errorf("after network-detach: vifs left %v", v)
	}
	if l := loopsBacking(im.ro); len(l) > 0 {
		t.Errorf("after block-detach: loop devices left %v", l)
	}
	t.Logf("guest:\n%s", guestLines(readFrom(logPath, 0)))
}
