package sim

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// TestCooperativeResume: a guest that suspended itself is resumed in place
// with its memory, and its suspend call returns 1 (cancelled); a domain not
// shut down with reason suspend is refused, as libxenguest does.
func TestCooperativeResume(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := newSim(t, Config{})
	d := bootedDomain(t, h)
	err := xenctrl.ResumeCooperative(ctx, h, d)
	wantErrno(t, err, syscall.EINVAL) // running, not suspended
	before, err := h.DomainInfo(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.GuestShutdown(ctx, d, xenctrl.ShutdownSuspend); err != nil {
		t.Fatal(err)
	}
	if err := h.WaitRunnable(ctx, d); !errors.Is(err, syscall.ESHUTDOWN) {
		t.Fatalf("suspended domain: WaitRunnable %v, want ESHUTDOWN", err)
	}
	done := make(chan uint64, 1)
	go func() {
		rc, err := h.WaitSuspendEnds(ctx, d)
		if err != nil {
			t.Error(err)
		}
		done <- rc
	}()
	if err := xenctrl.ResumeCooperative(ctx, h, d); err != nil {
		t.Fatal(err)
	}
	if rc := <-done; rc != 1 {
		t.Errorf("suspend returned %d in the guest, want 1 (cancelled)", rc)
	}
	after, err := h.DomainInfo(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if after.Shutdown || !after.Running || after.TotPages != before.TotPages {
		t.Errorf("after resume: %+v; before suspend: %+v", after, before)
	}
	if err := h.WaitRunnable(ctx, d); err != nil {
		t.Errorf("resumed domain not runnable: %v", err)
	}
	// Suspending again resets the return value: a plain resumedomain
	// (no cooperative return code) reports 0.
	if err := h.GuestShutdown(ctx, d, xenctrl.ShutdownSuspend); err != nil {
		t.Fatal(err)
	}
	if err := h.ResumeDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	if rc, err := h.WaitSuspendEnds(ctx, d); err != nil || rc != 0 {
		t.Errorf("after a plain resumedomain the guest saw %d, %v; want 0", rc, err)
	}
	// Other shutdown reasons are not suspends.
	if err := h.GuestShutdown(ctx, d, xenctrl.ShutdownCrash); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, xenctrl.ResumeCooperative(ctx, h, d), syscall.EINVAL)
}

// TestVCPUContextOfInitialisedVCPU: an initialised PV vCPU takes a new
// context only with the same page tables (EOPNOTSUPP otherwise), and a
// vCPU not yet up has no context (ENODATA), as Xen 4.17 answers.
func TestVCPUContextOfInitialisedVCPU(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{})
	d := mustCreate(t, h, pv)
	if err := h.SetMaxVCPUs(ctx, d, 1); err != nil {
		t.Fatal(err)
	}
	_, err := h.GetVCPUContext(ctx, d, 0)
	wantErrno(t, err, syscall.ENODATA)
	_, err = h.GetVCPUContext(ctx, d, 1)
	wantErrno(t, err, syscall.EINVAL)
	b := bootedDomain(t, h)
	vgc, err := h.GetVCPUContext(ctx, b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.SetVCPUContext(ctx, b, 0, vgc); err != nil {
		t.Errorf("same context back: %v", err)
	}
	vgc[4984+3*8+2] = 0x10 // ctrlreg[3] (at 4984 + 3*8): another L4 frame
	wantErrno(t, h.SetVCPUContext(ctx, b, 0, vgc), syscall.EOPNOTSUPP)
}
