package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

const testVirtBase = 0xffffffff80000000

// pvTestKernel writes a small 64-bit PV ELF: one executable segment at
// physical 16 MiB (virtual base + 16 MiB), text then bss, and the notes a
// Linux PV kernel has: XEN_VERSION, VIRT_BASE, PADDR_OFFSET, ENTRY and,
// when hypercall is non-zero, HYPERCALL_PAGE.
func pvTestKernel(entry, hypercall uint64, text []byte, bss uint64, extra ...elftest.Note) []byte {
	notes := []elftest.Note{
		elftest.XenNote(5, elftest.CString("xen-3.0")), // XEN_VERSION
		elftest.XenNote(3, elftest.U64(testVirtBase)),  // VIRT_BASE
		elftest.XenNote(4, elftest.U64(0)),             // PADDR_OFFSET
		elftest.XenNote(1, elftest.U64(entry)),         // ENTRY
	}
	if hypercall != 0 {
		notes = append(notes, elftest.XenNote(2, elftest.U64(hypercall))) // HYPERCALL_PAGE
	}
	notes = append(notes, extra...)
	return elftest.Image{
		Entry:    0x1000000,
		Segments: []elftest.Segment{{Paddr: 0x1000000, Vaddr: testVirtBase + 0x1000000, Data: text, Memsz: uint64(len(text)) + bss, Flags: 5}},
		Notes:    notes,
	}.Build()
}

func pvSpec(t *testing.T, hypercall uint64, extra ...elftest.Note) (domain.Spec, []byte, []byte) {
	text := bytes.Repeat([]byte("PVKERNEL"), 2000)
	k := pvTestKernel(testVirtBase+0x1000010, hypercall, text, 0x5000, extra...)
	initrd := bytes.Repeat([]byte{0x5a, 0xa5, 0x11}, 40000)
	return domain.Spec{
		Name: "pv", Type: domain.TypePV,
		MemoryStaticMax: 64 << 20, MemoryDynamicMax: 64 << 20, VCPUsMax: 1,
		Kernel: writeFile(t, "vmlinux", k), Ramdisk: writeFile(t, "initrd", initrd),
		Cmdline: "console=hvc0 root=/dev/ram0",
	}, text, initrd
}

// linuxP2MNotes are the notes with which Linux asks for its p2m outside
// the initial mapping (XEN_ELFNOTE_INIT_P2M) and its initrd by frame
// number (XEN_ELFNOTE_MOD_START_PFN).
var linuxP2MNotes = []elftest.Note{
	elftest.XenNote(15, elftest.U64(0x8000000000)),
	elftest.XenNote(16, elftest.U32(1)),
}

// pvView reads a PV guest's memory the way its vCPU will: through the
// page tables rooted at its L4, frames being machine frames.
type pvView struct {
	t      *testing.T
	h      *sim.Hypervisor
	d      xenctrl.Domid
	l4     uint64
	frames map[uint64][]byte
}

func (v *pvView) frame(mfn uint64) []byte {
	if v.frames[mfn] == nil {
		v.frames[mfn] = readFrames(v.t, v.h, v.d, mfn)
	}
	return v.frames[mfn]
}

// walk translates va like the MMU: the machine frame it maps and whether
// the mapping is writable.
func (v *pvView) walk(va uint64) (mfn uint64, rw bool, err error) {
	table, rw := v.l4, true
	for level, shift := 4, uint(39); level >= 1; level, shift = level-1, shift-9 {
		e := le.Uint64(v.frame(table)[(va>>shift&511)*8:])
		if e&ptePresent == 0 {
			return 0, false, fmt.Errorf("va %#x: L%d entry not present", va, level)
		}
		table = e >> 12 & (1<<40 - 1)
		rw = rw && e&pteRW != 0
	}
	return table, rw, nil
}

func (v *pvView) readVirt(va, n uint64) ([]byte, error) {
	var out []byte
	for a := va; a < va+n; {
		m, _, err := v.walk(a)
		if err != nil {
			return nil, err
		}
		off := a & (pageSize - 1)
		k := min(pageSize-off, va+n-a)
		out = append(out, v.frame(m)[off:off+k]...)
		a += k
	}
	return out, nil
}

