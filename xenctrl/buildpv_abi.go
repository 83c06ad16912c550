package xenctrl

// ABI layouts for building x86_64 PV guests (package builder, pv*.go).
// Offsets were printed from the Xen 4.17 public headers (libxen-dev 4.17.7,
// xen.h, arch-x86/xen-x86_64.h, grant_table.h, domctl.h) with a small C
// program; they have not changed since Xen 3.x. buildpv_abi_test.go pins
// them.

import "fmt"

// Hypercall numbers and sub-commands the PV builder needs.
const (
	hcMmuextOp = 26

	mmuextPinL4Table = 3
	mmuextOpSize     = 24 // struct mmuext_op: cmd u32@0, arg1 u64@8, arg2 u64@16

	gnttabopSetupTable  = 2
	gnttabSetupSize     = 24 // dom u16@0, nr_frames u32@4, status i16@8, frame_list@16
	gnttabSetupFrameOff = 64 // where the frame list goes in our hypercall buffer

	domctlHypercallInit = 22 // xen_domctl_hypercall_init: gmfn u64@0
	domctlVCPUCtxtOff   = 8  // xen_domctl_vcpucontext: vcpu u32@0, ctxt handle@8

	domInfoSharedInfoFrame = 48 // xen_domctl_getdomaininfo.shared_info_frame
)

// PV guest start of day: struct start_info (xen.h) for x86_64.
const (
	PVGuestType       = "xen-3.0-x86_64" // start_info.magic; the only PV ABI built
	StartInfoSize     = 1168
	MaxGuestCmdline   = 1024 // MAX_GUEST_CMDLINE, including the NUL
	siNrPages         = 32
	siSharedInfo      = 40
	siFlags           = 48
	siStoreMFN        = 56
	siStoreEvtchn     = 64
	siConsoleMFN      = 72
	siConsoleEvtchn   = 80
	siPTBase          = 88
	siNrPTFrames      = 96
	siMFNList         = 104
	siModStart        = 112
	siModLen          = 120
	siCmdLine         = 128
	siFirstP2MPFN     = 1152
	siNrP2MFrames     = 1160
	legacyMaxVCPUs    = 32 // XEN_LEGACY_MAX_VCPUS: vcpu_info slots in shared_info
	vcpuInfoSize      = 64 // struct vcpu_info on x86_64
	vcpuInfoUpcallMsk = 1  // vcpu_info.evtchn_upcall_mask
)

// SIFModStartPFN (SIF_MOD_START_PFN) in StartInfo.Flags: ModStart is the
// initrd's first guest frame, not its virtual address.
const SIFModStartPFN = 1 << 3

// StartInfo is struct start_info for a 64-bit PV domU. Frame numbers are
// machine frames; addresses marked virtual are guest virtual addresses in
// the initial mapping.
type StartInfo struct {
	NrPages       uint64
	SharedInfoMFN uint64 // written as a machine address (mfn << 12)
	Flags         uint32 // SIF_*
	StoreMFN      uint64
	StoreEvtchn   uint32
	ConsoleMFN    uint64
	ConsoleEvtchn uint32
	PTBase        uint64 // virtual address of the L4 table
	NrPTFrames    uint64
	MFNList       uint64 // virtual address of the p2m array
	ModStart      uint64 // virtual address (or, with SIFModStartPFN, guest frame) of the initrd, 0 if none
	ModLen        uint64
	Cmdline       string // at most MaxGuestCmdline-1 bytes
	FirstP2MPFN   uint64 // guest frame; only with a p2m outside the initial mapping
	NrP2MFrames   uint64
}

// EncodeStartInfo writes si into b (at least StartInfoSize bytes, which
// are overwritten). A command line that does not fit is an error.
func EncodeStartInfo(b []byte, si StartInfo) error {
	if len(b) < StartInfoSize {
		return fmt.Errorf("xenctrl: start_info buffer is %d bytes, need %d", len(b), StartInfoSize)
	}
	if len(si.Cmdline) >= MaxGuestCmdline {
		return fmt.Errorf("xenctrl: start_info cmd_line is %d bytes, at most %d fit", len(si.Cmdline), MaxGuestCmdline-1)
	}
	clear(b[:StartInfoSize])
	copy(b[0:32], PVGuestType)
	le.PutUint64(b[siNrPages:], si.NrPages)
	le.PutUint64(b[siSharedInfo:], si.SharedInfoMFN<<12)
	le.PutUint32(b[siFlags:], si.Flags)
	le.PutUint64(b[siStoreMFN:], si.StoreMFN)
	le.PutUint32(b[siStoreEvtchn:], si.StoreEvtchn)
	le.PutUint64(b[siConsoleMFN:], si.ConsoleMFN)
	le.PutUint32(b[siConsoleEvtchn:], si.ConsoleEvtchn)
	le.PutUint64(b[siPTBase:], si.PTBase)
	le.PutUint64(b[siNrPTFrames:], si.NrPTFrames)
	le.PutUint64(b[siMFNList:], si.MFNList)
	le.PutUint64(b[siModStart:], si.ModStart)
	le.PutUint64(b[siModLen:], si.ModLen)
	copy(b[siCmdLine:siCmdLine+MaxGuestCmdline-1], si.Cmdline)
	le.PutUint64(b[siFirstP2MPFN:], si.FirstP2MPFN)
	le.PutUint64(b[siNrP2MFrames:], si.NrP2MFrames)
	return nil
}

