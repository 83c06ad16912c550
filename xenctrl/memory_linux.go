package xenctrl

import (
	"context"
	"errors"
	"fmt"
	"syscall"
)

// populateBatch is how many extents one populate_physmap hypercall carries
// (one page of xen_pfn_t).
const populateBatch = PageSize / 8

// superpageOrder is a 2 MiB extent (order 9).
const superpageOrder = 9

// PopulatePhysmap gives domain d nrPages more pages of RAM, the way a
// domain builder lays out an empty domain: guest frames are handed out
// contiguously from 0 upward, continuing after the frames this *Xen has
// populated for d before (or, for a domain it has not seen, after TotPages:
// it assumes the domain was populated contiguously from frame 0, as this
// method does). 2 MiB extents are used where the frame is aligned and at
// least 512 pages remain, falling back to 4 KiB pages when Xen has no free
// superpage. When the host or the domain's limit runs out it returns an
// error matching syscall.ENOMEM; the pages populated so far stay with the
// domain (Xen does not undo a partial populate), as TotPages shows.
//
// Builders that need a specific layout use PopulatePhysmapAt.
func (x *Xen) PopulatePhysmap(ctx context.Context, d Domid, nrPages uint64) error {
	x.popMu.Lock()
	defer x.popMu.Unlock()
	x.mu.Lock()
	next, known := x.nextGPFN[d]
	x.mu.Unlock()
	if !known {
		di, err := x.DomainInfo(ctx, d)
		if err != nil {
			return err
		}
		next = di.TotPages
	}
	done := uint64(0)
	defer func() {
		x.mu.Lock()
		x.nextGPFN[d] = next
		x.mu.Unlock()
	}()
	order := uint32(superpageOrder)
	for done < nrPages {
		remaining := nrPages - done
		if order == superpageOrder && (remaining < 1<<superpageOrder || next%(1<<superpageOrder) != 0) {
			order = 0
		}
		extentPages := uint64(1) << order
		n := remaining / extentPages
		if n > populateBatch {
			n = populateBatch
		}
		gpfns := make([]uint64, n)
		for i := range gpfns {
			gpfns[i] = next + uint64(i)*extentPages
		}
		got, err := x.PopulatePhysmapAt(ctx, d, order, gpfns)
		next += uint64(got) * extentPages
		done += uint64(got) * extentPages
		if err == nil {
			continue
		}
		if order == superpageOrder && errors.Is(err, syscall.ENOMEM) {
			order = 0 // no free 2 MiB extent left: go on with 4 KiB pages
			continue
		}
		if errors.Is(err, syscall.ENOMEM) {
			return fmt.Errorf("xenctrl: populate_physmap domain %d: %d of %d pages populated: %w", d, done, nrPages, err)
		}
		return err
	}
	return nil
}

// PopulatePhysmapAt populates one extent of 2^order pages at each guest
// frame in gpfns (XENMEM_populate_physmap). It returns how many extents
// were populated; fewer than asked is reported as ENOMEM (Xen stops at the
// first extent it cannot allocate, for lack of host memory or because the
// domain reached its limit). For a PV domain Xen writes the machine frame
// of each extent back into gpfns.
func (x *Xen) PopulatePhysmapAt(ctx context.Context, d Domid, order uint32, gpfns []uint64) (int, error) {
	done := 0
	buf, err := x.pc.alloc(populateBatch * 8)
	if err != nil {
		return 0, err
	}
	defer x.pc.release(buf)
	for done < len(gpfns) {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		n := len(gpfns) - done
		if n > populateBatch {
			n = populateBatch
		}
		for i := 0; i < n; i++ {
			le.PutUint64(buf.mem[i*8:], gpfns[done+i])
		}
		res := make([]byte, memReservationSize)
		encodeMemReservation(res, buf.addr(), uint64(n), order, d)
		r, e, err := x.pc.callStruct(hcMemoryOp, []uint64{xenmemPopulatePhysmap}, res)
		if err != nil {
			return done, err
		}
		if e != 0 {
			return done, &Error{Op: "memory_op populate_physmap", Domid: d, Errno: e}
		}
		for i := 0; i < int(r) && i < n; i++ {
			gpfns[done+i] = le.Uint64(buf.mem[i*8:])
		}
		done += int(r)
		if int(r) < n {
			return done, &Error{Op: "memory_op populate_physmap", Domid: d, Errno: syscall.ENOMEM}
		}
	}
	return done, nil
}
