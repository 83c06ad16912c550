package xenctrl

import (
	"context"
	"fmt"
	"syscall"
)

// Cooperative resume: what libxenguest's xc_domain_resume(fast=1) does
// (tools/libs/guest/xg_resume.c, xc_domain_resume_cooperative, Xen 4.17)
// for a domain whose guest suspended itself (SCHEDOP_shutdown with
// SHUTDOWN_suspend) and is to carry on in the same domain, as after a
// cancelled save or migration.
//
//  1. modify_returncode: the guest's suspend hypercall returns in vCPU 0's
//     %rax; set it to 1, "suspend cancelled" (0 would tell the guest it
//     was restored into a new domain). libxenguest does this for PV and
//     HVM/PVH guests alike through XEN_DOMCTL_getvcpucontext and
//     setvcpucontext (user_regs.eax); Xen keeps an HVM vCPU's general
//     registers in the same cpu_user_regs it reports and loads there.
//  2. XEN_DOMCTL_resumedomain (domain_resume): the shutdown state is
//     cleared and the vCPUs paused for the shutdown are released.
//
// The toolstack's own pause reference is left as it is: the caller
// unpauses.

// vgcUserRegsRAX is the offset of user_regs.rax in vcpu_guest_context
// (x86_64 struct cpu_user_regs: r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax).
const vgcUserRegsRAX = vgcUserRegs + 80

// domctlResumeDomain is XEN_DOMCTL_resumedomain (no arguments);
// domctlGetVCPUContext, like setvcpucontext, takes struct
// xen_domctl_vcpucontext (vcpu u32@0, ctxt handle@8).
const (
	domctlGetVCPUContext = 13
	domctlResumeDomain   = 27
)

// encodeVCPUContext returns a get/setvcpucontext domctl for vCPU vcpu of d
// with its context buffer at addr.
func encodeVCPUContext(a *abi, cmd uint32, d Domid, vcpu uint32, addr uintptr) []byte {
	dc := a.newDomctl(cmd, d)
	le.PutUint32(dc[domctlUnionOff:], vcpu)
	le.PutUint64(dc[domctlUnionOff+domctlVCPUCtxtOff:], uint64(addr))
	return dc
}

// VCPUContextRAX reads user_regs.rax of a vcpu_guest_context.
func VCPUContextRAX(vgc []byte) (uint64, error) {
	if len(vgc) != VCPUGuestContextSize {
		return 0, fmt.Errorf("xenctrl: vcpu context is %d bytes, want %d", len(vgc), VCPUGuestContextSize)
	}
	return le.Uint64(vgc[vgcUserRegsRAX:]), nil
}

// SetVCPUContextRAX sets user_regs.rax of a vcpu_guest_context in place.
func SetVCPUContextRAX(vgc []byte, rax uint64) error {
	if len(vgc) != VCPUGuestContextSize {
		return fmt.Errorf("xenctrl: vcpu context is %d bytes, want %d", len(vgc), VCPUGuestContextSize)
	}
	le.PutUint64(vgc[vgcUserRegsRAX:], rax)
	return nil
}

// VCPUContextCR3Frame reads the frame of ctrlreg[3] (%cr3) of a
// vcpu_guest_context: a PV guest's L4 table.
func VCPUContextCR3Frame(vgc []byte) (uint64, error) {
	if len(vgc) != VCPUGuestContextSize {
		return 0, fmt.Errorf("xenctrl: vcpu context is %d bytes, want %d", len(vgc), VCPUGuestContextSize)
	}
	return le.Uint64(vgc[vgcCtrlreg+3*8:]) >> x86PageShift, nil
}

// Resumer is what ResumeCooperative needs of a hypervisor: *Xen, the
// simulator and the sim host's client implement it.
type Resumer interface {
	DomainInfo(ctx context.Context, d Domid) (DomainInfo, error)
	// GetVCPUContext returns vCPU vcpu's vcpu_guest_context
	// (XEN_DOMCTL_getvcpucontext): EINVAL for a vCPU that does not exist,
	// ENODATA for one never initialised.
	GetVCPUContext(ctx context.Context, d Domid, vcpu uint32) ([]byte, error)
	SetVCPUContext(ctx context.Context, d Domid, vcpu uint32, vgc []byte) error
	// ResumeDomain is XEN_DOMCTL_resumedomain: Xen's domain_resume clears
	// any shutdown state (whatever its reason) and succeeds, changing
	// nothing, on a domain that is not shut down; EINVAL for the caller's
	// own domain.
	ResumeDomain(ctx context.Context, d Domid) error
}

// ResumeCooperative resumes domain d, shut down with reason suspend, so
// that its guest carries on in the same domain with its suspend hypercall
// returning 1 (cancelled). Like libxenguest it refuses, with an error
// matching EINVAL, a domain that is not shut down with reason suspend.
// The domain's toolstack pause count is not changed.
func ResumeCooperative(ctx context.Context, r Resumer, d Domid) error {
	info, err := r.DomainInfo(ctx, d)
	if err != nil {
		return err
	}
	if !info.Shutdown || info.ShutdownReason != ShutdownSuspend || info.Dying {
		return &Error{Op: fmt.Sprintf("resume: domain not suspended (shutdown %v, reason %v, dying %v)", info.Shutdown, info.ShutdownReason, info.Dying), Domid: d, Errno: syscall.EINVAL}
	}
	vgc, err := r.GetVCPUContext(ctx, d, 0)
	if err != nil {
		return err
	}
	if err := SetVCPUContextRAX(vgc, 1); err != nil {
		return err
	}
	if err := r.SetVCPUContext(ctx, d, 0, vgc); err != nil {
		return err
	}
	return r.ResumeDomain(ctx, d)
}
