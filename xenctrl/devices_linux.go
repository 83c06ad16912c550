package xenctrl

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Linux /dev/xen/evtchn and /dev/xen/gntdev ioctls (include/uapi/xen/{evtchn,gntdev}.h).
const (
	ioctlEvtchnBindVIRQ        = 0x44500 // {u32 virq}
	ioctlEvtchnBindInterdomain = 0x84501 // {u32 remote_domain, remote_port}
	ioctlEvtchnBindUnboundPort = 0x44502 // {u32 remote_domain}
	ioctlEvtchnUnbind          = 0x44503 // {u32 port}
	ioctlEvtchnNotify          = 0x44504 // {u32 port}
	ioctlGntdevMapGrantRef     = 0x184700
	ioctlGntdevUnmapGrantRef   = 0x104701
	evtchnPath                 = "/dev/xen/evtchn"
	gntdevPath                 = "/dev/xen/gntdev"
)

// VIRQDomExc is VIRQ_DOM_EXC: a domain shut down or died.
const VIRQDomExc = 3

// Evtchn is an open /dev/xen/evtchn: the event channels this process binds.
// Ports bound through it are closed when it is closed.
type Evtchn struct{ f *os.File }

// OpenEvtchn opens /dev/xen/evtchn.
func OpenEvtchn() (*Evtchn, error) {
	f, err := os.OpenFile(evtchnPath, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("xenctrl: open %s (xen-evtchn module loaded?): %w", evtchnPath, err)
	}
	return &Evtchn{f: f}, nil
}

// Close unbinds every port and closes the device.
func (e *Evtchn) Close() error { return e.f.Close() }

// ioctl goes through the package's ioctl helper (inside RawConn.Control,
// so a concurrent Close cannot recycle the descriptor under it).
func (e *Evtchn) ioctl(op string, req uintptr, arg []uint32) (uint32, error) {
	r, errno := ioctl(e.f, req, unsafe.Pointer(&arg[0]))
	runtime.KeepAlive(arg)
	if errno != 0 {
		return 0, &Error{Op: "evtchn " + op, Errno: errno}
	}
	return uint32(r), nil
}

// BindVIRQ binds a virtual IRQ (e.g. VIRQDomExc) and returns the local port.
func (e *Evtchn) BindVIRQ(virq uint32) (uint32, error) {
	return e.ioctl("bind_virq", ioctlEvtchnBindVIRQ, []uint32{virq})
}

// BindInterdomain connects to a port a domain offers and returns the local port.
func (e *Evtchn) BindInterdomain(remote Domid, remotePort uint32) (uint32, error) {
	return e.ioctl("bind_interdomain", ioctlEvtchnBindInterdomain, []uint32{uint32(remote), remotePort})
}

// BindUnboundPort allocates a local port that domain remote may bind to
// (e.g. the xenstore and console ports of a new guest).
func (e *Evtchn) BindUnboundPort(remote Domid) (uint32, error) {
	return e.ioctl("bind_unbound_port", ioctlEvtchnBindUnboundPort, []uint32{uint32(remote)})
}

// Unbind closes a local port.
func (e *Evtchn) Unbind(port uint32) error {
	_, err := e.ioctl("unbind", ioctlEvtchnUnbind, []uint32{port})
	return err
}

// Notify signals the remote end of a local port.
func (e *Evtchn) Notify(port uint32) error {
	_, err := e.ioctl("notify", ioctlEvtchnNotify, []uint32{port})
	return err
}

// Wait blocks until a bound port fires and returns it, masked: call
// Unmask to receive it again. It polls the device so that it returns
// ctx.Err() once ctx ends.
func (e *Evtchn) Wait(ctx context.Context) (uint32, error) {
	rc, err := e.f.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("xenctrl: evtchn wait: %w", err)
	}
	for {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		var b [4]byte
		var got bool
		var werr error
		// One bounded poll (100 ms) per Control, so ctx is checked and a
		// Close is not held up for long.
		if err := rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 100)
			if err == unix.EINTR || n == 0 {
				return
			}
			if err != nil {
				werr = fmt.Errorf("xenctrl: evtchn poll: %w", err)
				return
			}
			if _, err := unix.Read(int(fd), b[:]); err != nil {
				if err != unix.EAGAIN && err != unix.EINTR {
					werr = fmt.Errorf("xenctrl: evtchn read: %w", err)
				}
				return
			}
			got = true
		}); err != nil {
			return 0, fmt.Errorf("xenctrl: evtchn wait: %w", err)
		}
		if werr != nil {
			return 0, werr
		}
		if got {
			return binary.LittleEndian.Uint32(b[:]), nil
		}
	}
}

