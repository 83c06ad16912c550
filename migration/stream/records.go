package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Record is one record of a stream: one of the types below.
type Record interface {
	// Type is the record's type in the record header.
	Type() RecordType
	// appendBody appends the record's body (without header or padding).
	appendBody(b []byte) []byte
}

var le = binary.LittleEndian

// End marks the end of the stream (END).
type End struct{}

// StaticDataEnd marks the end of the state that never changes while the
// domain lives: X86_PV_INFO and the CPU policy come before it, memory and
// vCPU state after (STATIC_DATA_END, version 3).
type StaticDataEnd struct{}

// Page is one frame of a PAGE_DATA record.
type Page struct {
	PFN  uint64   // guest frame number, below 2^52
	Type PageType // XEN_DOMCTL_PFINFO_* type
	Data []byte   // the page's contents when Type.HasData(), else nil
}

// PageData carries frames of guest memory (PAGE_DATA).
type PageData struct {
	Pages []Page
}

// X86PVInfo says how wide a PV guest is (X86_PV_INFO).
type X86PVInfo struct {
	GuestWidth uint8 // octets: 4 or 8
	PTLevels   uint8 // page table levels: 3 or 4
}

// X86PVP2MFrames lists the frames holding a PV guest's P2M table for
// the PFNs StartPFN..EndPFN inclusive (X86_PV_P2M_FRAMES).
type X86PVP2MFrames struct {
	StartPFN, EndPFN uint32
	P2MPFNs          []uint64
}

// VCPUContext is the body of the four X86_PV_VCPU_* records: a vCPU and
// an opaque blob of its state as the matching domctl returns it.
type VCPUContext struct {
	VCPUID  uint32
	Context []byte
}

// X86PVVCPUBasic is XEN_DOMCTL_getvcpucontext's state (X86_PV_VCPU_BASIC).
type X86PVVCPUBasic struct{ VCPUContext }

// X86PVVCPUExtended is XEN_DOMCTL_get_ext_vcpucontext's state.
type X86PVVCPUExtended struct{ VCPUContext }

// X86PVVCPUXSave is XEN_DOMCTL_getvcpuextstate's state.
type X86PVVCPUXSave struct{ VCPUContext }

// X86PVVCPUMSRs is XEN_DOMCTL_get_vcpu_msrs's state.
type X86PVVCPUMSRs struct{ VCPUContext }

// SharedInfo is the content of a PV guest's shared info page (one page).
type SharedInfo struct {
	Page []byte
}

// X86TSCInfo is the domain's TSC setting (X86_TSC_INFO).
type X86TSCInfo struct {
	Mode        uint32 // TSC_MODE_*
	KHz         uint32
	Nsec        uint64 // elapsed time
	Incarnation uint32
}

// HVMContext is the HVM context blob of XEN_DOMCTL_gethvmcontext.
type HVMContext struct {
	Blob []byte
}

// HVMParam is one HVM parameter (HVMOP_get_param index and value).
type HVMParam struct {
	Index, Value uint64
}

// HVMParams carries HVM parameters (HVM_PARAMS).
type HVMParams struct {
	Params []HVMParam
}

// CPUIDLeaf is one leaf of a CPUID policy.
type CPUIDLeaf struct {
	Leaf, Subleaf uint32
	A, B, C, D    uint32
}

// X86CPUIDPolicy is the domain's CPUID policy (X86_CPUID_POLICY, version 3).
type X86CPUIDPolicy struct {
	Leaves []CPUIDLeaf
}

// MSREntry is one MSR of an MSR policy.
type MSREntry struct {
	Index, Flags uint32
	Value        uint64
}

// X86MSRPolicy is the domain's MSR policy (X86_MSR_POLICY, version 3).
type X86MSRPolicy struct {
	MSRs []MSREntry
}

func (End) Type() RecordType                { return TypeEnd }
func (StaticDataEnd) Type() RecordType      { return TypeStaticDataEnd }
func (*PageData) Type() RecordType          { return TypePageData }
func (*X86PVInfo) Type() RecordType         { return TypeX86PVInfo }
func (*X86PVP2MFrames) Type() RecordType    { return TypeX86PVP2MFrames }
func (*X86PVVCPUBasic) Type() RecordType    { return TypeX86PVVCPUBasic }
func (*X86PVVCPUExtended) Type() RecordType { return TypeX86PVVCPUExtended }
func (*X86PVVCPUXSave) Type() RecordType    { return TypeX86PVVCPUXSave }
func (*X86PVVCPUMSRs) Type() RecordType     { return TypeX86PVVCPUMSRs }
func (*SharedInfo) Type() RecordType        { return TypeSharedInfo }
func (*X86TSCInfo) Type() RecordType        { return TypeX86TSCInfo }
func (*HVMContext) Type() RecordType        { return TypeHVMContext }
func (*HVMParams) Type() RecordType         { return TypeHVMParams }
func (*X86CPUIDPolicy) Type() RecordType    { return TypeX86CPUIDPolicy }
func (*X86MSRPolicy) Type() RecordType      { return TypeX86MSRPolicy }

