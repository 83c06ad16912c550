package guestmem

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// Hypervisor is what guest memory access needs. *xenctrl.Xen and the
// simulator (*sim.Hypervisor) implement it.
type Hypervisor interface {
	// PopulatePhysmapAt populates one extent of 2^order frames at each
	// PFN in gpfns and returns how many it populated; for a PV domain it
	// replaces each entry with the extent's first MFN.
	PopulatePhysmapAt(ctx context.Context, d xenctrl.Domid, order uint32, gpfns []uint64) (int, error)
	// MapForeign maps frames (GFNs) of domain d into this process.
	MapForeign(ctx context.Context, d xenctrl.Domid, frames []uint64, writable bool) (*xenctrl.ForeignMapping, error)
}

const (
	pageShift   = 12
	pageSize    = xenctrl.PageSize
	superOrder  = 9
	superPages  = 1 << superOrder
	batch       = 512  // extents per populate call
	mapChunk    = 1024 // frames mapped at once while writing
	noFrame     = ^uint64(0)
	maxFrameNum = 1<<(64-pageShift) - 1
)

// Memory is one domain's memory, addressed by PFN.
type Memory struct {
	hv  Hypervisor
	d   xenctrl.Domid
	p2m []uint64 // PV: PFN → MFN (noFrame until populated); nil when translated
}

// Translated is the memory of an HVM or PVH domain d.
func Translated(hv Hypervisor, d xenctrl.Domid) *Memory { return &Memory{hv: hv, d: d} }

// PV is the memory of PV domain d with nrPages PFNs, [0, nrPages).
func PV(hv Hypervisor, d xenctrl.Domid, nrPages uint64) *Memory {
	p2m := make([]uint64, nrPages)
	for i := range p2m {
		p2m[i] = noFrame
	}
	return &Memory{hv: hv, d: d, p2m: p2m}
}

// Frame is the GFN that names pfn outside the guest: pfn itself for a
// translated guest, its MFN for a PV one (an error if it has none yet).
func (m *Memory) Frame(pfn uint64) (uint64, error) {
	if m.p2m == nil {
		return pfn, nil
	}
	if pfn >= uint64(len(m.p2m)) || m.p2m[pfn] == noFrame {
		return 0, fmt.Errorf("guest frame %#x is not populated", pfn)
	}
	return m.p2m[pfn], nil
}

// P2M is a PV guest's PFN→MFN map, the array the guest gets (shared: do
// not modify); nil for a translated guest.
func (m *Memory) P2M() []uint64 { return m.p2m }

// Populate gives the guest RAM at PFNs [start, end): 2 MiB extents where
// aligned, 4 KiB pages elsewhere and once Xen has no free superpage.
func (m *Memory) Populate(ctx context.Context, start, end uint64) error {
	if err := m.checkRange(start, end); err != nil {
		return err
	}
	super := true
	for next := start; next < end; {
		if err := ctx.Err(); err != nil {
			return err
		}
		var pfns []uint64
		order := uint32(0)
		if super && next%superPages == 0 && end-next >= superPages {
			order = superOrder
			for len(pfns) < batch && end-next >= superPages {
				pfns = append(pfns, next)
				next += superPages
			}
		} else {
			stop := min(end, next+batch)
			if super { // only up to the next 2 MiB boundary, then superpages again
				stop = min(stop, (next|(superPages-1))+1)
			}
			for ; next < stop; next++ {
				pfns = append(pfns, next)
			}
		}
		n, err := m.populate(ctx, order, pfns)
		if err != nil && order == superOrder && errors.Is(err, syscall.ENOMEM) {
			next, super = pfns[n], false // 4 KiB pages from the extent that failed on
			continue
		}
		if err != nil {
			return populateFailed(err, "populate guest RAM at frame %#x", pfns[min(n, len(pfns)-1)])
		}
	}
	return nil
}

// PopulatePages gives the guest single 4 KiB pages at pfns.
func (m *Memory) PopulatePages(ctx context.Context, pfns ...uint64) error {
	for _, p := range pfns {
		if err := m.checkRange(p, p+1); err != nil {
			return err
		}
	}
	if n, err := m.populate(ctx, 0, pfns); err != nil {
		return populateFailed(err, "populate pages %#x: %d of %d", pfns, n, len(pfns))
	}
	return nil
}

func (m *Memory) checkRange(start, end uint64) error {
	if end < start || (m.p2m != nil && end > uint64(len(m.p2m))) || end > maxFrameNum {
		return fmt.Errorf("guest frames [%#x, %#x) outside the guest's %d frames", start, end, len(m.p2m))
	}
	return nil
}

// populate makes one populate call and records the MFNs a PV guest got.
func (m *Memory) populate(ctx context.Context, order uint32, pfns []uint64) (int, error) {
	got := slices.Clone(pfns)
	n, err := m.hv.PopulatePhysmapAt(ctx, m.d, order, got)
	if m.p2m == nil {
		return n, err
	}
	for i, mfn := range got[:n] {
		if mfn == 0 || mfn > maxFrameNum || mfn%(1<<order) != 0 {
			return i, fmt.Errorf("populate returned machine frame %#x for a %d-page extent at guest frame %#x", mfn, 1<<order, pfns[i])
		}
		for j := uint64(0); j < 1<<order; j++ {
			m.p2m[pfns[i]+j] = mfn + j
		}
	}
	return n, err
}

// populateFailed describes a populate that failed, keeping its errno: host
// memory running out stays an error matching syscall.ENOMEM, which the
// domain core reports as ResourceExhausted.
func populateFailed(err error, format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}

// Write copies data to guest physical address addr and zeroes the rest of
// [addr, addr+size), which must be populated.
func (m *Memory) Write(ctx context.Context, addr uint64, data []byte, size uint64) error {
	if uint64(len(data)) > size {
		return fmt.Errorf("%d bytes of data for a %d-byte region", len(data), size)
	}
	end := addr + size
	first, last := addr>>pageShift, (end+pageSize-1)>>pageShift
	if end < addr || m.checkRange(first, last) != nil {
		return fmt.Errorf("region [%#x, +%#x) is outside the guest", addr, size)
	}
	for pfn := first; pfn < last; pfn += mapChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(uint64(mapChunk), last-pfn)
		frames := make([]uint64, n)
		for i := range frames {
			f, err := m.Frame(pfn + uint64(i))
			if err != nil {
				return err
			}
			frames[i] = f
		}
		fm, err := m.hv.MapForeign(ctx, m.d, frames, true)
		if err != nil {
			return err
		}
		winStart := pfn << pageShift
		lo, hi := max(addr, winStart), min(end, winStart+n*pageSize)
		dst := fm.Mem[lo-winStart : hi-winStart]
		c := 0
		if off := lo - addr; off < uint64(len(data)) {
			c = copy(dst, data[off:])
		}
		clear(dst[c:])
		if err := fm.Unmap(); err != nil {
			return err
		}
	}
	return nil
}

// EditFrame maps the frame named by gfn (not through the p2m: for Xen
// frames shared with the guest, such as its shared info and grant table
// frames) and lets edit change its page.
func (m *Memory) EditFrame(ctx context.Context, gfn uint64, edit func(page []byte)) error {
	fm, err := m.hv.MapForeign(ctx, m.d, []uint64{gfn}, true)
	if err != nil {
		return fmt.Errorf("map frame %#x: %w", gfn, err)
	}
	edit(fm.Mem[:pageSize])
	return fm.Unmap()
}
