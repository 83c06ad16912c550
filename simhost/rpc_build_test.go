package simhost

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/builder"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

var _ builder.Hypervisor = (*Client)(nil)

// buildDomain creates a paused domain of typ on the host, as the domain
// manager would.
func buildDomain(t *testing.T, c *Client, typ domain.Type) xenctrl.Domid {
	t.Helper()
	cfg := xenctrl.DomainConfig{MaxVCPUs: 1, MaxEvtchnPort: 1023}
	if typ != domain.TypePV {
		cfg.Flags = xenctrl.CreateHVM | xenctrl.CreateHAP
		cfg.EmulationFlags = 1 // XEN_X86_EMU_LAPIC
	}
	d, err := c.CreateDomain(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func writeTemp(t *testing.T, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// The builder runs over the socket as it runs on the simulator in-process:
// a PVH kernel lands at its physical address, written through writable
// foreign mappings that the host writes back on unmap.
func TestBuildPVHOverSocket(t *testing.T) {
	c, _ := startHost(t, Config{})
	d := buildDomain(t, c, domain.TypePVH)
	text := bytes.Repeat([]byte("PVHTEXT!"), 1500) // 12000 bytes: three frames
	kernel := elftest.Image{
		Segments: []elftest.Segment{{Paddr: 0x100000, Vaddr: 0xffffffff80100000, Data: text, Memsz: uint64(len(text)), Flags: 5}},
		Notes:    []elftest.Note{elftest.XenNote(18, elftest.U32(0x100000))}, // PHYS32_ENTRY
	}.Build()
	spec := domain.Spec{Name: "pvh", Type: domain.TypePVH, MemoryStaticMax: 64 << 20, MemoryDynamicMax: 64 << 20,
		VCPUsMax: 1, Kernel: writeTemp(t, "vmlinux", kernel)}
	res, err := builder.New(c, builder.Config{Logger: slog.New(slog.DiscardHandler)}).Build(testCtx(t), d, spec)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if res.StoreGFN == 0 || res.StorePort == 0 {
		t.Fatalf("build result %+v: no xenstore ring", res)
	}
	m, err := c.MapForeign(testCtx(t), d, []uint64{0x100, 0x101, 0x102}, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Mem[:len(text)]; !bytes.Equal(got, text) {
		t.Fatalf("kernel text at 1 MiB: %q..., want %q...", got[:16], text[:16])
	}
	if err := m.Unmap(); err != nil {
		t.Fatal(err)
	}
}

// A PV build has the host validate the page tables the builder wrote
// through the socket when it pins them.
func TestBuildPVOverSocket(t *testing.T) {
	c, _ := startHost(t, Config{})
	d := buildDomain(t, c, domain.TypePV)
	const virtBase = 0xffffffff80000000
	text := bytes.Repeat([]byte("PVKERNEL"), 2000)
	kernel := elftest.Image{
		Entry:    0x1000000,
		Segments: []elftest.Segment{{Paddr: 0x1000000, Vaddr: virtBase + 0x1000000, Data: text, Memsz: uint64(len(text)) + 0x5000, Flags: 5}},
		Notes: []elftest.Note{
			elftest.XenNote(5, elftest.CString("xen-3.0")),      // XEN_VERSION
			elftest.XenNote(3, elftest.U64(virtBase)),           // VIRT_BASE
			elftest.XenNote(4, elftest.U64(0)),                  // PADDR_OFFSET
			elftest.XenNote(1, elftest.U64(virtBase+0x1000010)), // ENTRY
		},
	}.Build()
	spec := domain.Spec{Name: "pv", Type: domain.TypePV, MemoryStaticMax: 64 << 20, MemoryDynamicMax: 64 << 20,
		VCPUsMax: 1, Kernel: writeTemp(t, "vmlinux", kernel), Ramdisk: writeTemp(t, "initrd", bytes.Repeat([]byte{0x5a}, 100000))}
	res, err := builder.New(c, builder.Config{Logger: slog.New(slog.DiscardHandler)}).Build(testCtx(t), d, spec)
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	if res.StoreGFN == 0 || res.ConsoleGFN == 0 {
		t.Fatalf("build result %+v: no rings", res)
	}
}

// A writable mapping reaches the frames only when unmapped, and a second
// unmap does nothing.
func TestForeignMappingWritesBackOnUnmap(t *testing.T) {
	c, _ := startHost(t, Config{})
	ctx := testCtx(t)
	d := buildDomain(t, c, domain.TypePVH)
	if err := c.SetMaxMem(ctx, d, 1024); err != nil {
		t.Fatal(err)
	}
	if n, err := c.PopulatePhysmapAt(ctx, d, 0, []uint64{5, 6}); n != 2 || err != nil {
		t.Fatalf("populate: %d, %v", n, err)
	}
	w, err := c.MapForeign(ctx, d, []uint64{6, 5}, true)
	if err != nil {
		t.Fatal(err)
	}
	copy(w.Mem, "frame6")
	copy(w.Mem[xenctrl.PageSize:], "frame5")
	read := func() []byte {
		r, err := c.MapForeign(ctx, d, []uint64{5, 6}, false)
		if err != nil {
			t.Fatal(err)
		}
		defer r.Unmap()
		return append(append([]byte(nil), r.Mem[:6]...), r.Mem[xenctrl.PageSize:xenctrl.PageSize+6]...)
	}
	if got := read(); !bytes.Equal(got, make([]byte, 12)) {
		t.Fatalf("frames before unmap: %q, want zeroes", got)
	}
	if err := w.Unmap(); err != nil {
		t.Fatal(err)
	}
	if got := read(); string(got) != "frame5frame6" {
		t.Fatalf("frames after unmap: %q", got)
	}
	if err := w.Unmap(); err != nil {
		t.Fatalf("second unmap: %v", err)
	}
}

// Errors cross as the simulator's: an unpopulated frame is EINVAL, a
// populate past the domain's memory says how far it got.
func TestBuildErrorsCrossSocket(t *testing.T) {
	c, _ := startHost(t, Config{})
	ctx := testCtx(t)
	d := buildDomain(t, c, domain.TypePV)
	if _, err := c.MapForeign(ctx, d, []uint64{1}, false); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("map of an unpopulated frame: %v, want EINVAL", err)
	}
	if _, err := c.MapForeign(ctx, d, make([]uint64, maxMapFrames+1), false); err == nil {
		t.Fatalf("map of %d frames succeeded", maxMapFrames+1)
	}
	if err := c.SetMaxMem(ctx, d, 8); err != nil { // two pages
		t.Fatal(err)
	}
	gpfns := []uint64{0, 1, 2}
	n, err := c.PopulatePhysmapAt(ctx, d, 0, gpfns)
	var xe *xenctrl.Error
	if n != 2 || !errors.As(err, &xe) || xe.Errno != syscall.ENOMEM {
		t.Fatalf("populate 3 pages with room for 2: %d, %v; want 2, ENOMEM", n, err)
	}
	if gpfns[0] == 0 && gpfns[1] == 0 {
		t.Fatalf("PV populate did not write back machine frames: %v", gpfns)
	}
	if _, err := c.GetHVMContext(ctx, d); err == nil {
		t.Fatal("HVM context of a PV domain: no error")
	}
}

// The largest mapping one call allows (16 MiB, four times gRPC's default
// message limit) crosses the socket both ways.
func TestLargestForeignMapping(t *testing.T) {
	c, _ := startHost(t, Config{})
	ctx := testCtx(t)
	d := buildDomain(t, c, domain.TypePVH)
	if err := c.SetMaxMem(ctx, d, maxMapFrames*4); err != nil {
		t.Fatal(err)
	}
	frames := make([]uint64, maxMapFrames)
	for i := range frames {
		frames[i] = uint64(i)
	}
	if n, err := c.PopulatePhysmapAt(ctx, d, 0, append([]uint64(nil), frames...)); n != len(frames) || err != nil {
		t.Fatalf("populate: %d, %v", n, err)
	}
	w, err := c.MapForeign(ctx, d, frames, true)
	if err != nil {
		t.Fatal(err)
	}
	copy(w.Mem[len(w.Mem)-4:], "last")
	if err := w.Unmap(); err != nil {
		t.Fatal(err)
	}
	r, err := c.MapForeign(ctx, d, frames[len(frames)-1:], false)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(r.Mem[xenctrl.PageSize-4:]); got != "last" {
		t.Fatalf("last frame ends %q after unmap, want %q", got, "last")
	}
}
