package builder

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// PVOps are the hypervisor operations the PV builder uses. *xenctrl.Xen
// provides them (through XenOps); tests provide a fake.
type PVOps interface {
	// SetMaxVCPUs creates the vCPUs createdomain sized (XEN_DOMCTL_max_vcpus
	// with the same count): without it vCPU 0 cannot be given a context.
	SetMaxVCPUs(ctx context.Context, d xenctrl.Domid, n uint32) error
	SetMaxMem(ctx context.Context, d xenctrl.Domid, kib uint64) error
	// PopulatePhysmapAt populates one extent per entry and, for a PV
	// domain, replaces each entry with the machine frame it got.
	PopulatePhysmapAt(ctx context.Context, d xenctrl.Domid, order uint32, gpfns []uint64) (int, error)
	// MapGuest maps frames read-write; for a PV domain they are machine frames.
	MapGuest(ctx context.Context, d xenctrl.Domid, frames []uint64) (mem []byte, unmap func() error, err error)
	AllocUnboundEvtchn(ctx context.Context, d, remote xenctrl.Domid) (uint32, error)
	SetMemoryMap(ctx context.Context, d xenctrl.Domid, entries []xenctrl.E820Entry) error
	SharedInfoFrame(ctx context.Context, d xenctrl.Domid) (uint64, error)
	GrantTableFrame(ctx context.Context, d xenctrl.Domid) (uint64, error)
	HypercallInit(ctx context.Context, d xenctrl.Domid, mfn uint64) error
	PinL4Table(ctx context.Context, d xenctrl.Domid, mfn uint64) error
	SetVCPUContext(ctx context.Context, d xenctrl.Domid, vcpu uint32, vgc []byte) error
}

// PV builds 64-bit paravirtualised guests (x86_64, 4-level paging). It
// implements domain.Builder. The domain must have been created paused
// without XEN_DOMCTL_CDF_hvm and with no emulation flags.
//
// It follows libxenguest (xg_dom_core.c, xg_dom_x86.c, xg_dom_boot.c):
// all RAM is populated (2 MiB extents where Xen has them, else 4 KiB pages) and the machine frames Xen hands
// back form the p2m; the kernel, initrd, p2m array, start_info, xenstore
// and console pages, page tables and a boot stack are placed in one
// initial virtual mapping at XEN_ELFNOTE_VIRT_BASE (layout in planPV); the
// shared info page is initialised, the L4 table pinned on the guest's
// behalf, the reserved grant entries for console and xenstore seeded, and
// vCPU 0 set to enter the kernel in kernel mode with %rsi = start_info.
type PV struct {
	cfg Config
	log *slog.Logger
}

var _ domain.Builder = (*PV)(nil)

// NewPV returns a PV builder.
func NewPV(cfg Config) *PV {
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	return &PV{cfg: cfg, log: l}
}

// Build implements domain.Builder.
func (b *PV) Build(ctx context.Context, hv xenctrl.Hypervisor, d xenctrl.Domid, spec domain.Spec) (domain.BuildResult, error) {
	res, _, err := b.BuildTimed(ctx, hv, d, spec)
	return res, err
}

// BuildTimed is Build, also reporting phase timings.
func (b *PV) BuildTimed(ctx context.Context, hv xenctrl.Hypervisor, d xenctrl.Domid, spec domain.Spec) (res domain.BuildResult, tm Timings, err error) {
	// The kernel image aliases a mapping of its file: a file truncated
	// under us is an error, not a SIGBUS that kills the daemon.
	defer kernel.ReadGuard()(&err)
	return b.buildTimed(ctx, hv, d, spec)
}

