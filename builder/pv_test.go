package builder

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"

	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
)

// fakePV stands in for a PV domain: populate hands out scattered machine
// frames, memory is mapped by machine frame, and pinning refuses a table
// that is still mapped writable, as Xen does.
type fakePV struct {
	xenctrl.Hypervisor
	maxKiB    uint64
	vcpus     uint32
	frames    map[uint64][]byte // by mfn
	nextPFN   uint64
	ports     uint32
	e820      []xenctrl.E820Entry
	mapped    map[uint64]int // mfn -> open mappings
	pinned    uint64
	hcPage    uint64
	vgc       []byte
	shinfo    uint64
	gnttab    uint64
	pinErrors int
	// superLeft is how many 2 MiB extents Xen can still give; superUsed
	// how many it gave.
	superLeft, superUsed uint64
	assigned             map[uint64]uint64 // guest frame -> machine frame
}

const fakeShinfo, fakeGnttab, fakeSuperBase = 0x7000, 0x7001, 0x1000000

func newFakePV() *fakePV {
	f := &fakePV{frames: map[uint64][]byte{}, mapped: map[uint64]int{}, shinfo: fakeShinfo, gnttab: fakeGnttab, superLeft: 1 << 20, assigned: map[uint64]uint64{}}
	f.frames[fakeShinfo] = bytes.Repeat([]byte{0xff}, pageSize)
	f.frames[fakeGnttab] = make([]byte, pageSize)
	return f
}

func fakeMFN(pfn uint64) uint64 { return 0x100000 + (pfn*7919)%0x40000 + (pfn/0x40000)<<20 }

func (f *fakePV) Kind() string { return "fake" }
func (f *fakePV) SetMaxVCPUs(_ context.Context, _ xenctrl.Domid, n uint32) error {
	f.vcpus = n
	return nil
}
func (f *fakePV) SetMaxMem(_ context.Context, _ xenctrl.Domid, kib uint64) error {
	f.maxKiB = kib
	return nil
}

// PopulatePhysmapAt hands out scattered 4 KiB frames, or contiguous 2 MiB
// extents (from a separate range) for order 9 until superLeft runs out.
func (f *fakePV) PopulatePhysmapAt(_ context.Context, _ xenctrl.Domid, order uint32, gpfns []uint64) (int, error) {
	if order != 0 && order != 9 {
		return 0, &xenctrl.Error{Op: "populate", Errno: syscall.EINVAL}
	}
	for i := range gpfns {
		n := uint64(1) << order
		if (f.nextPFN+n)*4 > f.maxKiB || (order == 9 && f.superLeft == 0) {
			return i, &xenctrl.Error{Op: "populate", Errno: syscall.ENOMEM}
		}
		m := fakeMFN(f.nextPFN)
		if order == 9 {
			m = fakeSuperBase + f.superUsed<<9
			f.superUsed++
			f.superLeft--
		}
		for j := uint64(0); j < n; j++ {
			f.frames[m+j] = bytes.Repeat([]byte{0xcc}, pageSize) // not scrubbed
			f.assigned[gpfns[i]+j] = m + j
		}
		f.nextPFN += n
		gpfns[i] = m
	}
	return len(gpfns), nil
}
func (f *fakePV) MapGuest(_ context.Context, _ xenctrl.Domid, mfns []uint64) ([]byte, func() error, error) {
	mem := make([]byte, len(mfns)*pageSize)
	for i, m := range mfns {
		if f.frames[m] == nil {
			return nil, nil, fmt.Errorf("map mfn %#x: %w", m, syscall.EFAULT)
		}
		copy(mem[i*pageSize:], f.frames[m])
		f.mapped[m]++
	}
	return mem, func() error {
		for i, m := range mfns {
			copy(f.frames[m], mem[i*pageSize:])
			f.mapped[m]--
		}
		return nil
	}, nil
}
func (f *fakePV) AllocUnboundEvtchn(_ context.Context, _, _ xenctrl.Domid) (uint32, error) {
	f.ports++
	return f.ports, nil
}
func (f *fakePV) SetMemoryMap(_ context.Context, _ xenctrl.Domid, e []xenctrl.E820Entry) error {
	f.e820 = e
	return nil
}
func (f *fakePV) SharedInfoFrame(context.Context, xenctrl.Domid) (uint64, error) {
	return f.shinfo, nil
}
func (f *fakePV) GrantTableFrame(context.Context, xenctrl.Domid) (uint64, error) {
	return f.gnttab, nil
}
func (f *fakePV) HypercallInit(_ context.Context, _ xenctrl.Domid, mfn uint64) error {
	f.hcPage = mfn
	return nil
}
func (f *fakePV) PinL4Table(_ context.Context, _ xenctrl.Domid, mfn uint64) error {
	for m, n := range f.mapped {
		if n != 0 {
			f.pinErrors++
			return fmt.Errorf("mfn %#x still mapped: %w", m, syscall.EINVAL)
		}
	}
	f.pinned = mfn
	return nil
}
func (f *fakePV) SetVCPUContext(_ context.Context, _ xenctrl.Domid, vcpu uint32, vgc []byte) error {
	if vcpu != 0 || len(vgc) != xenctrl.VCPUGuestContextSize {
		return syscall.EINVAL
	}
	f.vgc = append([]byte(nil), vgc...)
	return nil
}

