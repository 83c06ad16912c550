package kernel

import (
	"context"
	"fmt"
	"io"
	"os"
)

// initrdChunk is how much of an initrd is read at once.
const initrdChunk = 1 << 20

// Initrd is an initial ramdisk being loaded: opaque bytes streamed from
// its file into guest memory in chunks, so that a ramdisk of up to
// MaxInitrdSize costs the daemon one chunk of memory, not its size.
type Initrd struct {
	f    *os.File
	path string
	size uint64
}

// OpenInitrd opens the initial ramdisk at path: a non-empty regular file
// of at most lim.MaxInitrdSize bytes. Close it when done.
func OpenInitrd(path string, lim Limits) (*Initrd, error) {
	f, size, err := openRegular(path, "initrd", lim.withDefaults().MaxInitrdSize)
	if err != nil {
		return nil, err
	}
	return &Initrd{f: f, path: path, size: uint64(size)}, nil
}

// Size is the initrd's size in bytes, as fstat gave it when opened.
func (r *Initrd) Size() uint64 { return r.size }

// Close closes the file.
func (r *Initrd) Close() error { return r.f.Close() }

// Copy reads the initrd from its start and passes it to write in order,
// in chunks of at most 1 MiB at offset off (the chunk is reused: write
// must not keep it). It fails if the file is not exactly Size bytes long
// (it changed since it was opened).
func (r *Initrd) Copy(ctx context.Context, write func(off uint64, chunk []byte) error) error {
	buf := make([]byte, min(r.size, initrdChunk))
	for off := uint64(0); off < r.size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(r.size-off, uint64(len(buf)))
		if _, err := io.ReadFull(io.NewSectionReader(r.f, int64(off), int64(n)), buf[:n]); err != nil {
			return fmt.Errorf("kernel: read initrd %s at %d: %w (did it shrink while being read?)", r.path, off, err)
		}
		if err := write(off, buf[:n]); err != nil {
			return err
		}
		off += n
	}
	var one [1]byte
	if n, _ := r.f.ReadAt(one[:], int64(r.size)); n != 0 {
		return tooLarge("initrd", "%s grew while being read", r.path)
	}
	return nil
}