// Unmask re-enables delivery of a port returned by Wait.
func (e *Evtchn) Unmask(port uint32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], port)
	if _, err := e.f.Write(b[:]); err != nil {
		return fmt.Errorf("xenctrl: evtchn unmask %d: %w", port, err)
	}
	return nil
}

// Gntdev is an open /dev/xen/gntdev: it maps pages other domains grant.
type Gntdev struct{ f *os.File }

// OpenGntdev opens /dev/xen/gntdev.
func OpenGntdev() (*Gntdev, error) {
	f, err := os.OpenFile(gntdevPath, os.O_RDWR|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("xenctrl: open %s (xen-gntdev module loaded?): %w", gntdevPath, err)
	}
	return &Gntdev{f: f}, nil
}

// Close closes the device (mappings must be unmapped first).
func (g *Gntdev) Close() error { return g.f.Close() }

// GrantMapping is memory mapped from another domain's grants.
type GrantMapping struct {
	Mem   []byte
	index uint64
	count uint32
	g     *Gntdev
}

// encodeMapGrantRef builds struct ioctl_gntdev_map_grant_ref for refs from
// domain d: count@0 pad@4 index@8 refs[]@16 of {u32 domid, u32 ref}.
func encodeMapGrantRef(d Domid, refs []uint32) []byte {
	b := make([]byte, 16+8*len(refs))
	le.PutUint32(b[0:], uint32(len(refs)))
	for i, r := range refs {
		le.PutUint32(b[16+8*i:], uint32(d))
		le.PutUint32(b[20+8*i:], r)
	}
	return b
}

// Map maps the pages domain d granted under refs, read-write when writable.
func (g *Gntdev) Map(d Domid, refs []uint32, writable bool) (*GrantMapping, error) {
	if len(refs) == 0 {
		return nil, errors.New("xenctrl: gntdev map: refs: empty")
	}
	arg := encodeMapGrantRef(d, refs)
	_, errno := ioctl(g.f, ioctlGntdevMapGrantRef, unsafe.Pointer(&arg[0]))
	runtime.KeepAlive(arg)
	if errno != 0 {
		return nil, &Error{Op: "gntdev map_grant_ref", Domid: d, Errno: errno}
	}
	index := le.Uint64(arg[8:])
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	mem, err := unix.Mmap(int(g.f.Fd()), int64(index), len(refs)*PageSize, prot, unix.MAP_SHARED)
	m := &GrantMapping{index: index, count: uint32(len(refs)), g: g}
	if err != nil {
		_ = m.unmapRef()
		return nil, fmt.Errorf("xenctrl: gntdev mmap of %d grants from domain %d: %w", len(refs), d, err)
	}
	m.Mem = mem
	return m, nil
}

func (m *GrantMapping) unmapRef() error {
	arg := make([]byte, 16) // struct ioctl_gntdev_unmap_grant_ref: index@0 count@8
	le.PutUint64(arg[0:], m.index)
	le.PutUint32(arg[8:], m.count)
	_, errno := ioctl(m.g.f, ioctlGntdevUnmapGrantRef, unsafe.Pointer(&arg[0]))
	runtime.KeepAlive(arg)
	if errno != 0 {
		return &Error{Op: "gntdev unmap_grant_ref", Errno: errno}
	}
	return nil
}

// Unmap unmaps the memory and releases the grants.
func (m *GrantMapping) Unmap() error {
	if m.Mem != nil {
		if err := unix.Munmap(m.Mem); err != nil {
			return fmt.Errorf("xenctrl: gntdev munmap: %w", err)
		}
		m.Mem = nil
	}
	return m.unmapRef()
}

