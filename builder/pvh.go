package builder

import (
	"context"
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/guestmem"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// pvhGuest builds a PVH guest: an HVM container with hardware-assisted
// paging whose vCPU 0 starts in 32-bit protected mode at the kernel's
// XEN_ELFNOTE_PHYS32_ENTRY (docs/misc/pvh.pandoc). Its frames are PFNs
// throughout: Xen translates them.
type pvhGuest struct {
	l       *pvhLayout
	tscMode uint32
	acpi    []byte // the ACPI page (acpi.go)
}

// newPVH checks what a PVH spec asks for that needs no file: the TSC mode
// and a vCPU count the MADT can describe.
func newPVH(spec domain.Spec) (*pvhGuest, error) {
	tsc, err := tscModeOf(spec.Platform)
	if err != nil {
		return nil, err
	}
	acpi, err := acpiTables(max(spec.VCPUsMax, 1), spec.VCPUsAtStartup)
	if err != nil { // more vCPUs than a MADT can describe
		return nil, domain.InvalidField("spec.vcpus_max", "%v", err)
	}
	return &pvhGuest{tscMode: tsc, acpi: acpi}, nil
}

// tscModeOf reads platform/tsc_mode. PVH defaults to "native": under
// emulated CPUs Xen's RDTSCP emulation fails and the guest spins.
func tscModeOf(p map[string]string) (uint32, error) {
	switch v := p["tsc_mode"]; v {
	case "", "native", "never_emulate":
		return xenctrl.TSCModeNeverEmulate, nil
	case "default":
		return xenctrl.TSCModeDefault, nil
	case "always_emulate":
		return xenctrl.TSCModeAlwaysEmulate, nil
	default:
		return 0, domain.InvalidField("spec.platform", "tsc_mode %q: want default, always_emulate or native", v)
	}
}

func (g *pvhGuest) String() string { return g.l.String() }

func (g *pvhGuest) plan(s *job) (err error) {
	g.l, err = planPVH(s.img, s.initrdSize(), s.spec.Cmdline, s.memBytes())
	return err
}

func (g *pvhGuest) memoryMap() []xenctrl.E820Entry { return g.l.E820 }

// limits sizes the HAP pool as libxl does, 4 KiB * (256 per vCPU + 2 per
// MiB of RAM), and sets the TSC mode.
func (g *pvhGuest) limits(ctx context.Context, s *job) error {
	pool := 4096 * (256*uint64(s.vcpus()) + 2*(s.maxBytes()>>20))
	if err := s.hv.SetPagingMempoolSize(ctx, s.d, pool); err != nil {
		return fmt.Errorf("builder: paging mempool %d bytes: %w", pool, err)
	}
	if err := s.hv.SetTSCInfo(ctx, s.d, g.tscMode); err != nil {
		return fmt.Errorf("builder: tsc mode: %w", err)
	}
	return nil
}

// populate gives the guest its RAM below the MMIO hole and above 4 GiB,
// then the ring pages and the ACPI page.
func (g *pvhGuest) populate(ctx context.Context, s *job) (*guestmem.Memory, error) {
	mem := guestmem.Translated(s.hv, s.d)
	if err := mem.Populate(ctx, 0, g.l.LowEnd>>pageShift); err != nil {
		return nil, err
	}
	if g.l.HighEnd != 0 {
		if err := mem.Populate(ctx, highMemGPA>>pageShift, g.l.HighEnd>>pageShift); err != nil {
			return nil, err
		}
	}
	return mem, mem.PopulatePages(ctx, storePFN, consolePFN, acpiBase>>pageShift)
}

func (g *pvhGuest) segmentAddr(seg kernel.Segment) uint64 { return seg.PAddr }
func (g *pvhGuest) initrdAddr() uint64                    { return g.l.InitrdAddr }

// writeBoot writes the start info and the ACPI tables (and the legacy
// RSDP copy below 1 MiB when the kernel needs it).
func (g *pvhGuest) writeBoot(ctx context.Context, s *job) error {
	l := g.l
	if err := s.mem.Write(ctx, l.StartInfoAddr, l.startInfo(s.spec.Cmdline), l.StartInfoSize); err != nil {
		return fmt.Errorf("builder: start info at %#x: %w", l.StartInfoAddr, err)
	}
	if err := s.mem.Write(ctx, acpiBase, g.acpi, pageSize); err != nil {
		return fmt.Errorf("builder: ACPI tables at %#x: %w", acpiBase, err)
	}
	if l.LegacyRSDP {
		if err := s.mem.Write(ctx, acpiLegacyPtr, g.acpi[rsdpOff:rsdpOff+rsdpLen], rsdpLen); err != nil {
			return fmt.Errorf("builder: legacy RSDP at %#x: %w", acpiLegacyPtr, err)
		}
	}
	return nil
}

func (g *pvhGuest) ringPFNs() (store, console uint64) { return storePFN, consolePFN }

// publishRings sets the HVM parameters the guest reads its rings from.
func (g *pvhGuest) publishRings(ctx context.Context, s *job) error {
	for _, p := range []struct {
		idx uint32
		v   uint64
	}{
		{xenctrl.HVMParamStorePFN, storePFN},
		{xenctrl.HVMParamStoreEvtchn, uint64(s.res.StorePort)},
		{xenctrl.HVMParamConsolePFN, consolePFN},
		{xenctrl.HVMParamConsoleEvtchn, uint64(s.res.ConsolePort)},
	} {
		if err := s.hv.SetHVMParam(ctx, s.d, p.idx, p.v); err != nil {
			return fmt.Errorf("builder: %w", err)
		}
	}
	return nil
}

// grantTable places grant table frame 0 at a scratch guest frame for the
// time of the seeding, as libxenguest does for HVM guests.
func (g *pvhGuest) grantTable(ctx context.Context, s *job) (uint64, func() error, error) {
	if err := s.hv.MapGrantTableFrame(ctx, s.d, grantScratchPF); err != nil {
		return 0, nil, err
	}
	return grantScratchPF, func() error { return s.hv.RemoveFromPhysmap(ctx, s.d, grantScratchPF) }, nil
}

// bootVCPU loads vCPU 0's start state into the domain's HVM context.
func (g *pvhGuest) bootVCPU(ctx context.Context, s *job) error {
	full, err := s.hv.GetHVMContext(ctx, s.d)
	if err != nil {
		return fmt.Errorf("builder: %w", err)
	}
	boot, err := xenctrl.PVHBootContext(full, g.l.Entry, g.l.StartInfoAddr)
	if err != nil {
		return fmt.Errorf("builder: %w", err)
	}
	if err := s.hv.SetHVMContext(ctx, s.d, boot); err != nil {
		return fmt.Errorf("builder: vCPU 0 state: %w", err)
	}
	return nil
}