// TestBuildPV builds with 2 MiB extents for all RAM, for some of it (the
// host runs out of them), and for none; and for a kernel that takes its p2m
// and initrd outside the initial mapping.
func TestBuildPV(t *testing.T) {
	for _, c := range []struct {
		name      string
		superLeft uint64
		notes     []elftest.Note
	}{
		{"superpages", 1 << 20, nil},
		{"some-superpages", 10, nil},
		{"4k-pages", 0, nil},
		{"p2m-and-initrd-outside", 1 << 20, linuxP2MNotes},
	} {
		t.Run(c.name, func(t *testing.T) { testBuildPV(t, c.superLeft, c.notes) })
	}
}

func testBuildPV(t *testing.T, superLeft uint64, notes []elftest.Note) {
	ctx := context.Background()
	h, d := simDomain(t, domain.TypePV, 1, sim.Config{})
	h.LimitSuperpages(superLeft)
	spec, text, initrd := pvSpec(t, testVirtBase+0x1002000, notes...)
	res, err := New(h, Config{}).Build(ctx, d, spec)
	if err != nil {
		t.Fatal(err)
	}
	di, _ := h.DomainInfo(ctx, d)
	st, err := h.BuildState(d)
	if err != nil || di.TotPages != 64<<8 {
		t.Fatalf("populated %d pages, want %d (%v)", di.TotPages, 64<<8, err)
	}
	if len(st.MemoryMap) != 1 || st.MemoryMap[0].Size != 64<<20 {
		t.Errorf("memory map %+v", st.MemoryMap)
	}
	vgc := st.VCPUContexts[0]
	boot, err := xenctrl.DecodePVVCPUContext(vgc)
	if err != nil || boot.L4MFN != st.PinnedL4 || st.PinnedL4 == 0 {
		t.Fatalf("vCPU 0 %+v (%v), pinned L4 %#x", boot, err, st.PinnedL4)
	}
	if got := le.Uint64(vgc[512:]); got != 4|32 {
		t.Errorf("vcpu flags %#x", got)
	}
	if cs, ss := le.Uint16(vgc[520+136:]), le.Uint16(vgc[520+160:]); cs != 0xe033 || ss != 0xe02b {
		t.Errorf("cs %#x ss %#x", cs, ss)
	}
	v := &pvView{t: t, h: h, d: d, l4: st.PinnedL4, frames: map[uint64][]byte{}}
	if boot.Entry != testVirtBase+0x1000010 {
		t.Errorf("rip %#x", boot.Entry)
	}
	if got, err := v.readVirt(boot.Entry, 8); err != nil || !bytes.Equal(got, text[16:24]) {
		t.Errorf("bytes at entry: %q, %v", got, err)
	}
	if _, rw, err := v.walk(boot.Stack - 8); err != nil || !rw {
		t.Errorf("stack at %#x: rw %v err %v", boot.Stack-8, rw, err)
	}
	si, err := v.readVirt(boot.StartInfo, xenctrl.StartInfoSize)
	if err != nil {
		t.Fatal(err)
	}
	checkPVStartInfo(t, h, d, si, spec, res)
	p2m := checkPVP2M(t, v, si)
	checkPVMapping(t, v, si, p2m)
	checkPVInitrd(t, v, si, p2m, initrd, notes != nil)
	if bss, err := v.readVirt(testVirtBase+0x1000000+uint64(len(text)), 0x5000); err != nil || !bytes.Equal(bss, make([]byte, 0x5000)) {
		t.Errorf("bss not zeroed: %v", err)
	}
	// Rings cleared and granted by MFN; shared info masked; hypercall page.
	if !bytes.Equal(readFrames(t, h, d, res.StoreGFN, res.ConsoleGFN), make([]byte, 2*pageSize)) {
		t.Error("ring pages not cleared")
	}
	if st.UnboundEvtchns[res.StorePort] != 0 || st.UnboundEvtchns[res.ConsolePort] != 0 || len(st.UnboundEvtchns) != 2 {
		t.Errorf("event channels %v", st.UnboundEvtchns)
	}
	shinfo, _ := h.SharedInfoFrame(ctx, d)
	if sh := readFrames(t, h, d, shinfo); sh[1] != 1 || sh[31*64+1] != 1 || sh[0] != 0 || sh[32*64+1] != 0 {
		t.Errorf("shared info not initialised: % x", sh[:4])
	}
	gt, _ := h.GrantTableFrame(ctx, d)
	if g := readFrames(t, h, d, gt); le.Uint16(g[0:]) != 1 || uint64(le.Uint32(g[4:])) != res.ConsoleGFN || le.Uint16(g[8:]) != 1 || uint64(le.Uint32(g[12:])) != res.StoreGFN {
		t.Errorf("grant entries % x", g[:16])
	}
	if hp, _, _ := v.walk(testVirtBase + 0x1002000); st.HypercallPage != hp || hp == 0 || !bytes.HasPrefix(v.frame(hp), []byte{0x51, 0x41, 0x53, 0xb8}) {
		t.Errorf("hypercall page mfn %#x, want %#x, filled by Xen", st.HypercallPage, hp)
	}
}