// readPFN reads n bytes of guest pseudo-physical memory from frame pfn on.
func (f *fakePV) readPFN(pfn, n uint64) ([]byte, error) {
	var out []byte
	for p := pfn; uint64(len(out)) < n; p++ {
		fr := f.frames[f.assigned[p]]
		if fr == nil {
			return nil, fmt.Errorf("guest frame %#x not populated", p)
		}
		out = append(out, fr[:min(uint64(pageSize), n-uint64(len(out)))]...)
	}
	return out, nil
}

// walk translates a guest virtual address through the page tables rooted
// at l4 (a machine frame) like the MMU, returning the machine frame and
// whether the final mapping is writable.
func (f *fakePV) walk(l4, va uint64) (mfn uint64, rw bool, err error) {
	table := l4
	for level, shift := 4, uint(39); level >= 1; level, shift = level-1, shift-9 {
		fr := f.frames[table]
		if fr == nil {
			return 0, false, fmt.Errorf("L%d table mfn %#x missing", level, table)
		}
		e := binary.LittleEndian.Uint64(fr[(va>>shift&511)*8:])
		if e&ptePresent == 0 {
			return 0, false, fmt.Errorf("va %#x: L%d entry not present", va, level)
		}
		table = e >> 12 & (1<<40 - 1)
		rw = e&pteRW != 0
	}
	return table, rw, nil
}

func (f *fakePV) readVirt(l4, va, n uint64) ([]byte, error) {
	var out []byte
	for a := va; a < va+n; {
		m, _, err := f.walk(l4, a)
		if err != nil {
			return nil, err
		}
		off := a & (pageSize - 1)
		k := min(pageSize-off, va+n-a)
		out = append(out, f.frames[m][off:off+k]...)
		a += k
	}
	return out, nil
}

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

