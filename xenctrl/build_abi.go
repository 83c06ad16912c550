package xenctrl

// ABI numbers and layouts the domain builder needs (package builder), kept
// here with the rest of the Xen ABI. Offsets were checked against the Xen
// 4.17 public headers (libxen-dev 4.17.7) with a small C program; see
// build_abi_test.go. They are the same in 4.18-4.20.

import "fmt"

// More hypercall numbers and sub-commands.
const (
	hcHVMOp = 34

	hvmopSetParam = 0
	hvmopGetParam = 1
	hvmParamSize  = 16 // struct xen_hvm_param: domid u16@0, index u32@4, value u64@8

	evtchnopAllocUnbound = 6
	allocUnboundSize     = 8 // struct evtchn_alloc_unbound: dom u16@0, remote_dom u16@2, port u32@4

	xenmemAddToPhysmap      = 7
	xenmemMaximumGPFN       = 14
	xenmemRemoveFromPhysmap = 15
	xenmemSetMemoryMap      = 13
	addToPhysmapSize        = 24 // domid u16@0, size u16@2, space u32@4, idx u64@8, gpfn u64@16
	removeFromPhysmapSize   = 16 // domid u16@0, gpfn u64@8
	foreignMemoryMapSize    = 24 // domid u16@0, map{nr_entries u32@8, buffer@16}
	e820EntrySize           = 20 // struct e820entry (packed): addr u64, size u64, type u32

	domctlSetVCPUContext         = 12
	domctlGetHVMContext          = 33
	domctlSetHVMContext          = 34
	domctlSetTSCInfo             = 60
	domctlSetPagingMempoolSize   = 86
	xenmapspaceGrantTable        = 1
	domctlHVMContextBufferOff    = 8 // xen_domctl_hvmcontext: size u32@0, buffer@8
	tscInfoSize                  = 24
	hvmSaveDescriptorSize        = 8       // typecode u16, instance u16, length u32
	maxHVMContext                = 1 << 20 // sanity bound on what gethvmcontext may report
	grantEntryV1Size             = 8
	gtfPermitAccess              = 1
	hvmMTRRDefTypeOff            = 232 // hvm_hw_mtrr.msr_mtrr_def_type
	mtrrTypeWriteBack            = 6
	mtrrDefTypeEnable            = 1 << 11
	x86CR0PE                     = 1 << 0
	x86CR0ET                     = 1 << 4
	x86DR6Default                = 0xffff0ff0
	x86DR7Default                = 0x00000400
	hvmCPURbx                    = 520
	hvmCPURip                    = 640
	hvmCPURflags                 = 648
	hvmCPUCr0                    = 656
	hvmCPUDr6                    = 720
	hvmCPUDr7                    = 728
	hvmCPUCsLimit                = 768 // cs ds es fs gs ss tr ldtr idtr gdtr limits, u32 each
	hvmCPUCsBase                 = 808 // bases, u64 each, same order
	hvmCPUCsArbytes              = 888 // cs ds es fs gs ss tr ldtr arbytes, u32 each
	hvmSegCS, hvmSegDS, hvmSegES = 0, 1, 2
	hvmSegSS, hvmSegTR           = 5, 6
)

// HVM parameters (HVM_PARAM_*) the builder sets.
const (
	HVMParamCallbackIRQ   uint32 = 0
	HVMParamStorePFN      uint32 = 1
	HVMParamStoreEvtchn   uint32 = 2
	HVMParamConsolePFN    uint32 = 17
	HVMParamConsoleEvtchn uint32 = 18
)

// TSC modes for SetTSCInfo (xen/arch/x86/include/asm/time.h).
const (
	TSCModeDefault       uint32 = 0
	TSCModeAlwaysEmulate uint32 = 1
	TSCModeNeverEmulate  uint32 = 2 // xl tsc_mode="native"
)

// Grant references the toolstack reserves in every guest's table
// (GNTTAB_RESERVED_*).
const (
	GrantRefConsole  = 0
	GrantRefXenstore = 1
)

// E820 memory types.
const (
	E820RAM      uint32 = 1
	E820Reserved uint32 = 2
	E820NVS      uint32 = 4 // ACPI non-volatile storage
)

// E820Entry is one guest memory map entry.
type E820Entry struct {
	Addr, Size uint64
	Type       uint32
}

// PVH start of day: struct hvm_start_info and friends
// (xen/include/public/arch-x86/hvm/start_info.h).
const (
	HVMStartMagic       = 0x336ec578
	HVMStartInfoSize    = 56
	HVMModlistEntrySize = 32
	HVMMemmapEntrySize  = 24
)

// HVMModule is one hvm_modlist_entry.
type HVMModule struct {
	Paddr, Size, CmdlinePaddr uint64
}

// HVMStartInfo is struct hvm_start_info (version 1).
type HVMStartInfo struct {
	Flags        uint32
	NrModules    uint32
	ModlistPaddr uint64
	CmdlinePaddr uint64
	RSDPPaddr    uint64
	MemmapPaddr  uint64
	MemmapCount  uint32
}