func (b *PV) buildTimed(ctx context.Context, hv xenctrl.Hypervisor, d xenctrl.Domid, spec domain.Spec) (domain.BuildResult, Timings, error) {
	var tm Timings
	ops, err := pvOpsFor(hv)
	if err != nil {
		return domain.BuildResult{}, tm, err
	}
	if spec.Type != domain.TypePV {
		return domain.BuildResult{}, tm, domain.InvalidField("spec.type", "the PV builder builds PV guests only")
	}
	if spec.Kernel == "" {
		return domain.BuildResult{}, tm, domain.InvalidField("spec.kernel", "a PV guest needs a kernel")
	}
	memBytes := spec.MemoryDynamicMax
	if memBytes == 0 {
		memBytes = spec.MemoryStaticMax
	}
	maxBytes := max(spec.MemoryStaticMax, memBytes)

	t0 := time.Now()
	img, release, err := kernel.OpenFile(spec.Kernel, b.cfg.Limits)
	if err != nil {
		return domain.BuildResult{}, tm, domain.InvalidField("spec.kernel", "%s: %v", spec.Kernel, err)
	}
	defer release()
	var initrd []byte
	if spec.Ramdisk != "" {
		if initrd, err = kernel.LoadInitrd(spec.Ramdisk, b.cfg.Limits); err != nil {
			return domain.BuildResult{}, tm, domain.InvalidField("spec.ramdisk", "%s: %v", spec.Ramdisk, err)
		}
	}
	l, err := planPV(img, uint64(len(initrd)), spec.Cmdline, memBytes)
	if err != nil {
		return domain.BuildResult{}, tm, err
	}
	tm.Load = time.Since(t0)
	b.log.Debug("builder: PV layout", "domid", d, "layout", l.String())

	vcpus := max(spec.VCPUsMax, 1)
	if err := ops.SetMaxVCPUs(ctx, d, vcpus); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: max_vcpus %d: %w", vcpus, err)
	}
	if err := ops.SetMaxMem(ctx, d, maxBytes/1024+1024); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: max_mem: %w", err)
	}
	// libxl's xc_domain_set_memmap_limit: one RAM entry up to the maximum.
	if err := ops.SetMemoryMap(ctx, d, []xenctrl.E820Entry{{Addr: 0, Size: maxBytes, Type: xenctrl.E820RAM}}); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
	}
	var res domain.BuildResult
	if res.StorePort, err = ops.AllocUnboundEvtchn(ctx, d, b.cfg.BackendDomid); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: xenstore event channel: %w", err)
	}
	if res.ConsolePort, err = ops.AllocUnboundEvtchn(ctx, d, b.cfg.BackendDomid); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: console event channel: %w", err)
	}

	t0 = time.Now()
	p2m, err := populatePV(ctx, ops, d, l.NrPages)
	if err != nil {
		return domain.BuildResult{}, tm, err
	}
	tm.Populate = time.Since(t0)

	t0 = time.Now()
	mem := pvMem{ops: ops, d: d, p2m: p2m}
	for _, s := range img.Segments {
		if err := mem.write(ctx, s.PAddr-l.PaddrOffset, s.Data, s.MemSize); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: kernel segment %d at %#x: %w", s.Index, s.PAddr, err)
		}
	}
	if len(initrd) > 0 {
		if err := mem.write(ctx, l.InitrdPFN<<pageShift, initrd, alignUp(l.InitrdLen)); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: initrd: %w", err)
		}
	}
	p2mBytes := make([]byte, l.P2MPages<<pageShift)
	for i, m := range p2m {
		binary.LittleEndian.PutUint64(p2mBytes[i*8:], m)
	}
	if err := mem.write(ctx, l.P2MPFN<<pageShift, p2mBytes, uint64(len(p2mBytes))); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: p2m: %w", err)
	}
	tm.Copy = time.Since(t0)

	t0 = time.Now()
	shinfo, err := ops.SharedInfoFrame(ctx, d)
	if err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
	}
	res.StoreMFN, res.ConsoleMFN = p2m[l.StorePFN], p2m[l.ConsolePFN]
	si := make([]byte, pageSize)
	if err := xenctrl.EncodeStartInfo(si, startInfo(l, spec.Cmdline, shinfo, res)); err != nil {
		return domain.BuildResult{}, tm, domain.InvalidField("spec.cmdline", "%v", err)
	}
	if err := mem.write(ctx, l.StartInfoPFN<<pageShift, si, pageSize); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: start info: %w", err)
	}
	for _, pfn := range []uint64{l.StorePFN, l.ConsolePFN, l.StackPFN} {
		if err := mem.write(ctx, pfn<<pageShift, nil, pageSize); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: clear page %#x: %w", pfn, err)
		}
	}
	pt, p2mTables, err := l.pageTables(p2m)
	if err != nil {
		return domain.BuildResult{}, tm, err
	}
	// mem.write unmaps as it goes: no writable mapping of a table remains
	// when the L4 is pinned.
	if err := mem.write(ctx, l.PTPFN<<pageShift, pt, uint64(len(pt))); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: page tables: %w", err)
	}
	if l.P2M != nil {
		if err := mem.write(ctx, l.P2M.TablePFN<<pageShift, p2mTables, uint64(len(p2mTables))); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: p2m page tables: %w", err)
		}
	}
	if img.Notes.HasHypercallPage {
		hp := img.Notes.HypercallPage
		if hp < l.virt(l.KernelPFN) || hp >= l.virt(l.KernelEnd) {
			return domain.BuildResult{}, tm, domain.InvalidField("spec.kernel", "XEN_ELFNOTE_HYPERCALL_PAGE %#x is outside the kernel", hp)
		}
		if err := ops.HypercallInit(ctx, d, p2m[(hp-l.VirtBase)>>pageShift]); err != nil {
			return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
		}
	}
	if err := initSharedInfo(ctx, ops, d, shinfo); err != nil {
		return domain.BuildResult{}, tm, err
	}
	if err := ops.PinL4Table(ctx, d, p2m[l.PTPFN]); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
	}
	if err := seedGrantsPV(ctx, ops, d, b.cfg.BackendDomid, res.ConsoleMFN, res.StoreMFN); err != nil {
		return domain.BuildResult{}, tm, err
	}
	vgc, err := xenctrl.EncodePVVCPUContext(xenctrl.PVBootVCPU{
		Entry: l.Entry, Stack: l.virt(l.StackPFN + 1), StartInfo: l.virt(l.StartInfoPFN), L4MFN: p2m[l.PTPFN],
	})
	if err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
	}
	if err := ops.SetVCPUContext(ctx, d, 0, vgc); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: vCPU 0 state: %w", err)
	}
	tm.Setup = time.Since(t0)
	b.log.Info("builder: PV guest built", "domid", d, "mem_mib", memBytes>>20, "kernel", spec.Kernel,
		"entry", fmt.Sprintf("%#x", l.Entry), "store_mfn", res.StoreMFN, "console_mfn", res.ConsoleMFN,
		"store_port", res.StorePort, "console_port", res.ConsolePort,
		"load", tm.Load, "populate", tm.Populate, "copy", tm.Copy, "setup", tm.Setup)
	return res, tm, nil
}

