package builder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// Ops are the hypervisor operations the builder uses. *xenctrl.Xen
// provides them through XenOps; tests provide a fake.
type Ops interface {
	SetMaxMem(ctx context.Context, d xenctrl.Domid, kib uint64) error
	SetMaxVCPUs(ctx context.Context, d xenctrl.Domid, n uint32) error
	SetPagingMempoolSize(ctx context.Context, d xenctrl.Domid, bytes uint64) error
	SetTSCInfo(ctx context.Context, d xenctrl.Domid, mode uint32) error
	PopulatePhysmapAt(ctx context.Context, d xenctrl.Domid, order uint32, gpfns []uint64) (int, error)
	// MapGuest maps guest frames read-write; unmap releases the mapping.
	MapGuest(ctx context.Context, d xenctrl.Domid, gfns []uint64) (mem []byte, unmap func() error, err error)
	AllocUnboundEvtchn(ctx context.Context, d, remote xenctrl.Domid) (uint32, error)
	SetHVMParam(ctx context.Context, d xenctrl.Domid, idx uint32, v uint64) error
	SetMemoryMap(ctx context.Context, d xenctrl.Domid, entries []xenctrl.E820Entry) error
	MapGrantTableFrame(ctx context.Context, d xenctrl.Domid, gfn uint64) error
	RemoveFromPhysmap(ctx context.Context, d xenctrl.Domid, gfn uint64) error
	GetHVMContext(ctx context.Context, d xenctrl.Domid) ([]byte, error)
	SetHVMContext(ctx context.Context, d xenctrl.Domid, blob []byte) error
}

// Config tunes a Builder. The zero value is usable.
type Config struct {
	Logger *slog.Logger
	Limits kernel.Limits // for the kernel and initrd
	// BackendDomid is the domain serving the xenstore and console rings
	// (0: dom0).
	BackendDomid xenctrl.Domid
}

// Builder builds PVH guests. It implements domain.Builder.
type Builder struct {
	cfg Config
	log *slog.Logger
}

var _ domain.Builder = (*Builder)(nil)

// New returns a Builder.
func New(cfg Config) *Builder {
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	return &Builder{cfg: cfg, log: l}
}

// Timings reports how long the phases of the last build took (for
// measurements; not needed to use the builder).
type Timings struct {
	Load, Populate, Copy, Setup time.Duration
}

// Build loads spec's kernel and initrd into domain d, which the caller has
// created paused as a PVH container (CreateHVM|CreateHAP, emulation
// XEN_X86_EMU_LAPIC) with spec.VCPUsMax vCPUs, and prepares vCPU 0 to
// start it. hv must be the real hypervisor (*xenctrl.Xen) or implement Ops.
func (b *Builder) Build(ctx context.Context, hv xenctrl.Hypervisor, d xenctrl.Domid, spec domain.Spec) (domain.BuildResult, error) {
	res, _, err := b.BuildTimed(ctx, hv, d, spec)
	return res, err
}

// BuildTimed is Build, also reporting phase timings.
func (b *Builder) BuildTimed(ctx context.Context, hv xenctrl.Hypervisor, d xenctrl.Domid, spec domain.Spec) (res domain.BuildResult, tm Timings, err error) {
	// The kernel image aliases a mapping of its file: a file truncated
	// under us is an error, not a SIGBUS that kills the daemon.
	defer kernel.ReadGuard()(&err)
	return b.buildTimed(ctx, hv, d, spec)
}

