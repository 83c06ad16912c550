// Package guestmem gives a domain memory and writes into it from the
// toolstack, through foreign mappings: what a domain builder does to load
// a kernel, and what restoring a migrated guest does with its pages.
//
// # Frames
//
// A guest's memory is addressed by page frame numbers (PFNs, guest
// physical address >> 12) from the guest's point of view, and backed by
// machine frames (MFNs) the hypervisor owns. Which of the two a toolstack
// names when it maps a frame, grants it or hands it to xenstored depends
// on the guest type; Xen calls that number the GFN:
//
//   - HVM and PVH guests are translated: Xen keeps the PFN→MFN map (the
//     physmap) and every interface takes PFNs. Here GFN = PFN, and the
//     MFNs never leave the hypervisor.
//   - PV guests are not: they see machine frames. populate_physmap hands
//     back the MFN of each extent, the toolstack records PFN→MFN in the
//     p2m it gives the guest, and foreign mappings, page tables, grant
//     entries, start_info and xenstored take MFNs. Here GFN = MFN.
//
// Memory hides the difference: callers address the guest's memory by
// PFN (Write takes guest physical addresses), and Frame says which GFN
// stands for a PFN when something outside must name it.
//
// # Populating
//
// Populate asks for 2 MiB extents (order 9) wherever the range is aligned
// and falls back to 4 KiB pages at its edges and, for the rest of the
// range, from the first extent Xen could not give (no free superpage left
// on a fragmented host). When the host or the domain's max_mem runs out
// the error matches syscall.ENOMEM (the domain core reports it as
// ResourceExhausted, something the caller can act on); any other failure
// keeps its own errno.
//
// Xen does not undo a partial populate: on error the domain keeps what it
// got, for the caller to destroy.
package guestmem
