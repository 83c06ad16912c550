package xenctrl

import (
	"context"
	"errors"
	"syscall"
	"testing"
)

// The domctls are encoded as the 4.17 headers lay them out: cmd@0,
// interface_version@4, domain@8, u.vcpucontext {vcpu u32@0, ctxt@8} at 16.
func TestResumeDomctlEncoding(t *testing.T) {
	a, err := abiFor(4, 17)
	if err != nil {
		t.Fatal(err)
	}
	dc := a.newDomctl(domctlResumeDomain, 7)
	if le.Uint32(dc[0:]) != 27 || le.Uint32(dc[4:]) != 0x15 || le.Uint16(dc[8:]) != 7 {
		t.Errorf("resumedomain header % x", dc[:16])
	}
	for _, b := range dc[16:] {
		if b != 0 {
			t.Fatalf("resumedomain has a non-zero union: % x", dc[16:])
		}
	}
	dc = encodeVCPUContext(a, domctlGetVCPUContext, 9, 3, 0x7f0012345000)
	if le.Uint32(dc[0:]) != 13 || le.Uint16(dc[8:]) != 9 || le.Uint32(dc[16:]) != 3 || le.Uint64(dc[24:]) != 0x7f0012345000 {
		t.Errorf("getvcpucontext % x", dc[:32])
	}
	if len(dc) != 144 {
		t.Errorf("domctl is %d bytes", len(dc))
	}
}

// user_regs.rax is at 520+80 in vcpu_guest_context (x86_64): flags u64@512,
// then struct cpu_user_regs r15..r8 and rax as the 11th u64.
func TestVCPUContextRAX(t *testing.T) {
	vgc := make([]byte, VCPUGuestContextSize)
	if err := SetVCPUContextRAX(vgc, 0x1122334455667788); err != nil {
		t.Fatal(err)
	}
	if got := le.Uint64(vgc[600:]); got != 0x1122334455667788 {
		t.Errorf("offset 600: %#x", got)
	}
	for i, b := range vgc {
		if (i < 600 || i >= 608) && b != 0 {
			t.Fatalf("byte %d changed", i)
		}
	}
	if v, err := VCPUContextRAX(vgc); err != nil || v != 0x1122334455667788 {
		t.Errorf("VCPUContextRAX = %#x, %v", v, err)
	}
	if err := SetVCPUContextRAX(vgc[:100], 1); err == nil {
		t.Error("short context accepted")
	}
	if _, err := VCPUContextRAX(vgc[:100]); err == nil {
		t.Error("short context read")
	}
	le.PutUint64(vgc[vgcCtrlreg+24:], 0x1234<<12)
	if f, err := VCPUContextCR3Frame(vgc); err != nil || f != 0x1234 {
		t.Errorf("cr3 frame %#x, %v", f, err)
	}
}

type fakeResumer struct {
	info    DomainInfo
	vgc     []byte
	set     []byte
	resumed int
	getErr  error
}

func (f *fakeResumer) DomainInfo(context.Context, Domid) (DomainInfo, error) { return f.info, nil }
func (f *fakeResumer) GetVCPUContext(_ context.Context, _ Domid, vcpu uint32) ([]byte, error) {
	if vcpu != 0 {
		return nil, syscall.EINVAL
	}
	return append([]byte(nil), f.vgc...), f.getErr
}
func (f *fakeResumer) SetVCPUContext(_ context.Context, _ Domid, vcpu uint32, vgc []byte) error {
	f.set = vgc
	return nil
}
func (f *fakeResumer) ResumeDomain(context.Context, Domid) error { f.resumed++; return nil }

func TestResumeCooperative(t *testing.T) {
	ctx := context.Background()
	vgc := make([]byte, VCPUGuestContextSize)
	le.PutUint64(vgc[vgcUserRegsRAX:], 0)
	le.PutUint64(vgc[vgcUserRegs+urRIP:], 0xffffffff81000000)
	f := &fakeResumer{info: DomainInfo{Domid: 3, Shutdown: true, ShutdownReason: ShutdownSuspend}, vgc: vgc}
	if err := ResumeCooperative(ctx, f, 3); err != nil {
		t.Fatal(err)
	}
	if f.resumed != 1 || f.set == nil {
		t.Fatalf("resumed %d, context set %v", f.resumed, f.set != nil)
	}
	if rax, _ := VCPUContextRAX(f.set); rax != 1 {
		t.Errorf("rax %d, want 1", rax)
	}
	if le.Uint64(f.set[vgcUserRegs+urRIP:]) != 0xffffffff81000000 {
		t.Error("the rest of the context was not kept")
	}
	for _, info := range []DomainInfo{{}, {Shutdown: true, ShutdownReason: ShutdownPoweroff}, {Shutdown: true, ShutdownReason: ShutdownCrash}, {Shutdown: true, ShutdownReason: ShutdownSuspend, Dying: true}} {
		f := &fakeResumer{info: info, vgc: vgc}
		err := ResumeCooperative(ctx, f, 3)
		if !errors.Is(err, syscall.EINVAL) || f.resumed != 0 || f.set != nil {
			t.Errorf("%+v: err %v, resumed %d, set %v", info, err, f.resumed, f.set != nil)
		}
	}
	f = &fakeResumer{info: DomainInfo{Shutdown: true, ShutdownReason: ShutdownSuspend}, vgc: vgc, getErr: syscall.ENODATA}
	if err := ResumeCooperative(ctx, f, 3); !errors.Is(err, syscall.ENODATA) || f.resumed != 0 {
		t.Errorf("getvcpucontext failure: %v, resumed %d", err, f.resumed)
	}
}
