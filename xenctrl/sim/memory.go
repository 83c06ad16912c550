package sim

import (
	"context"
	"fmt"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// guestMemory is a domain's RAM: which machine frames back which guest
// frames. For an HVM/PVH domain guest frames are what its physmap (p2m)
// maps and what a foreign mapping names; a PV domain sees machine frames
// directly, so a foreign mapping names machine frames and Xen only keeps
// the reverse map (m2p) the guest's populate told it.
type guestMemory struct {
	super    map[uint64]uint64 // guest frame of a 2 MiB extent → its first machine frame
	small    map[uint64]uint64 // guest frame → machine frame (4 KiB pages)
	m2pSuper map[uint64]uint64 // first machine frame of a 2 MiB extent → guest frame
	m2p      map[uint64]uint64 // machine frame of a 4 KiB page → guest frame
	// xenPages are Xen's own frames placed in an HVM physmap
	// (add_to_physmap): guest frame → machine frame.
	xenPages map[uint64]uint64
	// sharedInfo and grantFrame are Xen frames shared with the guest,
	// allocated on first use; 0 until then.
	sharedInfo, grantFrame uint64
	nextGFN                uint64         // where the next count-based populate starts
	writable               map[uint64]int // machine frame → open writable foreign mappings
}

func (g *guestMemory) init() {
	if g.super == nil {
		g.super, g.small = map[uint64]uint64{}, map[uint64]uint64{}
		g.m2pSuper, g.m2p = map[uint64]uint64{}, map[uint64]uint64{}
		g.xenPages, g.writable = map[uint64]uint64{}, map[uint64]int{}
	}
}

// physToMachine is the machine frame at guest frame gfn of an HVM domain.
func (g *guestMemory) physToMachine(gfn uint64) (uint64, bool) {
	if m, ok := g.super[gfn&^(superFrames-1)]; ok {
		return m + gfn&(superFrames-1), true
	}
	if m, ok := g.small[gfn]; ok {
		return m, true
	}
	m, ok := g.xenPages[gfn]
	return m, ok
}

// owns reports whether machine frame mfn is the domain's, or a Xen frame
// shared with it.
func (g *guestMemory) owns(mfn uint64) bool {
	if _, ok := g.m2pSuper[mfn&^(superFrames-1)]; ok {
		return true
	}
	if _, ok := g.m2p[mfn]; ok {
		return true
	}
	return mfn != 0 && (mfn == g.sharedInfo || mfn == g.grantFrame)
}

// machineFrame is the machine frame a foreign mapping of frame (guest
// frame for HVM, machine frame for PV) reaches.
func (dom *domain) machineFrame(frame uint64) (uint64, bool) {
	if dom.hvm {
		return dom.mem.physToMachine(frame)
	}
	return frame, dom.mem.owns(frame)
}

// populateLocked gives dom one extent of 2^order frames at guest frame gfn
// and returns its first machine frame, or the errno the hypercall's caller
// sees: ENOMEM when the domain's limit or the host's memory runs out, the
// domain is dying, or gfn is not aligned to the extent (Xen stops at such
// an extent and reports a short count); EINVAL for an order other than 0
// or 9; EEXIST when a frame of the extent is populated already. h.mu must
// be held.
func (h *Hypervisor) populateLocked(dom *domain, order uint32, gfn uint64) (uint64, syscall.Errno) {
	if order != 0 && order != superOrder {
		return 0, syscall.EINVAL
	}
	n := uint64(1) << order
	if dom.dying || gfn%n != 0 || dom.totPages+n > dom.maxPages || h.freePagesLocked() < n {
		return 0, syscall.ENOMEM
	}
	g := &dom.mem
	g.init()
	for f := gfn; f < gfn+n; f++ {
		if _, ok := g.physToMachine(f); ok {
			return 0, syscall.EEXIST
		}
	}
	mfn, ok := h.frames().alloc(order)
	if !ok {
		return 0, syscall.ENOMEM
	}
	if order == superOrder {
		g.super[gfn], g.m2pSuper[mfn] = mfn, gfn
	} else {
		g.small[gfn], g.m2p[mfn] = mfn, gfn
	}
	dom.totPages += n
	h.usedPages += n
	return mfn, 0
}

// removeLocked takes the RAM page at guest frame gfn away from an HVM
// domain (XENMEM_remove_from_physmap, or add_to_physmap over it), breaking
// up the 2 MiB extent it is part of. False if gfn holds no RAM.
func (h *Hypervisor) removeLocked(dom *domain, gfn uint64) bool {
	g := &dom.mem
	base := gfn &^ (superFrames - 1)
	if m, ok := g.super[base]; ok {
		delete(g.super, base)
		delete(g.m2pSuper, m)
		for i := uint64(0); i < superFrames; i++ {
			g.small[base+i], g.m2p[m+i] = m+i, base+i
		}
	}
	m, ok := g.small[gfn]
	if !ok {
		return false
	}
	delete(g.small, gfn)
	delete(g.m2p, m)
	h.frames().free(m, 0)
	dom.totPages--
	h.usedPages--
	return true
}

// releaseMemoryLocked is relinquish_memory at domain_kill: every frame the
// domain had goes back to the host, and the domain has no memory left.
func (h *Hypervisor) releaseMemoryLocked(dom *domain) {
	m := h.frames()
	g := &dom.mem
	for _, mfn := range g.super {
		m.free(mfn, superOrder)
	}
	for _, mfn := range g.small {
		m.free(mfn, 0)
	}
	for _, mfn := range []uint64{g.sharedInfo, g.grantFrame} {
		if mfn != 0 {
			m.free(mfn, 0)
		}
	}
	dom.mem = guestMemory{}
	dom.setup = setupState{}
	h.usedPages -= dom.totPages
	dom.totPages = 0
}

// xenFrame returns the Xen frame shared with dom that slot names,
// allocating it on first use. A dying domain's frames are gone: EINVAL.
// h.mu must be held.
func (h *Hypervisor) xenFrame(dom *domain, which func(*guestMemory) *uint64) (uint64, syscall.Errno) {
	if dom.dying {
		return 0, syscall.EINVAL
	}
	dom.mem.init()
	slot := which(&dom.mem)
	if *slot == 0 {
		mfn, ok := h.frames().alloc(0)
		if !ok {
			return 0, syscall.ENOMEM
		}
		*slot = mfn
	}
	return *slot, 0
}

// PopulatePhysmapAt is XENMEM_populate_physmap: one extent of 2^order
// frames (order 0 or 9) at each guest frame in gpfns, stopping at the
// first that fails (see populateLocked for the errnos). For a PV domain
// each entry is replaced by the machine frame it got, as Xen writes back.
func (h *Hypervisor) PopulatePhysmapAt(ctx context.Context, d xenctrl.Domid, order uint32, gpfns []uint64) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	const op = "memory_op populate_physmap"
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return 0, err
	}
	for i, gfn := range gpfns {
		mfn, e := h.populateLocked(dom, order, gfn)
		if e != 0 {
			h.log.Debug("sim: populate_physmap short", "domid", d, "order", order, "done", i, "of", len(gpfns), "errno", e)
			return i, errno(op, d, e)
		}
		if !dom.hvm {
			gpfns[i] = mfn
		}
	}
	return len(gpfns), nil
}