func (End) appendBody(b []byte) []byte           { return b }
func (StaticDataEnd) appendBody(b []byte) []byte { return b }

func (r *PageData) appendBody(b []byte) []byte {
	b = le.AppendUint32(b, uint32(len(r.Pages)))
	b = le.AppendUint32(b, 0)
	for _, p := range r.Pages {
		b = le.AppendUint64(b, uint64(p.Type)<<pageTypeShift|p.PFN)
	}
	for _, p := range r.Pages {
		if p.Type.HasData() {
			b = append(b, p.Data...)
		}
	}
	return b
}

func (r *X86PVInfo) appendBody(b []byte) []byte {
	return append(b, r.GuestWidth, r.PTLevels, 0, 0, 0, 0, 0, 0)
}

func (r *X86PVP2MFrames) appendBody(b []byte) []byte {
	b = le.AppendUint32(b, r.StartPFN)
	b = le.AppendUint32(b, r.EndPFN)
	for _, pfn := range r.P2MPFNs {
		b = le.AppendUint64(b, pfn)
	}
	return b
}

func (c *VCPUContext) appendBody(b []byte) []byte {
	b = le.AppendUint32(b, c.VCPUID)
	b = le.AppendUint32(b, 0)
	return append(b, c.Context...)
}

func (r *SharedInfo) appendBody(b []byte) []byte { return append(b, r.Page...) }

func (r *X86TSCInfo) appendBody(b []byte) []byte {
	b = le.AppendUint32(b, r.Mode)
	b = le.AppendUint32(b, r.KHz)
	b = le.AppendUint64(b, r.Nsec)
	b = le.AppendUint32(b, r.Incarnation)
	return le.AppendUint32(b, 0)
}

func (r *HVMContext) appendBody(b []byte) []byte { return append(b, r.Blob...) }

func (r *HVMParams) appendBody(b []byte) []byte {
	b = le.AppendUint32(b, uint32(len(r.Params)))
	b = le.AppendUint32(b, 0)
	for _, p := range r.Params {
		b = le.AppendUint64(b, p.Index)
		b = le.AppendUint64(b, p.Value)
	}
	return b
}

func (r *X86CPUIDPolicy) appendBody(b []byte) []byte {
	for _, l := range r.Leaves {
		for _, v := range [...]uint32{l.Leaf, l.Subleaf, l.A, l.B, l.C, l.D} {
			b = le.AppendUint32(b, v)
		}
	}
	return b
}

func (r *X86MSRPolicy) appendBody(b []byte) []byte {
	for _, m := range r.MSRs {
		b = le.AppendUint32(b, m.Index)
		b = le.AppendUint32(b, m.Flags)
		b = le.AppendUint64(b, m.Value)
	}
	return b
}

// bodyRules is what a body is checked against besides the spec itself.
type bodyRules struct {
	pageSize          uint64
	maxPFN            uint64 // frame numbers must be below it
	maxPagesPerRecord uint32
	guestWidth        uint8 // of X86_PV_INFO, once seen (PV only)
}

