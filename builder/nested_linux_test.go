package builder

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// The TestNested* tests boot real guests; they need a Xen dom0 with
// xenstored and xenconsoled running (the nested harness, tests/nested).
// With NX_NESTED=1 a missing hypervisor fails; elsewhere they skip.

func nestedXen(t *testing.T) *xenctrl.Xen {
	t.Helper()
	x, err := xenctrl.Open(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		if os.Getenv("NX_NESTED") == "" {
			t.Skipf("no Xen here (NX_NESTED unset): %v", err)
		}
		t.Fatalf("xenctrl.Open on nested Xen: %v", err)
	}
	t.Cleanup(func() { x.Close() })
	return x
}

func guestFile(t *testing.T, env, def string) string {
	p := os.Getenv(env)
	if p == "" {
		p = def
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("guest image %s: %v (set %s)", p, err, env)
	}
	return p
}

// TestNestedPVHBoot builds a PVH guest from the Debian kernel and the
// busybox initramfs with our builder, introduces it to xenstored like a
// toolstack, and waits for its GUEST-BOOTED marker in xenconsoled's log,
// then for it to power itself off. One retry is allowed: about 1 PVH boot
// in 18 triple-faults at start under QEMU's emulated SVM (nested-xen.md).
func TestNestedPVHBoot(t *testing.T) {
	x := nestedXen(t)
	kernelPath := guestFile(t, "NX_GUEST_KERNEL", "/guest/vmlinux")
	initrd := guestFile(t, "NX_GUEST_INITRD", "/guest/initrd.gz")
	for attempt := 1; attempt <= 2; attempt++ {
		ok, retry := bootPVH(t, x, kernelPath, initrd, attempt)
		if ok {
			if attempt > 1 {
				t.Logf("NOTE: PVH boot needed a retry (attempt %d)", attempt)
			}
			return
		}
		if !retry {
			return
		}
		t.Logf("attempt %d: guest died before its marker; retrying once", attempt)
	}
	t.Fatal("PVH guest did not reach its marker in 2 attempts")
}

