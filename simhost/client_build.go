package simhost

import (
	"context"
	"fmt"
	"time"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// The Client's side of DomainBuildService: what the domain builder needs
// beyond xenctrl.Hypervisor (builder.Hypervisor), with the simulator's
// meaning and errors.

// unmapTimeout bounds writing a mapping back: Unmap has no context of its
// own, and it must not be cut short by the mapper's ending context.
const unmapTimeout = 30 * time.Second

// PopulatePhysmapAt populates one extent of 2^order frames at each PFN in
// gpfns and returns how many it populated; for a PV domain it replaces each
// populated entry with the extent's first MFN (as the simulator does).
func (c *Client) PopulatePhysmapAt(ctx context.Context, d xenctrl.Domid, order uint32, gpfns []uint64) (int, error) {
	var r *pb.PopulatePhysmapAtResponse
	err := c.call(ctx, "PopulatePhysmapAt", func(ctx context.Context, cn *conn) error {
		var err error
		r, err = cn.build.PopulatePhysmapAt(ctx, &pb.PopulatePhysmapAtRequest{Domid: uint32(d), Order: order, Gpfns: gpfns})
		if err != nil {
			r = populateProgress(err)
		}
		return err
	})
	n := min(int(r.GetPopulated()), len(gpfns), len(r.GetFrames()))
	copy(gpfns[:n], r.GetFrames())
	return n, err
}

// MapForeign maps frames (GFNs; PV: MFNs) of domain d: a copy of them,
// which Unmap of a writable mapping writes back. At most maxMapFrames
// frames per call.
func (c *Client) MapForeign(ctx context.Context, d xenctrl.Domid, frames []uint64, writable bool) (*xenctrl.ForeignMapping, error) {
	if len(frames) > maxMapFrames {
		return nil, fmt.Errorf("sim host: MapForeign: %d frames, at most %d per call", len(frames), maxMapFrames)
	}
	var r *pb.MapForeignResponse
	err := c.call(ctx, "MapForeign", func(ctx context.Context, cn *conn) error {
		var err error
		r, err = cn.build.MapForeign(ctx, &pb.MapForeignRequest{Domid: uint32(d), Frames: frames, Writable: writable})
		return err
	})
	if err != nil {
		return nil, err
	}
	if want := len(frames) * xenctrl.PageSize; len(r.GetMem()) != want {
		return nil, fmt.Errorf("sim host: MapForeign of %d frames answered %d bytes, want %d", len(frames), len(r.GetMem()), want)
	}
	mem, handle := r.GetMem(), r.GetHandle()
	if handle == 0 {
		return xenctrl.NewForeignMapping(mem, func() error { return nil }), nil
	}
	return xenctrl.NewForeignMapping(mem, func() error {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), unmapTimeout)
		defer cancel()
		return c.call(uctx, "UnmapForeign", func(ctx context.Context, cn *conn) error {
			_, err := cn.build.UnmapForeign(ctx, &pb.UnmapForeignRequest{Handle: handle, Mem: mem})
			return err
		})
	}), nil
}

// SetMemoryMap is XENMEM_set_memory_map.
func (c *Client) SetMemoryMap(ctx context.Context, d xenctrl.Domid, entries []xenctrl.E820Entry) error {
	es := make([]*pb.E820Entry, len(entries))
	for i, e := range entries {
		es[i] = &pb.E820Entry{Addr: e.Addr, Size: e.Size, Type: e.Type}
	}
	return c.call(ctx, "SetMemoryMap", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.SetMemoryMap(ctx, &pb.SetMemoryMapRequest{Domid: uint32(d), Entries: es})
		return err
	})
}

// SetPagingMempoolSize is XEN_DOMCTL_set_paging_mempool_size.
func (c *Client) SetPagingMempoolSize(ctx context.Context, d xenctrl.Domid, bytes uint64) error {
	return c.call(ctx, "SetPagingMempoolSize", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.SetPagingMempoolSize(ctx, &pb.SetPagingMempoolSizeRequest{Domid: uint32(d), Bytes: bytes})
		return err
	})
}

// SetTSCInfo is XEN_DOMCTL_settscinfo.
func (c *Client) SetTSCInfo(ctx context.Context, d xenctrl.Domid, mode uint32) error {
	return c.call(ctx, "SetTSCInfo", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.SetTSCInfo(ctx, &pb.SetTSCInfoRequest{Domid: uint32(d), Mode: mode})
		return err
	})
}

// AllocUnboundEvtchn is EVTCHNOP_alloc_unbound.
func (c *Client) AllocUnboundEvtchn(ctx context.Context, d, remote xenctrl.Domid) (port uint32, err error) {
	err = c.call(ctx, "AllocUnboundEvtchn", func(ctx context.Context, cn *conn) error {
		r, err := cn.build.AllocUnboundEvtchn(ctx, &pb.AllocUnboundEvtchnRequest{Domid: uint32(d), Remote: uint32(remote)})
		port = r.GetPort()
		return err
	})
	return port, err
}