// decodeBody parses and checks the body of a record of a known, accepted
// type. Slices of the result alias body.
func decodeBody(t RecordType, body []byte, r bodyRules) (Record, error) {
	switch t {
	case TypeEnd:
		return End{}, wantEmpty(body)
	case TypeStaticDataEnd:
		return StaticDataEnd{}, wantEmpty(body)
	case TypePageData:
		return decodePageData(body, r)
	case TypeX86PVInfo:
		return decodeX86PVInfo(body)
	case TypeX86PVP2MFrames:
		return decodeP2MFrames(body, r)
	case TypeX86PVVCPUBasic:
		c, err := decodeVCPUContext(body)
		return &X86PVVCPUBasic{c}, err
	case TypeX86PVVCPUExtended:
		c, err := decodeVCPUContext(body)
		return &X86PVVCPUExtended{c}, err
	case TypeX86PVVCPUXSave:
		c, err := decodeVCPUContext(body)
		return &X86PVVCPUXSave{c}, err
	case TypeX86PVVCPUMSRs:
		c, err := decodeVCPUContext(body)
		return &X86PVVCPUMSRs{c}, err
	case TypeSharedInfo:
		if uint64(len(body)) != r.pageSize {
			return nil, fmt.Errorf("body is %d octets, want one page (%d)", len(body), r.pageSize)
		}
		return &SharedInfo{Page: body}, nil
	case TypeX86TSCInfo:
		return decodeTSCInfo(body)
	case TypeHVMContext:
		if len(body) == 0 {
			return nil, errors.New("empty HVM context")
		}
		return &HVMContext{Blob: body}, nil
	case TypeHVMParams:
		return decodeHVMParams(body)
	case TypeX86CPUIDPolicy:
		return decodeCPUIDPolicy(body)
	case TypeX86MSRPolicy:
		return decodeMSRPolicy(body)
	}
	return nil, fmt.Errorf("no decoder for %v", t)
}

func wantEmpty(body []byte) error {
	if len(body) != 0 {
		return fmt.Errorf("body is %d octets, want none", len(body))
	}
	return nil
}

// countAndReserved reads the "count, reserved" header of PAGE_DATA and
// HVM_PARAMS.
func countAndReserved(body []byte) (uint32, error) {
	if len(body) < 8 {
		return 0, fmt.Errorf("body is %d octets, shorter than its 8-octet header", len(body))
	}
	if res := le.Uint32(body[4:]); res != 0 {
		return 0, fmt.Errorf("reserved field is %#x, want 0", res)
	}
	return le.Uint32(body), nil
}

func decodePageData(body []byte, r bodyRules) (*PageData, error) {
	count, err := countAndReserved(body)
	if err != nil {
		return nil, err
	}
	if count == 0 {
		return nil, errors.New("count is 0")
	}
	if count > r.maxPagesPerRecord {
		return nil, fmt.Errorf("count %d is over the limit of %d pages per record", count, r.maxPagesPerRecord)
	}
	pfnEnd := 8 + 8*uint64(count)
	if uint64(len(body)) < pfnEnd {
		return nil, fmt.Errorf("count %d needs %d octets of pfns, body has %d", count, pfnEnd-8, len(body)-8)
	}
	pages := make([]Page, count)
	withData := uint64(0)
	for i := range pages {
		v := le.Uint64(body[8+8*i:])
		p := Page{PFN: v & pfnMask, Type: PageType(v >> pageTypeShift)}
		switch {
		case v&pfnReservedMask != 0:
			return nil, fmt.Errorf("pfn[%d] %#016x has reserved bits 52-59 set", i, v)
		case !p.Type.Valid():
			return nil, fmt.Errorf("pfn[%d] %#016x has reserved page type %#x", i, v, uint8(p.Type))
		case p.PFN >= r.maxPFN:
			return nil, fmt.Errorf("pfn[%d] %#x is not below the limit %#x", i, p.PFN, r.maxPFN)
		}
		if p.Type.HasData() {
			withData++
		}
		pages[i] = p
	}
	if want := pfnEnd + withData*r.pageSize; uint64(len(body)) != want {
		return nil, fmt.Errorf("%d of %d pages carry data: body must be %d octets, is %d",
			withData, count, want, len(body))
	}
	data := body[pfnEnd:]
	for i := range pages {
		if pages[i].Type.HasData() {
			pages[i].Data, data = data[:r.pageSize:r.pageSize], data[r.pageSize:]
		}
	}
	return &PageData{Pages: pages}, nil
}

func decodeX86PVInfo(body []byte) (*X86PVInfo, error) {
	if len(body) != 8 {
		return nil, fmt.Errorf("body is %d octets, want 8", len(body))
	}
	r := &X86PVInfo{GuestWidth: body[0], PTLevels: body[1]}
	switch {
	case r.GuestWidth != 4 && r.GuestWidth != 8:
		return nil, fmt.Errorf("guest width %d, want 4 or 8", r.GuestWidth)
	case r.PTLevels != 3 && r.PTLevels != 4:
		return nil, fmt.Errorf("page table levels %d, want 3 or 4", r.PTLevels)
	case le.Uint32(body[2:])|uint32(le.Uint16(body[6:])) != 0:
		return nil, errors.New("reserved octets 2-7 are not zero")
	}
	return r, nil
}