// checkPVStartInfo checks the start_info fields that name Xen's frames,
// the rings and the command line.
func checkPVStartInfo(t *testing.T, h *sim.Hypervisor, d xenctrl.Domid, si []byte, spec domain.Spec, res domain.BuildResult) {
	t.Helper()
	if !bytes.HasPrefix(si, []byte("xen-3.0-x86_64\x00")) {
		t.Errorf("start_info magic %q", si[:32])
	}
	if n := le.Uint64(si[32:]); n != 64<<8 {
		t.Errorf("nr_pages %d", n)
	}
	if sh, _ := h.SharedInfoFrame(context.Background(), d); le.Uint64(si[40:]) != sh<<pageShift { // a machine address
		t.Errorf("shared_info %#x, want frame %#x", le.Uint64(si[40:]), sh)
	}
	if m, p := le.Uint64(si[56:]), le.Uint32(si[64:]); m != res.StoreGFN || p != res.StorePort || p == 0 {
		t.Errorf("store mfn %#x port %d, result %+v", m, p, res)
	}
	if m, p := le.Uint64(si[72:]), le.Uint32(si[80:]); m != res.ConsoleGFN || p != res.ConsolePort || p == res.StorePort {
		t.Errorf("console mfn %#x port %d, result %+v", m, p, res)
	}
	for _, m := range []uint64{res.StoreGFN, res.ConsoleGFN} {
		if _, ok := h.MachineToPhys(d, m); !ok {
			t.Errorf("ring frame %#x is not one of the guest's machine frames", m)
		}
	}
	if cl := si[128 : 128+len(spec.Cmdline)+1]; string(cl) != spec.Cmdline+"\x00" {
		t.Errorf("cmdline %q", cl)
	}
}

// checkPVP2M reads the p2m at start_info.mfn_list and checks every entry
// is the machine frame Xen populated that guest frame with.
func checkPVP2M(t *testing.T, v *pvView, si []byte) []uint64 {
	t.Helper()
	raw, err := v.readVirt(le.Uint64(si[104:]), 64<<8*8)
	if err != nil {
		t.Fatal(err)
	}
	p2m := make([]uint64, 64<<8)
	for pfn := range p2m {
		p2m[pfn] = le.Uint64(raw[pfn*8:])
		if got, ok := v.h.MachineToPhys(v.d, p2m[pfn]); !ok || got != uint64(pfn) {
			t.Fatalf("p2m[%#x] = %#x, which Xen populated at guest frame %#x (%v)", pfn, p2m[pfn], got, ok)
		}
	}
	return p2m
}

