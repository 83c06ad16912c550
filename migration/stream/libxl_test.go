package stream

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

var emulatorContext = LibxlRecord{Type: LibxlEmulatorContext, Emulator: EmulatorQemuUpstream, Data: []byte("QEVM blob")}

// writeLibxlStream writes a libxl stream around a libxc one, with the
// libxl records given after the libxc stream.
func writeLibxlStream(t testing.TB, d DomainType, recs []Record, after ...LibxlRecord) []byte {
	t.Helper()
	var buf bytes.Buffer
	lw, err := NewLibxlWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w, err := lw.BeginLibxc(testHeader[d])
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := w.WriteRecord(r); err != nil {
			t.Fatalf("WriteRecord(%v): %v", r.Type(), err)
		}
	}
	for _, r := range after {
		if err := lw.WriteRecord(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := lw.End(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readLibxl reads a libxl stream and the libxc stream in it.
func readLibxl(b []byte, l Limits) ([]LibxlRecord, []Record, error) {
	return readLibxlFrom(bytes.NewReader(b), l, func(_ *Reader, rec Record) Record { return rec })
}

// readLibxlFrom reads a libxl stream and the libxc stream in it, passing
// each libxc record (and its Reader) through keep.
func readLibxlFrom(in io.Reader, l Limits, keep func(*Reader, Record) Record) ([]LibxlRecord, []Record, error) {
	lr, err := NewLibxlReader(in, l)
	if err != nil {
		return nil, nil, err
	}
	var xl []LibxlRecord
	var xc []Record
	for {
		rec, err := lr.Next()
		if errors.Is(err, io.EOF) {
			return xl, xc, nil
		}
		if err != nil {
			return xl, xc, err
		}
		xl = append(xl, rec)
		if rec.Type != LibxlLibxcContext {
			continue
		}
		r, err := lr.Libxc()
		if err != nil {
			return xl, xc, err
		}
		for {
			rec, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return xl, xc, err
			}
			xc = append(xc, keep(r, rec))
		}
	}
}

// stripPages drops page contents, so that a whole guest is not held.
func stripPages(rec Record) Record {
	if p, ok := rec.(*PageData); ok {
		for i := range p.Pages {
			p.Pages[i].Data = nil
		}
	}
	return rec
}

func TestLibxlRoundTrip(t *testing.T) {
	b := writeLibxlStream(t, DomainX86HVM, hvmRecords(), emulatorContext)
	xl, xc, err := readLibxl(b, testLimits)
	if err != nil {
		t.Fatal(err)
	}
	wantXL := []LibxlRecord{{Type: LibxlLibxcContext}, emulatorContext, {Type: LibxlEnd}}
	if !reflect.DeepEqual(xl, wantXL) {
		t.Errorf("libxl records %+v, want %+v", xl, wantXL)
	}
	if !reflect.DeepEqual(xc, hvmRecords()) {
		t.Errorf("libxc records differ from those written")
	}
}

func TestLibxlWriterRefuses(t *testing.T) {
	var buf bytes.Buffer
	lw, err := NewLibxlWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := lw.End(); err == nil {
		t.Error("END without a libxc stream accepted")
	}
	if _, err := lw.BeginLibxc(testHeader[DomainX86HVM]); err != nil {
		t.Fatal(err)
	}
	if err := lw.WriteRecord(emulatorContext); err == nil {
		t.Error("a libxl record inside the libxc stream accepted")
	}
	if _, err := lw.BeginLibxc(testHeader[DomainX86HVM]); err == nil {
		t.Error("a second LIBXC_CONTEXT accepted")
	}
	for _, r := range []LibxlRecord{
		{Type: LibxlCheckpointEnd},
		{Type: LibxlEmulatorXenstoreData, Data: []byte("key\x00")},
		{Type: LibxlEmulatorContext, Emulator: 7},
		{Type: 9},
	} {
		if err := lw.WriteRecord(r); err == nil {
			t.Errorf("%+v accepted", r)
		}
	}
}

func TestLibxlMalformed(t *testing.T) {
	valid := writeLibxlStream(t, DomainX86HVM, hvmRecords(), emulatorContext)
	mutate := func(f func(b []byte)) []byte {
		b := bytes.Clone(valid)
		f(b)
		return b
	}
	libxcEnd := len(valid) - 8 - 32 // before EMULATOR_CONTEXT (8 + 8 + 9, padded) and the libxl END
	for name, tc := range map[string]struct {
		stream []byte
		want   string
	}{
		"bad ident":     {mutate(func(b []byte) { b[0] = 'l' }), "libxl header at offset 0: ident"},
		"version 3":     {mutate(func(b []byte) { b[11] = 3 }), "version 3, want 2"},
		"legacy":        {mutate(func(b []byte) { b[15] = 2 }), "legacy format"},
		"libxc broken":  {mutate(func(b []byte) { b[24] = 0 }), "image header at offset 24: marker"},
		"checkpoint":    {mutate(func(b []byte) { b[libxcEnd] = 4 }), "(CHECKPOINT_END) at offset " + strconv.Itoa(libxcEnd)},
		"unknown type":  {mutate(func(b []byte) { b[libxcEnd] = 9 }), "unknown mandatory record type"},
		"no END":        {valid[:len(valid)-8], "truncated"},
		"END first":     {append(bytes.Clone(valid[:16]), 0, 0, 0, 0, 0, 0, 0, 0), "END without a libxc stream"},
		"emulator body": {mutate(func(b []byte) { b[libxcEnd+4] = 4 }), "shorter than its 8-octet header"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := readLibxl(tc.stream, testLimits)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v does not say %q", err, tc.want)
			}
		})
	}
	for n := 0; n < len(valid); n++ {
		if _, _, err := readLibxl(valid[:n], testLimits); err == nil || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("cut at %d of %d: %v", n, len(valid), err)
		}
	}
}

// TestLibxlNextInsideLibxc: the libxl layer does not go on while the libxc
// stream is unread.
func TestLibxlNextInsideLibxc(t *testing.T) {
	b := writeLibxlStream(t, DomainX86HVM, hvmRecords())
	lr, err := NewLibxlReader(bytes.NewReader(b), testLimits)
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := lr.Next(); err != nil || rec.Type != LibxlLibxcContext {
		t.Fatalf("first record %v, %v", rec.Type, err)
	}
	if _, err := lr.Next(); err == nil || !strings.Contains(err.Error(), "not read to its END") {
		t.Fatalf("Next inside the libxc stream: %v", err)
	}
}

func FuzzReadLibxlStream(f *testing.F) {
	f.Add(writeLibxlStream(f, DomainX86HVM, withoutPageContents(hvmRecords()), emulatorContext))
	f.Add(writeLibxlStream(f, DomainX86PV, withoutPageContents(pvRecords(), TypeSharedInfo)))
	f.Fuzz(func(t *testing.T, b []byte) {
		readLibxl(b, fuzzLimits) //nolint:errcheck // only panics and hangs matter here
	})
}
