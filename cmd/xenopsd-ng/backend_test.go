package main

import (
	"context"
	"errors"
	"log/slog"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// A kernel-less VM is an empty domain on both backends; only on the
// simulator does it keep the stand-in rings its simulated guest runs on.
func TestVMBuilderEmptyDomain(t *testing.T) {
	for _, emptyRings := range []bool{false, true} {
		h := sim.New(sim.Config{})
		ctx := context.Background()
		d, err := h.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1, MaxEvtchnPort: 1023})
		if err != nil {
			t.Fatal(err)
		}
		b := newVMBuilder(h, slog.New(slog.DiscardHandler), emptyRings, nil)
		spec := domain.Spec{Type: domain.TypePV, MemoryStaticMax: 16 << 20, MemoryDynamicMax: 16 << 20, VCPUsMax: 1}
		res, err := b.Build(ctx, d, spec)
		if err != nil {
			t.Fatalf("emptyRings %t: %v", emptyRings, err)
		}
		if got := res.StoreGFN != 0; got != emptyRings {
			t.Errorf("emptyRings %t: build result %+v", emptyRings, res)
		}
		if info, err := h.DomainInfo(ctx, d); err != nil || info.TotPages != 16<<20/xenctrl.PageSize {
			t.Errorf("emptyRings %t: domain has %d pages (%v), want %d", emptyRings, info.TotPages, err, 16<<20/xenctrl.PageSize)
		}
	}
}

// A VM with a kernel goes to the builder, which opens the kernel.
func TestVMBuilderKernel(t *testing.T) {
	h := sim.New(sim.Config{})
	ctx := context.Background()
	d, err := h.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1, MaxEvtchnPort: 1023})
	if err != nil {
		t.Fatal(err)
	}
	b := newVMBuilder(h, slog.New(slog.DiscardHandler), true, nil)
	spec := domain.Spec{Type: domain.TypePV, MemoryStaticMax: 16 << 20, MemoryDynamicMax: 16 << 20, VCPUsMax: 1,
		Kernel: t.TempDir() + "/no-such-kernel"}
	_, err = b.Build(ctx, d, spec)
	var de *domain.Error
	if !errors.As(err, &de) || de.Field != "spec.kernel" {
		t.Fatalf("build with a missing kernel: %v, want an error on spec.kernel", err)
	}
}
