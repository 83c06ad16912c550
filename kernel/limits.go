package kernel

import (
	"errors"
	"fmt"
)

// Limits bound what a guest-supplied image may make us do. The zero value of
// a field means its default (see DefaultLimits).
type Limits struct {
	// MaxImageSize is the largest kernel file accepted, compressed or not.
	MaxImageSize uint64
	// MaxDecompressed is the most bytes a compressed payload may expand to.
	MaxDecompressed uint64
	// MaxRatio is the most a payload may expand relative to its compressed
	// size (output/input). It is also checked as the output grows, against
	// the compressed bytes read so far, once the output passes 16 MiB: a
	// bomb is refused early, however much padding follows its stream.
	MaxRatio uint64
	// MaxLoadSize bounds the memory the loadable ELF segments may span
	// (sum of p_memsz, and the extent of their physical range).
	MaxLoadSize uint64
	// MaxSegments bounds e_phnum and e_shnum.
	MaxSegments int
	// MaxNotes bounds the number of ELF notes read.
	MaxNotes int
	// MaxInitrdSize is the largest initial ramdisk accepted.
	MaxInitrdSize uint64
}

// DefaultLimits are generous for any distribution kernel of today and still
// keep a hostile image from exhausting dom0.
var DefaultLimits = Limits{
	MaxImageSize:    256 << 20,
	MaxDecompressed: 256 << 20,
	MaxRatio:        64,
	MaxLoadSize:     512 << 20,
	MaxSegments:     64,
	MaxNotes:        256,
	MaxInitrdSize:   1 << 30,
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	if l.MaxImageSize != 0 {
		d.MaxImageSize = l.MaxImageSize
	}
	if l.MaxDecompressed != 0 {
		d.MaxDecompressed = l.MaxDecompressed
	}
	if l.MaxRatio != 0 {
		d.MaxRatio = l.MaxRatio
	}
	if l.MaxLoadSize != 0 {
		d.MaxLoadSize = l.MaxLoadSize
	}
	if l.MaxSegments != 0 {
		d.MaxSegments = l.MaxSegments
	}
	if l.MaxNotes != 0 {
		d.MaxNotes = l.MaxNotes
	}
	if l.MaxInitrdSize != 0 {
		d.MaxInitrdSize = l.MaxInitrdSize
	}
	return d
}

// ErrMalformed is matched (errors.Is) by every error about a bad image.
var ErrMalformed = errors.New("malformed kernel image")

// ErrTooLarge is matched by errors about an image exceeding a Limit,
// decompression bombs included.
var ErrTooLarge = errors.New("kernel image exceeds a limit")

// ErrUnsupported is matched by errors about a well-formed image of a kind
// this package does not load (e.g. a 32-bit ELF without a PVH entry, LZO payload).
var ErrUnsupported = errors.New("unsupported kernel image")

// FormatError says which field of which structure was wrong, and why.
type FormatError struct {
	Where string // e.g. "elf program header 3 p_filesz"
	Msg   string
	Kind  error // ErrMalformed, ErrTooLarge or ErrUnsupported
}

func (e *FormatError) Error() string {
	if e.Where == "kernel" { // the whole image: "kernel: kernel: ..." says it twice
		return "kernel: " + e.Msg
	}
	return fmt.Sprintf("kernel: %s: %s", e.Where, e.Msg)
}

// Unwrap lets errors.Is(err, ErrMalformed) and friends work.
func (e *FormatError) Unwrap() error { return e.Kind }

func malformed(where, format string, a ...any) error {
	return &FormatError{Where: where, Msg: fmt.Sprintf(format, a...), Kind: ErrMalformed}
}

func tooLarge(where, format string, a ...any) error {
	return &FormatError{Where: where, Msg: fmt.Sprintf(format, a...), Kind: ErrTooLarge}
}

func unsupported(where, format string, a ...any) error {
	return &FormatError{Where: where, Msg: fmt.Sprintf(format, a...), Kind: ErrUnsupported}
}

// span checks that [off, off+n) lies within a buffer of length size, without
// overflow, and returns the end.
func span(off, n, size uint64) (end uint64, ok bool) {
	end = off + n
	if end < off || end > size {
		return 0, false
	}
	return end, true
}
