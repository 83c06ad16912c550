package stream

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// page returns a page filled with b.
func page(b byte) []byte { return bytes.Repeat([]byte{b}, x86PageSize) }

// pvRecords are the records of an x86 PV image in the order Xen 4.17
// writes them, with every PV record type.
func pvRecords() []Record {
	return []Record{
		&X86PVInfo{GuestWidth: 8, PTLevels: 4},
		&X86CPUIDPolicy{Leaves: []CPUIDLeaf{{Leaf: 0, Subleaf: 0xFFFFFFFF, A: 0xD, B: 0x756E6547}, {Leaf: 1, A: 0x806EA}}},
		&X86MSRPolicy{MSRs: []MSREntry{{Index: 0xCE, Value: 1 << 40}, {Index: 0x10A, Flags: 0, Value: 0}}},
		StaticDataEnd{},
		&X86PVP2MFrames{StartPFN: 0, EndPFN: 511, P2MPFNs: []uint64{0x30}},
		&PageData{Pages: []Page{
			{PFN: 0, Type: PageNormal, Data: page(1)},
			{PFN: 1, Type: PageL4Pinned, Data: page(2)},
			{PFN: 2, Type: PageL1, Data: page(3)},
			{PFN: 3, Type: PageXTab},
			{PFN: 4, Type: PageBroken},
			{PFN: 5, Type: PageXAlloc},
		}},
		&PageData{Pages: []Page{{PFN: 0x30, Type: PageNormal, Data: page(4)}}},
		&X86TSCInfo{Mode: 1, KHz: 2_000_000, Nsec: 123456789, Incarnation: 3},
		&SharedInfo{Page: page(5)},
		&X86PVVCPUBasic{VCPUContext{VCPUID: 0, Context: []byte{1, 2, 3, 4, 5}}},
		&X86PVVCPUExtended{VCPUContext{VCPUID: 0, Context: bytes.Repeat([]byte{6}, 128)}},
		&X86PVVCPUXSave{VCPUContext{VCPUID: 0, Context: bytes.Repeat([]byte{7}, 832)}},
		&X86PVVCPUMSRs{VCPUContext{VCPUID: 0, Context: bytes.Repeat([]byte{8}, 16)}},
		&X86PVVCPUBasic{VCPUContext{VCPUID: 1, Context: []byte{9}}},
		End{},
	}
}

// hvmRecords are the records of an x86 HVM (PVH) image in the order Xen
// 4.17 writes them, with every HVM record type.
func hvmRecords() []Record {
	return []Record{
		&X86CPUIDPolicy{Leaves: []CPUIDLeaf{{Leaf: 0x40000000, A: 0x40000105}}},
		&X86MSRPolicy{MSRs: []MSREntry{{Index: 0xCE}}},
		StaticDataEnd{},
		&PageData{Pages: []Page{{PFN: 0, Data: page(1)}, {PFN: 0xFEFFF, Data: page(2)}}},
		&PageData{Pages: []Page{{PFN: 7, Type: PageXTab}}},
		&X86TSCInfo{Mode: 0, KHz: 1_000_000},
		&HVMContext{Blob: bytes.Repeat([]byte{0xAB}, 1001)}, // before HVM_PARAMS, as Xen writes them
		&HVMParams{Params: []HVMParam{{Index: 1, Value: 0xFEFFF}, {Index: 2, Value: 3}}},
		End{},
	}
}

var testHeader = map[DomainType]DomainHeader{
	DomainX86PV:  {Type: DomainX86PV, XenMajor: 4, XenMinor: 17},
	DomainX86HVM: {Type: DomainX86HVM, XenMajor: 4, XenMinor: 17},
}

func writeStream(t testing.TB, d DomainType, recs []Record) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testHeader[d])
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := w.WriteRecord(r); err != nil {
			t.Fatalf("WriteRecord(%v): %v", r.Type(), err)
		}
	}
	return buf.Bytes()
}

var testLimits = Limits{MaxPFN: 1 << 20}

func readAll(b []byte, l Limits) (*Reader, []Record, error) {
	r, err := NewReader(bytes.NewReader(b), l)
	if err != nil {
		return nil, nil, err
	}
	var recs []Record
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			return r, recs, nil
		}
		if err != nil {
			return r, recs, err
		}
		recs = append(recs, rec)
	}
}

func TestRoundTrip(t *testing.T) {
	for name, tc := range map[string]struct {
		domain DomainType
		recs   []Record
	}{
		"x86 PV":  {DomainX86PV, pvRecords()},
		"x86 HVM": {DomainX86HVM, hvmRecords()},
	} {
		t.Run(name, func(t *testing.T) {
			b := writeStream(t, tc.domain, tc.recs)
			if len(b)%8 != 0 {
				t.Errorf("stream of %d octets is not 8-aligned", len(b))
			}
			r, got, err := readAll(b, testLimits)
			if err != nil {
				t.Fatal(err)
			}
			if r.Image().Version != Version3 {
				t.Errorf("version %d, want 3", r.Image().Version)
			}
			want := testHeader[tc.domain]
			want.PageShift = 12
			if r.Domain() != want {
				t.Errorf("domain header %+v, want %+v", r.Domain(), want)
			}
			if len(got) != len(tc.recs) {
				t.Fatalf("read %d records, wrote %d", len(got), len(tc.recs))
			}
			for i := range got {
				if !reflect.DeepEqual(got[i], tc.recs[i]) {
					t.Errorf("record %d: read %#v, wrote %#v", i, got[i], tc.recs[i])
				}
			}
		})
	}
}

