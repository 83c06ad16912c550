package nested

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The guest's own disk and GRUB for Xen, as nested-xen.sh puts them in
// dom0: disk.ext4 holds the guest kernel, the test initramfs and a
// grub.cfg that boots them with nxmode=poweroff.
const (
	guestDisk    = "/guest/disk.ext4"
	grubPVH      = "/guest/grub-i386-xen_pvh.bin" // a 32-bit ELF
	grubPV       = "/guest/grub-x86_64-xen.bin"
	grubBootWait = 4 * time.Minute
)

// TestNestedDaemonGRUBDisk boots a PVH and a PV guest from their own disk,
// as users of distribution images do: the daemon starts GRUB for Xen as
// the kernel with the ext4 image as the guest's read-only xvda (the daemon
// attaches the file to a loop device itself); GRUB reads grub.cfg, the
// kernel and the initramfs from the disk, the guest prints GUEST-BOOTED and
// powers off, and nothing of the VM's devices is left. The same disk
// through xl is the builder package's TestNestedGRUBDiskXL. A guest that
// triple-faults before its marker (PVH, now and then under QEMU) is retried
// once (bootRetrying).
func TestNestedDaemonGRUBDisk(t *testing.T) {
	needNested(t)
	for _, f := range []string{guestDisk, grubPVH, grubPV} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("%v (nested-xen.sh puts GRUB for Xen and the guest disk in /guest)", err)
		}
	}
	w := newStateWatcher(t)
	e := newEnv(t)
	e.start()
	for _, c := range []struct{ typ, grub string }{{"pvh", grubPVH}, {"pv", grubPV}} {
		t.Run(strings.ToUpper(c.typ), func(t *testing.T) {
			name := fmt.Sprintf("nxgrub%s%d", c.typ, os.Getpid())
			if _, err := e.ctl("vm", "create", "--name", name, "--type", c.typ, "--memory", "256M", "--vcpus", "1",
				"--kernel", c.grub, "--disk", "xvda:"+guestDisk+":ro"); err != nil {
				t.Fatal(err)
			}
			defer func() {
				_, _ = e.ctl("vm", "destroy", name)
				if _, err := e.ctl("vm", "delete", name); err != nil {
					t.Errorf("vm delete: %v", err)
				}
			}()
			logPath := filepath.Join(consoleDir, "guest-"+name+".log")
			var domid string
			var t0 time.Time
			b := guestBoot{what: "the daemon's " + strings.ToUpper(c.typ) + " GRUB disk guest", typ: c.typ, vcpus: 1, ours: true}
			attempts := bootRetrying(t, b, func(attempt int) error {
				from := fileSize(logPath)
				t0 = time.Now()
				if _, err := e.ctl("vm", "start", name); err != nil {
					t.Fatalf("vm start: %v\n%s", err, tail([]byte(e.logText()), 3000))
				}
				domid = field(e.ctlJSON("vm", "get", name), "domid", "domid")
				booted, why := waitGRUBBoot(e, name, logPath, from, domid)
				if booted {
					return nil
				}
				t.Logf("attempt %d: %s; console:\n%s", attempt, why, tail(readFrom(logPath, from), 3000))
				_, _ = e.ctl("vm", "destroy", name)
				if strings.HasPrefix(why, "no GUEST-BOOTED") {
					return fmt.Errorf("the %s guest did not boot from its disk through GRUB: %s\n%s", c.typ, why, tail([]byte(e.logText()), 2000))
				}
				return died(domid, why)
			})
			t.Logf("GRUB-DISK %s: call -> GUEST-BOOTED %v (attempt %d)", c.typ, time.Since(t0).Round(time.Millisecond), attempts)
			checkGone(t, "guest poweroff", domid, "")
			checkNoDevices(t, w, domid, []string{guestDisk})
		})
	}
}

// waitGRUBBoot waits (bounded) for GUEST-BOOTED in the VM's console after
// from; why says what happened instead: the time ran out, or the guest's
// domain changed or went before it printed the marker.
func waitGRUBBoot(e *env, name, logPath string, from int64, domid string) (booted bool, why string) {
	deadline := time.Now().Add(grubBootWait)
	lastCheck := time.Now()
	for time.Now().Before(deadline) {
		if bytes.Contains(readFrom(logPath, from), []byte("GUEST-BOOTED")) {
			return true, ""
		}
		if time.Since(lastCheck) > 3*time.Second {
			lastCheck = time.Now()
			vm := e.ctlJSON("vm", "get", name)
			if d := field(vm, "domid", "domid"); d != domid {
				return false, fmt.Sprintf("the VM is now domid %q %s before GUEST-BOOTED (the guest died or rebooted)", d, field(vm, "powerState", "power_state"))
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	return false, fmt.Sprintf("no GUEST-BOOTED within %v", grubBootWait)
}
