package builder

import (
	"encoding/binary"
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// x86_64 page table entry bits, as libxenguest uses them for the initial
// mapping of a PV guest.
const (
	ptePresent  = 0x001
	pteRW       = 0x002
	pteUser     = 0x004
	pteAccessed = 0x020
	pteDirty    = 0x040

	l1Prot   = ptePresent | pteRW | pteAccessed
	upperPTE = ptePresent | pteRW | pteAccessed | pteDirty | pteUser

	pteEntries = 512
	// pvPadding is the slack the PV boot protocol promises past the boot
	// stack inside the initial mapping (512 KiB), and pvMapAlign the
	// alignment of the mapping's end (4 MiB), as libxenguest.
	pvPadding  = 512 << 10
	pvMapAlign = 4 << 20

	// Xen owns L4 slots 256-271 of every 64-bit PV address space.
	xenReservedLo = 0xffff800000000000
	xenReservedHi = 0xffff880000000000
	canonLowEnd   = 0x0000800000000000
)

// pvLayout is where everything goes in a PV guest: guest frames (pfns)
// counted from the start of the initial mapping at VirtBase, which maps
// pfn p at VirtBase + p*4096.
//
// A kernel that names XEN_ELFNOTE_INIT_P2M gets its p2m array outside
// that mapping, at the address the note gives and in frames after the
// mapping's end, with page tables of its own; one that names
// XEN_ELFNOTE_MOD_START_PFN gets its initrd there too, found by frame
// number. That is what libxenguest does for Linux, and it matters: Linux
// unmaps everything in the initial mapping past its own image up to the
// first p2m frame, so a p2m inside the mapping leaves the mapping's last
// 2 MiB writable and executable for the guest's lifetime.
type pvLayout struct {
	NrPages     uint64
	VirtBase    uint64
	PaddrOffset uint64 // ELF p_paddr - PaddrOffset = offset from VirtBase
	Entry       uint64 // virtual

	KernelPFN, KernelEnd uint64 // [KernelPFN, KernelEnd) in pfns
	InitrdPFN, InitrdLen uint64 // InitrdLen bytes, 0 when none
	InitrdUnmapped       bool   // past MapEnd, start_info.mod_start is its pfn
	P2MPFN, P2MPages     uint64
	P2MVirt              uint64    // where the guest sees the p2m (start_info.mfn_list)
	P2M                  *pvTables // the p2m's own tables when it is outside the mapping
	StartInfoPFN         uint64
	StorePFN, ConsolePFN uint64
	PTPFN                uint64 // L4 first, then the L3, L2 and L1 tables
	NrL3, NrL2, NrL1     uint64
	StackPFN             uint64
	MapEnd               uint64 // virtual end (exclusive) of the initial mapping
}

// pvTables are the L3, L2 and L1 tables mapping one more virtual range
// [From, To) linearly onto guest frames from PFN, in frames from TablePFN
// on (L3s, then L2s, then L1s). The range has L4 slots of its own.
type pvTables struct {
	From, To         uint64
	PFN, TablePFN    uint64
	NrL3, NrL2, NrL1 uint64
}

func (t *pvTables) pages() uint64 {
	if t == nil {
		return 0
	}
	return t.NrL3 + t.NrL2 + t.NrL1
}

// P2MFrames is start_info.nr_p2m_frames: the p2m and its tables, when the
// p2m is outside the initial mapping.
func (l *pvLayout) P2MFrames() uint64 { return l.P2MPages + l.P2M.pages() }

// PTPages is how many page-table frames the initial mapping needs.
func (l *pvLayout) PTPages() uint64 { return 1 + l.NrL3 + l.NrL2 + l.NrL1 }

// virt is the guest virtual address of pfn in the initial mapping.
func (l *pvLayout) virt(pfn uint64) uint64 { return l.VirtBase + pfn<<pageShift }

// tablesFor counts the L3, L2 and L1 tables mapping [start, end).
func tablesFor(start, end uint64) (l3, l2, l1 uint64) {
	n := func(shift uint) uint64 { return (end-1)>>shift - start>>shift + 1 }
	return n(39), n(30), n(21)
}

// planPV lays out a 64-bit PV guest with memBytes of RAM the way
// libxenguest's xc_dom_build_image does: kernel at its ELF physical
// addresses relative to VirtBase, then the initrd, the p2m array, start
// info, xenstore and console pages, the page tables and a boot stack, all
// inside one initial mapping that ends 4 MiB aligned at least 512 KiB past
// the stack. Every address is checked against the guest's size.
func planPV(img *kernel.Image, initrdSize uint64, cmdline string, memBytes uint64) (*pvLayout, error) {
	n := &img.Notes
	if len(cmdline) >= xenctrl.MaxGuestCmdline {
		return nil, domain.InvalidField("spec.cmdline", "is %d bytes, at most %d allowed for PV guests", len(cmdline), xenctrl.MaxGuestCmdline-1)
	}
	if memBytes%pageSize != 0 || memBytes == 0 {
		return nil, domain.InvalidField("spec.memory_dynamic_max", "%d bytes is not a positive multiple of the page size", memBytes)
	}
	l, err := pvKernel(img, memBytes>>pageShift)
	if err != nil {
		return nil, err
	}
	next := l.KernelEnd
	take := func(bytes uint64) uint64 {
		p := next
		next += alignUp(bytes) >> pageShift
		return p
	}
	l.InitrdUnmapped = n.HasModStartPFN && n.ModStartPFN != 0
	if initrdSize > 0 && !l.InitrdUnmapped {
		l.InitrdPFN, l.InitrdLen = take(initrdSize), initrdSize
	}
	l.P2MPages = alignUp(l.NrPages*8) >> pageShift
	var p2m *pvTables
	if n.HasInitP2M {
		p2m = p2mOutside(n.InitP2M, l.P2MPages, l.VirtBase)
	}
	if p2m == nil {
		l.P2MPFN = take(l.P2MPages << pageShift)
		l.P2MVirt = l.virt(l.P2MPFN)
	}
	l.StartInfoPFN = take(pageSize)
	l.StorePFN = take(pageSize)
	l.ConsolePFN = take(pageSize)
	if err := l.sizeMapping(l.virt(next)); err != nil {
		return nil, err
	}
	l.PTPFN = take(l.PTPages() << pageShift)
	l.StackPFN = take(pageSize)

	// Past the mapping: the unmapped initrd, then the p2m and its tables.
	next = (l.MapEnd - l.VirtBase) >> pageShift
	if initrdSize > 0 && l.InitrdUnmapped {
		l.InitrdPFN, l.InitrdLen = take(initrdSize), initrdSize
	}
	if p2m != nil {
		l.P2MPFN = take(l.P2MPages << pageShift)
		l.P2MVirt = p2m.From
		p2m.PFN = l.P2MPFN
		p2m.TablePFN = take(p2m.pages() << pageShift)
		l.P2M = p2m
	}
	if next > l.NrPages {
		return nil, domain.InvalidField("spec.memory_dynamic_max", "%d MiB is too small: the kernel, initrd (%d bytes) and boot structures need %d MiB",
			memBytes>>20, initrdSize, next*pageSize>>20)
	}
	return l, nil
}

// pvKernel starts a layout of nrPages from what the kernel's notes and
// segments say: where it is linked (virt_base, paddr_offset), the frames
// it occupies and its entry point.
func pvKernel(img *kernel.Image, nrPages uint64) (*pvLayout, error) {
	if img.Class != kernel.ELF64 {
		// Only an ELF32 with a PVH entry gets here (package kernel
		// refuses the others).
		return nil, domain.InvalidField("spec.kernel", "elf header e_ident[EI_CLASS] is %v: a 32-bit kernel cannot boot as PV, PV guests are 64-bit (ELF64 x86_64) only; this one has a PVH entry, boot it with spec.type PVH", img.Class)
	}
	n := &img.Notes
	if n.Count == 0 || n.XenVersion != "xen-3.0" {
		return nil, domain.InvalidField("spec.kernel", "not a Xen PV kernel: XEN_ELFNOTE_XEN_VERSION is %q, want \"xen-3.0\"", n.XenVersion)
	}
	if len(img.Segments) == 0 {
		return nil, domain.InvalidField("spec.kernel", "no loadable segments")
	}
	l := &pvLayout{NrPages: nrPages}
	// libxenguest's defaults (elf_xen_addr_calc_check): virt_base 0,
	// paddr_offset = virt_base.
	if n.HasVirtBase {
		l.VirtBase = n.VirtBase
	}
	l.PaddrOffset = l.VirtBase
	if n.HasPaddrOffset {
		l.PaddrOffset = n.PaddrOffset
	}
	if l.VirtBase%pageSize != 0 {
		return nil, domain.InvalidField("spec.kernel", "XEN_ELFNOTE_VIRT_BASE %#x is not page aligned", l.VirtBase)
	}
	if img.PhysStart < l.PaddrOffset {
		return nil, domain.InvalidField("spec.kernel", "segments start at physical %#x, below XEN_ELFNOTE_PADDR_OFFSET %#x", img.PhysStart, l.PaddrOffset)
	}
	l.KernelPFN = (img.PhysStart - l.PaddrOffset) >> pageShift
	l.KernelEnd = alignUp(img.PhysEnd-l.PaddrOffset) >> pageShift
	l.Entry = img.Entry
	if n.HasEntry {
		l.Entry = n.Entry
	}
	if !entryExecutable(img, l) {
		return nil, domain.InvalidField("spec.kernel", "entry point %#x is not inside an executable segment's file data", l.Entry)
	}
	return l, nil
}

// sizeMapping sizes the page tables and the end of the initial mapping,
// which must also cover the tables, the boot stack and the padding from
// allocEnd on (libxenguest's alloc_pgtables_pv).
func (l *pvLayout) sizeMapping(allocEnd uint64) error {
	extra := uint64(1) + pvPadding/pageSize
	pages := extra
	var end uint64
	for range 16 { // converges in 2 or 3 rounds
		end = (allocEnd + pages*pageSize + pvMapAlign - 1) &^ (pvMapAlign - 1)
		if end <= l.VirtBase {
			return domain.InvalidField("spec.kernel", "initial mapping from %#x wraps the address space", l.VirtBase)
		}
		l.NrL3, l.NrL2, l.NrL1 = tablesFor(l.VirtBase, end)
		pages = l.PTPages() + extra
		if allocEnd+pages*pageSize <= end {
			break
		}
	}
	if allocEnd+pages*pageSize > end {
		return fmt.Errorf("builder: page table sizing did not converge (mapping ends %#x)", end)
	}
	l.MapEnd = end
	if err := checkVirtRange(l.VirtBase, l.MapEnd); err != nil {
		return domain.InvalidField("spec.kernel", "kernel at [%#x, %#x): %v", l.virt(l.KernelPFN), l.virt(l.KernelEnd), err)
	}
	return nil
}

// p2mOutside sizes the tables for a p2m of p2mPages at the virtual address
// a kernel's XEN_ELFNOTE_INIT_P2M asks for, or returns nil when the p2m
// goes inside the initial mapping instead: like libxenguest, only for an
// aligned address below virtBase, and (our own rule, which keeps the two
// sets of tables apart) in L4 slots the initial mapping does not use.
func p2mOutside(at, p2mPages, virtBase uint64) *pvTables {
	end := at + p2mPages<<pageShift
	if at%pageSize != 0 || at >= virtBase || end < at || (end-1)>>39 >= virtBase>>39 || checkVirtRange(at, end) != nil {
		return nil
	}
	t := &pvTables{From: at, To: end}
	t.NrL3, t.NrL2, t.NrL1 = tablesFor(at, end)
	return t
}

// entryExecutable reports whether the virtual entry point lies in the file
// data of an executable segment.
func entryExecutable(img *kernel.Image, l *pvLayout) bool {
	for _, s := range img.Segments {
		v := l.virt(0) + (s.PAddr - l.PaddrOffset)
		if s.Flags&1 != 0 && l.Entry >= v && l.Entry-v < uint64(len(s.Data)) {
			return true
		}
	}
	return false
}

// checkVirtRange refuses mappings that are not canonical or touch the
// range Xen reserves for itself in every 64-bit PV address space.
func checkVirtRange(start, end uint64) error {
	last := end - 1
	switch {
	case end <= start:
		return fmt.Errorf("empty or wrapping range")
	case start < canonLowEnd && last >= canonLowEnd:
		return fmt.Errorf("crosses the non-canonical hole")
	case start >= canonLowEnd && start < xenReservedLo:
		return fmt.Errorf("starts in the non-canonical hole")
	case start < xenReservedHi && last >= xenReservedLo:
		return fmt.Errorf("overlaps Xen's reserved range [%#x, %#x)", uint64(xenReservedLo), uint64(xenReservedHi))
	}
	return nil
}

// pageTables renders the initial page tables mapping [VirtBase, MapEnd)
// onto the guest frames in p2m: PTPages frames from PTPFN, L4 first, and
// (for a p2m outside that mapping) l.P2M.pages() frames from
// l.P2M.TablePFN, returned as p2mTables. The frames of the tables are
// never mapped writable, as Xen requires.
func (l *pvLayout) pageTables(p2m []uint64) (pt, p2mTables []byte, err error) {
	if uint64(len(p2m)) < (l.MapEnd-l.VirtBase)>>pageShift {
		return nil, nil, fmt.Errorf("builder: p2m has %d entries, the initial mapping needs %d", len(p2m), (l.MapEnd-l.VirtBase)>>pageShift)
	}
	pt = make([]byte, l.PTPages()<<pageShift)
	l4 := pt[:pageSize]
	ptEnd := l.PTPFN + l.PTPages()
	initial := pvTables{From: l.VirtBase, To: l.MapEnd, TablePFN: l.PTPFN + 1, NrL3: l.NrL3, NrL2: l.NrL2, NrL1: l.NrL1}
	initial.fill(l4, pt[pageSize:], p2m, func(pfn uint64) bool { return pfn >= l.PTPFN && pfn < ptEnd })
	if l.P2M != nil {
		if l.P2M.TablePFN+l.P2M.pages() > uint64(len(p2m)) {
			return nil, nil, fmt.Errorf("builder: p2m tables end at frame %#x, past the guest's %d pages", l.P2M.TablePFN+l.P2M.pages(), len(p2m))
		}
		p2mTables = make([]byte, l.P2M.pages()<<pageShift)
		l.P2M.fill(l4, p2mTables, p2m, func(uint64) bool { return false })
	}
	return pt, p2mTables, nil
}

// fill writes t's L3, L2 and L1 tables into tables (t.pages() frames) and
// points the L4 at them. readOnly says which guest frames to map without
// write access.
func (t *pvTables) fill(l4, tables []byte, p2m []uint64, readOnly func(pfn uint64) bool) {
	le := binary.LittleEndian
	l3Base := t.TablePFN
	l2Base := l3Base + t.NrL3
	l1Base := l2Base + t.NrL2
	put := func(table, idx, v uint64) { // table: pfn of one of t's frames
		le.PutUint64(tables[(table-t.TablePFN)<<pageShift+idx*8:], v)
	}
	b := t.From
	for va := t.From; va < t.To; va += pageSize {
		pfn := t.PFN + (va-b)>>pageShift
		t3 := l3Base + (va>>39 - b>>39)
		t2 := l2Base + (va>>30 - b>>30)
		t1 := l1Base + (va>>21 - b>>21)
		le.PutUint64(l4[(va>>39&(pteEntries-1))*8:], p2m[t3]<<pageShift|upperPTE)
		put(t3, va>>30&(pteEntries-1), p2m[t2]<<pageShift|upperPTE)
		put(t2, va>>21&(pteEntries-1), p2m[t1]<<pageShift|upperPTE)
		prot := uint64(l1Prot)
		if readOnly(pfn) {
			prot &^= pteRW
		}
		put(t1, va>>12&(pteEntries-1), p2m[pfn]<<pageShift|prot)
	}
}

func (l *pvLayout) String() string {
	return fmt.Sprintf("pages %d virt_base %#x kernel pfn [%#x,%#x) initrd pfn %#x+%#x (unmapped %v) p2m pfn %#x (%d, +%d tables) at %#x start_info %#x store %#x console %#x pt %#x (%d) stack %#x map_end %#x entry %#x",
		l.NrPages, l.VirtBase, l.KernelPFN, l.KernelEnd, l.InitrdPFN, l.InitrdLen, l.InitrdUnmapped, l.P2MPFN, l.P2MPages, l.P2M.pages(), l.P2MVirt,
		l.StartInfoPFN, l.StorePFN, l.ConsolePFN, l.PTPFN, l.PTPages(), l.StackPFN, l.MapEnd, l.Entry)
}
