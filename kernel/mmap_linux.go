package kernel

import (
	"bytes"
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

// OpenFile parses the kernel at path like LoadFile, but maps an
// uncompressed ELF file read-only instead of reading it: a distribution
// vmlinux is 60+ MB, and copying it through a read buffer costs seconds in
// a dom0 running on emulated CPUs. The returned Image aliases the mapping;
// call release once its segments have been copied (it is safe to call more
// than once). Compressed images are decompressed into memory and the
// mapping is dropped at once; their worst case (decompressionCost) is
// taken from mem first, waiting while other loads hold it, and is given
// back by release. One that cannot fit mem at all fails with
// ErrOverBudget before anything is decompressed.
func OpenFile(ctx context.Context, path string, lim Limits, mem *Budget) (img *Image, release func() error, err error) {
	lim = lim.withDefaults()
	f, size, err := openRegular(path, "kernel", lim.MaxImageSize)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	data, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_POPULATE)
	if err != nil {
		return nil, nil, fmt.Errorf("kernel: map %s: %w", path, err)
	}
	unmapped := false
	unmap := func() error {
		if unmapped {
			return nil
		}
		unmapped = true
		return unix.Munmap(data)
	}
	if !bytes.HasPrefix(data, []byte("\x7fELF")) {
		// Compressed: the result lives on the Go heap.
		defer unmap()
		give, err := mem.acquire(ctx, decompressionCost(data, lim), path)
		if err != nil {
			return nil, nil, err
		}
		img, err := Load(data, lim)
		if err != nil {
			give()
			return nil, nil, err
		}
		return img, func() error { give(); return nil }, nil
	}
	img, err = parseMapped(data, lim)
	if err != nil {
		unmap()
		return nil, nil, err
	}
	return img, unmap, nil
}

// parseMapped is ParseELF on a mapped file, under ReadGuard.
func parseMapped(data []byte, lim Limits) (img *Image, err error) {
	defer ReadGuard()(&err)
	return ParseELF(data, lim)
}

// newChunk maps an expandChunk-byte output buffer outside the Go heap;
// freeChunk unmaps it.
func newChunk() (*[]byte, error) {
	b, err := unix.Mmap(-1, 0, expandChunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, err
	}
	return &b, nil
}

func freeChunk(c *[]byte) { _ = unix.Munmap(*c) }
