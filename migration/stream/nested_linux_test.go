package stream

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// The nested suite (tests/nested/run) runs TestNested* inside a real Xen
// dom0 with a guest kernel and initramfs under /guest.
const (
	nestedKernel  = "/guest/vmlinux"
	nestedInitrd  = "/guest/initrd.gz"
	nestedConsole = "/var/log/xen/console"
)

// TestNestedXlSave: `xl save` of a running PVH and PV guest on real Xen
// writes a file (xl's header, then the libxl layer around the libxc
// stream) that the readers take whole, with guest memory in it.
func TestNestedXlSave(t *testing.T) {
	if _, err := os.Stat("/proc/xen/privcmd"); err != nil {
		if os.Getenv("NX_NESTED") == "" {
			t.Skipf("no Xen here (NX_NESTED unset): %v", err)
		}
		t.Fatalf("NX_NESTED set but no Xen: %v", err)
	}
	for _, typ := range []string{"pvh", "pv"} {
		t.Run(typ, func(t *testing.T) { xlSaveAndRead(t, typ) })
	}
}

func xl(t *testing.T, timeout time.Duration, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "xl", args...).CombinedOutput(); err != nil {
		t.Fatalf("xl %v: %v\n%s", args, err, out)
	}
}

func xlSaveAndRead(t *testing.T, typ string) {
	name := fmt.Sprintf("nxsave%s%d", typ, os.Getpid())
	cfg := filepath.Join(t.TempDir(), name+".cfg")
	tsc := ""
	if typ == "pvh" {
		tsc = "tsc_mode = \"native\"\n" // PVH under QEMU needs it (nested-xen notes)
	}
	body := fmt.Sprintf("name = %q\ntype = %q\nkernel = %q\nramdisk = %q\nextra = \"console=hvc0 nxmode=loop\"\n"+
		"memory = 128\nvcpus = 1\n%son_crash = \"destroy\"\n", name, typ, nestedKernel, nestedInitrd, tsc)
	if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	xl(t, 2*time.Minute, "create", cfg)
	t.Cleanup(func() { exec.Command("xl", "destroy", name).Run() }) //nolint:errcheck // gone after a save
	// A guest saves only once it answers the suspend request: wait for
	// its init's marker (bounded).
	logPath := filepath.Join(nestedConsole, "guest-"+name+".log")
	for i := 0; ; i++ {
		if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte("GUEST-BOOTED")) {
			break
		}
		if i == 120 {
			t.Fatalf("no GUEST-BOOTED in %s after 60 s", logPath)
		}
		time.Sleep(500 * time.Millisecond)
	}
	file := filepath.Join(t.TempDir(), name+".save")
	t0 := time.Now()
	xl(t, 5*time.Minute, "save", name, file)
	t.Logf("xl save of a 128 MiB %s guest: %v", typ, time.Since(t0).Round(time.Millisecond))

	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	skipXlHeader(t, r)
	// Each record read is written again by a Writer: the bytes must be
	// those of xl's libxc stream.
	rewritten := sha256.New()
	var w *Writer
	var n countingWriter
	xlRecs, xcRecs, err := readLibxlFrom(r, Limits{MaxPFN: 1 << 20}, func(sr *Reader, rec Record) Record {
		if w == nil {
			var werr error
			if w, werr = NewWriter(io.MultiWriter(rewritten, &n), sr.Domain()); werr != nil {
				t.Fatal(werr)
			}
		}
		if err := w.WriteRecord(rec); err != nil {
			t.Errorf("writing again %v: %v", rec.Type(), err)
		}
		return stripPages(rec)
	})
	if err != nil {
		t.Fatalf("reading xl save's stream: %v", err)
	}
	compareLibxcBytes(t, file, int64(n), rewritten.Sum(nil))
	counts := map[RecordType]int{}
	pages := 0
	for _, rec := range xcRecs {
		counts[rec.Type()]++
		if p, ok := rec.(*PageData); ok {
			pages += len(p.Pages)
		}
	}
	t.Logf("libxl records %d, libxc records by type %v, %d pages", len(xlRecs), counts, pages)
	if pages < 128<<20/x86PageSize/2 {
		t.Errorf("%d pages in the stream of a 128 MiB guest", pages)
	}
	want := []RecordType{TypeStaticDataEnd, TypeX86TSCInfo, TypeEnd}
	if typ == "pvh" {
		want = append(want, TypeHVMParams, TypeHVMContext)
	} else {
		want = append(want, TypeX86PVInfo, TypeX86PVP2MFrames, TypeSharedInfo, TypeX86PVVCPUBasic)
	}
	for _, w := range want {
		if counts[w] == 0 {
			t.Errorf("no %v record in xl save's stream", w)
		}
	}
}

type countingWriter int64

func (c *countingWriter) Write(b []byte) (int, error) {
	*c += countingWriter(len(b))
	return len(b), nil
}

// compareLibxcBytes compares the n octets of the libxc stream in an xl
// save file (after xl's header, the libxl header and LIBXC_CONTEXT) with
// a SHA-256 of what the Writer wrote.
func compareLibxcBytes(t *testing.T, file string, n int64, sum []byte) {
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := bufio.NewReader(f)
	skipXlHeader(t, r)
	if _, err := io.CopyN(io.Discard, r, libxlHeaderSize+recordHeaderSize); err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(h, r, n); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(h.Sum(nil), sum) {
		t.Errorf("the Writer's %d octets differ from xl's libxc stream", n)
	} else {
		t.Logf("the Writer wrote xl's libxc stream again octet for octet (%d octets)", n)
	}
}

// skipXlHeader reads xl's save file header: a 32-octet magic, byte order,
// mandatory and optional flags, and the length of xl's own data (the
// domain configuration), which follows.
func skipXlHeader(t *testing.T, r io.Reader) {
	t.Helper()
	var h [48]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatal(err)
	}
	if magic := "Xen saved domain, xl format\n \x00 \r"; string(h[:32]) != magic {
		t.Fatalf("xl header magic %q", h[:32])
	}
	if order := le.Uint32(h[32:]); order != 0x01020304 {
		t.Fatalf("xl header byte order %#x", order)
	}
	if flags := le.Uint32(h[36:]); flags&2 == 0 { // XL_MANDATORY_FLAG_STREAMv2
		t.Fatalf("xl header mandatory flags %#x: not a v2 stream", flags)
	}
	if _, err := io.CopyN(io.Discard, r, int64(le.Uint32(h[44:]))); err != nil {
		t.Fatal(err)
	}
}