// TestBuildPV builds with 2 MiB extents for all RAM, for some of it (Xen
// runs out of them), and for none; and for a kernel that takes its p2m
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
	f := newFakePV()
	f.superLeft = superLeft
	spec, text, initrd := pvSpec(t, testVirtBase+0x1002000, notes...)
	res, err := NewPV(Config{BackendDomid: 0}).Build(context.Background(), f, 5, spec)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if f.nextPFN != 64<<8 {
		t.Errorf("populated %d pages, want %d", f.nextPFN, 64<<8)
	}
	if want := min(superLeft, 64<<20>>21); f.superUsed != want {
		t.Errorf("%d 2 MiB extents used, want %d", f.superUsed, want)
	}
	if len(f.e820) != 1 || f.e820[0].Size != 64<<20 {
		t.Errorf("memory map %+v", f.e820)
	}
	if f.vgc == nil || f.vcpus != 1 {
		t.Fatalf("vCPUs %d, context set %v", f.vcpus, f.vgc != nil)
	}
	regs := f.vgc[520:]
	cr3 := le.Uint64(f.vgc[4984+24:])
	if cr3>>12 != f.pinned || f.pinned == 0 {
		t.Fatalf("cr3 %#x but pinned L4 mfn %#x", cr3, f.pinned)
	}
	if got := le.Uint64(f.vgc[512:]); got != 4|32 {
		t.Errorf("vcpu flags %#x", got)
	}
	if cs, ss := le.Uint16(regs[136:]), le.Uint16(regs[160:]); cs != 0xe033 || ss != 0xe02b {
		t.Errorf("cs %#x ss %#x", cs, ss)
	}
	rip, rsp, rsi := le.Uint64(regs[128:]), le.Uint64(regs[152:]), le.Uint64(regs[104:])
	if rip != testVirtBase+0x1000010 {
		t.Errorf("rip %#x", rip)
	}
	// The entry point maps to the kernel text.
	got, err := f.readVirt(f.pinned, rip, 8)
	if err != nil || !bytes.Equal(got, text[16:24]) {
		t.Errorf("bytes at entry: %q, %v", got, err)
	}
	// The stack below rsp is mapped writable.
	if _, rw, err := f.walk(f.pinned, rsp-8); err != nil || !rw {
		t.Errorf("stack at %#x: rw %v err %v", rsp-8, rw, err)
	}
	// start_info.
	si, err := f.readVirt(f.pinned, rsi, xenctrl.StartInfoSize)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(si, []byte("xen-3.0-x86_64\x00")) {
		t.Errorf("start_info magic %q", si[:32])
	}
	if n := le.Uint64(si[32:]); n != 64<<8 {
		t.Errorf("nr_pages %d", n)
	}
	if sh := le.Uint64(si[40:]); sh != fakeShinfo<<12 {
		t.Errorf("shared_info %#x", sh)
	}
	if m, p := le.Uint64(si[56:]), le.Uint32(si[64:]); m != res.StoreMFN || p != res.StorePort || p == 0 {
		t.Errorf("store mfn %#x port %d, result %+v", m, p, res)
	}
	if m, p := le.Uint64(si[72:]), le.Uint32(si[80:]); m != res.ConsoleMFN || p != res.ConsolePort || p == res.StorePort {
		t.Errorf("console mfn %#x port %d, result %+v", m, p, res)
	}
	if cl := si[128 : 128+len(spec.Cmdline)+1]; string(cl) != spec.Cmdline+"\x00" {
		t.Errorf("cmdline %q", cl)
	}
	// pt_base is the L4 and every table frame is mapped read-only.
	ptBase, nrPT := le.Uint64(si[88:]), le.Uint64(si[96:])
	for i := uint64(0); i < nrPT; i++ {
		m, rw, err := f.walk(f.pinned, ptBase+i*pageSize)
		if err != nil || rw {
			t.Errorf("page table frame %d: rw %v err %v", i, rw, err)
		}
		if i == 0 && m != f.pinned {
			t.Errorf("pt_base maps mfn %#x, L4 is %#x", m, f.pinned)
		}
	}
	// mfn_list is the p2m, consistent with the mappings.
	mfnList := le.Uint64(si[104:])
	p2m, err := f.readVirt(f.pinned, mfnList, 64<<8*8)
	if err != nil {
		t.Fatal(err)
	}
	for pfn := uint64(0); pfn < 64<<8; pfn++ {
		if m := le.Uint64(p2m[pfn*8:]); m != f.assigned[pfn] || m == 0 {
			t.Fatalf("p2m[%#x] = %#x, want %#x", pfn, m, f.assigned[pfn])
		}
	}
	if m, _, _ := f.walk(f.pinned, testVirtBase+0x1000000); m != le.Uint64(p2m[0x1000*8:]) {
		t.Errorf("kernel start maps mfn %#x, p2m says %#x", m, le.Uint64(p2m[0x1000*8:]))
	}
	// The initrd and the bss.
	modStart, modLen, flags := le.Uint64(si[112:]), le.Uint64(si[120:]), le.Uint32(si[48:])
	outside := notes != nil
	if outside != (flags&xenctrl.SIFModStartPFN != 0) {
		t.Errorf("start_info flags %#x: SIF_MOD_START_PFN %v, want %v", flags, !outside, outside)
	}
	if outside {
		got, err = f.readPFN(modStart, modLen)
	} else {
		got, err = f.readVirt(f.pinned, modStart, modLen)
	}
	if err != nil || !bytes.Equal(got, initrd) {
		t.Errorf("initrd at %#x+%d: %v", modStart, modLen, err)
	}
	// Outside the initial mapping: the p2m and its tables in frames after
	// the mapping's last one (Linux unmaps everything below the first of
	// them), apart from the initrd, within the guest.
	firstP2M, nrP2M := le.Uint64(si[1152:]), le.Uint64(si[1160:])
	if outside {
		mapEnd := (le.Uint64(si[88:]) + nrPT*pageSize) >> pageShift // a lower bound: the tables end inside the mapping
		switch {
		case mfnList != 0x8000000000:
			t.Errorf("mfn_list %#x, want the INIT_P2M address", mfnList)
		case firstP2M < mapEnd-testVirtBase>>pageShift || nrP2M < 64<<8*8/pageSize+3:
			t.Errorf("first_p2m_pfn %#x nr_p2m_frames %d", firstP2M, nrP2M)
		case firstP2M+nrP2M > 64<<8:
			t.Errorf("p2m frames [%#x, +%d) past the guest's end", firstP2M, nrP2M)
		case modStart < firstP2M && modStart+(modLen+pageSize-1)/pageSize > firstP2M:
			t.Errorf("initrd frames [%#x, +%d bytes) overlap the p2m at %#x", modStart, modLen, firstP2M)
		}
		if m, _, _ := f.walk(f.pinned, testVirtBase+modStart<<pageShift); m != 0 {
			t.Errorf("the unmapped initrd's frame %#x is mapped at its linear address", modStart)
		}
	} else if firstP2M != 0 || nrP2M != 0 {
		t.Errorf("first_p2m_pfn %#x nr_p2m_frames %d with the p2m inside the mapping", firstP2M, nrP2M)
	}
	bss, err := f.readVirt(f.pinned, testVirtBase+0x1000000+uint64(len(text)), 0x5000)
	if err != nil || !bytes.Equal(bss, make([]byte, 0x5000)) {
		t.Errorf("bss not zeroed: %v", err)
	}
	// Rings cleared; shared info masked; grants seeded; hypercall page.
	for _, m := range []uint64{res.StoreMFN, res.ConsoleMFN} {
		if !bytes.Equal(f.frames[m], make([]byte, pageSize)) {
			t.Errorf("ring page mfn %#x not cleared", m)
		}
	}
	sh := f.frames[fakeShinfo]
	if sh[1] != 1 || sh[31*64+1] != 1 || sh[0] != 0 || sh[32*64+1] != 0 {
		t.Errorf("shared info not initialised: % x", sh[:4])
	}
	g := f.frames[fakeGnttab]
	if le.Uint16(g[0:]) != 1 || uint64(le.Uint32(g[4:])) != res.ConsoleMFN || le.Uint16(g[8:]) != 1 || uint64(le.Uint32(g[12:])) != res.StoreMFN {
		t.Errorf("grant entries % x", g[:16])
	}
	if hp, _, _ := f.walk(f.pinned, testVirtBase+0x1002000); f.hcPage != hp || hp == 0 {
		t.Errorf("hypercall page mfn %#x, want %#x", f.hcPage, hp)
	}
}