// PopulatePhysmap gives d nrPages more pages the way xenctrl's does:
// guest frames contiguous after those it populated before, 2 MiB extents
// where aligned, 4 KiB pages for the rest and once no 2 MiB extent is
// left. When the domain's limit or the host runs out it keeps what it got
// (Xen does not roll back) and fails with ENOMEM.
func (h *Hypervisor) PopulatePhysmap(ctx context.Context, d xenctrl.Domid, nrPages uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	const op = "memory_op populate_physmap"
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return err
	}
	super := true
	for done := uint64(0); done < nrPages; {
		g := &dom.mem
		order := uint32(0)
		if super && g.nextGFN%superFrames == 0 && nrPages-done >= superFrames {
			order = superOrder
		}
		_, e := h.populateLocked(dom, order, g.nextGFN)
		switch {
		case e == syscall.ENOMEM && order == superOrder:
			super = false
			continue
		case e != 0:
			h.log.Debug("sim: populate_physmap short", "domid", d, "asked", nrPages, "got", done,
				"tot_pages", dom.totPages, "max_pages", dom.maxPages)
			return errno(op, d, e)
		}
		g.nextGFN += 1 << order
		done += 1 << order
	}
	return nil
}

// MapForeign maps frames of domain d into the caller, as
// IOCTL_PRIVCMD_MMAPBATCH_V2 does: guest frames of an HVM domain, machine
// frames of a PV one. A frame the domain does not have fails the whole
// call with EINVAL, as Xen's mod_l1_entry/get_page_from_l1e refuse it, and
// so does a writable mapping of a frame pinned as a page table.
//
// Unlike Xen's the mapping is a copy: what is written to it reaches the
// guest's frames when it is unmapped (and only if the domain still has
// them). Open writable mappings are counted, so that pinning a page table
// that is still mapped writable fails as on Xen.
func (h *Hypervisor) MapForeign(ctx context.Context, d xenctrl.Domid, frames []uint64, writable bool) (*xenctrl.ForeignMapping, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	const op = "privcmd mmapbatch_v2"
	if len(frames) == 0 {
		return nil, errno(op, d, syscall.EINVAL)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return nil, err
	}
	mfns := make([]uint64, len(frames))
	for i, f := range frames {
		mfn, ok := dom.machineFrame(f)
		if !ok || dom.dying || (writable && dom.setup.pinned[mfn] != 0) {
			return nil, fmt.Errorf("sim: map frame %#x (index %d of %d) of domain %d: %w", f, i, len(frames), d, errno(op, d, syscall.EINVAL))
		}
		mfns[i] = mfn
	}
	mem := make([]byte, len(frames)*xenctrl.PageSize)
	for i, mfn := range mfns {
		h.frames().read(mfn, mem[i*xenctrl.PageSize:])
		if writable {
			dom.mem.writable[mfn]++
		}
	}
	if !writable {
		return xenctrl.NewForeignMapping(mem, func() error { return nil }), nil
	}
	return xenctrl.NewForeignMapping(mem, func() error {
		h.mu.Lock()
		defer h.mu.Unlock()
		for i, mfn := range mfns {
			if w := dom.mem.writable; w != nil { // nil once the domain is destroyed
				if w[mfn]--; w[mfn] <= 0 {
					delete(w, mfn)
				}
			}
			if now, ok := dom.machineFrame(frames[i]); ok && now == mfn && !dom.dying {
				h.frames().write(mfn, mem[i*xenctrl.PageSize:])
			}
		}
		return nil
	}), nil
}

// MachineToPhys is the machine-to-phys entry of machine frame mfn, as Xen
// keeps it for PV guests (machine_to_phys_mapping): the guest frame domain
// d populated it at; false if d has no such RAM frame.
func (h *Hypervisor) MachineToPhys(d xenctrl.Domid, mfn uint64) (uint64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, ok := h.domains[d]
	if !ok {
		return 0, false
	}
	if gfn, ok := dom.mem.m2pSuper[mfn&^(superFrames-1)]; ok {
		return gfn + mfn&(superFrames-1), true
	}
	gfn, ok := dom.mem.m2p[mfn]
	return gfn, ok
}
