package sim

import (
	"context"
	"encoding/binary"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// x86_64 page-table entry bits the validation looks at.
const (
	ptePresent = 1 << 0
	pteRW      = 1 << 1
	ptePSE     = 1 << 7
	pteFrame   = 1<<40 - 1 // frame number bits, after >> 12
	// Xen owns L4 slots 256-271 of every 64-bit PV address space and
	// fills them itself: whatever the guest's table has there is ignored.
	xenL4First, xenL4End = 256, 272
)

// PinL4Table is MMUEXT_PIN_L4_TABLE on behalf of PV domain d: Xen
// validates the table at machine frame mfn and everything it reaches
// (validateL4Locked) and pins it. A pinned frame cannot be mapped
// writable afterwards. EINVAL for an HVM domain, a table that fails
// validation, or one pinned already.
func (h *Hypervisor) PinL4Table(ctx context.Context, d xenctrl.Domid, mfn uint64) error {
	return h.locked(ctx, "mmuext_op pin_l4_table", d, func(dom *domain) syscall.Errno {
		if dom.hvm || dom.setup.pinnedL4 != 0 {
			return syscall.EINVAL
		}
		if e := h.validateL4Locked(dom, mfn); e != 0 {
			return e
		}
		dom.setup.pinnedL4 = mfn
		return 0
	})
}

// validateL4Locked checks the four-level page table rooted at l4 as Xen's
// type system does before it lets a frame become a page table: every
// table and every frame an L1 entry maps must be the domain's; no table
// may be mapped writable, by a foreign mapping or by an L1 entry of these
// same tables; a frame may be a table at one level only; and no L2/L3
// entry may map a superpage (PV guests have none by default). On success
// the tables count as typed page tables from then on. h.mu must be held.
func (h *Hypervisor) validateL4Locked(dom *domain, l4 uint64) syscall.Errno {
	tables := map[uint64]int{}
	var rwTargets []uint64
	var walk func(mfn uint64, level int) string
	walk = func(mfn uint64, level int) string {
		switch seen := tables[mfn]; {
		case !dom.mem.owns(mfn):
			return "table is not the domain's"
		case dom.mem.writable[mfn] > 0:
			return "table is mapped writable"
		case seen == level:
			return ""
		case seen != 0:
			return "frame is a table at two levels"
		}
		tables[mfn] = level
		var pg page
		h.frames().read(mfn, pg[:])
		for i := range 512 {
			e := binary.LittleEndian.Uint64(pg[i*8:])
			if e&ptePresent == 0 || (level == 4 && i >= xenL4First && i < xenL4End) {
				continue
			}
			next := e >> 12 & pteFrame
			switch {
			case level > 1 && e&ptePSE != 0 && level < 4:
				return "superpage mapping"
			case level > 1:
				if why := walk(next, level-1); why != "" {
					return why
				}
			case !dom.mem.owns(next):
				return "L1 entry maps a frame that is not the domain's"
			case e&pteRW != 0:
				rwTargets = append(rwTargets, next)
			}
		}
		return ""
	}
	why := walk(l4, 4)
	for _, t := range rwTargets {
		if why == "" && tables[t] != 0 {
			why = "a page-table frame is mapped writable by the tables"
		}
	}
	if why != "" {
		h.log.Debug("sim: page table validation failed", "domid", dom.id, "l4", l4, "why", why)
		return syscall.EINVAL
	}
	if dom.setup.pinned == nil {
		dom.setup.pinned = map[uint64]int{}
	}
	for mfn, level := range tables {
		dom.setup.pinned[mfn] = level
	}
	return 0
}
