package kernel

import (
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// Decompressed output is collected in fixed chunks and copied once, at
// the end, into a slice of exactly its length. A decompression bomb is
// refused after at most the limit in chunks; nothing is sized from what
// the image claims. (Growing one buffer instead, as bytes.Buffer does,
// allocated three times the limit per refused bomb.) The chunks are
// anonymous mappings outside the Go heap (newChunk, mmap_linux.go),
// unmapped as soon as the expansion is done: a refused bomb's output goes
// back to the system at once. (Pooled on the heap, it stayed resident
// until two collections had passed, and the garbage around it until the
// heap reached the runtime's memory limit.)
const expandChunk = 1 << 20

// ratioGrace is how far output may run ahead of MaxRatio times the
// compressed bytes read so far. Past it, a stream that expands faster than
// the ratio is refused at once: a bomb costs about this much work and
// memory however it is padded. Real kernels have a highly compressible
// start (Debian's 6.1 bzImage: the ELF header and alignment padding make
// its first 2 MB expand ~3900:1, running 2 MB ahead of 64:1 at most, while
// the whole is 8:1), hence a grace of 8 times that.
const ratioGrace = 16 << 20

// expansion is one payload being decompressed: how much it may produce and
// what it has produced so far.
type expansion struct {
	where  string
	max    uint64          // most output bytes in all
	ratio  uint64          // most output per compressed byte read (lim.MaxRatio)
	in     *countingReader // the compressed bytes the decoder has read
	before uint64          // output of earlier blocks of the same payload
	chunks []*[]byte
	n      uint64 // bytes collected
}

// check refuses collecting n bytes when that exceeds the size limit or
// outruns the ratio.
func (e *expansion) check(n uint64) error {
	if n > e.max {
		return tooLarge(e.where, "expands to more than %d bytes (decompression bomb?)", e.max)
	}
	if n += e.before; n > ratioGrace {
		allowed := e.in.n * e.ratio
		if e.ratio != 0 && allowed/e.ratio != e.in.n {
			allowed = ^uint64(0)
		}
		if n-ratioGrace > allowed {
			return tooLarge(e.where, "expands to %d bytes from %d compressed bytes, more than %d:1 (decompression bomb?)",
				n, e.in.n, e.ratio)
		}
	}
	return nil
}

// readFrom collects rd to its end.
func (e *expansion) readFrom(rd io.Reader) error {
	for {
		off := e.n % expandChunk
		if off == 0 {
			if err := e.grow(); err != nil {
				return err
			}
		}
		c := *e.chunks[len(e.chunks)-1]
		k, err := rd.Read(c[off:])
		if err := e.check(e.n + uint64(k)); err != nil {
			return err
		}
		e.n += uint64(k)
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded):
			return tooLarge(e.where, "%v (decompression bomb?)", err)
		case err != nil:
			return malformed(e.where, "corrupt data after %d output bytes: %v", e.n, err)
		}
	}
}

// write appends b (for decoders that produce whole blocks).
func (e *expansion) write(b []byte) error {
	if err := e.check(e.n + uint64(len(b))); err != nil {
		return err
	}
	for len(b) > 0 {
		off := e.n % expandChunk
		if off == 0 {
			if err := e.grow(); err != nil {
				return err
			}
		}
		k := copy((*e.chunks[len(e.chunks)-1])[off:], b)
		e.n += uint64(k)
		b = b[k:]
	}
	return nil
}

// grow adds a chunk.
func (e *expansion) grow() error {
	c, err := newChunk()
	if err != nil {
		return fmt.Errorf("kernel: %s: output buffer: %w", e.where, err)
	}
	e.chunks = append(e.chunks, c)
	return nil
}

// bytes returns the output in one slice of its exact length and gives the
// chunks back; the expansion is empty afterwards.
func (e *expansion) bytes() ([]byte, error) {
	defer e.release()
	if e.n == 0 {
		return nil, malformed(e.where, "decompresses to nothing")
	}
	out := make([]byte, e.n)
	p := out
	for _, c := range e.chunks {
		p = p[copy(p, *c):]
	}
	return out, nil
}

// release gives the chunks back to the system.
func (e *expansion) release() {
	for _, c := range e.chunks {
		freeChunk(c)
	}
	e.chunks, e.n = nil, 0
}

// expand decompresses rd, which reads the compressed bytes through in, to
// its end under the limits.
func expand(rd io.Reader, in *countingReader, max, ratio uint64, where string) ([]byte, error) {
	e := &expansion{where: where, max: max, ratio: ratio, in: in}
	if err := e.readFrom(rd); err != nil {
		e.release()
		return nil, err
	}
	return e.bytes()
}

// countingReader counts the bytes read from a bytes.Reader-like source. It
// is an io.ByteReader so decoders read it as they would the source, without
// buffering ahead (unxz finds where a block ended from the source).
type countingReader struct {
	r interface {
		io.Reader
		io.ByteReader
	}
	n uint64
}

func (c *countingReader) Read(p []byte) (int, error) {
	k, err := c.r.Read(p)
	c.n += uint64(k)
	return k, err
}

func (c *countingReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}
