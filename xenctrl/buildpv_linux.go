package xenctrl

import (
	"context"
	"fmt"
	"syscall"
)

// Hypercalls used by the PV domain builder (package builder, pv*.go). See
// buildpv_abi.go for the layouts.

// SharedInfoFrame returns the machine frame of domain d's shared info page
// (xen_domctl_getdomaininfo.shared_info_frame), which a PV builder
// initialises and hands to the guest in start_info.
func (x *Xen) SharedInfoFrame(ctx context.Context, d Domid) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	dc := x.abi.newDomctl(domctlGetDomainInfo, d)
	if err := x.domctl("getdomaininfo", dc); err != nil {
		return 0, err
	}
	if got := Domid(le.Uint16(dc[domctlUnionOff:])); got != d {
		return 0, &Error{Op: "domctl getdomaininfo", Domid: d, Errno: syscall.ESRCH}
	}
	return le.Uint64(dc[domctlUnionOff+domInfoSharedInfoFrame:]), nil
}

// GrantTableFrame returns the machine frame of frame 0 of domain d's grant
// table (GNTTABOP_setup_table with nr_frames 1), for seeding the reserved
// entries of a PV guest.
func (x *Xen) GrantTableFrame(ctx context.Context, d Domid) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	buf, err := x.pc.alloc(PageSize)
	if err != nil {
		return 0, err
	}
	defer x.pc.release(buf)
	le.PutUint16(buf.mem[0:], uint16(d))
	le.PutUint32(buf.mem[4:], 1)
	le.PutUint64(buf.mem[16:], uint64(buf.addr())+gnttabSetupFrameOff)
	if _, e := x.pc.hypercall(hcGrantTableOp, gnttabopSetupTable, uint64(buf.addr()), 1); e != 0 {
		return 0, &Error{Op: "grant_table_op setup_table", Domid: d, Errno: e}
	}
	if st := int16(le.Uint16(buf.mem[8:])); st != 0 {
		return 0, fmt.Errorf("xenctrl: grant_table_op setup_table (domain %d): grant status %d", d, st)
	}
	return le.Uint64(buf.mem[gnttabSetupFrameOff:]), nil
}

// PinL4Table validates the page table rooted at machine frame mfn as an L4
// table of domain d and pins it (MMUEXT_PIN_L4_TABLE on d's behalf). Every
// writable mapping of the table's frames must be gone first.
func (x *Xen) PinL4Table(ctx context.Context, d Domid, mfn uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	buf, err := x.pc.alloc(mmuextOpSize)
	if err != nil {
		return err
	}
	defer x.pc.release(buf)
	le.PutUint32(buf.mem[0:], mmuextPinL4Table)
	le.PutUint64(buf.mem[8:], mfn)
	if _, e := x.pc.hypercall(hcMmuextOp, uint64(buf.addr()), 1, 0, uint64(d)); e != 0 {
		return &Error{Op: fmt.Sprintf("mmuext_op pin_l4_table mfn %#x", mfn), Domid: d, Errno: e}
	}
	return nil
}

// HypercallInit asks Xen to fill the guest's hypercall page at machine
// frame mfn (XEN_DOMCTL_hypercall_init), for kernels with
// XEN_ELFNOTE_HYPERCALL_PAGE.
func (x *Xen) HypercallInit(ctx context.Context, d Domid, mfn uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dc := x.abi.newDomctl(domctlHypercallInit, d)
	le.PutUint64(dc[domctlUnionOff:], mfn)
	return x.domctl("hypercall_init", dc)
}

// SetVCPUContext loads a vcpu_guest_context (EncodePVVCPUContext) into
// vCPU vcpu of the paused domain d (XEN_DOMCTL_setvcpucontext).
func (x *Xen) SetVCPUContext(ctx context.Context, d Domid, vcpu uint32, vgc []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(vgc) != VCPUGuestContextSize {
		return fmt.Errorf("xenctrl: setvcpucontext domain %d: context is %d bytes, want %d", d, len(vgc), VCPUGuestContextSize)
	}
	buf, err := x.pc.alloc(len(vgc))
	if err != nil {
		return err
	}
	defer x.pc.release(buf)
	copy(buf.mem, vgc)
	dc := x.abi.newDomctl(domctlSetVCPUContext, d)
	le.PutUint32(dc[domctlUnionOff:], vcpu)
	le.PutUint64(dc[domctlUnionOff+domctlVCPUCtxtOff:], uint64(buf.addr()))
	return x.domctl("setvcpucontext", dc)
}
