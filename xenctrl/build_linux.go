package xenctrl

import (
	"context"
	"fmt"
)

// Hypercalls used by the domain builder (package builder). See build_abi.go
// for the layouts.

// SetHVMParam sets HVM parameter idx of domain d (HVMOP_set_param).
func (x *Xen) SetHVMParam(ctx context.Context, d Domid, idx uint32, v uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := make([]byte, hvmParamSize)
	le.PutUint16(b[0:], uint16(d))
	le.PutUint32(b[4:], idx)
	le.PutUint64(b[8:], v)
	return x.call(hcHVMOp, hvmopSetParam, b, fmt.Sprintf("hvm_op set_param %d", idx), d)
}

// GetHVMParam reads HVM parameter idx of domain d (HVMOP_get_param).
func (x *Xen) GetHVMParam(ctx context.Context, d Domid, idx uint32) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b := make([]byte, hvmParamSize)
	le.PutUint16(b[0:], uint16(d))
	le.PutUint32(b[4:], idx)
	if err := x.call(hcHVMOp, hvmopGetParam, b, fmt.Sprintf("hvm_op get_param %d", idx), d); err != nil {
		return 0, err
	}
	return le.Uint64(b[8:]), nil
}

// AllocUnboundEvtchn allocates an unbound event channel in domain d that
// domain remote may bind to (EVTCHNOP_alloc_unbound) and returns its port.
func (x *Xen) AllocUnboundEvtchn(ctx context.Context, d, remote Domid) (uint32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b := make([]byte, allocUnboundSize)
	le.PutUint16(b[0:], uint16(d))
	le.PutUint16(b[2:], uint16(remote))
	if err := x.call(hcEventChannelOp, evtchnopAllocUnbound, b, "event_channel_op alloc_unbound", d); err != nil {
		return 0, err
	}
	return le.Uint32(b[4:]), nil
}

// SetTSCInfo sets the domain's TSC mode (XEN_DOMCTL_settscinfo), e.g.
// TSCModeNeverEmulate; gtsc_khz 0 keeps the host frequency.
func (x *Xen) SetTSCInfo(ctx context.Context, d Domid, mode uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dc := x.abi.newDomctl(domctlSetTSCInfo, d)
	le.PutUint32(dc[domctlUnionOff:], mode)
	return x.domctl("settscinfo", dc)
}

// SetPagingMempoolSize sizes the HAP/shadow page-table pool of d in bytes
// (XEN_DOMCTL_set_paging_mempool_size, Xen 4.17+).
func (x *Xen) SetPagingMempoolSize(ctx context.Context, d Domid, bytes uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dc := x.abi.newDomctl(domctlSetPagingMempoolSize, d)
	le.PutUint64(dc[domctlUnionOff:], bytes)
	return x.domctl("set_paging_mempool_size", dc)
}

// GetHVMContext returns the domain's whole HVM context blob
// (XEN_DOMCTL_gethvmcontext): a sequence of save records.
func (x *Xen) GetHVMContext(ctx context.Context, d Domid) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// First ask for the size (NULL buffer), then fetch.
	dc := x.abi.newDomctl(domctlGetHVMContext, d)
	if err := x.domctl("gethvmcontext", dc); err != nil {
		return nil, err
	}
	size := le.Uint32(dc[domctlUnionOff:])
	if size == 0 || size > maxHVMContext {
		return nil, fmt.Errorf("xenctrl: gethvmcontext domain %d: implausible size %d", d, size)
	}
	buf, err := x.pc.alloc(int(size))
	if err != nil {
		return nil, err
	}
	defer x.pc.release(buf)
	dc = x.abi.newDomctl(domctlGetHVMContext, d)
	le.PutUint32(dc[domctlUnionOff:], size)
	le.PutUint64(dc[domctlUnionOff+domctlHVMContextBufferOff:], uint64(buf.addr()))
	if err := x.domctl("gethvmcontext", dc); err != nil {
		return nil, err
	}
	n := le.Uint32(dc[domctlUnionOff:])
	if n > size {
		return nil, fmt.Errorf("xenctrl: gethvmcontext domain %d: wrote %d bytes into %d", d, n, size)
	}
	return append([]byte(nil), buf.mem[:n]...), nil
}