// InitPVSharedInfo prepares a new PV domain's shared info page as
// libxenguest does: all zero, with event delivery masked on every legacy
// vcpu_info slot (the guest unmasks once it has its callbacks).
func InitPVSharedInfo(page []byte) {
	clear(page)
	for i := 0; i < legacyMaxVCPUs && (i+1)*vcpuInfoSize <= len(page); i++ {
		page[i*vcpuInfoSize+vcpuInfoUpcallMsk] = 1
	}
}

// struct vcpu_guest_context (x86_64) layout.
const (
	VCPUGuestContextSize = 5168
	vgcFlags             = 512
	vgcUserRegs          = 520 // struct cpu_user_regs, 200 bytes
	vgcKernelSS          = 4968
	vgcKernelSP          = 4976
	vgcCtrlreg           = 4984 // 8 x u64
	urRSI                = 104
	urRIP                = 128
	urCS                 = 136
	urRFLAGS             = 144
	urRSP                = 152
	urSS                 = 160
	urES                 = 168
	urDS                 = 176
	urFS                 = 184
	urGS                 = 192

	vgcfInKernel     = 1 << 2
	vgcfOnline       = 1 << 5
	flatKernelCS64   = 0xe033 // FLAT_RING3_CS64: 64-bit PV kernels run in ring 3
	flatKernelDS64   = 0      // FLAT_RING3_DS64
	flatKernelSS64   = 0xe02b // FLAT_RING3_SS64
	rflagsIF         = 1 << 9
	x86PageShift     = 12
	canonicalLowTop  = 0x0000800000000000
	canonicalHighBot = 0xffff800000000000
)

// PVBootVCPU is the start-of-day state of vCPU 0 of a 64-bit PV guest.
type PVBootVCPU struct {
	Entry     uint64 // virtual entry point (XEN_ELFNOTE_ENTRY)
	Stack     uint64 // initial %rsp: top of the boot stack page
	StartInfo uint64 // %rsi: virtual address of start_info
	L4MFN     uint64 // machine frame of the pinned L4 table (%cr3)
}

// EncodePVVCPUContext renders vcpu_guest_context for XEN_DOMCTL_setvcpucontext
// the way libxenguest's vcpu_x86_64 does: kernel mode, online, flat
// ring-3 kernel segments, interrupts enabled.
func EncodePVVCPUContext(v PVBootVCPU) ([]byte, error) {
	for _, a := range []struct {
		name string
		v    uint64
	}{{"entry", v.Entry}, {"stack", v.Stack}, {"start_info", v.StartInfo}} {
		if a.v >= canonicalLowTop && a.v < canonicalHighBot {
			return nil, fmt.Errorf("xenctrl: vcpu context: %s %#x is not a canonical address", a.name, a.v)
		}
	}
	if v.L4MFN == 0 || v.L4MFN>>(64-x86PageShift) != 0 {
		return nil, fmt.Errorf("xenctrl: vcpu context: L4 frame %#x out of range", v.L4MFN)
	}
	b := make([]byte, VCPUGuestContextSize)
	le.PutUint64(b[vgcFlags:], vgcfInKernel|vgcfOnline)
	r := b[vgcUserRegs:]
	le.PutUint64(r[urRIP:], v.Entry)
	le.PutUint64(r[urRSP:], v.Stack)
	le.PutUint64(r[urRSI:], v.StartInfo)
	le.PutUint64(r[urRFLAGS:], rflagsIF)
	le.PutUint16(r[urCS:], flatKernelCS64)
	le.PutUint16(r[urSS:], flatKernelSS64)
	for _, off := range []int{urDS, urES, urFS, urGS} {
		le.PutUint16(r[off:], flatKernelDS64)
	}
	le.PutUint64(b[vgcKernelSS:], flatKernelSS64)
	le.PutUint64(b[vgcKernelSP:], v.Stack)
	le.PutUint64(b[vgcCtrlreg+3*8:], v.L4MFN<<x86PageShift) // xen_pfn_to_cr3 on x86_64
	return b, nil
}

// DecodePVVCPUContext reads the boot state back out of a
// vcpu_guest_context (what the simulator checks a setvcpucontext against).
// Segments and flags are not decoded.
func DecodePVVCPUContext(vgc []byte) (PVBootVCPU, error) {
	if len(vgc) != VCPUGuestContextSize {
		return PVBootVCPU{}, fmt.Errorf("xenctrl: vcpu context is %d bytes, want %d", len(vgc), VCPUGuestContextSize)
	}
	r := vgc[vgcUserRegs:]
	return PVBootVCPU{
		Entry: le.Uint64(r[urRIP:]), Stack: le.Uint64(r[urRSP:]), StartInfo: le.Uint64(r[urRSI:]),
		L4MFN: le.Uint64(vgc[vgcCtrlreg+3*8:]) >> x86PageShift,
	}, nil
}
