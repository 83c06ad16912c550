package builder

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// TestNestedPV builds a 64-bit PV guest from the Debian kernel and the
// busybox initramfs with the PV builder, introduces it to xenstored with
// its console ring like a toolstack, and waits for GUEST-BOOTED in
// xenconsoled's log. Then it destroys the guest.
func TestNestedPV(t *testing.T) {
	x := nestedXen(t)
	kernelPath := guestFile(t, "NX_GUEST_KERNEL", "/guest/vmlinux")
	initrd := guestFile(t, "NX_GUEST_INITRD", "/guest/initrd.gz")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	xs, err := xenstore.Dial(ctx, "")
	if err != nil {
		t.Fatalf("xenstore: %v", err)
	}
	defer xs.Close()

	name := fmt.Sprintf("nx-pv-%d", os.Getpid())
	var h xenctrl.Handle
	rand.Read(h[:])
	tStart := time.Now()
	d, err := x.CreateDomain(ctx, xenctrl.DomainConfig{Handle: h, MaxVCPUs: 1})
	if err != nil {
		t.Fatalf("create PV domain: %v", err)
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
		Name: name, Type: domain.TypePV,
		MemoryStaticMax: 256 << 20, MemoryDynamicMax: 256 << 20, VCPUsMax: 1,
		Kernel: kernelPath, Ramdisk: initrd,
		Cmdline: "console=hvc0 earlyprintk=xen nxmode=poweroff",
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	res, tm, err := NewPV(Config{Logger: logger}).BuildTimed(ctx, x, d, spec)
	if err != nil {
		dumpDiag(t, "")
		t.Fatalf("build: %v", err)
	}
	tBuilt := time.Now()
	t.Logf("PV domain %d built in %v (load %v, populate %v, copy %v, setup %v): %+v",
		d, tBuilt.Sub(tStart).Round(time.Millisecond), tm.Load.Round(time.Millisecond), tm.Populate.Round(time.Millisecond),
		tm.Copy.Round(time.Millisecond), tm.Setup.Round(time.Millisecond), res)

	introducePV(ctx, t, xs, d, name, res)
	if err := x.UnpauseDomain(ctx, d); err != nil {
		t.Fatalf("unpause: %v", err)
	}
	tRun := time.Now()
	t.Logf("domain %d running %v after create", d, tRun.Sub(tStart).Round(time.Millisecond))

	logPath := filepath.Join("/var/log/xen/console", "guest-"+name+".log")
	deadline := tRun.Add(6 * time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if b, err := os.ReadFile(logPath); err == nil {
			if j := bytes.Index(b, []byte("GUEST-BOOTED")); j >= 0 {
				line := b[j:]
				if k := bytes.IndexByte(line, '\n'); k >= 0 {
					line = line[:k]
				}
				now := time.Now()
				t.Logf("TIMING PV create→running %v, create→marker %v, running→marker %v: %s",
					tRun.Sub(tStart).Round(time.Millisecond), now.Sub(tStart).Round(time.Millisecond),
					now.Sub(tRun).Round(time.Millisecond), bytes.TrimSpace(line))
				for _, ln := range bytes.Split(b, []byte("\n")) {
					if bytes.Contains(ln, []byte("W+X")) || bytes.Contains(ln, []byte("insecure")) {
						t.Logf("guest: %s", bytes.TrimSpace(ln))
					}
				}
				waitPoweroff(ctx, t, x, d, now, logPath)
				return
			}
		}
		di, err := x.DomainInfo(ctx, d)
		if err != nil {
			t.Fatalf("domain info: %v", err)
		}
		if di.Shutdown {
			dumpDiag(t, logPath)
			t.Fatalf("domain %d shut down (%v) before the marker", d, di.ShutdownReason)
		}
		time.Sleep(250 * time.Millisecond)
	}
	dumpDiag(t, logPath)
	t.Fatalf("no GUEST-BOOTED marker within %v of unpausing", deadline.Sub(tRun))
}

// introducePV writes what a toolstack writes for xenconsoled and the
// guest, then introduces the domain to xenstored.
func introducePV(ctx context.Context, t *testing.T, xs *xenstore.Client, d xenctrl.Domid, name string, res domain.BuildResult) {
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
		{"memory/static-max", strconv.Itoa(256 << 10)},
		{"memory/target", strconv.Itoa(256 << 10)},
		{"console/ring-ref", strconv.FormatUint(res.ConsoleMFN, 10)},
		{"console/port", strconv.Itoa(int(res.ConsolePort))},
		{"console/type", "xenconsoled"},
		{"console/output", "pty"},
		{"console/limit", "1048576"},
		{"store/ring-ref", strconv.FormatUint(res.StoreMFN, 10)},
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
	if err := xs.Introduce(ctx, uint32(d), res.StoreMFN, res.StorePort); err != nil {
		t.Fatalf("introduce: %v", err)
	}
}

// waitPoweroff waits (bounded) for the guest, whose init powers off after
// printing its marker, to shut itself down with reason poweroff: PV guests
// do it with SCHEDOP_shutdown, no ACPI needed.
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
			t.Logf("TIMING PV marker→poweroff %v (guest-initiated SCHEDOP_shutdown poweroff)", time.Since(marker).Round(time.Millisecond))
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	dumpDiag(t, logPath)
	t.Errorf("guest did not power itself off within %v of its marker", deadline.Sub(marker))
}