// SetHVMContext loads save records into the domain (XEN_DOMCTL_sethvmcontext).
func (x *Xen) SetHVMContext(ctx context.Context, d Domid, blob []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(blob) == 0 || len(blob) > maxHVMContext {
		return fmt.Errorf("xenctrl: sethvmcontext domain %d: blob size %d out of range", d, len(blob))
	}
	buf, err := x.pc.alloc(len(blob))
	if err != nil {
		return err
	}
	defer x.pc.release(buf)
	copy(buf.mem, blob)
	dc := x.abi.newDomctl(domctlSetHVMContext, d)
	le.PutUint32(dc[domctlUnionOff:], uint32(len(blob)))
	le.PutUint64(dc[domctlUnionOff+domctlHVMContextBufferOff:], uint64(buf.addr()))
	return x.domctl("sethvmcontext", dc)
}

// SetMemoryMap gives the domain its E820 memory map (XENMEM_set_memory_map),
// what a PVH or PV guest reads back with XENMEM_memory_map.
func (x *Xen) SetMemoryMap(ctx context.Context, d Domid, entries []E820Entry) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(entries) == 0 || len(entries)*e820EntrySize > PageSize {
		return fmt.Errorf("xenctrl: set_memory_map domain %d: %d entries (want 1..%d)", d, len(entries), PageSize/e820EntrySize)
	}
	buf, err := x.pc.alloc(len(entries) * e820EntrySize)
	if err != nil {
		return err
	}
	defer x.pc.release(buf)
	for i, e := range entries {
		b := buf.mem[i*e820EntrySize:]
		le.PutUint64(b[0:], e.Addr)
		le.PutUint64(b[8:], e.Size)
		le.PutUint32(b[16:], e.Type)
	}
	arg := make([]byte, foreignMemoryMapSize)
	le.PutUint16(arg[0:], uint16(d))
	le.PutUint32(arg[8:], uint32(len(entries)))
	le.PutUint64(arg[16:], uint64(buf.addr()))
	return x.call(hcMemoryOp, xenmemSetMemoryMap, arg, "memory_op set_memory_map", d)
}

// MapGrantTableFrame puts frame 0 of the domain's own grant table at guest
// frame gfn (XENMEM_add_to_physmap, XENMAPSPACE_grant_table), so that the
// toolstack can map it and seed the reserved entries of an HVM/PVH guest.
func (x *Xen) MapGrantTableFrame(ctx context.Context, d Domid, gfn uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := make([]byte, addToPhysmapSize)
	le.PutUint16(b[0:], uint16(d))
	le.PutUint16(b[2:], 1)
	le.PutUint32(b[4:], xenmapspaceGrantTable)
	le.PutUint64(b[8:], 0)
	le.PutUint64(b[16:], gfn)
	return x.call(hcMemoryOp, xenmemAddToPhysmap, b, "memory_op add_to_physmap grant_table", d)
}

// RemoveFromPhysmap removes whatever is at guest frame gfn of domain d
// (XENMEM_remove_from_physmap).
func (x *Xen) RemoveFromPhysmap(ctx context.Context, d Domid, gfn uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := make([]byte, removeFromPhysmapSize)
	le.PutUint16(b[0:], uint16(d))
	le.PutUint64(b[8:], gfn)
	return x.call(hcMemoryOp, xenmemRemoveFromPhysmap, b, "memory_op remove_from_physmap", d)
}

// call issues hypercall op(cmd, &arg) with arg copied through a hypercall
// buffer and back.
func (x *Xen) call(op, cmd uint64, arg []byte, name string, d Domid) error {
	_, e, err := x.pc.callStruct(op, []uint64{cmd}, arg)
	if err != nil {
		return err
	}
	if e != 0 {
		return &Error{Op: name, Domid: d, Errno: e}
	}
	return nil
}