// encodeMmapBatchV2 builds struct privcmd_mmapbatch_v2: num u32@0, dom u16@4,
// addr@8, arr (xen_pfn_t *)@16, err (int *)@24.
func encodeMmapBatchV2(num uint32, d Domid, addr, arr, errs uintptr) []byte {
	b := make([]byte, 32)
	le.PutUint32(b[0:], num)
	le.PutUint16(b[4:], uint16(d))
	le.PutUint64(b[8:], uint64(addr))
	le.PutUint64(b[16:], uint64(arr))
	le.PutUint64(b[24:], uint64(errs))
	return b
}

// MapForeign maps guest frames gfns of domain d (IOCTL_PRIVCMD_MMAPBATCH_V2),
// read-write when writable: what a domain builder uses to load a kernel.
// A frame that cannot be mapped fails the whole call with its errno.
func (x *Xen) MapForeign(ctx context.Context, d Domid, gfns []uint64, writable bool) (*ForeignMapping, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(gfns) == 0 {
		return nil, errors.New("xenctrl: MapForeign: gfns: empty")
	}
	prot := unix.PROT_READ
	if writable {
		prot |= unix.PROT_WRITE
	}
	if uint64(len(gfns)) > math.MaxInt32 {
		return nil, fmt.Errorf("xenctrl: MapForeign: gfns: %d frames, more than one call can map", len(gfns))
	}
	rc, err := x.pc.fd.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("xenctrl: MapForeign: privcmd: %w", err)
	}
	var mem []byte
	var errno syscall.Errno
	// arr and errs are Go heap memory: only the kernel reads arr and writes
	// errs (copy_from_user/copy_to_user during the ioctl); Xen never sees them.
	arr := append([]uint64(nil), gfns...)
	errs := make([]int32, len(gfns))
	// Control keeps the privcmd descriptor open across mmap and ioctl.
	cerr := rc.Control(func(fd uintptr) {
		mem, err = unix.Mmap(int(fd), 0, len(gfns)*PageSize, prot, unix.MAP_SHARED)
		if err != nil {
			return
		}
		arg := encodeMmapBatchV2(uint32(len(gfns)), d, uintptr(unsafe.Pointer(&mem[0])),
			uintptr(unsafe.Pointer(&arr[0])), uintptr(unsafe.Pointer(&errs[0])))
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, ioctlPrivcmdMmapBatchV2, uintptr(unsafe.Pointer(&arg[0])))
		runtime.KeepAlive(arr)
		runtime.KeepAlive(errs)
		runtime.KeepAlive(arg)
	})
	if cerr != nil {
		return nil, fmt.Errorf("xenctrl: mmap privcmd for %d frames: %w", len(gfns), cerr)
	}
	if err != nil {
		return nil, fmt.Errorf("xenctrl: mmap privcmd for %d frames: %w", len(gfns), err)
	}
	if err := mmapBatchError(d, gfns, errs, errno); err != nil {
		_ = unix.Munmap(mem)
		return nil, err
	}
	return NewForeignMapping(mem, func() error { return unix.Munmap(mem) }), nil
}

// mmapBatchError turns the outcome of IOCTL_PRIVCMD_MMAPBATCH_V2 into an
// error. Linux reports a frame that failed with anything but ENOENT only in
// errs and returns 0 from the ioctl, so errs must be checked even on
// success: a failed frame leaves a hole in the mapping that raises SIGBUS
// (killing the process) when touched.
func mmapBatchError(d Domid, gfns []uint64, errs []int32, errno syscall.Errno) error {
	for i, e := range errs {
		if e != 0 {
			return fmt.Errorf("xenctrl: map frame %#x (index %d of %d) of domain %d: %w", gfns[i], i, len(gfns), d, &Error{Op: "privcmd mmapbatch_v2", Domid: d, Errno: syscall.Errno(-e)})
		}
	}
	if errno != 0 {
		return &Error{Op: "privcmd mmapbatch_v2", Domid: d, Errno: errno}
	}
	return nil
}