// startInfo is what the guest finds in its start_info page.
func startInfo(l *pvLayout, cmdline string, shinfo uint64, res domain.BuildResult) xenctrl.StartInfo {
	si := xenctrl.StartInfo{
		NrPages: l.NrPages, SharedInfoMFN: shinfo,
		StoreMFN: res.StoreMFN, StoreEvtchn: res.StorePort,
		ConsoleMFN: res.ConsoleMFN, ConsoleEvtchn: res.ConsolePort,
		PTBase: l.virt(l.PTPFN), NrPTFrames: l.PTPages(),
		MFNList: l.P2MVirt, ModLen: l.InitrdLen,
		Cmdline: cmdline,
	}
	switch {
	case l.InitrdLen == 0:
	case l.InitrdUnmapped:
		si.ModStart = l.InitrdPFN
		si.Flags |= xenctrl.SIFModStartPFN
	default:
		si.ModStart = l.virt(l.InitrdPFN)
	}
	if l.P2M != nil {
		si.FirstP2MPFN, si.NrP2MFrames = l.P2MPFN, l.P2MFrames()
	}
	return si
}

// populatePV gives d nrPages of RAM and returns the p2m: the machine frame
// backing each guest frame. Like libxenguest it asks for 2 MiB extents
// first (one hypercall entry each instead of 512) and takes 4 KiB pages for
// the tail and for everything after the first extent Xen could not give.
func populatePV(ctx context.Context, ops PVOps, d xenctrl.Domid, nrPages uint64) ([]uint64, error) {
	const superOrder, superPages = 9, 1 << 9
	const batch = 4096
	p2m := make([]uint64, nrPages)
	next := uint64(0)
	if nSuper := nrPages / superPages; nSuper > 0 {
		starts := make([]uint64, nSuper)
		for i := range starts {
			starts[i] = uint64(i) * superPages
		}
		n, err := ops.PopulatePhysmapAt(ctx, d, superOrder, starts)
		if err != nil && !errors.Is(err, syscall.ENOMEM) {
			return nil, fmt.Errorf("builder: populate guest RAM (2 MiB extents): %d of %d: %w", n, nSuper, err)
		}
		for i := 0; i < n; i++ {
			if starts[i]%superPages != 0 {
				return nil, fmt.Errorf("builder: populate returned unaligned machine frame %#x for a 2 MiB extent", starts[i])
			}
			for j := uint64(0); j < superPages; j++ {
				p2m[uint64(i)*superPages+j] = starts[i] + j
			}
		}
		next = uint64(n) * superPages
	}
	for pfn := next; pfn < nrPages; pfn++ {
		p2m[pfn] = pfn
	}
	for off := next; off < nrPages; off += batch {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		chunk := p2m[off:min(nrPages, off+batch)]
		if n, err := ops.PopulatePhysmapAt(ctx, d, 0, chunk); err != nil {
			return nil, populateFailed(err, "builder: populate guest RAM: %d of %d pages", off+uint64(n), nrPages)
		}
	}
	for pfn, mfn := range p2m {
		if mfn == 0 || mfn>>(64-pageShift) != 0 {
			return nil, fmt.Errorf("builder: populate returned machine frame %#x for guest frame %#x", mfn, pfn)
		}
	}
	return p2m, nil
}

