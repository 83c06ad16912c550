package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sync/semaphore"
)

// ErrOverBudget is matched by the error of a load that needs more memory
// than the whole Budget: it is refused, not attempted.
var ErrOverBudget = errors.New("kernel image needs more memory than the budget")

// Budget is the memory that kernel loads in progress may hold at once,
// shared by all concurrent builds: a load takes its
// worst case from the budget before it allocates and gives it back when
// its image is released, so that concurrent loads queue instead of
// multiplying memory. A nil *Budget is no limit.
//
// What a load costs is decompressionCost: an uncompressed ELF kernel is
// mapped from its file (page cache the kernel can reclaim, not a copy)
// and costs nothing here; an initrd is streamed (OpenInitrd) and costs one
// read buffer.
type Budget struct {
	sem   *semaphore.Weighted
	total uint64
}

// NewBudget returns a budget of bytes; 0 means no limit (nil).
func NewBudget(bytes uint64) *Budget {
	if bytes == 0 {
		return nil
	}
	return &Budget{sem: semaphore.NewWeighted(int64(min(bytes, 1<<62))), total: bytes}
}

// Total is the budget's size in bytes (0: no limit).
func (b *Budget) Total() uint64 {
	if b == nil {
		return 0
	}
	return b.total
}

// acquire waits until n bytes of the budget are free and takes them, or
// fails at once if n exceeds the whole budget, or when ctx ends. release
// gives them back (it may be called more than once).
func (b *Budget) acquire(ctx context.Context, n uint64, path string) (release func(), err error) {
	if b == nil || n == 0 {
		return func() {}, nil
	}
	if n > b.total {
		return nil, &FormatError{Where: "memory budget", Kind: ErrOverBudget,
			Msg: fmt.Sprintf("%s: decompressing it may need %s, more than the daemon's whole memory budget of %s (--memory-limit)", path, size(n), size(b.total))}
	}
	if err := b.sem.Acquire(ctx, int64(n)); err != nil {
		return nil, err
	}
	done := false
	return func() {
		if !done {
			done = true
			b.sem.Release(int64(n))
		}
	}, nil
}

// size says n bytes, also in MiB when that is more readable.
func size(n uint64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%d bytes", n)
	}
	return fmt.Sprintf("%d bytes (%.1f MiB)", n, float64(n)/(1<<20))
}

// decompressionCost is the most memory that loading the compressed kernel
// data may hold at once: the output in chunks, its copy into one
// slice of exact length, and the decoder's window, which is at most the
// output (unxz caps the dictionary to it; gzip's is 32 KiB) — three times
// the output bound. The bound is what the header allows before anything
// is decompressed: for a bzImage, the size trailer (which the output may
// not pass) under MaxDecompressed and MaxRatio; for a bare compressed
// kernel, MaxDecompressed and MaxRatio. It is 0 for an ELF file (mapped,
// not copied) and for data Load refuses without decompressing.
func decompressionCost(data []byte, lim Limits) uint64 {
	lim = lim.withDefaults()
	var out uint64
	switch {
	case len(data) >= 4 && string(data[:4]) == "\x7fELF":
		return 0
	case IsBzImage(data):
		payload, ok := bzPayload(data)
		if !ok {
			return 0
		}
		out = min(outputLimit(payload, lim), uint64(binary.LittleEndian.Uint32(payload[len(payload)-4:])))
	case DetectCompression(data) != CompressionNone:
		out = outputLimit(data, lim)
	}
	return 3 * min(out, lim.MaxDecompressed)
}

// bzPayload is the compressed payload of a bzImage as its setup header
// places it, if it lies within data (Unwrap checks the header in full).
func bzPayload(data []byte) ([]byte, bool) {
	le := binary.LittleEndian
	sects := uint64(data[bzSetupSects])
	if sects == 0 {
		sects = 4
	}
	off := (sects+1)*512 + uint64(le.Uint32(data[bzPayloadOff:]))
	n := uint64(le.Uint32(data[bzPayloadLen:]))
	end, ok := span(off, n, uint64(len(data)))
	if !ok || n < 8 {
		return nil, false
	}
	return data[off:end], true
}
