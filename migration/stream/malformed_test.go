package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// rawStream encodes headers and records without the Writer's checks, so
// that tests can build streams the Writer refuses to write.
func rawStream(d DomainType, recs ...Record) []byte {
	b := writeStreamNoRecords(d)
	for _, r := range recs {
		b = appendRaw(b, r.Type(), r.appendBody(nil))
	}
	return b
}

func writeStreamNoRecords(d DomainType) []byte {
	var buf bytes.Buffer
	if _, err := NewWriter(&buf, testHeader[d]); err != nil {
		panic(err)
	}
	return buf.Bytes()
}

func appendRaw(b []byte, t RecordType, body []byte) []byte {
	b = le.AppendUint32(b, uint32(t))
	b = le.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}

// recordOffsets returns where each record of a stream written by the
// Writer starts.
func recordOffsets(t *testing.T, d DomainType, recs []Record) []int {
	var offs []int
	for i := range recs {
		offs = append(offs, len(writeStream(t, d, recs[:i])))
	}
	return offs
}

func TestMalformedStreams(t *testing.T) {
	hvm := hvmRecords()
	valid := writeStream(t, DomainX86HVM, hvm)
	offs := recordOffsets(t, DomainX86HVM, hvm)
	const firstPageData = 3 // index in hvmRecords
	pd := offs[firstPageData]
	mutate := func(f func(b []byte)) []byte {
		b := append([]byte{}, valid...)
		f(b)
		return b
	}
	staticHVM := []Record{&X86CPUIDPolicy{Leaves: []CPUIDLeaf{{}}}, StaticDataEnd{}}
	for name, tc := range map[string]struct {
		stream []byte
		limits Limits
		want   string // in the error
		offset int64  // of the FormatError, -1: not checked
	}{
		"bad marker":       {mutate(func(b []byte) { b[3] = 0 }), testLimits, "image header at offset 0: marker", 0},
		"bad id":           {mutate(func(b []byte) { b[8] = 'Y' }), testLimits, "id 0x59454e46", 0},
		"version 1":        {mutate(func(b []byte) { b[15] = 1 }), testLimits, "version 1, want 2 or 3", 0},
		"version 4":        {mutate(func(b []byte) { b[15] = 4 }), testLimits, "version 4, want 2 or 3", 0},
		"big-endian":       {mutate(func(b []byte) { b[17] = 1 }), testLimits, "big-endian", 0},
		"reserved options": {mutate(func(b []byte) { b[16] = 0x80 }), testLimits, "reserved option bits", 0},
		"reserved image":   {mutate(func(b []byte) { b[23] = 1 }), testLimits, "reserved octets 18-23", 0},
		"PVH domain type":  {mutate(func(b []byte) { b[24] = 3 }), testLimits, "domain header at offset 24: domain type 0x3", 24},
		"page shift 13":    {mutate(func(b []byte) { b[28] = 13 }), testLimits, "page shift 13", 24},
		"v3 record in v2 stream": {mutate(func(b []byte) { b[15] = 2 }), testLimits,
			"record 0 (X86_CPUID_POLICY) at offset 40: X86_CPUID_POLICY in a version 2 stream", 40},
		"record too long": {valid, Limits{MaxPFN: 1 << 20, MaxRecordLength: 4096},
			"record 3 (PAGE_DATA) at offset " + strconv.Itoa(pd) + ": body length 8216 is over the limit of 4096", int64(pd)},
		"huge length not allocated": {mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[pd+4:], 0xFFFFFFF0) }),
			Limits{MaxPFN: 1 << 20, MaxRecordLength: 1 << 30}, "body length 4294967280 is over the limit", int64(pd)},
		"PAGE_DATA count too small": {mutate(func(b []byte) { b[pd+8] = 1 }), testLimits,
			"1 of 1 pages carry data: body must be 4112 octets, is 8216", int64(pd)},
		"PAGE_DATA count too large": {mutate(func(b []byte) { b[pd+8], b[pd+10] = 0, 1 }), Limits{MaxPFN: 1 << 20, MaxPagesPerRecord: 1 << 20},
			"count 65536 needs 524288 octets of pfns, body has 8208", int64(pd)},
		"PAGE_DATA count zero": {mutate(func(b []byte) { b[pd+8] = 0 }), testLimits, "count is 0", int64(pd)},
		"PAGE_DATA count over cap": {valid, Limits{MaxPFN: 1 << 20, MaxPagesPerRecord: 1},
			"count 2 is over the limit of 1 pages per record", int64(pd)},
		"PFN over the limit": {valid, Limits{MaxPFN: 0x1000},
			"pfn[1] 0xfefff is not below the limit 0x1000", int64(pd)},
		"PFN reserved bits": {mutate(func(b []byte) { b[pd+16+6] = 0x10 }), testLimits,
			"pfn[0] 0x0010000000000000 has reserved bits", int64(pd)},
		"PFN reserved type": {mutate(func(b []byte) { b[pd+16+7] = 0x50 }), testLimits,
			"reserved page type 0x5", int64(pd)},
		"non-zero padding": {badPadding(appendRaw(rawStream(DomainX86HVM, append(staticHVM, &HVMParams{})...),
			TypeHVMContext, []byte{1})), testLimits, "record 3 (HVM_CONTEXT) at offset 96: padding is not zero", 96},
		"END missing": {valid[:len(valid)-8], testLimits, "record 8 (record header) at offset " + strconv.Itoa(len(valid)-8) + ": truncated", int64(len(valid) - 8)},
		"vCPU before P2M frames": {rawStream(DomainX86PV, &X86PVInfo{GuestWidth: 8, PTLevels: 4}, StaticDataEnd{},
			&X86PVVCPUBasic{}), testLimits, "record 2 (X86_PV_VCPU_BASIC) at offset 64: X86_PV_VCPU_BASIC before X86_PV_P2M_FRAMES", 64},
		"PAGE_DATA before STATIC_DATA_END": {rawStream(DomainX86HVM, &PageData{Pages: []Page{{PFN: 1, Type: PageXTab}}},
			StaticDataEnd{}, End{}), testLimits, "record 0 (PAGE_DATA) at offset 40: PAGE_DATA before STATIC_DATA_END", 40},
		"policy after STATIC_DATA_END": {rawStream(DomainX86HVM, append(staticHVM, &X86MSRPolicy{MSRs: []MSREntry{{}}})...),
			testLimits, "X86_MSR_POLICY after STATIC_DATA_END", -1},
		"PV PAGE_DATA before P2M": {rawStream(DomainX86PV, &X86PVInfo{GuestWidth: 8, PTLevels: 4}, StaticDataEnd{},
			&PageData{Pages: []Page{{PFN: 1, Type: PageXTab}}}), testLimits, "PAGE_DATA before X86_PV_P2M_FRAMES", -1},
		"PV P2M frame count": {rawStream(DomainX86PV, &X86PVInfo{GuestWidth: 8, PTLevels: 4}, StaticDataEnd{},
			&X86PVP2MFrames{StartPFN: 0, EndPFN: 512, P2MPFNs: []uint64{1}}), testLimits,
			"record 2 (X86_PV_P2M_FRAMES) at offset 64: pfns 0x0-0x200 need 2 p2m frames, record has 1", 64},
		"PV record in HVM stream": {rawStream(DomainX86HVM, &X86PVInfo{GuestWidth: 8, PTLevels: 4}), testLimits,
			"X86_PV_INFO in an x86 HVM stream", 40},
		"checkpoint refused": {appendRaw(rawStream(DomainX86HVM, staticHVM...), TypeCheckpoint, nil), testLimits,
			"CHECKPOINT) at offset 80: checkpointed (Remus/COLO) streams are not supported", 80},
		"unknown mandatory": {appendRaw(rawStream(DomainX86HVM, staticHVM...), 0x13, nil), testLimits,
			"record 2 (record type 0x13) at offset 80: unknown mandatory record type", 80},
		"END with a body": {appendRaw(rawStream(DomainX86HVM, staticHVM...), TypeEnd, []byte{0}), testLimits,
			"body is 1 octets, want none", 80},
		"HVM_PARAMS count mismatch": {appendRaw(rawStream(DomainX86HVM, staticHVM...), TypeHVMParams,
			[]byte{2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}), testLimits,
			"count 2 needs a body of 40 octets, is 24", 80},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := readAll(tc.stream, tc.limits)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			var fe *FormatError
			if !errors.As(err, &fe) {
				t.Fatalf("error %T is not a *FormatError", err)
			}
			if tc.offset >= 0 && fe.Offset != tc.offset {
				t.Errorf("offset %d, want %d", fe.Offset, tc.offset)
			}
		})
	}
}