// checkPVMapping walks the whole initial mapping: every page maps the
// frame the p2m names for it, writable except the page tables, up to a
// 4 MiB-aligned end past the kernel.
func checkPVMapping(t *testing.T, v *pvView, si []byte, p2m []uint64) {
	t.Helper()
	ptBase, nrPT := le.Uint64(si[88:]), le.Uint64(si[96:])
	va := uint64(testVirtBase)
	for ; ; va += pageSize {
		mfn, rw, err := v.walk(va)
		if err != nil {
			break
		}
		pfn := (va - testVirtBase) >> pageShift
		table := va >= ptBase && va < ptBase+nrPT*pageSize
		if mfn != p2m[pfn] || rw == table {
			t.Fatalf("va %#x maps mfn %#x rw %v; want p2m[%#x] = %#x rw %v", va, mfn, rw, pfn, p2m[pfn], !table)
		}
	}
	if m, _, _ := v.walk(ptBase); m != v.l4 {
		t.Errorf("pt_base maps mfn %#x, the L4 is %#x", m, v.l4)
	}
	if va%(4<<20) != 0 || va < ptBase+nrPT*pageSize+512<<10 {
		t.Errorf("the initial mapping ends at %#x", va)
	}
}

// checkPVInitrd finds the initrd where start_info says: by virtual address
// or, outside the mapping, by frame (with the p2m there too).
func checkPVInitrd(t *testing.T, v *pvView, si []byte, p2m []uint64, initrd []byte, outside bool) {
	t.Helper()
	modStart, modLen, flags := le.Uint64(si[112:]), le.Uint64(si[120:]), le.Uint32(si[48:])
	if outside != (flags&xenctrl.SIFModStartPFN != 0) {
		t.Errorf("start_info flags %#x: SIF_MOD_START_PFN %v, want %v", flags, !outside, outside)
	}
	var got []byte
	var err error
	if outside {
		for p := modStart; uint64(len(got)) < modLen; p++ {
			got = append(got, v.frame(p2m[p])...)
		}
		got = got[:modLen]
	} else {
		got, err = v.readVirt(modStart, modLen)
	}
	if err != nil || !bytes.Equal(got, initrd) {
		t.Errorf("initrd at %#x+%d: %v", modStart, modLen, err)
	}
	firstP2M, nrP2M := le.Uint64(si[1152:]), le.Uint64(si[1160:])
	if !outside {
		if firstP2M != 0 || nrP2M != 0 {
			t.Errorf("first_p2m_pfn %#x nr_p2m_frames %d with the p2m inside the mapping", firstP2M, nrP2M)
		}
		return
	}
	mapEnd := (le.Uint64(si[88:]) + le.Uint64(si[96:])*pageSize - testVirtBase) >> pageShift
	switch {
	case le.Uint64(si[104:]) != 0x8000000000:
		t.Errorf("mfn_list %#x, want the INIT_P2M address", le.Uint64(si[104:]))
	case firstP2M < mapEnd || nrP2M < 64<<8*8/pageSize+3:
		t.Errorf("first_p2m_pfn %#x nr_p2m_frames %d", firstP2M, nrP2M)
	case firstP2M+nrP2M > 64<<8:
		t.Errorf("p2m frames [%#x, +%d) past the guest's end", firstP2M, nrP2M)
	case modStart < firstP2M && modStart+(modLen+pageSize-1)/pageSize > firstP2M:
		t.Errorf("initrd frames [%#x, +%d bytes) overlap the p2m at %#x", modStart, modLen, firstP2M)
	}
	if _, _, err := v.walk(testVirtBase + modStart<<pageShift); err == nil {
		t.Errorf("the unmapped initrd's frame %#x is mapped at its linear address", modStart)
	}
}

