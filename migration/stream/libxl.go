package stream

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The libxl layer (Xen's docs/specs/libxl-migration-stream.pandoc,
// version 2) wraps a libxc stream: a header ("LibxlFmt", version,
// options), then records of the same framing as libxc's. LIBXC_CONTEXT
// says that a whole libxc stream follows, up to its END; libxl records
// go on after it, up to the libxl END. `xl save` files (after xl's own
// header) and `xl migrate` carry this layer.

const (
	libxlIdent          = 0x4C6962786C466D74 // "LibxlFmt"
	libxlVersion        = 2
	libxlHeaderSize     = 16
	libxlOptionBigEnd   = 1 << 0
	libxlOptionLegacy   = 1 << 1
	libxlOptionReserved = 0xFFFFFFFC
)

// LibxlRecordType is a libxl record header's type.
type LibxlRecordType uint32

// Record types of the libxl layer.
const (
	LibxlEnd                  LibxlRecordType = 0
	LibxlLibxcContext         LibxlRecordType = 1
	LibxlEmulatorXenstoreData LibxlRecordType = 2
	LibxlEmulatorContext      LibxlRecordType = 3
	LibxlCheckpointEnd        LibxlRecordType = 4
	LibxlCheckpointState      LibxlRecordType = 5
)

var libxlTypeNames = map[LibxlRecordType]string{
	LibxlEnd:                  "libxl END",
	LibxlLibxcContext:         "LIBXC_CONTEXT",
	LibxlEmulatorXenstoreData: "EMULATOR_XENSTORE_DATA",
	LibxlEmulatorContext:      "EMULATOR_CONTEXT",
	LibxlCheckpointEnd:        "CHECKPOINT_END",
	LibxlCheckpointState:      "CHECKPOINT_STATE",
}

func (t LibxlRecordType) String() string {
	if n, ok := libxlTypeNames[t]; ok {
		return n
	}
	return fmt.Sprintf("libxl record type %#x", uint32(t))
}

// EmulatorID names the device model an emulator record belongs to.
type EmulatorID uint32

// Emulators of the libxl layer.
const (
	EmulatorUnknown         EmulatorID = 0
	EmulatorQemuTraditional EmulatorID = 1
	EmulatorQemuUpstream    EmulatorID = 2
)

// LibxlRecord is one record of the libxl layer. The emulator records
// (EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT) carry Emulator, Index and
// Data: NUL-terminated key and value strings one after the other for
// xenstore data, an opaque blob of the emulator for its context. END and
// LIBXC_CONTEXT carry nothing.
type LibxlRecord struct {
	Type     LibxlRecordType
	Emulator EmulatorID
	Index    uint32 // of the emulator, for the domain
	Data     []byte
}

func (r LibxlRecord) check() error {
	switch r.Type {
	case LibxlEnd, LibxlLibxcContext:
		if r.Emulator != 0 || r.Index != 0 || len(r.Data) != 0 {
			return fmt.Errorf("%v carries no body", r.Type)
		}
	case LibxlEmulatorXenstoreData, LibxlEmulatorContext:
		if r.Emulator > EmulatorQemuUpstream {
			return fmt.Errorf("unknown emulator %d", r.Emulator)
		}
		if r.Type == LibxlEmulatorXenstoreData {
			return checkXenstorePairs(r.Data)
		}
	case LibxlCheckpointEnd, LibxlCheckpointState:
		return errors.New("checkpointed (Remus/COLO) streams are not supported")
	default:
		return errors.New("unknown mandatory record type")
	}
	return nil
}

// checkXenstorePairs checks EMULATOR_XENSTORE_DATA's key/value strings.
func checkXenstorePairs(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if b[len(b)-1] != 0 {
		return errors.New("xenstore data is not NUL-terminated")
	}
	if n := bytes.Count(b, []byte{0}); n%2 != 0 {
		return fmt.Errorf("xenstore data holds %d strings, not key/value pairs", n)
	}
	return nil
}

func (r LibxlRecord) body() []byte {
	if r.Type != LibxlEmulatorXenstoreData && r.Type != LibxlEmulatorContext {
		return nil
	}
	b := le.AppendUint32(nil, uint32(r.Emulator))
	b = le.AppendUint32(b, r.Index)
	return append(b, r.Data...)
}

func decodeLibxlRecord(t LibxlRecordType, body []byte) (LibxlRecord, error) {
	r := LibxlRecord{Type: t}
	switch t {
	case LibxlEmulatorXenstoreData, LibxlEmulatorContext:
		if len(body) < 8 {
			return r, fmt.Errorf("body is %d octets, shorter than its 8-octet header", len(body))
		}
		r.Emulator, r.Index, r.Data = EmulatorID(le.Uint32(body)), le.Uint32(body[4:]), body[8:]
	default:
		if len(body) != 0 {
			return r, fmt.Errorf("body is %d octets, want none", len(body))
		}
	}
	return r, r.check()
}

// LibxlWriter writes the libxl layer around one libxc stream.
type LibxlWriter struct {
	w     io.Writer
	libxc *Writer // once LIBXC_CONTEXT is written
	ended bool
}

// NewLibxlWriter writes the libxl header (version 2, little-endian).
func NewLibxlWriter(w io.Writer) (*LibxlWriter, error) {
	b := binary.BigEndian.AppendUint64(nil, libxlIdent)
	b = binary.BigEndian.AppendUint32(b, libxlVersion)
	b = binary.BigEndian.AppendUint32(b, 0)
	if _, err := w.Write(b); err != nil {
		return nil, fmt.Errorf("stream: writing libxl header: %w", err)
	}
	return &LibxlWriter{w: w}, nil
}

// BeginLibxc writes LIBXC_CONTEXT and returns the Writer of the libxc
// stream that follows it; write that stream up to its End before any
// other libxl record.
func (lw *LibxlWriter) BeginLibxc(d DomainHeader) (*Writer, error) {
	if lw.libxc != nil {
		return nil, errors.New("stream: a second LIBXC_CONTEXT")
	}
	if err := lw.write(LibxlRecord{Type: LibxlLibxcContext}); err != nil {
		return nil, err
	}
	w, err := NewWriter(lw.w, d)
	if err != nil {
		return nil, err
	}
	lw.libxc = w
	return w, nil
}

// WriteRecord writes an emulator record.
func (lw *LibxlWriter) WriteRecord(r LibxlRecord) error {
	if r.Type == LibxlEnd || r.Type == LibxlLibxcContext {
		return fmt.Errorf("stream: write %v with End or BeginLibxc", r.Type)
	}
	return lw.write(r)
}

// End writes the libxl END, after the libxc stream's.
func (lw *LibxlWriter) End() error {
	if lw.libxc == nil {
		return errors.New("stream: libxl END without a libxc stream")
	}
	if err := lw.write(LibxlRecord{Type: LibxlEnd}); err != nil {
		return err
	}
	lw.ended = true
	return nil
}

func (lw *LibxlWriter) write(r LibxlRecord) error {
	switch {
	case lw.ended:
		return fmt.Errorf("stream: %v after the libxl END", r.Type)
	case lw.libxc != nil && !lw.libxc.seq.ended:
		return fmt.Errorf("stream: %v inside the libxc stream (write its End first)", r.Type)
	}
	if err := r.check(); err != nil {
		return fmt.Errorf("stream: %v: %w", r.Type, err)
	}
	body := r.body()
	b := le.AppendUint32(nil, uint32(r.Type))
	b = le.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	b = append(b, make([]byte, padded(uint32(len(body)))-int64(len(body)))...)
	if _, err := lw.w.Write(b); err != nil {
		return fmt.Errorf("stream: writing %v: %w", r.Type, err)
	}
	return nil
}

// LibxlReader reads the libxl layer. When Next returns LIBXC_CONTEXT,
// Libxc gives the Reader of the libxc stream that follows; read it up to
// its END before calling Next again.
type LibxlReader struct {
	w      *wire
	limits Limits
	libxc  *Reader
	index  int
	ended  bool
	err    error
}

// NewLibxlReader reads and checks the libxl header.
func NewLibxlReader(r io.Reader, limits Limits) (*LibxlReader, error) {
	limits, err := limits.withDefaults()
	if err != nil {
		return nil, err
	}
	lr := &LibxlReader{w: newWire(r), limits: limits}
	if err := lr.readHeader(); err != nil {
		return nil, &FormatError{Offset: 0, Record: -1, What: "libxl header", Err: err}
	}
	return lr, nil
}

func (lr *LibxlReader) readHeader() error {
	var b [libxlHeaderSize]byte
	if err := lr.w.readFull(b[:]); err != nil {
		return err
	}
	be := binary.BigEndian
	ident, version, options := be.Uint64(b[:]), be.Uint32(b[8:]), be.Uint32(b[12:])
	switch {
	case ident != libxlIdent:
		return fmt.Errorf("ident %#016x, want %#016x (\"LibxlFmt\")", ident, uint64(libxlIdent))
	case version != libxlVersion:
		return fmt.Errorf("version %d, want %d", version, libxlVersion)
	case options&libxlOptionReserved != 0:
		return fmt.Errorf("reserved option bits %#x set", options&libxlOptionReserved)
	case options&libxlOptionBigEnd != 0:
		return errors.New("big-endian stream: only little-endian streams are supported")
	case options&libxlOptionLegacy != 0:
		return errors.New("a stream converted from the legacy format is not supported")
	}
	return nil
}

// Libxc returns the Reader of the libxc stream, once Next has returned
// LIBXC_CONTEXT.
func (lr *LibxlReader) Libxc() (*Reader, error) {
	if lr.libxc == nil {
		return nil, errors.New("stream: no LIBXC_CONTEXT read yet")
	}
	return lr.libxc, nil
}

// Next returns the next libxl record; io.EOF after the libxl END.
func (lr *LibxlReader) Next() (LibxlRecord, error) {
	if lr.err != nil {
		return LibxlRecord{}, lr.err
	}
	if lr.ended {
		return LibxlRecord{}, io.EOF
	}
	start, index := lr.w.offset, lr.index
	rec, what, err := lr.next()
	if err != nil {
		lr.err = err
		if fe := (*FormatError)(nil); !errors.As(err, &fe) { // the libxc headers' error is one already
			lr.err = &FormatError{Offset: start, Record: index, What: what, Err: err}
		}
		return LibxlRecord{}, lr.err
	}
	lr.index++
	return rec, nil
}

func (lr *LibxlReader) next() (LibxlRecord, string, error) {
	if lr.libxc != nil && !lr.libxc.seq.ended {
		return LibxlRecord{}, "libxl record", errors.New("the libxc stream was not read to its END")
	}
	for {
		typ, length, ok, err := lr.w.recordHeader(lr.limits.MaxRecordLength)
		if !ok {
			return LibxlRecord{}, "libxl record header", err
		}
		t := LibxlRecordType(typ)
		if err != nil {
			return LibxlRecord{}, t.String(), err
		}
		if _, known := libxlTypeNames[t]; !known && typ&optionalRecordBit != 0 {
			if err := lr.w.skipBody(length); err != nil {
				return LibxlRecord{}, t.String(), err
			}
			lr.index++
			continue
		}
		rec, err := lr.record(t, length)
		return rec, t.String(), err
	}
}

func (lr *LibxlReader) record(t LibxlRecordType, length uint32) (LibxlRecord, error) {
	if _, known := libxlTypeNames[t]; !known {
		return LibxlRecord{}, errors.New("unknown mandatory record type")
	}
	if t == LibxlCheckpointEnd || t == LibxlCheckpointState {
		return LibxlRecord{}, errors.New("checkpointed (Remus/COLO) streams are not supported")
	}
	body, err := lr.w.body(length)
	if err != nil {
		return LibxlRecord{}, err
	}
	rec, err := decodeLibxlRecord(t, body)
	if err != nil {
		return LibxlRecord{}, err
	}
	switch t {
	case LibxlLibxcContext:
		if lr.libxc != nil {
			return LibxlRecord{}, errors.New("a second LIBXC_CONTEXT")
		}
		if lr.libxc, err = newReader(lr.w, lr.limits); err != nil {
			return LibxlRecord{}, err
		}
	case LibxlEnd:
		if lr.libxc == nil {
			return LibxlRecord{}, errors.New("END without a libxc stream")
		}
		lr.ended = true
	}
	return rec, nil
}