func TestPlanPV(t *testing.T) {
	spec, _, _ := pvSpec(t, 0)
	img, release, err := kernel.OpenFile(spec.Kernel, kernel.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	l, err := planPV(img, 120000, "", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(l)
	if l.KernelPFN != 0x1000 || l.MapEnd%pvMapAlign != 0 || l.MapEnd < l.virt(l.StackPFN+1)+pvPadding {
		t.Errorf("layout %v", l)
	}
	if l.NrL3 != 1 || l.NrL2 != 1 || l.NrL1 != (l.MapEnd-l.VirtBase)>>21 {
		t.Errorf("tables L3 %d L2 %d L1 %d for %#x..%#x", l.NrL3, l.NrL2, l.NrL1, l.VirtBase, l.MapEnd)
	}
	// Too little memory for the initial mapping.
	if _, err := planPV(img, 120000, "", 16<<20); !isInvalid(err, "spec.memory_dynamic_max") {
		t.Errorf("16 MiB: %v", err)
	}
	if _, err := planPV(img, 0, strings.Repeat("x", 1024), 64<<20); !isInvalid(err, "spec.cmdline") {
		t.Errorf("long cmdline: %v", err)
	}
}

func TestTablesFor(t *testing.T) {
	for _, c := range []struct{ start, end, l3, l2, l1 uint64 }{
		{testVirtBase, testVirtBase + 4<<20, 1, 1, 2},
		{testVirtBase, testVirtBase + 1<<30 + 2<<20, 1, 2, 513},
		{0, 1 << 39, 1, 512, 512 * 512},
		{1<<39 - 2<<20, 1<<39 + 2<<20, 2, 2, 2},
	} {
		l3, l2, l1 := tablesFor(c.start, c.end)
		if l3 != c.l3 || l2 != c.l2 || l1 != c.l1 {
			t.Errorf("[%#x,%#x): %d %d %d, want %d %d %d", c.start, c.end, l3, l2, l1, c.l3, c.l2, c.l1)
		}
	}
	for _, c := range []struct {
		start, end uint64
		ok         bool
	}{
		{testVirtBase, testVirtBase + 64<<20, true},
		{0, 64 << 20, true},
		{canonLowEnd - 4096, canonLowEnd + 4096, false},
		{xenReservedLo, xenReservedLo + 4096, false},
		{xenReservedHi, xenReservedHi + 4096, true},
	} {
		if err := checkVirtRange(c.start, c.end); (err == nil) != c.ok {
			t.Errorf("checkVirtRange(%#x, %#x) = %v", c.start, c.end, err)
		}
	}
}

func isInvalid(err error, field string) bool {
	var de *domain.Error
	return errors.As(err, &de) && de.Code == domain.CodeInvalidArgument && strings.Contains(err.Error(), field)
}

func TestBuildPVRejects(t *testing.T) {
	ctx := context.Background()
	good, _, _ := pvSpec(t, 0)
	text := bytes.Repeat([]byte{0x90}, 64)
	cases := map[string]struct {
		mut   func(*domain.Spec)
		field string
	}{
		"type":         {func(s *domain.Spec) { s.Type = domain.TypePVH }, "spec.type"},
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
			f := newFakePV()
			s := good
			c.mut(&s)
			_, err := NewPV(Config{}).Build(ctx, f, 3, s)
			if !isInvalid(err, c.field) {
				t.Fatalf("got %v, want InvalidArgument on %s", err, c.field)
			}
			if f.vgc != nil || f.pinned != 0 {
				t.Errorf("vCPU context or pin happened despite the error")
			}
		})
	}
}