func badPadding(b []byte) []byte {
	b[len(b)-1] = 1
	return b
}

// TestTruncated: a stream cut anywhere before the end of END is refused
// as truncated, naming the offset where the cut header or record starts.
func TestTruncated(t *testing.T) {
	for _, tc := range []struct {
		domain DomainType
		recs   []Record
	}{{DomainX86HVM, hvmRecords()}, {DomainX86PV, pvRecords()}} {
		valid := writeStream(t, tc.domain, tc.recs)
		for n := 0; n < len(valid); n++ {
			_, _, err := readAll(valid[:n], testLimits)
			if err == nil || !strings.Contains(err.Error(), "truncated") {
				t.Fatalf("%v stream cut at %d of %d: %v", tc.domain, n, len(valid), err)
			}
		}
	}
}

// TestLongRecordNotAllocatedUpFront: a record that announces the longest
// body allowed and brings a few octets costs about what it brought.
func TestLongRecordNotAllocatedUpFront(t *testing.T) {
	b := rawStream(DomainX86HVM, StaticDataEnd{})
	b = le.AppendUint32(b, uint32(TypeX86TSCInfo))
	b = le.AppendUint32(b, DefaultMaxRecordLength)
	b = append(b, make([]byte, 100)...)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, _, err := readAll(b, testLimits)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("want a truncated stream, got %v", err)
	}
	if n := after.TotalAlloc - before.TotalAlloc; n > 1<<20 {
		t.Errorf("a record of %d announced octets and 100 sent allocated %d octets", DefaultMaxRecordLength, n)
	}
}