func (b *Builder) buildTimed(ctx context.Context, hv xenctrl.Hypervisor, d xenctrl.Domid, spec domain.Spec) (domain.BuildResult, Timings, error) {
	var tm Timings
	ops, err := opsFor(hv)
	if err != nil {
		return domain.BuildResult{}, tm, err
	}
	switch spec.Type {
	case domain.TypePVH, domain.TypeUnspecified:
	default:
		return domain.BuildResult{}, tm, domain.InvalidField("spec.type", "only PVH guests can be built so far")
	}
	if spec.Kernel == "" {
		return domain.BuildResult{}, tm, domain.InvalidField("spec.kernel", "a PVH guest needs a kernel to boot directly")
	}
	memBytes := spec.MemoryDynamicMax
	if memBytes == 0 {
		memBytes = spec.MemoryStaticMax
	}
	maxBytes := max(spec.MemoryStaticMax, memBytes)
	vcpus := max(spec.VCPUsMax, 1)
	tscMode, err := tscModeOf(spec.Platform)
	if err != nil {
		return domain.BuildResult{}, tm, err
	}
	acpi, err := acpiTables(vcpus, spec.VCPUsAtStartup)
	if err != nil { // more vCPUs than a MADT can describe
		return domain.BuildResult{}, tm, domain.InvalidField("spec.vcpus_max", "%v", err)
	}

	t0 := time.Now()
	img, release, err := kernel.OpenFile(spec.Kernel, b.cfg.Limits)
	if err != nil {
		return domain.BuildResult{}, tm, domain.InvalidField("spec.kernel", "%s: %v", spec.Kernel, err)
	}
	defer release() // img's segments alias the mapped file until then
	var initrd []byte
	if spec.Ramdisk != "" {
		if initrd, err = kernel.LoadInitrd(spec.Ramdisk, b.cfg.Limits); err != nil {
			return domain.BuildResult{}, tm, domain.InvalidField("spec.ramdisk", "%s: %v", spec.Ramdisk, err)
		}
	}
	l, err := planPVH(img, uint64(len(initrd)), spec.Cmdline, memBytes)
	if err != nil {
		return domain.BuildResult{}, tm, err
	}
	tm.Load = time.Since(t0)
	b.log.Debug("builder: PVH layout", "domid", d, "layout", l.String(), "kernel", img.Compression)

	// Limits and pools. The special pages count against max_mem: 1 MiB of
	// slack, as libxl's LIBXL_MAXMEM_CONSTANT.
	if err := ops.SetMaxVCPUs(ctx, d, vcpus); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: max_vcpus %d: %w", vcpus, err)
	}
	if err := ops.SetMaxMem(ctx, d, maxBytes/1024+1024); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: max_mem: %w", err)
	}
	// libxl's shadow/HAP pool: 4 KiB * (256 per vCPU + 2 per MiB of RAM).
	pool := 4096 * (256*uint64(vcpus) + 2*(maxBytes>>20))
	if err := ops.SetPagingMempoolSize(ctx, d, pool); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: paging mempool %d bytes: %w", pool, err)
	}
	if err := ops.SetTSCInfo(ctx, d, tscMode); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: tsc mode: %w", err)
	}

	t0 = time.Now()
	if err := populateRAM(ctx, ops, d, 0, l.LowEnd>>pageShift); err != nil {
		return domain.BuildResult{}, tm, err
	}
	if l.HighEnd != 0 {
		if err := populateRAM(ctx, ops, d, highMemGPA>>pageShift, l.HighEnd>>pageShift); err != nil {
			return domain.BuildResult{}, tm, err
		}
	}
	special := []uint64{storePFN, consolePFN}
	if n, err := ops.PopulatePhysmapAt(ctx, d, 0, append(special[:len(special):len(special)], acpiBase>>pageShift)); err != nil {
		return domain.BuildResult{}, tm, populateFailed(err, "builder: populate ring and ACPI pages: %d of %d", n, len(special)+1)
	}
	tm.Populate = time.Since(t0)

	t0 = time.Now()
	mem := guestMem{ops: ops, d: d}
	for _, s := range img.Segments {
		if err := mem.write(ctx, s.PAddr, s.Data, s.MemSize); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: kernel segment %d at %#x: %w", s.Index, s.PAddr, err)
		}
	}
	if len(initrd) > 0 {
		if err := mem.write(ctx, l.InitrdAddr, initrd, uint64(len(initrd))); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: initrd at %#x: %w", l.InitrdAddr, err)
		}
	}
	if err := mem.write(ctx, l.StartInfoAddr, l.startInfo(spec.Cmdline), l.StartInfoSize); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: start info at %#x: %w", l.StartInfoAddr, err)
	}
	if err := mem.write(ctx, acpiBase, acpi, pageSize); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: ACPI tables at %#x: %w", acpiBase, err)
	}
	if l.LegacyRSDP {
		if err := mem.write(ctx, acpiLegacyPtr, acpi[rsdpOff:rsdpOff+rsdpLen], rsdpLen); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: legacy RSDP at %#x: %w", acpiLegacyPtr, err)
		}
	}
	for _, pfn := range special {
		if err := mem.write(ctx, pfn<<pageShift, nil, pageSize); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: clear ring page %#x: %w", pfn, err)
		}
	}
	tm.Copy = time.Since(t0)

	t0 = time.Now()
	res := domain.BuildResult{StoreMFN: storePFN, ConsoleMFN: consolePFN}
	if res.StorePort, err = ops.AllocUnboundEvtchn(ctx, d, b.cfg.BackendDomid); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: xenstore event channel: %w", err)
	}
	if res.ConsolePort, err = ops.AllocUnboundEvtchn(ctx, d, b.cfg.BackendDomid); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: console event channel: %w", err)
	}
	for _, p := range []struct {
		idx uint32
		v   uint64
	}{
		{xenctrl.HVMParamStorePFN, storePFN},
		{xenctrl.HVMParamStoreEvtchn, uint64(res.StorePort)},
		{xenctrl.HVMParamConsolePFN, consolePFN},
		{xenctrl.HVMParamConsoleEvtchn, uint64(res.ConsolePort)},
	} {
		if err := ops.SetHVMParam(ctx, d, p.idx, p.v); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
		}
	}
	if err := seedGrants(ctx, ops, d, b.cfg.BackendDomid); err != nil {
		return domain.BuildResult{}, tm, err
	}
	if err := ops.SetMemoryMap(ctx, d, l.E820); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
	}
	full, err := ops.GetHVMContext(ctx, d)
	if err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
	}
	boot, err := xenctrl.PVHBootContext(full, l.Entry, l.StartInfoAddr)
	if err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
	}
	if err := ops.SetHVMContext(ctx, d, boot); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: vCPU 0 state: %w", err)
	}
	tm.Setup = time.Since(t0)
	b.log.Info("builder: PVH guest built", "domid", d, "mem_mib", memBytes>>20, "kernel", spec.Kernel,
		"entry", fmt.Sprintf("%#x", l.Entry), "store_port", res.StorePort, "console_port", res.ConsolePort,
		"load", tm.Load, "populate", tm.Populate, "copy", tm.Copy, "setup", tm.Setup)
	return res, tm, nil
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

