package kernel

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// openRegular opens the kernel or initrd file at path for reading and
// returns it with its size, refusing anything but a regular file of at most
// max bytes. The path is a guest owner's to choose, so it may name a FIFO
// (whose open would wait for a writer), a device (/dev/zero never ends), or
// a directory: the open does not block (O_NONBLOCK) and the type and size
// come from fstat of the open descriptor, so what is checked is what is
// read. Symbolic links are followed (no O_NOFOLLOW): /boot/vmlinuz is
// commonly one, and the target must be a regular file all the same.
func openRegular(path, what string, max uint64) (*os.File, int64, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, malformed(what, "%s is a %s, not a regular file", path, fileType(st.Mode()))
	}
	if uint64(st.Size()) > max {
		f.Close()
		return nil, 0, tooLarge(what, "%s is %d bytes (limit %d)", path, st.Size(), max)
	}
	if st.Size() == 0 {
		f.Close()
		return nil, 0, malformed(what, "%s is empty", path)
	}
	return f, st.Size(), nil
}

// fileType names the type of a file that is not a regular one.
func fileType(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe (FIFO)"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeSymlink != 0:
		return "symbolic link"
	}
	return "file of type " + m.Type().String()
}

// readFileLimited reads the regular file at path (see openRegular): exactly
// the size fstat reported, in one buffer, failing if the file then turns
// out to be longer or shorter (it changed while being read).
func readFileLimited(path string, max uint64, what string) ([]byte, error) {
	f, size, err := openRegular(path, what, max)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readExactly(f, size, path, what)
}

func readExactly(f *os.File, size int64, path, what string) ([]byte, error) {
	buf := make([]byte, size)
	if _, err := io.ReadFull(f, buf); err != nil {
		return nil, fmt.Errorf("kernel: read %s: %w (did it shrink while being read?)", path, err)
	}
	var one [1]byte
	if n, _ := f.Read(one[:]); n != 0 {
		return nil, tooLarge(what, "%s grew while being read", path)
	}
	return buf, nil
}
