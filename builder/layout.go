package builder

import (
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

const (
	pageSize  = xenctrl.PageSize
	pageShift = 12

	// Special pages, as libxenguest places them for HVM/PVH guests:
	// X86_HVM_END_SPECIAL_REGION (0xff000) minus 8 pages, xenstore at +4,
	// console at +7.
	specialEnd     = 0xff000
	specialBase    = specialEnd - 8
	storePFN       = specialBase + 4
	consolePFN     = specialBase + 7
	grantScratchPF = specialEnd // where the grant table frame is mapped briefly

	// lowMemEnd is where a PVH guest's RAM below 4 GiB ends: libxl's
	// default MMIO hole [0xF0000000, 4 GiB) holds the ACPI tables, the
	// special pages and the LAPIC. RAM beyond it continues at 4 GiB.
	lowMemEnd  = 0xF0000000
	highMemGPA = 1 << 32
	// maxGuestRAM bounds a PVH guest's RAM: Xen 4.17 supports HVM guests up
	// to 16 TiB.
	maxGuestRAM = 16 << 40

	// maxCmdline is x86 COMMAND_LINE_SIZE, including the NUL.
	maxCmdline = 2048

	// startInfo page layout: hvm_start_info @0, one module @64, memory
	// map @128 (up to 5 entries), command line @256.
	siModlistOff = 64
	siMemmapOff  = 128
	siCmdlineOff = 256
	maxMemmap    = 5
)

// pvhLayout is where everything goes in a PVH guest's physical memory.
type pvhLayout struct {
	MemBytes      uint64 // RAM in all
	LowEnd        uint64 // RAM is [0, LowEnd)
	HighEnd       uint64 // and, above lowMemEnd's worth, [4 GiB, HighEnd)
	KernelStart   uint64
	KernelEnd     uint64
	InitrdAddr    uint64 // 0 when there is no initrd
	InitrdSize    uint64
	StartInfoAddr uint64
	StartInfoSize uint64
	Entry         uint32
	E820          []xenctrl.E820Entry
	// LegacyRSDP: also copy the RSDP below 1 MiB (the kernel does not
	// declare XENFEAT_linux_rsdp_unrestricted).
	LegacyRSDP bool
}

// xenfeatLinuxRSDPUnrestricted is XENFEAT_linux_rsdp_unrestricted: the
// kernel takes the RSDP from hvm_start_info wherever it is.
const xenfeatLinuxRSDPUnrestricted = 15

// planPVH lays out a PVH guest with memBytes of RAM, checking that
// everything the kernel image asks for fits in it.
func planPVH(img *kernel.Image, initrdSize uint64, cmdline string, memBytes uint64) (*pvhLayout, error) {
	if err := img.CheckPVH(); err != nil {
		return nil, domain.InvalidField("spec.kernel", "%v", err)
	}
	if len(cmdline)+1 > maxCmdline {
		return nil, domain.InvalidField("spec.cmdline", "is %d bytes, at most %d allowed", len(cmdline), maxCmdline-1)
	}
	if memBytes%pageSize != 0 {
		return nil, domain.InvalidField("spec.memory_dynamic_max", "%d bytes is not a multiple of the page size", memBytes)
	}
	if memBytes > maxGuestRAM {
		return nil, domain.InvalidField("spec.memory_dynamic_max", "%d MiB: a PVH guest can have at most %d MiB", memBytes>>20, uint64(maxGuestRAM)>>20)
	}
	l := &pvhLayout{
		MemBytes:    memBytes,
		LowEnd:      min(memBytes, lowMemEnd),
		KernelStart: img.PhysStart,
		KernelEnd:   img.PhysEnd,
		Entry:       img.Notes.Phys32Entry,
		LegacyRSDP:  !img.Notes.HasSupportedFeatures || img.Notes.SupportedFeatures&(1<<xenfeatLinuxRSDPUnrestricted) == 0,
	}
	if l.LegacyRSDP && img.PhysStart < acpiLegacyPtr+64 {
		return nil, domain.InvalidField("spec.kernel", "loads at %#x, over the legacy RSDP location %#x its notes ask for", img.PhysStart, acpiLegacyPtr)
	}
	if memBytes > lowMemEnd {
		l.HighEnd = highMemGPA + memBytes - lowMemEnd
	}
	if img.PhysEnd > l.LowEnd {
		return nil, domain.InvalidField("spec.memory_dynamic_max", "%d MiB is too small: the kernel loads at [%#x, %#x)", memBytes>>20, img.PhysStart, img.PhysEnd)
	}
	next := alignUp(img.PhysEnd)
	if initrdSize > 0 {
		l.InitrdAddr, l.InitrdSize = next, initrdSize
		next = alignUp(next + initrdSize)
	}
	l.StartInfoAddr = next
	l.StartInfoSize = alignUp(siCmdlineOff + uint64(len(cmdline)) + 1)
	end := l.StartInfoAddr + l.StartInfoSize
	if end > l.LowEnd || end < l.StartInfoAddr {
		return nil, domain.InvalidField("spec.memory_dynamic_max", "%d MiB is too small for the kernel, the initrd (%d bytes) and the start info (they end at %#x)", memBytes>>20, initrdSize, end)
	}
	l.E820 = []xenctrl.E820Entry{
		{Addr: 0, Size: l.LowEnd, Type: xenctrl.E820RAM},
		{Addr: acpiBase, Size: pageSize, Type: xenctrl.E820NVS},
		{Addr: specialBase << pageShift, Size: (specialEnd - specialBase) << pageShift, Type: xenctrl.E820Reserved},
	}
	if l.HighEnd != 0 {
		l.E820 = append(l.E820, xenctrl.E820Entry{Addr: highMemGPA, Size: l.HighEnd - highMemGPA, Type: xenctrl.E820RAM})
	}
	return l, nil
}

// startInfo renders the start info pages: hvm_start_info, the module list,
// the memory map and the command line, at l.StartInfoAddr.
func (l *pvhLayout) startInfo(cmdline string) []byte {
	b := make([]byte, l.StartInfoSize)
	si := xenctrl.HVMStartInfo{
		CmdlinePaddr: l.StartInfoAddr + siCmdlineOff,
		MemmapPaddr:  l.StartInfoAddr + siMemmapOff,
		MemmapCount:  uint32(len(l.E820)),
		RSDPPaddr:    acpiBase + rsdpOff,
	}
	if l.InitrdSize > 0 {
		si.NrModules = 1
		si.ModlistPaddr = l.StartInfoAddr + siModlistOff
		xenctrl.EncodeHVMModule(b[siModlistOff:], xenctrl.HVMModule{Paddr: l.InitrdAddr, Size: l.InitrdSize})
	}
	xenctrl.EncodeHVMStartInfo(b, si)
	for i, e := range l.E820 {
		xenctrl.EncodeHVMMemmapEntry(b[siMemmapOff+i*xenctrl.HVMMemmapEntrySize:], e)
	}
	copy(b[siCmdlineOff:], cmdline) // NUL-terminated: b is zeroed
	return b
}

func alignUp(x uint64) uint64 { return (x + pageSize - 1) &^ (pageSize - 1) }

func (l *pvhLayout) String() string {
	return fmt.Sprintf("ram [0,%#x) [%#x,%#x) kernel [%#x,%#x) initrd %#x+%#x start_info %#x entry %#x",
		l.LowEnd, uint64(highMemGPA), max(l.HighEnd, highMemGPA), l.KernelStart, l.KernelEnd, l.InitrdAddr, l.InitrdSize, l.StartInfoAddr, l.Entry)
}
