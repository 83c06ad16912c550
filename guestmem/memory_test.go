package guestmem_test

import (
	"bytes"
	"context"
	"errors"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/guestmem"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

var _ guestmem.Hypervisor = (*sim.Hypervisor)(nil)

// newDomain creates an empty domain (hvm: translated) allowed maxPages.
func newDomain(t *testing.T, cfg sim.Config, hvm bool, maxPages uint64) (*sim.Hypervisor, xenctrl.Domid) {
	t.Helper()
	h := sim.New(cfg)
	dc := xenctrl.DomainConfig{MaxVCPUs: 1}
	if hvm {
		dc.Flags, dc.EmulationFlags = xenctrl.CreateHVM|xenctrl.CreateHAP, 1
	}
	ctx := context.Background()
	d, err := h.CreateDomain(ctx, dc)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.SetMaxMem(ctx, d, maxPages*4); err != nil {
		t.Fatal(err)
	}
	return h, d
}

func read(t *testing.T, h *sim.Hypervisor, d xenctrl.Domid, frames ...uint64) []byte {
	t.Helper()
	m, err := h.MapForeign(context.Background(), d, frames, false)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	return append([]byte(nil), m.Mem...)
}

// Populate takes 2 MiB extents while the host has them and 4 KiB pages
// after, for the edges of the range too.
func TestPopulateFallsBackTo4K(t *testing.T) {
	h, d := newDomain(t, sim.Config{}, true, 4096)
	h.LimitSuperpages(1)
	mem := guestmem.Translated(h, d)
	if err := mem.Populate(context.Background(), 3, 3+1500); err != nil {
		t.Fatal(err)
	}
	if di, _ := h.DomainInfo(context.Background(), d); di.TotPages != 1500 {
		t.Errorf("%d pages, want 1500", di.TotPages)
	}
	for _, pfn := range []uint64{3, 511, 512, 1023, 1024, 1502} {
		read(t, h, d, pfn)
	}
	if _, err := h.MapForeign(context.Background(), d, []uint64{1503}, false); err == nil {
		t.Error("frame past the range populated")
	}
}

// A PV guest's memory records the machine frames Xen handed out, and
// writes go to them.
func TestPVWritesThroughP2M(t *testing.T) {
	h, d := newDomain(t, sim.Config{}, false, 2048)
	mem := guestmem.PV(h, d, 1100)
	ctx := context.Background()
	if err := mem.Populate(ctx, 0, 1100); err != nil {
		t.Fatal(err)
	}
	for pfn, mfn := range mem.P2M() {
		if got, ok := h.MachineToPhys(d, mfn); !ok || got != uint64(pfn) || mfn == uint64(pfn) {
			t.Fatalf("p2m[%#x] = %#x, populated at %#x (%v)", pfn, mfn, got, ok)
		}
	}
	// Across the boundary of two mapping chunks (1024 frames), with the
	// tail of the region zeroed.
	addr := uint64(1024<<12 - 10)
	if err := mem.Write(ctx, addr, []byte("0123456789abcdefghij"), 30); err != nil {
		t.Fatal(err)
	}
	f1, _ := mem.Frame(1023)
	f2, _ := mem.Frame(1024)
	got := append(read(t, h, d, f1)[4096-10:], read(t, h, d, f2)[:20]...)
	if want := append([]byte("0123456789abcdefghij"), make([]byte, 10)...); !bytes.Equal(got, want) {
		t.Errorf("wrote %q", got)
	}
	if _, err := mem.Frame(1100); err == nil {
		t.Error("a frame past the guest has a GFN")
	}
	if err := mem.Write(ctx, 1099<<12, nil, 2<<12); err == nil {
		t.Error("a write past the guest's frames succeeded")
	}
}

// Populate failures keep their errno: host memory running out is ENOMEM
// (which the domain core reports as ResourceExhausted), others their own.
func TestPopulateFailures(t *testing.T) {
	h, d := newDomain(t, sim.Config{TotalMemory: 48 << 20}, true, 1<<20)
	err := guestmem.Translated(h, d).Populate(context.Background(), 0, 64<<8)
	if !errors.Is(err, syscall.ENOMEM) {
		t.Errorf("host full: %v, want ENOMEM", err)
	}
	h, d = newDomain(t, sim.Config{}, true, 1<<20)
	err = guestmem.Translated(h, d).PopulatePages(context.Background(), 5, 5) // EEXIST the second time
	if !errors.Is(err, syscall.EEXIST) {
		t.Errorf("populating a frame twice: %v, want EEXIST", err)
	}
}
