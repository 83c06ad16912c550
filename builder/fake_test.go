package builder

import (
	"context"
	"encoding/binary"
	"fmt"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"

	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
)

// fakeXen is an in-memory stand-in for the hypervisor calls the builder
// makes: guest memory is a map of frames, and it refuses what Xen would
// (unpopulated frames, frames past max_mem).
type fakeXen struct {
	xenctrl.Hypervisor // unused methods panic
	maxKiB             uint64
	maxVCPUs           uint32
	pool               uint64
	tsc                uint32
	frames             map[uint64][]byte
	noSuper            bool // refuse 2 MiB extents with ENOMEM
	params             map[uint32]uint64
	ports              uint32
	e820               []xenctrl.E820Entry
	gntFrame           []byte
	gntAt              uint64
	hvmSet             []byte
	calls              []string
	populateOps        int
}

// untouched stands for every populated frame nothing has written yet
// (all zero): a guest of several GiB costs a map entry a frame, no more.
var untouched = make([]byte, 4096)

func newFake() *fakeXen {
	return &fakeXen{frames: map[uint64][]byte{}, params: map[uint32]uint64{}, gntFrame: make([]byte, 4096)}
}

func (f *fakeXen) Kind() string { return "fake" }

func (f *fakeXen) SetMaxMem(_ context.Context, _ xenctrl.Domid, kib uint64) error {
	f.maxKiB = kib
	return nil
}
func (f *fakeXen) SetMaxVCPUs(_ context.Context, _ xenctrl.Domid, n uint32) error {
	f.maxVCPUs = n
	return nil
}
func (f *fakeXen) SetPagingMempoolSize(_ context.Context, _ xenctrl.Domid, b uint64) error {
	f.pool = b
	return nil
}
func (f *fakeXen) SetTSCInfo(_ context.Context, _ xenctrl.Domid, m uint32) error {
	f.tsc = m
	return nil
}

func (f *fakeXen) PopulatePhysmapAt(_ context.Context, _ xenctrl.Domid, order uint32, gpfns []uint64) (int, error) {
	f.populateOps++
	for i, g := range gpfns {
		if order > 0 && f.noSuper {
			return i, &xenctrl.Error{Op: "populate", Errno: syscall.ENOMEM}
		}
		n := uint64(1) << order
		if g%n != 0 {
			return i, &xenctrl.Error{Op: "populate", Errno: syscall.EINVAL}
		}
		if uint64(len(f.frames))+n > f.maxKiB/4 {
			return i, &xenctrl.Error{Op: "populate", Errno: syscall.ENOMEM}
		}
		for p := g; p < g+n; p++ {
			if f.frames[p] != nil {
				return i, &xenctrl.Error{Op: "populate", Errno: syscall.EEXIST}
			}
			f.frames[p] = untouched
		}
	}
	return len(gpfns), nil
}

// MapGuest hands out a copy and writes it back on unmap.
func (f *fakeXen) MapGuest(_ context.Context, _ xenctrl.Domid, gfns []uint64) ([]byte, func() error, error) {
	mem := make([]byte, len(gfns)*4096)
	for i, g := range gfns {
		src := f.frames[g]
		if g == f.gntAt && f.gntAt != 0 {
			src = f.gntFrame
		}
		if src == nil {
			return nil, nil, fmt.Errorf("map frame %#x: %w", g, syscall.EFAULT)
		}
		copy(mem[i*4096:], src)
	}
	return mem, func() error {
		for i, g := range gfns {
			dst := f.frames[g]
			if g == f.gntAt && f.gntAt != 0 {
				dst = f.gntFrame
			} else if &dst[0] == &untouched[0] {
				dst = make([]byte, 4096)
				f.frames[g] = dst
			}
			copy(dst, mem[i*4096:(i+1)*4096])
		}
		return nil
	}, nil
}

func (f *fakeXen) AllocUnboundEvtchn(_ context.Context, _, _ xenctrl.Domid) (uint32, error) {
	f.ports++
	return f.ports, nil
}
func (f *fakeXen) SetHVMParam(_ context.Context, _ xenctrl.Domid, idx uint32, v uint64) error {
	f.params[idx] = v
	return nil
}
func (f *fakeXen) SetMemoryMap(_ context.Context, _ xenctrl.Domid, e []xenctrl.E820Entry) error {
	f.e820 = e
	return nil
}
func (f *fakeXen) MapGrantTableFrame(_ context.Context, _ xenctrl.Domid, gfn uint64) error {
	f.gntAt = gfn
	return nil
}
func (f *fakeXen) RemoveFromPhysmap(_ context.Context, _ xenctrl.Domid, gfn uint64) error {
	if gfn != f.gntAt {
		return &xenctrl.Error{Op: "remove_from_physmap", Errno: syscall.ENOENT}
	}
	f.gntAt = 0
	return nil
}

// GetHVMContext returns what Xen reports for a new PVH domain: header,
// a CPU record, an MTRR record, end.
func (f *fakeXen) GetHVMContext(_ context.Context, _ xenctrl.Domid) ([]byte, error) {
	rec := func(code, inst uint16, n int) []byte {
		b := make([]byte, 8+n)
		binary.LittleEndian.PutUint16(b, code)
		binary.LittleEndian.PutUint16(b[2:], inst)
		binary.LittleEndian.PutUint32(b[4:], uint32(n))
		return b
	}
	h := rec(1, 0, 24)
	binary.LittleEndian.PutUint32(h[8:], 0x54381286)
	var out []byte
	out = append(out, h...)
	out = append(out, rec(2, 0, 1032)...)
	out = append(out, rec(14, 0, 240)...)
	return append(out, rec(0, 0, 0)...), nil
}
func (f *fakeXen) SetHVMContext(_ context.Context, _ xenctrl.Domid, b []byte) error {
	f.hvmSet = append([]byte(nil), b...)
	return nil
}

// read returns guest physical memory [addr, addr+n).
func (f *fakeXen) read(addr, n uint64) ([]byte, error) {
	out := make([]byte, 0, n)
	for a := addr; a < addr+n; {
		fr := f.frames[a>>12]
		if fr == nil {
			return nil, fmt.Errorf("frame %#x not populated", a>>12)
		}
		off := a & 4095
		k := min(4096-off, addr+n-a)
		out = append(out, fr[off:off+k]...)
		a += k
	}
	return out, nil
}

// testKernel writes a small PVH-capable ELF: one executable segment at
// 1 MiB physical (text then bss) and a PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY.
func testKernel(entry uint32, text []byte, bss uint64) []byte {
	return elftest.Image{
		Segments: []elftest.Segment{{Paddr: 0x100000, Vaddr: 0xffffffff80100000, Data: text, Memsz: uint64(len(text)) + bss, Flags: 5}},
		Notes:    []elftest.Note{elftest.XenNote(18, elftest.U32(entry))},
	}.Build()
}
