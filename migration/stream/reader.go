package stream

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Limits bound what a Reader accepts beyond the spec's own rules.
type Limits struct {
	// MaxPFN: every frame number in the stream must be below it (the
	// frames the destination domain may have). Required.
	MaxPFN uint64
	// MaxRecordLength caps a record's body length, and so the memory a
	// Reader holds at once. 0: DefaultMaxRecordLength.
	MaxRecordLength uint32
	// MaxPagesPerRecord caps a PAGE_DATA record's count. 0:
	// DefaultMaxPagesPerRecord.
	MaxPagesPerRecord uint32
}

// Defaults of Limits. Xen writes at most 1024 pages per PAGE_DATA record
// (about 4 MiB); its own reader caps records at 128 MiB, ours lower, as
// no record Xen writes for a domain of a sane size comes close.
const (
	DefaultMaxRecordLength   = 16 << 20
	DefaultMaxPagesPerRecord = 1024
)

func (l Limits) withDefaults() (Limits, error) {
	if l.MaxPFN == 0 {
		return l, errors.New("stream: Limits.MaxPFN is required")
	}
	if l.MaxRecordLength == 0 {
		l.MaxRecordLength = DefaultMaxRecordLength
	}
	if l.MaxPagesPerRecord == 0 {
		l.MaxPagesPerRecord = DefaultMaxPagesPerRecord
	}
	return l, nil
}

// FormatError says what is wrong with a stream and where.
type FormatError struct {
	Offset int64  // of the header or record at fault
	Record int    // index of the record (0 = first after the headers); -1 for the headers
	What   string // "image header", "domain header" or the record type
	Err    error
}

func (e *FormatError) Error() string {
	if e.Record < 0 {
		return fmt.Sprintf("migration stream: %s at offset %d: %v", e.What, e.Offset, e.Err)
	}
	return fmt.Sprintf("migration stream: record %d (%s) at offset %d: %v", e.Record, e.What, e.Offset, e.Err)
}

func (e *FormatError) Unwrap() error { return e.Err }

// Reader decodes a stream record by record.
type Reader struct {
	w      *wire
	limits Limits
	rules  bodyRules
	image  ImageHeader
	domain DomainHeader
	seq    sequence
	index  int   // of the next record
	err    error // the first error; every later Next returns it
}

// NewReader reads and checks the image and domain headers.
func NewReader(r io.Reader, limits Limits) (*Reader, error) {
	limits, err := limits.withDefaults()
	if err != nil {
		return nil, err
	}
	return newReader(newWire(r), limits)
}

// newReader reads a libxc stream from w's current offset on; limits have
// their defaults.
func newReader(w *wire, limits Limits) (*Reader, error) {
	sr := &Reader{w: w, limits: limits}
	start := w.offset
	if err := sr.readImageHeader(); err != nil {
		return nil, &FormatError{Offset: start, Record: -1, What: "image header", Err: err}
	}
	if err := sr.readDomainHeader(); err != nil {
		return nil, &FormatError{Offset: start + imageHeaderSize, Record: -1, What: "domain header", Err: err}
	}
	sr.rules = bodyRules{pageSize: 1 << sr.domain.PageShift, maxPFN: limits.MaxPFN,
		maxPagesPerRecord: limits.MaxPagesPerRecord}
	sr.seq = sequence{version: sr.image.Version, domain: sr.domain.Type}
	return sr, nil
}

// Image returns the image header.
func (r *Reader) Image() ImageHeader { return r.image }

// Domain returns the domain header.
func (r *Reader) Domain() DomainHeader { return r.domain }

func (r *Reader) readImageHeader() error {
	var b [imageHeaderSize]byte
	if err := r.w.readFull(b[:]); err != nil {
		return err
	}
	be := binary.BigEndian
	marker, id, version := be.Uint64(b[:]), be.Uint32(b[8:]), be.Uint32(b[12:])
	options := be.Uint16(b[16:])
	switch {
	case marker != imageMarker:
		return fmt.Errorf("marker %#016x, want %#016x (a legacy image or not a Xen image)", marker, uint64(imageMarker))
	case id != imageID:
		return fmt.Errorf("id %#08x, want %#08x (\"XENF\")", id, imageID)
	case version != Version2 && version != Version3:
		return fmt.Errorf("version %d, want 2 or 3", version)
	case options&optionsReserved != 0:
		return fmt.Errorf("reserved option bits %#04x set", options&optionsReserved)
	case options&optionBigEndian != 0:
		return errors.New("big-endian stream: only little-endian streams are supported")
	case be.Uint16(b[18:]) != 0 || be.Uint32(b[20:]) != 0:
		return errors.New("reserved octets 18-23 are not zero")
	}
	r.image = ImageHeader{Version: version}
	return nil
}

func (r *Reader) readDomainHeader() error {
	var b [domainHeaderSize]byte
	if err := r.w.readFull(b[:]); err != nil {
		return err
	}
	d := DomainHeader{Type: DomainType(le.Uint32(b[:])), PageShift: le.Uint16(b[4:]),
		XenMajor: le.Uint32(b[8:]), XenMinor: le.Uint32(b[12:])}
	switch {
	case d.Type != DomainX86PV && d.Type != DomainX86HVM:
		return fmt.Errorf("%v: only x86 PV (1) and x86 HVM (2) are supported", d.Type)
	case d.PageShift != x86PageShift:
		return fmt.Errorf("page shift %d, want %d on x86", d.PageShift, x86PageShift)
	case le.Uint16(b[6:]) != 0:
		return errors.New("reserved octets 6-7 are not zero")
	}
	r.domain = d
	return nil
}

// Next returns the next record. After END it returns io.EOF; after an
// error, the same error. Unknown optional records are skipped. Each record
// owns its memory: the Reader does not reuse it.
func (r *Reader) Next() (Record, error) {
	for {
		if r.err != nil {
			return nil, r.err
		}
		if r.seq.ended {
			return nil, io.EOF
		}
		start, index := r.w.offset, r.index
		rec, t, err := r.next()
		if err != nil {
			what := "record header"
			if t != nil {
				what = t.String()
			}
			r.err = &FormatError{Offset: start, Record: index, What: what, Err: err}
			return nil, r.err
		}
		r.index++
		if rec != nil {
			return rec, nil
		}
	}
}

// next reads one record; a nil record with no error is a skipped optional
// one. t is the record type once known.
func (r *Reader) next() (Record, *RecordType, error) {
	typ, length, ok, err := r.w.recordHeader(r.limits.MaxRecordLength)
	if !ok {
		return nil, nil, err
	}
	t := RecordType(typ)
	if err != nil {
		return nil, &t, err
	}
	_, known := recordTypeNames[t]
	switch {
	case !known && t.Optional():
		return nil, &t, r.w.skipBody(length)
	case !known:
		return nil, &t, errors.New("unknown mandatory record type")
	case refusedRecord(t) != "":
		return nil, &t, errors.New(refusedRecord(t))
	}
	if err := r.seq.next(t); err != nil {
		return nil, &t, err
	}
	body, err := r.w.body(length)
	if err != nil {
		return nil, &t, err
	}
	rec, err := decodeBody(t, body, r.rules)
	if err != nil {
		return nil, &t, err
	}
	if info, ok := rec.(*X86PVInfo); ok {
		r.rules.guestWidth = info.GuestWidth
	}
	return rec, &t, nil
}