// SetHVMParam is HVMOP_set_param.
func (c *Client) SetHVMParam(ctx context.Context, d xenctrl.Domid, idx uint32, v uint64) error {
	return c.call(ctx, "SetHVMParam", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.SetHVMParam(ctx, &pb.SetHVMParamRequest{Domid: uint32(d), Index: idx, Value: v})
		return err
	})
}

// SharedInfoFrame is the machine frame of a PV domain's shared info page.
func (c *Client) SharedInfoFrame(ctx context.Context, d xenctrl.Domid) (f uint64, err error) {
	err = c.call(ctx, "SharedInfoFrame", func(ctx context.Context, cn *conn) error {
		r, err := cn.build.SharedInfoFrame(ctx, &pb.SharedInfoFrameRequest{Domid: uint32(d)})
		f = r.GetFrame()
		return err
	})
	return f, err
}

// MapGrantTableFrame maps grant table frame 0 of d at gfn
// (XENMEM_add_to_physmap, XENMAPSPACE_grant_table).
func (c *Client) MapGrantTableFrame(ctx context.Context, d xenctrl.Domid, gfn uint64) error {
	return c.call(ctx, "MapGrantTableFrame", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.MapGrantTableFrame(ctx, &pb.MapGrantTableFrameRequest{Domid: uint32(d), Gfn: gfn})
		return err
	})
}

// RemoveFromPhysmap is XENMEM_remove_from_physmap.
func (c *Client) RemoveFromPhysmap(ctx context.Context, d xenctrl.Domid, gfn uint64) error {
	return c.call(ctx, "RemoveFromPhysmap", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.RemoveFromPhysmap(ctx, &pb.RemoveFromPhysmapRequest{Domid: uint32(d), Gfn: gfn})
		return err
	})
}

// GrantTableFrame is the machine frame of a PV domain's grant table frame 0.
func (c *Client) GrantTableFrame(ctx context.Context, d xenctrl.Domid) (f uint64, err error) {
	err = c.call(ctx, "GrantTableFrame", func(ctx context.Context, cn *conn) error {
		r, err := cn.build.GrantTableFrame(ctx, &pb.GrantTableFrameRequest{Domid: uint32(d)})
		f = r.GetFrame()
		return err
	})
	return f, err
}

// GetHVMContext is XEN_DOMCTL_gethvmcontext.
func (c *Client) GetHVMContext(ctx context.Context, d xenctrl.Domid) (blob []byte, err error) {
	err = c.call(ctx, "GetHVMContext", func(ctx context.Context, cn *conn) error {
		r, err := cn.build.GetHVMContext(ctx, &pb.GetHVMContextRequest{Domid: uint32(d)})
		blob = r.GetContext()
		return err
	})
	return blob, err
}

// SetHVMContext is XEN_DOMCTL_sethvmcontext.
func (c *Client) SetHVMContext(ctx context.Context, d xenctrl.Domid, blob []byte) error {
	return c.call(ctx, "SetHVMContext", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.SetHVMContext(ctx, &pb.SetHVMContextRequest{Domid: uint32(d), Context: blob})
		return err
	})
}

// HypercallInit is XEN_DOMCTL_hypercall_init.
func (c *Client) HypercallInit(ctx context.Context, d xenctrl.Domid, mfn uint64) error {
	return c.call(ctx, "HypercallInit", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.HypercallInit(ctx, &pb.HypercallInitRequest{Domid: uint32(d), Frame: mfn})
		return err
	})
}

// PinL4Table is MMUEXT_PIN_L4_TABLE.
func (c *Client) PinL4Table(ctx context.Context, d xenctrl.Domid, mfn uint64) error {
	return c.call(ctx, "PinL4Table", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.PinL4Table(ctx, &pb.PinL4TableRequest{Domid: uint32(d), Mfn: mfn})
		return err
	})
}

// SetVCPUContext is XEN_DOMCTL_setvcpucontext.
func (c *Client) SetVCPUContext(ctx context.Context, d xenctrl.Domid, vcpu uint32, vgc []byte) error {
	return c.call(ctx, "SetVCPUContext", func(ctx context.Context, cn *conn) error {
		_, err := cn.build.SetVCPUContext(ctx, &pb.SetVCPUContextRequest{Domid: uint32(d), Vcpu: vcpu, Context: vgc})
		return err
	})
}

// GetVCPUContext is XEN_DOMCTL_getvcpucontext.
func (c *Client) GetVCPUContext(ctx context.Context, d xenctrl.Domid, vcpu uint32) (vgc []byte, err error) {
	err = c.call(ctx, "GetVCPUContext", func(ctx context.Context, cn *conn) error {
		r, err := cn.build.GetVCPUContext(ctx, &pb.GetVCPUContextRequest{Domid: uint32(d), Vcpu: vcpu})
		vgc = r.GetContext()
		return err
	})
	return vgc, err
}

// ResumeDomain is XEN_DOMCTL_resumedomain (xenctrl.Resumer).
func (c *Client) ResumeDomain(ctx context.Context, d xenctrl.Domid) error {
	return c.call(ctx, "ResumeDomain", func(ctx context.Context, cn *conn) error {
		_, err := cn.hv.ResumeDomain(ctx, &pb.ResumeDomainRequest{Domid: uint32(d)})
		return err
	})
}

var _ xenctrl.Resumer = (*Client)(nil)