func bootPVH(t *testing.T, x *xenctrl.Xen, kernelPath, initrd string, attempt int) (ok, retry bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	xs, err := xenstore.Dial(ctx, "")
	if err != nil {
		t.Fatalf("xenstore: %v", err)
	}
	defer xs.Close()

	name := fmt.Sprintf("nx-pvh-%d-%d", os.Getpid(), attempt)
	var h xenctrl.Handle
	rand.Read(h[:])
	tStart := time.Now()
	d, err := x.CreateDomain(ctx, xenctrl.DomainConfig{
		Handle: h, Flags: xenctrl.CreateHVM | xenctrl.CreateHAP, MaxVCPUs: 1,
		EmulationFlags: 1, // XEN_X86_EMU_LAPIC
	})
	if err != nil {
		t.Fatalf("create PVH domain: %v", err)
	}
	dom := "/local/domain/" + strconv.Itoa(int(d))
	defer func() {
		dctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		if err := x.DestroyDomain(dctx, d); err != nil && !xenctrl.IsNoDomain(err) {
			t.Errorf("destroy domain %d: %v", d, err)
		}
		_ = xs.Release(dctx, uint32(d))
		_ = xs.Remove(dctx, dom)
	}()

	spec := domain.Spec{
		Name: name, Type: domain.TypePVH,
		MemoryStaticMax: 256 << 20, MemoryDynamicMax: 256 << 20, VCPUsMax: 1,
		Kernel: kernelPath, Ramdisk: initrd,
		Cmdline: "console=hvc0 earlyprintk=xen nxmode=poweroff",
	}
	res, tm, err := New(Config{}).BuildTimed(ctx, x, d, spec)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	tBuilt := time.Now()
	t.Logf("domain %d built in %v (load %v, populate %v, copy %v, setup %v): %+v",
		d, tBuilt.Sub(tStart).Round(time.Millisecond), tm.Load.Round(time.Millisecond), tm.Populate.Round(time.Millisecond),
		tm.Copy.Round(time.Millisecond), tm.Setup.Round(time.Millisecond), res)

	// What a toolstack writes for xenconsoled and the guest, then INTRODUCE.
	w := func(p, v string) {
		if err := xs.Write(ctx, dom+"/"+p, []byte(v)); err != nil {
			t.Fatalf("xenstore write %s: %v", p, err)
		}
	}
	if err := xs.Mkdir(ctx, dom); err != nil {
		t.Fatal(err)
	}
	if err := xs.SetPerms(ctx, dom, []xenstore.Perm{{Domid: uint32(d), Access: xenstore.AccessNone}}); err != nil {
		t.Fatal(err)
	}
	w("name", name)
	w("domid", strconv.Itoa(int(d)))
	w("memory/static-max", strconv.Itoa(256<<10))
	w("memory/target", strconv.Itoa(256<<10))
	w("console/ring-ref", strconv.FormatUint(res.ConsoleMFN, 10))
	w("console/port", strconv.Itoa(int(res.ConsolePort)))
	w("console/type", "xenconsoled")
	w("console/output", "pty")
	w("store/ring-ref", strconv.FormatUint(res.StoreMFN, 10))
	w("store/port", strconv.Itoa(int(res.StorePort)))
	for _, p := range []string{"control", "data", "device"} {
		if err := xs.Mkdir(ctx, dom+"/"+p); err != nil {
			t.Fatal(err)
		}
		if err := xs.SetPerms(ctx, dom+"/"+p, []xenstore.Perm{{Domid: uint32(d), Access: xenstore.AccessNone}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := xs.Introduce(ctx, uint32(d), res.StoreMFN, res.StorePort); err != nil {
		t.Fatalf("introduce: %v", err)
	}
	if err := x.UnpauseDomain(ctx, d); err != nil {
		t.Fatalf("unpause: %v", err)
	}
	tRun := time.Now()
	t.Logf("domain %d running %v after create", d, tRun.Sub(tStart).Round(time.Millisecond))

	logPath := filepath.Join("/var/log/xen/console", "guest-"+name+".log")
	var marker time.Time
	// Under software CPU emulation on a busy machine a boot has taken
	// 3.5 minutes (xl's as long): allow 6.
	deadline := tRun.Add(6 * time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if marker.IsZero() {
			if b, err := os.ReadFile(logPath); err == nil {
				if j := bytes.Index(b, []byte("GUEST-BOOTED")); j >= 0 {
					marker = time.Now()
					line := b[j:]
					if k := bytes.IndexByte(line, '\n'); k >= 0 {
						line = line[:k]
					}
					t.Logf("TIMING create→running %v, create→marker %v, running→marker %v: %s",
						tRun.Sub(tStart).Round(time.Millisecond), marker.Sub(tStart).Round(time.Millisecond),
						marker.Sub(tRun).Round(time.Millisecond), bytes.TrimSpace(line))
				}
			}
		}
		di, err := x.DomainInfo(ctx, d)
		if err != nil {
			t.Fatalf("domain info: %v", err)
		}
		if di.Shutdown {
			if !marker.IsZero() && di.ShutdownReason == xenctrl.ShutdownPoweroff {
				t.Logf("guest powered itself off %v after the marker", time.Since(marker).Round(time.Millisecond))
				return true, false
			}
			dumpDiag(t, logPath)
			t.Logf("domain %d shut down (%v) before the marker", d, di.ShutdownReason)
			// A triple fault shuts an HVM domain down with "reboot".
			return false, di.ShutdownReason == xenctrl.ShutdownCrash || di.ShutdownReason == xenctrl.ShutdownReboot
		}
		if !marker.IsZero() && time.Since(marker) > 20*time.Second {
			// Linux powers a PVH guest off through ACPI (S5); the builder
			// does not provide ACPI tables yet, so "poweroff -f" halts the
			// guest instead. The marker is what this test proves.
			t.Logf("KNOWN GAP: guest halted without powering off (no ACPI tables yet); destroying it")
			return true, false
		}
		time.Sleep(200 * time.Millisecond)
	}
	dumpDiag(t, logPath)
	if !marker.IsZero() {
		t.Logf("KNOWN GAP: guest did not power off (no ACPI tables yet)")
		return true, false
	}
	t.Errorf("no GUEST-BOOTED marker within %v of unpausing", deadline.Sub(tRun))
	return false, false
}

func dumpDiag(t *testing.T, logPath string) {
	if b, err := os.ReadFile(logPath); err == nil {
		t.Logf("guest console (%s):\n%s", logPath, tail(b, 3000))
	} else {
		t.Logf("no guest console log: %v", err)
	}
	if out, err := exec.Command("xl", "dmesg").CombinedOutput(); err == nil {
		t.Logf("xl dmesg (tail):\n%s", tail(out, 4000))
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