// initSharedInfo maps the shared info frame and masks event delivery on
// every vCPU until the guest sets up its callbacks.
func initSharedInfo(ctx context.Context, ops PVOps, d xenctrl.Domid, mfn uint64) error {
	mem, unmap, err := ops.MapGuest(ctx, d, []uint64{mfn})
	if err != nil {
		return fmt.Errorf("builder: map shared info: %w", err)
	}
	xenctrl.InitPVSharedInfo(mem[:pageSize])
	return unmap()
}

// seedGrantsPV fills the reserved grant entries 0 (console) and 1
// (xenstore) in frame 0 of the guest's grant table, which a PV toolstack
// maps directly (libxenguest's xc_dom_gnttab_seed for PV).
func seedGrantsPV(ctx context.Context, ops PVOps, d, backend xenctrl.Domid, consoleMFN, storeMFN uint64) error {
	if consoleMFN > 0xffffffff || storeMFN > 0xffffffff {
		return fmt.Errorf("builder: seed grant table: ring frames %#x/%#x above the v1 grant entry limit", consoleMFN, storeMFN)
	}
	gt, err := ops.GrantTableFrame(ctx, d)
	if err != nil {
		return fmt.Errorf("builder: seed grant table: %w", err)
	}
	mem, unmap, err := ops.MapGuest(ctx, d, []uint64{gt})
	if err != nil {
		return fmt.Errorf("builder: seed grant table: map frame %#x: %w", gt, err)
	}
	xenctrl.EncodeGrantEntryV1(mem[xenctrl.GrantRefConsole*8:], backend, uint32(consoleMFN))
	xenctrl.EncodeGrantEntryV1(mem[xenctrl.GrantRefXenstore*8:], backend, uint32(storeMFN))
	return unmap()
}

// pvMem writes into a PV guest's pseudo-physical memory through its p2m.
type pvMem struct {
	ops PVOps
	d   xenctrl.Domid
	p2m []uint64
}

// write copies data to guest pseudo-physical address addr and zeroes the
// rest of [addr, addr+size).
func (g pvMem) write(ctx context.Context, addr uint64, data []byte, size uint64) error {
	if uint64(len(data)) > size {
		return fmt.Errorf("%d bytes of data for a %d-byte region", len(data), size)
	}
	end := addr + size
	if end < addr || (end+pageSize-1)>>pageShift > uint64(len(g.p2m)) {
		return fmt.Errorf("region [%#x, +%#x) is outside the guest's %d pages", addr, size, len(g.p2m))
	}
	first, last := addr>>pageShift, (end+pageSize-1)>>pageShift
	for pfn := first; pfn < last; pfn += mapChunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(uint64(mapChunk), last-pfn)
		mem, unmap, err := g.ops.MapGuest(ctx, g.d, append([]uint64(nil), g.p2m[pfn:pfn+n]...))
		if err != nil {
			return err
		}
		winStart := pfn << pageShift
		lo, hi := max(addr, winStart), min(end, winStart+n*pageSize)
		dst := mem[lo-winStart : hi-winStart]
		c := 0
		if off := lo - addr; off < uint64(len(data)) {
			c = copy(dst, data[off:])
		}
		clear(dst[c:])
		if err := unmap(); err != nil {
			return err
		}
	}
	return nil
}