func TestBuildPVPopulateFailure(t *testing.T) {
	spec, _, _ := pvSpec(t, 0)
	for _, c := range []struct {
		errno     syscall.Errno
		exhausted bool
	}{{syscall.ENOMEM, true}, {syscall.EIO, false}} {
		t.Run(c.errno.Error(), func(t *testing.T) {
			f := newFakePV()
			_, err := NewPV(Config{}).Build(context.Background(), &limitedPV{fakePV: f, limitPages: 1000, errno: c.errno}, 3, spec)
			if err == nil {
				t.Fatal("build succeeded past a failed populate")
			}
			var de *domain.Error
			if exhausted := errors.As(err, &de) && de.Code == domain.CodeResourceExhausted; exhausted != c.exhausted {
				t.Errorf("got %v: ResourceExhausted = %v, want %v", err, exhausted, c.exhausted)
			}
			if !c.exhausted && !errors.Is(err, c.errno) {
				t.Errorf("got %v, want it to wrap %v", err, c.errno)
			}
			if f.vgc != nil {
				t.Error("vCPU context set after a failed populate")
			}
		})
	}
}

// limitedPV fails populating with errno (out of host memory, say) after
// limitPages.
type limitedPV struct {
	*fakePV
	limitPages uint64
	errno      syscall.Errno
}