// EncodeHVMStartInfo writes the version-1 start info into b (56 bytes).
func EncodeHVMStartInfo(b []byte, si HVMStartInfo) {
	le.PutUint32(b[0:], HVMStartMagic)
	le.PutUint32(b[4:], 1)
	le.PutUint32(b[8:], si.Flags)
	le.PutUint32(b[12:], si.NrModules)
	le.PutUint64(b[16:], si.ModlistPaddr)
	le.PutUint64(b[24:], si.CmdlinePaddr)
	le.PutUint64(b[32:], si.RSDPPaddr)
	le.PutUint64(b[40:], si.MemmapPaddr)
	le.PutUint32(b[48:], si.MemmapCount)
	le.PutUint32(b[52:], 0)
}

// EncodeHVMModule writes one hvm_modlist_entry (32 bytes).
func EncodeHVMModule(b []byte, m HVMModule) {
	le.PutUint64(b[0:], m.Paddr)
	le.PutUint64(b[8:], m.Size)
	le.PutUint64(b[16:], m.CmdlinePaddr)
	le.PutUint64(b[24:], 0)
}

// EncodeHVMMemmapEntry writes one hvm_memmap_table_entry (24 bytes).
func EncodeHVMMemmapEntry(b []byte, e E820Entry) {
	le.PutUint64(b[0:], e.Addr)
	le.PutUint64(b[8:], e.Size)
	le.PutUint32(b[16:], e.Type)
	le.PutUint32(b[20:], 0)
}

// EncodeGrantEntryV1 writes a grant_entry_v1 (8 bytes) permitting domain
// to access guest frame gfn.
func EncodeGrantEntryV1(b []byte, domain Domid, gfn uint32) {
	le.PutUint16(b[0:], gtfPermitAccess)
	le.PutUint16(b[2:], uint16(domain))
	le.PutUint32(b[4:], gfn)
}

// PVHBootContext turns the HVM context Xen reports for a new domain
// (XEN_DOMCTL_gethvmcontext) into the one to load with sethvmcontext: the
// save header, vCPU 0 in 32-bit flat protected mode with paging off at
// entry, %ebx = startInfo (the PVH boot ABI, docs/misc/pvh.pandoc), and the
// MTRRs enabled with write-back as the default type (there is no firmware
// to do it), then the end record. It fails if the records it needs are not
// in full, naming what is missing.
func PVHBootContext(full []byte, entry uint32, startInfo uint64) ([]byte, error) {
	recs, err := ParseHVMContext(full)
	if err != nil {
		return nil, err
	}
	var header, mtrr *HVMRecord
	for i, r := range recs {
		switch {
		case r.Code == HVMSaveCodeHeader && header == nil:
			if len(r.Body) != HVMHeaderSize {
				return nil, fmt.Errorf("xenctrl: HVM context: header record is %d bytes, want %d", len(r.Body), HVMHeaderSize)
			}
			header = &recs[i]
		case r.Code == HVMSaveCodeMTRR && r.Instance == 0:
			if len(r.Body) != HVMMTRRSize {
				return nil, fmt.Errorf("xenctrl: HVM context: MTRR record is %d bytes, want %d", len(r.Body), HVMMTRRSize)
			}
			mtrr = &recs[i]
		}
	}
	if header == nil {
		return nil, fmt.Errorf("xenctrl: HVM context: no save header record")
	}
	c := make([]byte, HVMCPUSize)
	le.PutUint64(c[hvmCPURbx:], startInfo)
	le.PutUint64(c[hvmCPURip:], uint64(entry))
	le.PutUint64(c[hvmCPURflags:], 2) // bit 1 is always set
	le.PutUint64(c[hvmCPUCr0:], x86CR0PE|x86CR0ET)
	le.PutUint64(c[hvmCPUDr6:], x86DR6Default)
	le.PutUint64(c[hvmCPUDr7:], x86DR7Default)
	for _, s := range []int{hvmSegCS, hvmSegDS, hvmSegES, hvmSegSS} {
		le.PutUint32(c[hvmCPUCsLimit+4*s:], 0xffffffff)
		le.PutUint64(c[hvmCPUCsBase+8*s:], 0)
		ar := uint32(0xc93) // present, DPL0, read/write data, 4 KiB granular, 32-bit
		if s == hvmSegCS {
			ar = 0xc9b // present, DPL0, execute/read code, accessed, 4 KiB granular, 32-bit
		}
		le.PutUint32(c[hvmCPUCsArbytes+4*s:], ar)
	}
	le.PutUint32(c[hvmCPUCsLimit+4*hvmSegTR:], 0x67)
	le.PutUint32(c[hvmCPUCsArbytes+4*hvmSegTR:], 0x8b) // present, busy 32-bit TSS
	out := []HVMRecord{*header, {Code: HVMSaveCodeCPU, Body: c}}
	if mtrr != nil {
		m := append([]byte(nil), mtrr.Body...)
		le.PutUint64(m[hvmMTRRDefTypeOff:], mtrrTypeWriteBack|mtrrDefTypeEnable)
		out = append(out, HVMRecord{Code: HVMSaveCodeMTRR, Body: m})
	}
	return EncodeHVMContext(out), nil
}
