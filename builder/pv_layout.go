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
type pvLayout struct {
	NrPages     uint64
	VirtBase    uint64
	PaddrOffset uint64 // ELF p_paddr - PaddrOffset = offset from VirtBase
	Entry       uint64 // virtual

	KernelPFN, KernelEnd uint64 // [KernelPFN, KernelEnd) in pfns
	InitrdPFN, InitrdLen uint64 // InitrdLen bytes, 0 when none
	P2MPFN, P2MPages     uint64
	StartInfoPFN         uint64
	StorePFN, ConsolePFN uint64
	PTPFN                uint64 // L4 first, then the L3, L2 and L1 tables
	NrL3, NrL2, NrL1     uint64
	StackPFN             uint64
	MapEnd               uint64 // virtual end (exclusive) of the initial mapping
}

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
	if n.Count == 0 || n.XenVersion != "xen-3.0" {
		return nil, domain.InvalidField("spec.kernel", "not a Xen PV kernel: XEN_ELFNOTE_XEN_VERSION is %q, want \"xen-3.0\"", n.XenVersion)
	}
	if len(cmdline) >= xenctrl.MaxGuestCmdline {
		return nil, domain.InvalidField("spec.cmdline", "is %d bytes, at most %d allowed for PV guests", len(cmdline), xenctrl.MaxGuestCmdline-1)
	}
	if memBytes%pageSize != 0 || memBytes == 0 {
		return nil, domain.InvalidField("spec.memory_dynamic_max", "%d bytes is not a positive multiple of the page size", memBytes)
	}
	if len(img.Segments) == 0 {
		return nil, domain.InvalidField("spec.kernel", "no loadable segments")
	}
	l := &pvLayout{NrPages: memBytes >> pageShift}
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
	kvStart, kvEnd := l.virt(l.KernelPFN), l.virt(l.KernelEnd)

	l.Entry = img.Entry
	if n.HasEntry {
		l.Entry = n.Entry
	}
	if !entryExecutable(img, l) {
		return nil, domain.InvalidField("spec.kernel", "entry point %#x is not inside an executable segment's file data", l.Entry)
	}

	next := l.KernelEnd
	take := func(bytes uint64) uint64 {
		p := next
		next += alignUp(bytes) >> pageShift
		return p
	}
	if initrdSize > 0 {
		l.InitrdPFN, l.InitrdLen = take(initrdSize), initrdSize
	}
	l.P2MPages = alignUp(l.NrPages*8) >> pageShift
	l.P2MPFN = take(l.P2MPages << pageShift)
	l.StartInfoPFN = take(pageSize)
	l.StorePFN = take(pageSize)
	l.ConsolePFN = take(pageSize)

	// Size the page tables for a mapping that must also cover them, the
	// boot stack and the padding (libxenguest's alloc_pgtables_pv).
	allocEnd := l.virt(next)
	extra := uint64(1) + pvPadding/pageSize
	pages := extra
	var end uint64
	for range 16 { // converges in 2 or 3 rounds
		end = (allocEnd + pages*pageSize + pvMapAlign - 1) &^ (pvMapAlign - 1)
		if end <= l.VirtBase {
			return nil, domain.InvalidField("spec.kernel", "initial mapping from %#x wraps the address space", l.VirtBase)
		}
		l.NrL3, l.NrL2, l.NrL1 = tablesFor(l.VirtBase, end)
		pages = l.PTPages() + extra
		if allocEnd+pages*pageSize <= end {
			break
		}
	}
	if allocEnd+pages*pageSize > end {
		return nil, fmt.Errorf("builder: page table sizing did not converge (mapping ends %#x)", end)
	}
	l.PTPFN = take(l.PTPages() << pageShift)
	l.StackPFN = take(pageSize)
	l.MapEnd = end
	if err := checkVirtRange(l.VirtBase, l.MapEnd); err != nil {
		return nil, domain.InvalidField("spec.kernel", "kernel at [%#x, %#x): %v", kvStart, kvEnd, err)
	}
	if mapped := (l.MapEnd - l.VirtBase) >> pageShift; mapped > l.NrPages {
		return nil, domain.InvalidField("spec.memory_dynamic_max", "%d MiB is too small: the kernel, initrd (%d bytes) and boot structures need an initial mapping of %d MiB",
			memBytes>>20, initrdSize, mapped*pageSize>>20)
	}
	return l, nil
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

// pageTables renders the initial page tables (PTPages frames, L4 first)
// mapping [VirtBase, MapEnd) onto the guest frames in p2m. The frames of
// the tables themselves are mapped read-only, as Xen requires.
func (l *pvLayout) pageTables(p2m []uint64) ([]byte, error) {
	if uint64(len(p2m)) < (l.MapEnd-l.VirtBase)>>pageShift {
		return nil, fmt.Errorf("builder: p2m has %d entries, the initial mapping needs %d", len(p2m), (l.MapEnd-l.VirtBase)>>pageShift)
	}
	pt := make([]byte, l.PTPages()<<pageShift)
	le := binary.LittleEndian
	l3Base := l.PTPFN + 1
	l2Base := l3Base + l.NrL3
	l1Base := l2Base + l.NrL2
	ptEnd := l.PTPFN + l.PTPages()
	put := func(table, idx, v uint64) { // table: pfn of a table frame
		le.PutUint64(pt[(table-l.PTPFN)<<pageShift+idx*8:], v)
	}
	b := l.VirtBase
	for va := l.VirtBase; va < l.MapEnd; va += pageSize {
		pfn := (va - b) >> pageShift
		t3 := l3Base + (va>>39 - b>>39)
		t2 := l2Base + (va>>30 - b>>30)
		t1 := l1Base + (va>>21 - b>>21)
		put(l.PTPFN, va>>39&(pteEntries-1), p2m[t3]<<pageShift|upperPTE)
		put(t3, va>>30&(pteEntries-1), p2m[t2]<<pageShift|upperPTE)
		put(t2, va>>21&(pteEntries-1), p2m[t1]<<pageShift|upperPTE)
		prot := uint64(l1Prot)
		if pfn >= l.PTPFN && pfn < ptEnd {
			prot &^= pteRW
		}
		put(t1, va>>12&(pteEntries-1), p2m[pfn]<<pageShift|prot)
	}
	return pt, nil
}

func (l *pvLayout) String() string {
	return fmt.Sprintf("pages %d virt_base %#x kernel pfn [%#x,%#x) initrd pfn %#x+%#x p2m pfn %#x (%d) start_info %#x store %#x console %#x pt %#x (%d) stack %#x map_end %#x entry %#x",
		l.NrPages, l.VirtBase, l.KernelPFN, l.KernelEnd, l.InitrdPFN, l.InitrdLen, l.P2MPFN, l.P2MPages,
		l.StartInfoPFN, l.StorePFN, l.ConsolePFN, l.PTPFN, l.PTPages(), l.StackPFN, l.MapEnd, l.Entry)
}