func TestBuildPVRejects(t *testing.T) {
	good, _, _ := pvSpec(t, 0)
	text := bytes.Repeat([]byte{0x90}, 64)
	cases := map[string]struct {
		mut   func(*domain.Spec)
		field string
	}{
		"no kernel":    {func(s *domain.Spec) { s.Kernel = "" }, "spec.kernel"},
		"missing file": {func(s *domain.Spec) { s.Kernel = "/nonexistent/vmlinux" }, "spec.kernel"},
		"PVH-only kernel": {func(s *domain.Spec) {
			s.Kernel = writeFile(t, "pvh", testKernel(0x100000, text, 0))
		}, "spec.kernel"},
		"entry outside text": {func(s *domain.Spec) {
			s.Kernel = writeFile(t, "badentry", pvTestKernel(testVirtBase+0x9000000, 0, text, 0))
		}, "spec.kernel"},
		"hypercall page outside": {func(s *domain.Spec) {
			s.Kernel = writeFile(t, "badhc", pvTestKernel(testVirtBase+0x1000000, testVirtBase+0x8000000, text, 0))
		}, "spec.kernel"},
		"too small": {func(s *domain.Spec) { s.MemoryStaticMax, s.MemoryDynamicMax = 8<<20, 8<<20 }, "spec.memory_dynamic_max"},
		"cmdline":   {func(s *domain.Spec) { s.Cmdline = strings.Repeat("a", 2000) }, "spec.cmdline"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			h, d := simDomain(t, domain.TypePV, 1, sim.Config{})
			s := good
			c.mut(&s)
			_, err := New(h, Config{}).Build(context.Background(), d, s)
			if !isInvalid(err, c.field) {
				t.Fatalf("got %v, want InvalidArgument on %s", err, c.field)
			}
			if di, _ := h.DomainInfo(context.Background(), d); di.TotPages != 0 || di.MaxPages != 0 {
				t.Errorf("the domain was changed before the spec was found bad")
			}
		})
	}
}

// TestBuildPVPopulateFailure: a populate failure keeps its errno through the
// build: ENOMEM for a host out of memory (ResourceExhausted in the domain
// core), EIO for EIO.
func TestBuildPVPopulateFailure(t *testing.T) {
	spec, _, _ := pvSpec(t, 0)
	for _, c := range []struct {
		name      string
		hv        func(h *sim.Hypervisor) Hypervisor
		exhausted bool
	}{
		{"host full", func(h *sim.Hypervisor) Hypervisor { return h }, true},
		{"EIO", func(h *sim.Hypervisor) Hypervisor { return failingPopulate{h} }, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			h, d := simDomain(t, domain.TypePV, 1, sim.Config{TotalMemory: 48 << 20}) // ~27 MiB free
			_, err := New(c.hv(h), Config{}).Build(context.Background(), d, spec)
			if exhausted := errors.Is(err, syscall.ENOMEM); err == nil || exhausted != c.exhausted {
				t.Errorf("got %v: ENOMEM = %v, want %v", err, exhausted, c.exhausted)
			}
			if !c.exhausted && !errors.Is(err, syscall.EIO) {
				t.Errorf("got %v, want it to wrap EIO", err)
			}
			if st, _ := h.BuildState(d); len(st.VCPUContexts) != 0 {
				t.Error("vCPU context set after a failed populate")
			}
		})
	}
}

// failingPopulate is a host whose populate_physmap fails with EIO.
type failingPopulate struct{ *sim.Hypervisor }

func (failingPopulate) PopulatePhysmapAt(context.Context, xenctrl.Domid, uint32, []uint64) (int, error) {
	return 0, &xenctrl.Error{Op: "populate", Errno: syscall.EIO}
}

// TestBuildDispatch: one builder builds both types, by spec.Type; a PVH
// spec cannot be built in a PV domain (Xen refuses the HVM calls).
func TestBuildDispatch(t *testing.T) {
	spec, _, _ := pvSpec(t, 0)
	h, d := simDomain(t, domain.TypePV, 1, sim.Config{})
	if _, err := New(h, Config{}).Build(context.Background(), d, spec); err != nil {
		t.Fatalf("PV: %v", err)
	}
	h, d = simDomain(t, domain.TypePV, 1, sim.Config{})
	spec, _, _ = testSpec(t)
	if _, err := New(h, Config{}).Build(context.Background(), d, spec); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("PVH spec in a PV domain: %v, want EINVAL", err)
	}
}
