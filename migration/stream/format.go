package stream

import "fmt"

// Fixed values of the image header.
const (
	imageMarker = 0xFFFFFFFFFFFFFFFF
	imageID     = 0x58454E46 // "XENF"

	imageHeaderSize  = 24
	domainHeaderSize = 16
	recordHeaderSize = 8
	recordAlign      = 8

	optionBigEndian   = 1 << 0
	optionsReserved   = 0xFFFE
	x86PageShift      = 12
	x86PageSize       = 1 << x86PageShift
	pfnMask           = 1<<52 - 1
	pfnReservedMask   = (1<<60 - 1) &^ pfnMask
	pageTypeShift     = 60
	optionalRecordBit = 0x80000000
)

// Versions of the image format this package reads. Writers always write
// the newest (the spec: "tools supporting version V shall save images
// using version V").
const (
	Version2 = 2
	Version3 = 3 // adds STATIC_DATA_END, X86_CPUID_POLICY, X86_MSR_POLICY
)

// ImageHeader is the stream's first header.
type ImageHeader struct {
	Version uint32 // Version2 or Version3
}

// DomainType is the domain header's type field.
type DomainType uint32

// Domain types of the domain header. PVH guests are saved as x86 HVM.
const (
	DomainX86PV  DomainType = 1
	DomainX86HVM DomainType = 2
)

func (t DomainType) String() string {
	switch t {
	case DomainX86PV:
		return "x86 PV"
	case DomainX86HVM:
		return "x86 HVM"
	}
	return fmt.Sprintf("domain type %#x", uint32(t))
}

// DomainHeader is the stream's second header.
type DomainHeader struct {
	Type      DomainType
	PageShift uint16 // 12 on x86
	XenMajor  uint32 // the Xen version that saved the image (0: converted legacy image)
	XenMinor  uint32
}

// RecordType is a record header's type field.
type RecordType uint32

// Record types of the spec.
const (
	TypeEnd                    RecordType = 0x00
	TypePageData               RecordType = 0x01
	TypeX86PVInfo              RecordType = 0x02
	TypeX86PVP2MFrames         RecordType = 0x03
	TypeX86PVVCPUBasic         RecordType = 0x04
	TypeX86PVVCPUExtended      RecordType = 0x05
	TypeX86PVVCPUXSave         RecordType = 0x06
	TypeSharedInfo             RecordType = 0x07
	TypeX86TSCInfo             RecordType = 0x08
	TypeHVMContext             RecordType = 0x09
	TypeHVMParams              RecordType = 0x0A
	TypeToolstack              RecordType = 0x0B
	TypeX86PVVCPUMSRs          RecordType = 0x0C
	TypeVerify                 RecordType = 0x0D
	TypeCheckpoint             RecordType = 0x0E
	TypeCheckpointDirtyPFNList RecordType = 0x0F
	TypeStaticDataEnd          RecordType = 0x10
	TypeX86CPUIDPolicy         RecordType = 0x11
	TypeX86MSRPolicy           RecordType = 0x12
)

var recordTypeNames = map[RecordType]string{
	TypeEnd:                    "END",
	TypePageData:               "PAGE_DATA",
	TypeX86PVInfo:              "X86_PV_INFO",
	TypeX86PVP2MFrames:         "X86_PV_P2M_FRAMES",
	TypeX86PVVCPUBasic:         "X86_PV_VCPU_BASIC",
	TypeX86PVVCPUExtended:      "X86_PV_VCPU_EXTENDED",
	TypeX86PVVCPUXSave:         "X86_PV_VCPU_XSAVE",
	TypeSharedInfo:             "SHARED_INFO",
	TypeX86TSCInfo:             "X86_TSC_INFO",
	TypeHVMContext:             "HVM_CONTEXT",
	TypeHVMParams:              "HVM_PARAMS",
	TypeToolstack:              "TOOLSTACK",
	TypeX86PVVCPUMSRs:          "X86_PV_VCPU_MSRS",
	TypeVerify:                 "VERIFY",
	TypeCheckpoint:             "CHECKPOINT",
	TypeCheckpointDirtyPFNList: "CHECKPOINT_DIRTY_PFN_LIST",
	TypeStaticDataEnd:          "STATIC_DATA_END",
	TypeX86CPUIDPolicy:         "X86_CPUID_POLICY",
	TypeX86MSRPolicy:           "X86_MSR_POLICY",
}

func (t RecordType) String() string {
	if n, ok := recordTypeNames[t]; ok {
		return n
	}
	if t.Optional() {
		return fmt.Sprintf("optional record %#x", uint32(t))
	}
	return fmt.Sprintf("record type %#x", uint32(t))
}

// Optional reports whether a reader may skip a record of this type that
// it does not know (bit 31 set).
func (t RecordType) Optional() bool { return t&optionalRecordBit != 0 }

// refusedRecord says why a known record type is not accepted, or "".
func refusedRecord(t RecordType) string {
	switch t {
	case TypeToolstack:
		return "TOOLSTACK records are withdrawn from the format"
	case TypeVerify:
		return "VERIFY (debug) streams are not supported"
	case TypeCheckpoint, TypeCheckpointDirtyPFNList:
		return "checkpointed (Remus/COLO) streams are not supported"
	}
	return ""
}

// PageType is a PAGE_DATA frame's XEN_DOMCTL_PFINFO_* type (bits 63-60 of
// a pfn entry).
type PageType uint8

// Page types of PAGE_DATA. 0x5-0x8 are reserved.
const (
	PageNormal   PageType = 0x0
	PageL1       PageType = 0x1
	PageL2       PageType = 0x2
	PageL3       PageType = 0x3
	PageL4       PageType = 0x4
	PageL1Pinned PageType = 0x9
	PageL2Pinned PageType = 0xA
	PageL3Pinned PageType = 0xB
	PageL4Pinned PageType = 0xC
	PageBroken   PageType = 0xD
	PageXAlloc   PageType = 0xE // allocate only
	PageXTab     PageType = 0xF // invalid
)

// Valid reports whether the type is one the spec defines.
func (t PageType) Valid() bool { return t <= 0xF && (t < 0x5 || t > 0x8) }

// HasData reports whether a page of this type carries its contents in
// the record (normal pages and page tables; not BROKEN, XALLOC or XTAB).
func (t PageType) HasData() bool { return t.Valid() && t < PageBroken }
