package sim

import "github.com/xenopsd-ng/xenopsd-ng/xenctrl"

// superOrder is a 2 MiB extent: 2^9 frames.
const (
	superOrder  = 9
	superFrames = 1 << superOrder
)

// page is the contents of one machine frame.
type page = [xenctrl.PageSize]byte

// machineFrames is the host's RAM as machine frames (MFNs), handed out to
// domains by populate_physmap and taken back when they are destroyed.
// Frames below first belong to Xen and dom0. Only frames something wrote
// hold bytes (data); every other frame reads as zeros, as Xen scrubs what
// it gives a guest.
//
// 2 MiB extents come from whole aligned free runs only: once freed 4 KiB
// frames are all that is left, order-9 requests fail as on a host whose
// free memory is fragmented. superLeft caps how many more of them the
// host will give (LimitSuperpages), to make that happen on purpose.
type machineFrames struct {
	ready     bool
	next, end uint64   // [next, end): never handed out
	freeSuper []uint64 // freed 2 MiB extents (first frame)
	free4K    []uint64 // freed or skipped 4 KiB frames
	superLeft uint64
	data      map[uint64]*page
}

// frames returns the host's frames, set up on first use: the host's RAM
// less what Xen and dom0 own. h.mu must be held.
func (h *Hypervisor) frames() *machineFrames {
	m := &h.machine
	if !m.ready {
		dom0Pages := h.domains[0].totPages
		*m = machineFrames{ready: true, next: h.xenPages + dom0Pages, end: h.totalPages,
			superLeft: ^uint64(0), data: make(map[uint64]*page)}
	}
	return m
}

// alloc takes an extent of 2^order frames (order 0 or superOrder) and
// returns its first frame; false when there is none.
func (m *machineFrames) alloc(order uint32) (uint64, bool) {
	if order == superOrder {
		if m.superLeft == 0 {
			return 0, false
		}
		var mfn uint64
		if n := len(m.freeSuper); n > 0 {
			mfn, m.freeSuper = m.freeSuper[n-1], m.freeSuper[:n-1]
		} else {
			start := (m.next + superFrames - 1) &^ (superFrames - 1)
			if start+superFrames > m.end {
				return 0, false
			}
			for f := m.next; f < start; f++ { // the gap stays usable for 4 KiB pages
				m.free4K = append(m.free4K, f)
			}
			mfn, m.next = start, start+superFrames
		}
		m.superLeft--
		return mfn, true
	}
	if n := len(m.free4K); n == 0 && len(m.freeSuper) > 0 {
		// Break up a free 2 MiB extent, handing its frames out from the
		// top down: a guest's frames are not in machine order.
		s := m.freeSuper[len(m.freeSuper)-1]
		m.freeSuper = m.freeSuper[:len(m.freeSuper)-1]
		for f := s; f < s+superFrames; f++ {
			m.free4K = append(m.free4K, f)
		}
	}
	if n := len(m.free4K); n > 0 {
		mfn := m.free4K[n-1]
		m.free4K = m.free4K[:n-1]
		return mfn, true
	}
	if m.next >= m.end {
		return 0, false
	}
	// Fresh frames come from the top of the next 2 MiB run down, for the
	// same reason.
	if m.next%superFrames == 0 && m.next+superFrames <= m.end {
		for f := m.next; f < m.next+superFrames; f++ {
			m.free4K = append(m.free4K, f)
		}
		m.next += superFrames
		return m.alloc(0)
	}
	m.next++
	return m.next - 1, true
}

// free returns an extent; its contents are gone.
func (m *machineFrames) free(mfn uint64, order uint32) {
	for f := mfn; f < mfn+1<<order; f++ {
		delete(m.data, f)
	}
	if order == superOrder {
		m.freeSuper = append(m.freeSuper, mfn)
		return
	}
	m.free4K = append(m.free4K, mfn)
}

// read copies frame mfn into dst (zeros if nothing was written to it).
func (m *machineFrames) read(mfn uint64, dst []byte) {
	if p := m.data[mfn]; p != nil {
		copy(dst, p[:])
		return
	}
	clear(dst[:xenctrl.PageSize])
}

// write stores src as frame mfn's contents; an all-zero page holds no
// bytes.
func (m *machineFrames) write(mfn uint64, src []byte) {
	src = src[:xenctrl.PageSize]
	for _, b := range src {
		if b != 0 {
			p := m.data[mfn]
			if p == nil {
				p = new(page)
				m.data[mfn] = p
			}
			copy(p[:], src)
			return
		}
	}
	delete(m.data, mfn)
}

// LimitSuperpages lets the host hand out only n more 2 MiB extents, as if
// the rest of its free memory were fragmented: populate_physmap with
// order 9 then fails with ENOMEM and builders fall back to 4 KiB pages.
func (h *Hypervisor) LimitSuperpages(n uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.frames().superLeft = n
}