func decodeP2MFrames(body []byte, r bodyRules) (*X86PVP2MFrames, error) {
	if len(body) < 8 || len(body)%8 != 0 {
		return nil, fmt.Errorf("body is %d octets, want 8 plus a multiple of 8", len(body))
	}
	f := &X86PVP2MFrames{StartPFN: le.Uint32(body), EndPFN: le.Uint32(body[4:])}
	if f.StartPFN > f.EndPFN {
		return nil, fmt.Errorf("start pfn %#x is after end pfn %#x", f.StartPFN, f.EndPFN)
	}
	if uint64(f.EndPFN) >= r.maxPFN {
		return nil, fmt.Errorf("end pfn %#x is not below the limit %#x", f.EndPFN, r.maxPFN)
	}
	n := (len(body) - 8) / 8
	if r.guestWidth != 0 {
		// The P2M holds one entry of guest width per PFN: one frame per
		// pageSize/width PFNs, counted from the frames of S and E.
		perFrame := uint32(r.pageSize) / uint32(r.guestWidth)
		if want := int64(f.EndPFN/perFrame) - int64(f.StartPFN/perFrame) + 1; int64(n) != want {
			return nil, fmt.Errorf("pfns %#x-%#x need %d p2m frames, record has %d", f.StartPFN, f.EndPFN, want, n)
		}
	}
	f.P2MPFNs = make([]uint64, n)
	for i := range f.P2MPFNs {
		pfn := le.Uint64(body[8+8*i:])
		if pfn >= r.maxPFN {
			return nil, fmt.Errorf("p2m_pfn[%d] %#x is not below the limit %#x", i, pfn, r.maxPFN)
		}
		f.P2MPFNs[i] = pfn
	}
	return f, nil
}

func decodeVCPUContext(body []byte) (VCPUContext, error) {
	if len(body) < 8 {
		return VCPUContext{}, fmt.Errorf("body is %d octets, shorter than its 8-octet header", len(body))
	}
	if res := le.Uint32(body[4:]); res != 0 {
		return VCPUContext{}, fmt.Errorf("reserved field is %#x, want 0", res)
	}
	return VCPUContext{VCPUID: le.Uint32(body), Context: body[8:]}, nil
}

func decodeTSCInfo(body []byte) (*X86TSCInfo, error) {
	if len(body) != 24 {
		return nil, fmt.Errorf("body is %d octets, want 24", len(body))
	}
	if res := le.Uint32(body[20:]); res != 0 {
		return nil, fmt.Errorf("reserved field is %#x, want 0", res)
	}
	return &X86TSCInfo{Mode: le.Uint32(body), KHz: le.Uint32(body[4:]),
		Nsec: le.Uint64(body[8:]), Incarnation: le.Uint32(body[16:])}, nil
}

func decodeHVMParams(body []byte) (*HVMParams, error) {
	count, err := countAndReserved(body)
	if err != nil {
		return nil, err
	}
	if want := 8 + 16*uint64(count); uint64(len(body)) != want {
		return nil, fmt.Errorf("count %d needs a body of %d octets, is %d", count, want, len(body))
	}
	p := &HVMParams{Params: make([]HVMParam, count)}
	for i := range p.Params {
		p.Params[i] = HVMParam{Index: le.Uint64(body[8+16*i:]), Value: le.Uint64(body[16+16*i:])}
	}
	return p, nil
}

func decodeCPUIDPolicy(body []byte) (*X86CPUIDPolicy, error) {
	if len(body) == 0 || len(body)%24 != 0 {
		return nil, fmt.Errorf("body is %d octets, want a non-zero multiple of 24", len(body))
	}
	p := &X86CPUIDPolicy{Leaves: make([]CPUIDLeaf, len(body)/24)}
	for i := range p.Leaves {
		b := body[24*i:]
		p.Leaves[i] = CPUIDLeaf{Leaf: le.Uint32(b), Subleaf: le.Uint32(b[4:]),
			A: le.Uint32(b[8:]), B: le.Uint32(b[12:]), C: le.Uint32(b[16:]), D: le.Uint32(b[20:])}
	}
	return p, nil
}

func decodeMSRPolicy(body []byte) (*X86MSRPolicy, error) {
	if len(body) == 0 || len(body)%16 != 0 {
		return nil, fmt.Errorf("body is %d octets, want a non-zero multiple of 16", len(body))
	}
	p := &X86MSRPolicy{MSRs: make([]MSREntry, len(body)/16)}
	for i := range p.MSRs {
		b := body[16*i:]
		p.MSRs[i] = MSREntry{Index: le.Uint32(b), Flags: le.Uint32(b[4:]), Value: le.Uint64(b[8:])}
	}
	return p, nil
}
