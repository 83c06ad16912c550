package kernel

import (
	"bytes"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// OpenFile parses the kernel at path like LoadFile, but maps an
// uncompressed ELF file read-only instead of reading it: a distribution
// vmlinux is 60+ MB, and copying it through a read buffer costs seconds in
// a dom0 running on emulated CPUs. The returned Image aliases the mapping;
// call release once its segments have been copied (it is safe to call more
// than once). Compressed images are decompressed into memory and the
// mapping is dropped at once.
func OpenFile(path string, lim Limits) (img *Image, release func() error, err error) {
	lim = lim.withDefaults()
	// O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
	// writer forever; a regular file reads the same either way.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil, malformed("kernel", "%s is not a regular file", path)
	}
	if uint64(st.Size()) > lim.MaxImageSize {
		return nil, nil, tooLarge("kernel", "%s is %d bytes (limit %d)", path, st.Size(), lim.MaxImageSize)
	}
	if st.Size() == 0 {
		return nil, nil, malformed("kernel", "%s is empty", path)
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_POPULATE)
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
		img, err := Load(data, lim)
		unmap()
		return img, func() error { return nil }, err
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
