package stream

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Writer emits a stream: the headers when it is made, then one record per
// WriteRecord, then END. It refuses, before writing anything of it, a
// record a Reader with default Limits would refuse (a malformed body, one
// out of order, more than DefaultMaxPagesPerRecord pages, a body over
// DefaultMaxRecordLength).
type Writer struct {
	w     io.Writer
	seq   sequence
	rules bodyRules
	buf   []byte
	err   error // the first write error; the stream is unusable after it
}

// NewWriter writes the image header (version 3, little-endian) and the
// domain header for a domain of type d.Type saved by Xen
// d.XenMajor.d.XenMinor. d.PageShift 0 means 12, the only one of x86.
func NewWriter(w io.Writer, d DomainHeader) (*Writer, error) {
	if d.PageShift == 0 {
		d.PageShift = x86PageShift
	}
	if d.Type != DomainX86PV && d.Type != DomainX86HVM {
		return nil, fmt.Errorf("stream: cannot write a stream for %v", d.Type)
	}
	if d.PageShift != x86PageShift {
		return nil, fmt.Errorf("stream: page shift %d: x86 has 12", d.PageShift)
	}
	sw := &Writer{w: w,
		seq:   sequence{version: Version3, domain: d.Type},
		rules: bodyRules{pageSize: x86PageSize, maxPFN: pfnMask + 1, maxPagesPerRecord: DefaultMaxPagesPerRecord},
	}
	b := make([]byte, 0, imageHeaderSize+domainHeaderSize)
	b = binary.BigEndian.AppendUint64(b, imageMarker)
	b = binary.BigEndian.AppendUint32(b, imageID)
	b = binary.BigEndian.AppendUint32(b, Version3)
	b = binary.BigEndian.AppendUint64(b, 0) // options (little-endian) and reserved
	b = le.AppendUint32(b, uint32(d.Type))
	b = le.AppendUint16(b, d.PageShift)
	b = le.AppendUint16(b, 0)
	b = le.AppendUint32(b, d.XenMajor)
	b = le.AppendUint32(b, d.XenMinor)
	if _, err := w.Write(b); err != nil {
		return nil, fmt.Errorf("stream: writing headers: %w", err)
	}
	return sw, nil
}

// WriteRecord writes one record. A record refused for its content or its
// place leaves the stream as it was; a failed write leaves it unusable.
func (w *Writer) WriteRecord(rec Record) error {
	if w.err != nil {
		return w.err
	}
	t := rec.Type()
	if p, ok := rec.(*PageData); ok {
		if err := checkPages(p); err != nil {
			return fmt.Errorf("stream: %v: %w", t, err)
		}
	}
	body := rec.appendBody(w.buf[:0])
	if len(body) > DefaultMaxRecordLength {
		return fmt.Errorf("stream: %v: body of %d octets is over the %d a Reader takes by default",
			t, len(body), DefaultMaxRecordLength)
	}
	if _, err := decodeBody(t, body, w.rules); err != nil {
		return fmt.Errorf("stream: %v: %w", t, err)
	}
	seq := w.seq
	if err := seq.next(t); err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	var h [recordHeaderSize]byte
	le.PutUint32(h[:], uint32(t))
	le.PutUint32(h[4:], uint32(len(body)))
	pad := (recordAlign - len(body)%recordAlign) % recordAlign
	var zeros [recordAlign]byte
	for _, part := range [][]byte{h[:], body, zeros[:pad]} {
		if _, err := w.w.Write(part); err != nil {
			w.err = fmt.Errorf("stream: writing %v: %w", t, err)
			return w.err
		}
	}
	w.seq = seq
	if info, ok := rec.(*X86PVInfo); ok {
		w.rules.guestWidth = info.GuestWidth
	}
	w.buf = body[:0]
	return nil
}

// End writes the END record.
func (w *Writer) End() error { return w.WriteRecord(End{}) }

// checkPages checks what the encoding of PAGE_DATA would otherwise hide:
// a frame number or type spilling into the other's bits, or page contents
// of the wrong size.
func checkPages(p *PageData) error {
	for i, pg := range p.Pages {
		switch {
		case pg.PFN > pfnMask:
			return fmt.Errorf("page %d: pfn %#x does not fit in 52 bits", i, pg.PFN)
		case !pg.Type.Valid():
			return fmt.Errorf("page %d: reserved page type %#x", i, uint8(pg.Type))
		case pg.Type.HasData() && len(pg.Data) != x86PageSize:
			return fmt.Errorf("page %d: %d octets of data, want %d", i, len(pg.Data), x86PageSize)
		case !pg.Type.HasData() && pg.Data != nil:
			return fmt.Errorf("page %d: a page of type %#x carries no data", i, uint8(pg.Type))
		}
	}
	return nil
}
