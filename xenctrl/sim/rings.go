package sim

import (
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// What a backend in dom0 checks when a frontend hands it a shared ring:
// that the grant reference names an entry of the frontend's grant table
// (GNTTABOP_map_grant_ref fails with GNTST_bad_gntref otherwise) and that
// the event channel is a port the frontend left unbound for the backend
// (EVTCHNOP_bind_interdomain fails with EINVAL otherwise). The simulator
// keeps no grant entries, so any reference inside the table is taken as
// granted; the port is checked against the domain's real ports.

// Grant table geometry (public/grant_table.h): version-1 entries are 8
// bytes, so a 4 KiB frame holds 512; the first GNTTAB_NR_RESERVED_ENTRIES
// are the toolstack's (console, xenstore) and never a guest's ring.
const (
	grantEntriesPerFrame = xenctrl.PageSize / 8
	grantReservedEntries = 8
)

// CheckGrantRef reports whether a backend could map grant reference ref
// of domain d: EINVAL unless ref is a guest entry of d's grant table, ESRCH
// if d does not exist.
func (h *Hypervisor) CheckGrantRef(d xenctrl.Domid, ref uint64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup("grant_table_op map_grant_ref", d)
	if err != nil {
		return err
	}
	if ref < grantReservedEntries || ref >= uint64(dom.gntFrames)*grantEntriesPerFrame {
		return errno("grant_table_op map_grant_ref", d, syscall.EINVAL)
	}
	return nil
}

// CheckInterdomainPort reports whether domain remote could bind port of
// domain d (EVTCHNOP_bind_interdomain): EINVAL unless d allocated port
// unbound for remote, ESRCH if d does not exist.
func (h *Hypervisor) CheckInterdomainPort(d xenctrl.Domid, port uint64, remote xenctrl.Domid) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup("event_channel_op bind_interdomain", d)
	if err != nil {
		return err
	}
	if port >= maxEvtchnPorts {
		return errno("event_channel_op bind_interdomain", d, syscall.EINVAL)
	}
	if r, ok := dom.setup.evtchns[uint32(port)]; !ok || r != remote {
		return errno("event_channel_op bind_interdomain", d, syscall.EINVAL)
	}
	return nil
}
