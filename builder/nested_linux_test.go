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
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// The TestNested* tests boot real guests with the builder alone, doing by
// hand what a toolstack does around it; they need a Xen dom0 with xenstored
// and xenconsoled running (the nested harness, tests/nested). With
// NX_NESTED=1 a missing hypervisor fails; elsewhere they skip. The daemon's
// own boots are in tests/nested.

var _ Hypervisor = (*xenctrl.Xen)(nil) // the builder runs on real Xen as it is

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

// TestNestedPVHBoot boots the Debian kernel and the busybox initramfs as a
// PVH guest.
func TestNestedPVHBoot(t *testing.T) {
	bootPVH(t, 256<<20)
}

// TestNestedPVHHighMemory boots a PVH guest with more RAM than fits below
// the MMIO hole: the rest is above 4 GiB, and the guest must see it all.
func TestNestedPVHHighMemory(t *testing.T) {
	const mem = 4<<30 + 256<<20
	pi, err := nestedXen(t).PhysInfo(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if free := pi.FreePages * pageSize; free < mem+64<<20 {
		// tests/nested/run boots a host with room for it ("bigmem").
		if os.Getenv("NX_BOOT") == "bigmem" {
			t.Fatalf("the bigmem boot has %d MiB free, the guest needs %d MiB", free>>20, uint64(mem)>>20)
		}
		t.Skipf("host has %d MiB free, the guest needs %d MiB: runs in the harness's bigmem boot", free>>20, uint64(mem)>>20)
	}
	marker := bootPVH(t, mem)
	var kib uint64
	for _, f := range strings.Fields(marker) {
		if v, ok := strings.CutPrefix(f, "mem_kib="); ok {
			kib, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	// MemTotal is the RAM less what the kernel keeps for itself (its
	// image, page structures): well above 4 GiB, well below the total.
	if kib < 4<<20 || kib > mem>>10 {
		t.Errorf("the guest sees %d KiB of RAM, given %d KiB: marker %q", kib, uint64(mem>>10), marker)
	}
}

// bootPVH boots a PVH guest with memBytes of RAM and returns its marker
// line. One retry is allowed: about 1 PVH boot in 18 triple-faults at
// start under QEMU's emulated SVM, with xl as with us (nested-xen.md).
func bootPVH(t *testing.T, memBytes uint64) string {
	x := nestedXen(t)
	for attempt := 1; attempt <= 2; attempt++ {
		marker, died := bootGuest(t, x, domain.TypePVH, memBytes, attempt)
		if !died {
			return marker
		}
		t.Logf("attempt %d: guest died at start; retrying once", attempt)
	}
	t.Fatal("PVH guest did not reach its marker in 2 attempts")
	return ""
}

// TestNestedPV boots the same guest as a 64-bit PV guest.
func TestNestedPV(t *testing.T) {
	if _, died := bootGuest(t, nestedXen(t), domain.TypePV, 256<<20, 1); died {
		t.Fatal("PV guest died at start")
	}
}

// bootGuest creates a domain with memBytes of RAM, builds it, introduces it
// to xenstored with its console like a toolstack, unpauses it and waits for
// its GUEST-BOOTED marker in xenconsoled's log, then for the guest to power
// itself off. It returns the marker line, or reports that the guest died
// before it (a retry may help); every other failure fails t.
func bootGuest(t *testing.T, x *xenctrl.Xen, typ domain.Type, memBytes uint64, attempt int) (marker string, diedAtStart bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	xs, err := xenstore.Dial(ctx, "")
	if err != nil {
		t.Fatalf("xenstore: %v", err)
	}
	defer xs.Close()

	// A name (and so a console log) of its own for every boot.
	name := fmt.Sprintf("nx-%s-%dm-%d-%d", typ, memBytes>>20, os.Getpid(), attempt)
	cfg := xenctrl.DomainConfig{MaxVCPUs: 1}
	if typ == domain.TypePVH {
		cfg.Flags = xenctrl.CreateHVM | xenctrl.CreateHAP
		cfg.EmulationFlags = 1 // XEN_X86_EMU_LAPIC
	}
	rand.Read(cfg.Handle[:])
	tStart := time.Now()
	d, err := x.CreateDomain(ctx, cfg)
	if err != nil {
		t.Fatalf("create %s domain: %v", typ, err)
	}
	defer func() {
		dctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		if err := x.DestroyDomain(dctx, d); err != nil && !xenctrl.IsNoDomain(err) {
			t.Errorf("destroy domain %d: %v", d, err)
		}
		_ = xs.Release(dctx, uint32(d))
		_ = xs.Remove(dctx, "/local/domain/"+strconv.Itoa(int(d)))
	}()

	spec := domain.Spec{
		Name: name, Type: typ,
		MemoryStaticMax: memBytes, MemoryDynamicMax: memBytes, VCPUsMax: 1,
		Kernel:  guestFile(t, "NX_GUEST_KERNEL", "/guest/vmlinux"),
		Ramdisk: guestFile(t, "NX_GUEST_INITRD", "/guest/initrd.gz"),
		Cmdline: "console=hvc0 earlyprintk=xen nxmode=poweroff",
	}
	res, tm, err := New(x, Config{}).BuildTimed(ctx, d, spec)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	t.Logf("%s domain %d built in %v (load %v, populate %v, copy %v, setup %v): %+v", typ,
		d, time.Since(tStart).Round(time.Millisecond), tm.Load.Round(time.Millisecond), tm.Populate.Round(time.Millisecond),
		tm.Copy.Round(time.Millisecond), tm.Setup.Round(time.Millisecond), res)

	checkRingGrants(ctx, t, x, d, res)
	introduce(ctx, t, xs, d, name, memBytes, res)
	if err := x.UnpauseDomain(ctx, d); err != nil {
		t.Fatalf("unpause: %v", err)
	}
	tRun := time.Now()

	logPath := filepath.Join("/var/log/xen/console", "guest-"+name+".log")
	// Under software CPU emulation on a busy machine a boot has taken
	// 3.5 minutes (xl's as long): allow 6.
	deadline := tRun.Add(6 * time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if b, err := os.ReadFile(logPath); err == nil {
			if j := bytes.Index(b, []byte("GUEST-BOOTED")); j >= 0 {
				line := b[j:]
				if k := bytes.IndexByte(line, '\n'); k >= 0 {
					line = line[:k]
				}
				now := time.Now()
				t.Logf("TIMING %s create→running %v, create→marker %v, running→marker %v: %s", typ,
					tRun.Sub(tStart).Round(time.Millisecond), now.Sub(tStart).Round(time.Millisecond),
					now.Sub(tRun).Round(time.Millisecond), bytes.TrimSpace(line))
				// Linux checks its page tables once booted: a builder that
				// leaves writable, executable mappings behind fails here.
				for _, ln := range bytes.Split(b, []byte("\n")) {
					if bytes.Contains(ln, []byte("W+X")) {
						t.Logf("guest: %s", bytes.TrimSpace(ln))
					}
					if bytes.Contains(ln, []byte("W+X mappings: FAILED")) {
						t.Errorf("the guest found writable and executable mappings: %s", bytes.TrimSpace(ln))
					}
				}
				waitPoweroff(ctx, t, x, d, now, logPath)
				return string(bytes.TrimSpace(line)), false
			}
		}
		di, err := x.DomainInfo(ctx, d)
		if err != nil {
			t.Fatalf("domain info: %v", err)
		}
		if di.Shutdown {
			dumpDiag(t, logPath)
			// A triple fault shuts an HVM domain down with "reboot".
			t.Logf("domain %d shut down (%v) before the marker", d, di.ShutdownReason)
			return "", true
		}
		time.Sleep(200 * time.Millisecond)
	}
	dumpDiag(t, logPath)
	t.Fatalf("no GUEST-BOOTED marker within %v of unpausing", deadline.Sub(tRun))
	return "", false
}

// checkRingGrants maps the console and xenstore rings through the grants
// the builder seeded for dom0 (references 0 and 1), as their backends may,
// and checks that they are the very frames the build result names: what is
// written through the grant mapping reads back through a foreign mapping
// of the frame. The rings are left zeroed, as the builder left them.
func checkRingGrants(ctx context.Context, t *testing.T, x *xenctrl.Xen, d xenctrl.Domid, res domain.BuildResult) {
	t.Helper()
	g, err := xenctrl.OpenGntdev()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	m, err := g.Map(d, []uint32{xenctrl.GrantRefConsole, xenctrl.GrantRefXenstore}, true)
	if err != nil {
		t.Fatalf("map the ring grants of domain %d: %v", d, err)
	}
	defer func() {
		if err := m.Unmap(); err != nil {
			t.Errorf("unmap the ring grants: %v", err)
		}
	}()
	for i, frame := range []uint64{res.ConsoleGFN, res.StoreGFN} {
		page := m.Mem[i*pageSize : (i+1)*pageSize]
		if !bytes.Equal(page, make([]byte, pageSize)) {
			t.Errorf("grant %d: the ring page is not zeroed", i)
		}
		pattern := fmt.Appendf(nil, "grant %d of domain %d", i, d)
		copy(page, pattern)
		fm, err := x.MapForeign(ctx, d, []uint64{frame}, false)
		if err != nil {
			t.Fatalf("foreign map of frame %#x: %v", frame, err)
		}
		if !bytes.HasPrefix(fm.Mem, pattern) {
			t.Errorf("grant %d does not reference frame %#x: wrote %q through the grant, the frame holds %q", i, frame, pattern, fm.Mem[:len(pattern)])
		}
		fm.Unmap()
		clear(page)
	}
}

// introduce writes what a toolstack writes for xenconsoled and the guest,
// then introduces the domain to xenstored.
func introduce(ctx context.Context, t *testing.T, xs *xenstore.Client, d xenctrl.Domid, name string, memBytes uint64, res domain.BuildResult) {
	t.Helper()
	dom := "/local/domain/" + strconv.Itoa(int(d))
	own := []xenstore.Perm{{Domid: uint32(d), Access: xenstore.AccessNone}}
	if err := xs.Mkdir(ctx, dom); err != nil {
		t.Fatal(err)
	}
	if err := xs.SetPerms(ctx, dom, own); err != nil {
		t.Fatal(err)
	}
	for _, kv := range [][2]string{
		{"name", name},
		{"domid", strconv.Itoa(int(d))},
		{"memory/static-max", strconv.FormatUint(memBytes>>10, 10)},
		{"memory/target", strconv.FormatUint(memBytes>>10, 10)},
		{"console/ring-ref", strconv.FormatUint(res.ConsoleGFN, 10)},
		{"console/port", strconv.Itoa(int(res.ConsolePort))},
		{"console/type", "xenconsoled"},
		{"console/output", "pty"},
		{"console/limit", "1048576"},
		{"store/ring-ref", strconv.FormatUint(res.StoreGFN, 10)},
		{"store/port", strconv.Itoa(int(res.StorePort))},
	} {
		if err := xs.Write(ctx, dom+"/"+kv[0], []byte(kv[1])); err != nil {
			t.Fatalf("xenstore write %s: %v", kv[0], err)
		}
	}
	for _, p := range []string{"control", "data", "device", "error"} {
		if err := xs.Mkdir(ctx, dom+"/"+p); err != nil {
			t.Fatal(err)
		}
		if err := xs.SetPerms(ctx, dom+"/"+p, own); err != nil {
			t.Fatal(err)
		}
	}
	if err := xs.Introduce(ctx, uint32(d), res.StoreGFN, res.StorePort); err != nil {
		t.Fatalf("introduce: %v", err)
	}
}

// waitPoweroff waits (bounded) for the guest, whose init powers off after
// printing its marker, to shut itself down with reason poweroff.
func waitPoweroff(ctx context.Context, t *testing.T, x *xenctrl.Xen, d xenctrl.Domid, marker time.Time, logPath string) {
	t.Helper()
	deadline := marker.Add(2 * time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		di, err := x.DomainInfo(ctx, d)
		if err != nil {
			t.Fatalf("domain info: %v", err)
		}
		if di.Shutdown {
			if di.ShutdownReason != xenctrl.ShutdownPoweroff {
				dumpDiag(t, logPath)
				t.Fatalf("guest shut down with %v, want poweroff", di.ShutdownReason)
			}
			t.Logf("TIMING marker→poweroff %v (guest-initiated)", time.Since(marker).Round(time.Millisecond))
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	dumpDiag(t, logPath)
	t.Errorf("guest did not power itself off within %v of its marker", deadline.Sub(marker))
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
