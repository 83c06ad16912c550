package sim

import (
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

func TestRingChecks(t *testing.T) {
	ctx := context.Background()
	h := New(Config{ReleaseDelay: -1})
	d, err := h.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1, MaxGrantFrames: 2})
	if err != nil {
		t.Fatal(err)
	}
	for ref, ok := range map[uint64]bool{0: false, 7: false, 8: true, 1023: true, 1024: false, 1 << 40: false} {
		if err := h.CheckGrantRef(d, ref); (err == nil) != ok || (err != nil && !errors.Is(err, syscall.EINVAL)) {
			t.Errorf("CheckGrantRef(%d) = %v, want ok=%v", ref, err, ok)
		}
	}
	port, err := h.AllocUnboundEvtchn(ctx, d, 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := h.AllocUnboundEvtchn(ctx, d, 7)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.CheckInterdomainPort(d, uint64(port), 0); err != nil {
		t.Errorf("port allocated for dom0: %v", err)
	}
	for _, p := range []uint64{uint64(other), 0, 4000, 1 << 33} {
		if err := h.CheckInterdomainPort(d, p, 0); !errors.Is(err, syscall.EINVAL) {
			t.Errorf("CheckInterdomainPort(%d) = %v, want EINVAL", p, err)
		}
	}
	if err := h.CheckGrantRef(99, 8); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("unknown domain: %v", err)
	}
}
