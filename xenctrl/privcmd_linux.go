package xenctrl

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux privcmd ioctls (include/uapi/xen/privcmd.h).
const (
	ioctlPrivcmdHypercall   = 0x305000 // struct privcmd_hypercall, 48 bytes
	ioctlPrivcmdMmapBatchV2 = 0x205004 // struct privcmd_mmapbatch_v2, 32 bytes
)

const (
	privcmdPath   = "/dev/xen/privcmd"
	hypercallPath = "/dev/xen/hypercall"
)

// privcmd is an open /dev/xen/privcmd plus a pool of hypercall buffers.
//
// Xen reads and writes hypercall arguments by guest virtual address, so the
// memory must be resident and must not move: Go heap memory qualifies for
// neither. Buffers are mapped from /dev/xen/hypercall (what libxencall does;
// the kernel hands out pages it keeps resident) or, on kernels without that
// device, anonymous memory locked with MAP_LOCKED and touched before use.
type privcmd struct {
	fd      *os.File
	hcFile  *os.File // /dev/xen/hypercall, nil when absent
	mu      sync.Mutex
	free    []*hbuf // cached one-page buffers
	maxFree int
	closed  bool // set by close: buffers released later are unmapped, not cached
}

// hbuf is one hypercall buffer of whole pages.
type hbuf struct {
	mem []byte
}

func (b *hbuf) addr() uintptr { return uintptr(unsafe.Pointer(&b.mem[0])) }

func openPrivcmd() (*privcmd, error) {
	fd, err := os.OpenFile(privcmdPath, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("xenctrl: no %s: not a Xen dom0 (or the xen-privcmd module is not loaded): %w", privcmdPath, err)
		}
		return nil, fmt.Errorf("xenctrl: open %s: %w", privcmdPath, err)
	}
	p := &privcmd{fd: fd, maxFree: 16}
	if hf, err := os.OpenFile(hypercallPath, os.O_RDWR|syscall.O_CLOEXEC, 0); err == nil {
		p.hcFile = hf
	}
	return p, nil
}

func (p *privcmd) close() error {
	p.mu.Lock()
	for _, b := range p.free {
		_ = unix.Munmap(b.mem)
	}
	p.free = nil
	p.closed = true
	p.mu.Unlock()
	if p.hcFile != nil {
		_ = p.hcFile.Close()
	}
	return p.fd.Close()
}

// alloc returns a zeroed buffer of at least n bytes.
func (p *privcmd) alloc(n int) (*hbuf, error) {
	pages := (n + PageSize - 1) / PageSize
	if pages == 0 {
		pages = 1
	}
	if pages == 1 {
		p.mu.Lock()
		if k := len(p.free); k > 0 {
			b := p.free[k-1]
			p.free = p.free[:k-1]
			p.mu.Unlock()
			clear(b.mem)
			return b, nil
		}
		p.mu.Unlock()
	}
	size := pages * PageSize
	if p.hcFile != nil {
		mem, err := unix.Mmap(int(p.hcFile.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err == nil {
			return &hbuf{mem: mem}, nil
		}
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_LOCKED)
	if err != nil {
		return nil, fmt.Errorf("xenctrl: map %d-page hypercall buffer: %w", pages, err)
	}
	_ = unix.Madvise(mem, unix.MADV_DONTFORK)
	for i := 0; i < len(mem); i += PageSize {
		mem[i] = 0 // fault every page in: an untouched page makes Xen fail with EFAULT
	}
	return &hbuf{mem: mem}, nil
}

// release returns a buffer to the pool (one-page ones) or unmaps it.
func (p *privcmd) release(b *hbuf) {
	if b == nil {
		return
	}
	if len(b.mem) == PageSize {
		p.mu.Lock()
		if !p.closed && len(p.free) < p.maxFree {
			p.free = append(p.free, b)
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
	_ = unix.Munmap(b.mem)
}

// privcmdHypercall is struct privcmd_hypercall.
type privcmdHypercall struct {
	op  uint64
	arg [5]uint64
}

// hypercall issues one hypercall. Xen's negative results come back as an
// errno; non-negative results are returned as is.
func (p *privcmd) hypercall(op uint64, args ...uint64) (uintptr, syscall.Errno) {
	// The kernel copies hc in (copy_from_user) before it calls Xen, and
	// Xen sees only the argument values, so hc may live on this
	// goroutine's stack: the stack cannot move during the system call.
	// Memory Xen itself reads or writes is always a hypercall buffer.
	hc := &privcmdHypercall{op: op}
	copy(hc.arg[:], args)
	r, e := ioctl(p.fd, ioctlPrivcmdHypercall, unsafe.Pointer(hc))
	if e != 0 {
		return 0, e
	}
	return r, 0
}

// ioctl runs ioctl(f, req, arg) inside f's RawConn.Control, which holds a
// reference on the descriptor: a concurrent Close (or the *os.File
// finalizer) cannot close it mid-call and let the kernel hand its number to
// another file, which would then receive our ioctl and its pointer. arg is
// converted to uintptr in the Syscall argument list itself, as the
// unsafe.Pointer rules require, and stays reachable through the closure.
// A closed f yields EBADF.
func ioctl(f *os.File, req uintptr, arg unsafe.Pointer) (uintptr, syscall.Errno) {
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, syscall.EBADF
	}
	var r uintptr
	var e syscall.Errno
	if err := rc.Control(func(fd uintptr) {
		r, _, e = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(arg))
	}); err != nil {
		return 0, syscall.EBADF
	}
	return r, e
}

// callStruct copies in (a struct image) into a hypercall buffer, issues the
// hypercall with the leading scalar arguments followed by the buffer's
// address, and copies the buffer back into in (Xen writes results there).
func (p *privcmd) callStruct(op uint64, lead []uint64, in []byte) (uintptr, syscall.Errno, error) {
	b, err := p.alloc(len(in))
	if err != nil {
		return 0, 0, err
	}
	defer p.release(b)
	copy(b.mem, in)
	args := append(append([]uint64{}, lead...), uint64(b.addr()))
	r, e := p.hypercall(op, args...)
	copy(in, b.mem[:len(in)])
	return r, e, nil
}