// populateRAM populates guest frames [next, pages): 2 MiB extents where
// aligned, 4 KiB pages elsewhere or when Xen has no free superpage.
func populateRAM(ctx context.Context, ops Ops, d xenctrl.Domid, next, pages uint64) error {
	const order = 9
	const batch = 512
	super := true
	for next < pages {
		if err := ctx.Err(); err != nil {
			return err
		}
		var gpfns []uint64
		o := uint32(0)
		if super && next%(1<<order) == 0 && pages-next >= 1<<order {
			o = order
			for len(gpfns) < batch && pages-next >= 1<<order {
				gpfns = append(gpfns, next)
				next += 1 << order
			}
		} else {
			end := min(pages, next+batch)
			if super {
				// only up to the next 2 MiB boundary, then try superpages again
				end = min(end, (next|(1<<order-1))+1)
			}
			for ; next < end; next++ {
				gpfns = append(gpfns, next)
			}
		}
		n, err := ops.PopulatePhysmapAt(ctx, d, o, gpfns)
		if err != nil && o == order && errors.Is(err, syscall.ENOMEM) {
			// Fall back to 4 KiB pages from the first extent that failed.
			next = gpfns[n]
			super = false
			continue
		}
		if err != nil {
			return populateFailed(err, "builder: populate guest RAM at frame %#x", gpfns[min(n, len(gpfns)-1)])
		}
	}
	return nil
}

// seedGrants fills the reserved grant entries 0 (console) and 1 (xenstore)
// so that the backends can map the rings by grant, as libxenguest does for
// HVM guests: the guest's grant table frame 0 is placed at a scratch guest
// frame, mapped, written and removed again.
func seedGrants(ctx context.Context, ops Ops, d, backend xenctrl.Domid) error {
	if err := ops.MapGrantTableFrame(ctx, d, grantScratchPF); err != nil {
		return fmt.Errorf("builder: seed grant table: %w", err)
	}
	mem, unmap, err := ops.MapGuest(ctx, d, []uint64{grantScratchPF})
	if err == nil {
		xenctrl.EncodeGrantEntryV1(mem[xenctrl.GrantRefConsole*8:], backend, consolePFN)
		xenctrl.EncodeGrantEntryV1(mem[xenctrl.GrantRefXenstore*8:], backend, storePFN)
		err = unmap()
	}
	if rerr := ops.RemoveFromPhysmap(ctx, d, grantScratchPF); err == nil && rerr != nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("builder: seed grant table: %w", err)
	}
	return nil
}