func (l *limitedPV) PopulatePhysmapAt(ctx context.Context, d xenctrl.Domid, order uint32, gpfns []uint64) (int, error) {
	if l.nextPFN+uint64(len(gpfns))<<order > l.limitPages {
		n := int((l.limitPages - l.nextPFN) >> order)
		k, _ := l.fakePV.PopulatePhysmapAt(ctx, d, order, gpfns[:n])
		return k, &xenctrl.Error{Op: "populate", Errno: l.errno}
	}
	return l.fakePV.PopulatePhysmapAt(ctx, d, order, gpfns)
}

func TestEncodeStartInfoAndVCPU(t *testing.T) {
	b := make([]byte, pageSize)
	if err := xenctrl.EncodeStartInfo(b, xenctrl.StartInfo{Cmdline: strings.Repeat("x", 1024)}); err == nil {
		t.Error("1024-byte command line accepted")
	}
	if _, err := xenctrl.EncodePVVCPUContext(xenctrl.PVBootVCPU{Entry: 0x0000900000000000, L4MFN: 1}); err == nil {
		t.Error("non-canonical entry accepted")
	}
	if _, err := xenctrl.EncodePVVCPUContext(xenctrl.PVBootVCPU{Entry: testVirtBase}); err == nil {
		t.Error("L4 frame 0 accepted")
	}
}

func TestByTypeDispatch(t *testing.T) {
	spec, _, _ := pvSpec(t, 0)
	f := newFakePV()
	if _, err := NewByType(Config{}).Build(context.Background(), f, 2, spec); err != nil {
		t.Fatalf("PV through ByType: %v", err)
	}
	if f.vgc == nil {
		t.Error("PV spec did not reach the PV builder")
	}
	spec.Type = domain.TypePVH
	if _, err := NewByType(Config{}).Build(context.Background(), newFakePV(), 2, spec); err == nil {
		t.Error("PVH spec on a PV-only fake succeeded")
	}
}

func TestP2MOutside(t *testing.T) {
	const pages = 128 // a 256 MiB guest's p2m
	for _, c := range []struct {
		name string
		at   uint64
		want bool
	}{
		{"linux", 0x8000000000, true},
		{"unaligned", 0x8000000800, false},
		{"above virt_base", testVirtBase + 0x40000000, false},
		{"in the kernel's L4 slot", testVirtBase - 0x40000000, false},
		{"in Xen's range", 0xffff800000000000, false},
		{"non-canonical", 0x0000800000000000 - 0x1000, false},
	} {
		got := p2mOutside(c.at, pages, testVirtBase)
		if (got != nil) != c.want {
			t.Errorf("%s (%#x): outside = %v, want %v", c.name, c.at, got != nil, c.want)
		}
		if got != nil && (got.NrL3 != 1 || got.NrL2 != 1 || got.NrL1 != 1 || got.To != c.at+pages*pageSize) {
			t.Errorf("%s: tables %+v", c.name, got)
		}
	}
}
