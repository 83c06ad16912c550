package xenctrl

import (
	"context"
	"fmt"
)

// ResumeDomain is XEN_DOMCTL_resumedomain (see Resumer).
func (x *Xen) ResumeDomain(ctx context.Context, d Domid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return x.domctl("resumedomain", x.abi.newDomctl(domctlResumeDomain, d))
}

// GetVCPUContext reads vCPU vcpu's vcpu_guest_context
// (XEN_DOMCTL_getvcpucontext, see Resumer).
func (x *Xen) GetVCPUContext(ctx context.Context, d Domid, vcpu uint32) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	buf, err := x.pc.alloc(VCPUGuestContextSize)
	if err != nil {
		return nil, err
	}
	defer x.pc.release(buf)
	clear(buf.mem[:VCPUGuestContextSize])
	if err := x.domctl(fmt.Sprintf("getvcpucontext vcpu %d", vcpu), encodeVCPUContext(x.abi, domctlGetVCPUContext, d, vcpu, buf.addr())); err != nil {
		return nil, err
	}
	return append([]byte(nil), buf.mem[:VCPUGuestContextSize]...), nil
}

var _ Resumer = (*Xen)(nil)
