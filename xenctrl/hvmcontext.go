package xenctrl

import "fmt"

// HVM save records (public/arch-x86/hvm/save.h): what
// XEN_DOMCTL_gethvmcontext reports and sethvmcontext loads, a sequence of
// typed records ending with an END record.
const (
	HVMSaveCodeEnd    uint16 = 0
	HVMSaveCodeHeader uint16 = 1 // struct hvm_save_header
	HVMSaveCodeCPU    uint16 = 2 // struct hvm_hw_cpu, one per vCPU
	HVMSaveCodeMTRR   uint16 = 14

	// HVMSaveMagic and HVMSaveVersion are HVM_FILE_MAGIC and
	// HVM_FILE_VERSION, the first fields of the header record.
	HVMSaveMagic   = 0x54381286
	HVMSaveVersion = 1

	HVMHeaderSize = 24   // struct hvm_save_header
	HVMCPUSize    = 1032 // struct hvm_hw_cpu
	HVMMTRRSize   = 240  // struct hvm_hw_mtrr
)

// HVMRecord is one save record: its type code, the vCPU (or other
// instance) it describes, and its body.
type HVMRecord struct {
	Code, Instance uint16
	Body           []byte
}

// ParseHVMContext splits a context blob into its records, up to (without)
// the END record. Bodies alias blob. A truncated blob, a record claiming
// more bytes than remain, or a missing END record is an error.
func ParseHVMContext(blob []byte) ([]HVMRecord, error) {
	var recs []HVMRecord
	for off := 0; ; {
		if len(blob)-off < hvmSaveDescriptorSize {
			return nil, fmt.Errorf("xenctrl: HVM context: truncated record descriptor at offset %d", off)
		}
		r := HVMRecord{Code: le.Uint16(blob[off:]), Instance: le.Uint16(blob[off+2:])}
		n := uint64(le.Uint32(blob[off+4:]))
		body := off + hvmSaveDescriptorSize
		if n > uint64(len(blob)-body) {
			return nil, fmt.Errorf("xenctrl: HVM context: record type %d at offset %d claims %d bytes, %d remain", r.Code, off, n, len(blob)-body)
		}
		if r.Code == HVMSaveCodeEnd {
			return recs, nil
		}
		r.Body = blob[body : body+int(n)]
		recs = append(recs, r)
		off = body + int(n)
	}
}

// EncodeHVMContext renders records as a context blob, END record included.
func EncodeHVMContext(recs []HVMRecord) []byte {
	var out []byte
	for _, r := range append(recs, HVMRecord{Code: HVMSaveCodeEnd}) {
		d := make([]byte, hvmSaveDescriptorSize)
		le.PutUint16(d[0:], r.Code)
		le.PutUint16(d[2:], r.Instance)
		le.PutUint32(d[4:], uint32(len(r.Body)))
		out = append(append(out, d...), r.Body...)
	}
	return out
}

// HVMSaveHeader is struct hvm_save_header.
type HVMSaveHeader struct {
	Magic, Version uint32
	Changeset      uint64
	CPUID          uint32 // CPUID[0x01].EAX of the saving host
	GTSCKHz        uint32
}

// EncodeHVMSaveHeader renders h as the body of a header record.
func EncodeHVMSaveHeader(h HVMSaveHeader) []byte {
	b := make([]byte, HVMHeaderSize)
	le.PutUint32(b[0:], h.Magic)
	le.PutUint32(b[4:], h.Version)
	le.PutUint64(b[8:], h.Changeset)
	le.PutUint32(b[16:], h.CPUID)
	le.PutUint32(b[20:], h.GTSCKHz)
	return b
}

// DecodeHVMSaveHeader reads the body of a header record.
func DecodeHVMSaveHeader(b []byte) (HVMSaveHeader, error) {
	if len(b) != HVMHeaderSize {
		return HVMSaveHeader{}, fmt.Errorf("xenctrl: HVM context: header record is %d bytes, want %d", len(b), HVMHeaderSize)
	}
	return HVMSaveHeader{Magic: le.Uint32(b[0:]), Version: le.Uint32(b[4:]), Changeset: le.Uint64(b[8:]),
		CPUID: le.Uint32(b[16:]), GTSCKHz: le.Uint32(b[20:])}, nil
}