// TestWriterRefuses: the writer writes nothing the reader would refuse.
func TestWriterRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		domain DomainType
		recs   []Record // the last one is refused
	}{
		"HVM record in PV stream": {DomainX86PV, []Record{&HVMParams{}}},
		"PV record in HVM stream": {DomainX86HVM, []Record{&X86PVInfo{GuestWidth: 8, PTLevels: 4}}},
		"PAGE_DATA before STATIC_DATA_END": {DomainX86HVM, []Record{
			&PageData{Pages: []Page{{PFN: 1, Data: page(0)}}}}},
		"short page": {DomainX86HVM, []Record{StaticDataEnd{},
			&PageData{Pages: []Page{{PFN: 1, Data: []byte{1}}}}}},
		"data on XTAB page": {DomainX86HVM, []Record{StaticDataEnd{},
			&PageData{Pages: []Page{{PFN: 1, Type: PageXTab, Data: page(0)}}}}},
		"empty PAGE_DATA":  {DomainX86HVM, []Record{StaticDataEnd{}, &PageData{}}},
		"pfn over 52 bits": {DomainX86HVM, []Record{StaticDataEnd{}, &PageData{Pages: []Page{{PFN: 1 << 52, Type: PageXTab}}}}},
		"reserved type":    {DomainX86HVM, []Record{StaticDataEnd{}, &PageData{Pages: []Page{{PFN: 1, Type: 6}}}}},
		"bad PV width":     {DomainX86PV, []Record{&X86PVInfo{GuestWidth: 2, PTLevels: 4}}},
		"short shared info": {DomainX86PV, []Record{&X86PVInfo{GuestWidth: 8, PTLevels: 4}, StaticDataEnd{},
			&SharedInfo{Page: []byte{1}}}},
		"P2M frames before PV info": {DomainX86PV, []Record{&X86PVP2MFrames{EndPFN: 1, P2MPFNs: []uint64{1}}}},
		"record after END":          {DomainX86HVM, []Record{StaticDataEnd{}, End{}, End{}}},
		"too many pages": {DomainX86HVM, []Record{StaticDataEnd{},
			&PageData{Pages: xtabPages(DefaultMaxPagesPerRecord + 1)}}},
		"record too long": {DomainX86HVM, []Record{StaticDataEnd{},
			&HVMContext{Blob: make([]byte, DefaultMaxRecordLength+1)}}},
	} {
		t.Run(name, func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewWriter(&buf, testHeader[tc.domain])
			if err != nil {
				t.Fatal(err)
			}
			last := len(tc.recs) - 1
			for _, r := range tc.recs[:last] {
				if err := w.WriteRecord(r); err != nil {
					t.Fatal(err)
				}
			}
			before := buf.Len()
			err = w.WriteRecord(tc.recs[last])
			if err == nil {
				t.Fatalf("WriteRecord(%v) accepted", tc.recs[last].Type())
			}
			t.Log(err)
			if buf.Len() != before {
				t.Errorf("refused record wrote %d octets", buf.Len()-before)
			}
		})
	}
}

// TestSkipsOptionalRecords: an unknown optional record is skipped, an
// unknown mandatory one refused.
func TestSkipsOptionalRecords(t *testing.T) {
	b := writeStream(t, DomainX86HVM, hvmRecords())
	optional := []byte{0x01, 0, 0, 0x80, 3, 0, 0, 0, 1, 2, 3, 0, 0, 0, 0, 0}
	at := imageHeaderSize + domainHeaderSize
	s := append(append(append([]byte{}, b[:at]...), optional...), b[at:]...)
	_, recs, err := readAll(s, testLimits)
	if err != nil || len(recs) != len(hvmRecords()) {
		t.Fatalf("with an optional record: %d records, %v", len(recs), err)
	}
	mandatory := append([]byte{}, optional...)
	mandatory[3] = 0x7F
	s = append(append(append([]byte{}, b[:at]...), mandatory...), b[at:]...)
	if _, _, err := readAll(s, testLimits); err == nil {
		t.Fatal("unknown mandatory record accepted")
	}
}

// TestReadsVersion2: a version 2 stream (Xen 4.13 and older), without the
// static data records, is read.
func TestReadsVersion2(t *testing.T) {
	recs := hvmRecords()[3:] // from the first PAGE_DATA on
	b := rawStream(DomainX86HVM, recs...)
	b[15] = Version2
	r, got, err := readAll(b, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if r.Image().Version != Version2 || !reflect.DeepEqual(got, recs) {
		t.Errorf("version %d, %d records: not what was written", r.Image().Version, len(got))
	}
}

// xtabPages returns n pages without contents.
func xtabPages(n int) []Page {
	pages := make([]Page, n)
	for i := range pages {
		pages[i] = Page{PFN: uint64(i), Type: PageXTab}
	}
	return pages
}
