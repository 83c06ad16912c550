package stream

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
)

// wire reads the framing the libxc and libxl layers share: fixed-size
// headers, and records of a type, a body length, the body and zero
// padding to 8 octets. It counts the offset for error messages.
type wire struct {
	r      *bufio.Reader
	offset int64 // of the next octet to read
}

func newWire(r io.Reader) *wire { return &wire{r: bufio.NewReader(r)} }

// readFull reads exactly len(b) octets; a short stream is
// io.ErrUnexpectedEOF.
func (w *wire) readFull(b []byte) error {
	n, err := io.ReadFull(w.r, b)
	w.offset += int64(n)
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return fmt.Errorf("truncated: %w", err)
	}
	return nil
}

// recordHeader reads a record header and checks its length against max.
// ok says whether the header itself was read.
func (w *wire) recordHeader(max uint32) (typ, length uint32, ok bool, err error) {
	var h [recordHeaderSize]byte
	if err := w.readFull(h[:]); err != nil {
		return 0, 0, false, err
	}
	typ, length = le.Uint32(h[:]), le.Uint32(h[4:])
	if length > max {
		return typ, length, true, fmt.Errorf("body length %d is over the limit of %d", length, max)
	}
	return typ, length, true, nil
}

func padded(length uint32) int64 {
	return (int64(length) + recordAlign - 1) &^ (recordAlign - 1)
}

// skipBody skips a body of length octets and its padding.
func (w *wire) skipBody(length uint32) error {
	n, err := io.CopyN(io.Discard, w.r, padded(length))
	w.offset += n
	if err != nil {
		return fmt.Errorf("truncated: %w", io.ErrUnexpectedEOF)
	}
	return nil
}

// body reads a body of length octets (already checked against a cap) and
// its padding, which must be zero.
func (w *wire) body(length uint32) ([]byte, error) {
	buf, err := w.readGrowing(padded(length))
	if err != nil {
		return nil, err
	}
	for _, c := range buf[length:] {
		if c != 0 {
			return nil, errors.New("padding is not zero")
		}
	}
	return buf[:length:length], nil
}

// bodyChunk is the most a reader allocates for a body before its octets
// arrive: a peer that announces a long record and sends little makes the
// reader hold about what it sent, not what it announced.
const bodyChunk = 64 << 10

// readGrowing reads n octets, growing its buffer as they arrive.
func (w *wire) readGrowing(n int64) ([]byte, error) {
	buf := make([]byte, 0, min(n, bodyChunk))
	for int64(len(buf)) < n {
		if len(buf) == cap(buf) {
			buf = slices.Grow(buf, int(min(n-int64(len(buf)), int64(len(buf)))))
		}
		end := int(min(n, int64(cap(buf)))) // Grow may give more than asked
		if err := w.readFull(buf[len(buf):end]); err != nil {
			return nil, err
		}
		buf = buf[:end]
	}
	return buf, nil
}
