package builder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/guestmem"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// Hypervisor is what the builder asks of the hypervisor: guest memory
// (guestmem.Hypervisor) and the set-up of a domain's limits, rings, grant
// table and vCPU 0. *xenctrl.Xen and the simulator (*sim.Hypervisor)
// implement it. Calls marked PVH or PV are made for that type only.
type Hypervisor interface {
	guestmem.Hypervisor

	SetMaxVCPUs(ctx context.Context, d xenctrl.Domid, n uint32) error
	SetMaxMem(ctx context.Context, d xenctrl.Domid, kib uint64) error
	SetMemoryMap(ctx context.Context, d xenctrl.Domid, entries []xenctrl.E820Entry) error
	SetPagingMempoolSize(ctx context.Context, d xenctrl.Domid, bytes uint64) error // PVH
	SetTSCInfo(ctx context.Context, d xenctrl.Domid, mode uint32) error            // PVH

	AllocUnboundEvtchn(ctx context.Context, d, remote xenctrl.Domid) (uint32, error)
	SetHVMParam(ctx context.Context, d xenctrl.Domid, idx uint32, v uint64) error // PVH
	SharedInfoFrame(ctx context.Context, d xenctrl.Domid) (uint64, error)         // PV

	MapGrantTableFrame(ctx context.Context, d xenctrl.Domid, gfn uint64) error // PVH
	RemoveFromPhysmap(ctx context.Context, d xenctrl.Domid, gfn uint64) error  // PVH
	GrantTableFrame(ctx context.Context, d xenctrl.Domid) (uint64, error)      // PV

	GetHVMContext(ctx context.Context, d xenctrl.Domid) ([]byte, error)                 // PVH
	SetHVMContext(ctx context.Context, d xenctrl.Domid, blob []byte) error              // PVH
	HypercallInit(ctx context.Context, d xenctrl.Domid, mfn uint64) error               // PV
	PinL4Table(ctx context.Context, d xenctrl.Domid, mfn uint64) error                  // PV
	SetVCPUContext(ctx context.Context, d xenctrl.Domid, vcpu uint32, vgc []byte) error // PV
}

// Config tunes a Builder. The zero value is usable.
type Config struct {
	Logger *slog.Logger
	Limits kernel.Limits // for the kernel and initrd
	// Memory is what builds may hold at once for decompressed kernels,
	// shared by all builds of this Builder (nil: no limit): a
	// build waits for its share, and one whose kernel cannot fit it at
	// all fails with ResourceExhausted on spec.kernel. Initrds are
	// streamed into guest memory and cost no more than a 1 MiB buffer.
	Memory *kernel.Budget
	// BackendDomid is the domain serving the xenstore and console rings
	// (0: dom0).
	BackendDomid xenctrl.Domid
}

// Builder builds PVH and PV guests on one hypervisor. It implements
// domain.Builder.
type Builder struct {
	hv  Hypervisor
	cfg Config
	log *slog.Logger
}

var _ domain.Builder = (*Builder)(nil)

// New returns a Builder that builds on hv.
func New(hv Hypervisor, cfg Config) *Builder {
	l := cfg.Logger
	if l == nil {
		l = slog.Default()
	}
	return &Builder{hv: hv, cfg: cfg, log: l}
}

// Timings reports how long the phases of a build took (for measurements;
// not needed to use the builder).
type Timings struct {
	Load, Populate, Copy, Setup time.Duration
}

// Build loads spec's kernel and initrd into domain d, which the caller has
// created paused (PV: no flags; PVH: CreateHVM|CreateHAP, emulation
// XEN_X86_EMU_LAPIC) with spec.VCPUsMax vCPUs, and prepares vCPU 0 to
// start it.
func (b *Builder) Build(ctx context.Context, d xenctrl.Domid, spec domain.Spec) (domain.BuildResult, error) {
	res, _, err := b.BuildTimed(ctx, d, spec)
	return res, err
}

// BuildTimed is Build, also reporting phase timings.
func (b *Builder) BuildTimed(ctx context.Context, d xenctrl.Domid, spec domain.Spec) (res domain.BuildResult, tm Timings, err error) {
	// The kernel image aliases a mapping of its file: a file truncated
	// under us is an error, not a SIGBUS that kills the daemon.
	defer kernel.ReadGuard()(&err)
	return b.build(ctx, d, spec)
}

// job is one build in progress: what the steps share.
type job struct {
	hv      Hypervisor
	d       xenctrl.Domid
	spec    domain.Spec
	backend xenctrl.Domid
	img     *kernel.Image
	initrd  *kernel.Initrd // nil: none
	mem     *guestmem.Memory
	res     domain.BuildResult
}

// memBytes is the RAM the guest starts with, maxBytes its limit.
func (s *job) memBytes() uint64 {
	if s.spec.MemoryDynamicMax != 0 {
		return s.spec.MemoryDynamicMax
	}
	return s.spec.MemoryStaticMax
}
func (s *job) maxBytes() uint64 { return max(s.spec.MemoryStaticMax, s.memBytes()) }
func (s *job) vcpus() uint32    { return max(s.spec.VCPUsMax, 1) }

// A guest is what one guest type (pvh.go, pv.go) does in the steps of a
// build; build calls them in order. Nothing reaches the hypervisor before
// limits.
type guest interface {
	fmt.Stringer // the layout, for logs
	// plan checks the loaded image against the spec and lays out memory.
	plan(s *job) error
	// memoryMap is the E820 map Xen keeps for the guest.
	memoryMap() []xenctrl.E820Entry
	// limits sets what the type needs beyond vCPUs, max_mem and memory map.
	limits(ctx context.Context, s *job) error
	populate(ctx context.Context, s *job) (*guestmem.Memory, error)
	// segmentAddr and initrdAddr are where the kernel's segments and the
	// initrd go, as guest physical addresses.
	segmentAddr(seg kernel.Segment) uint64
	initrdAddr() uint64
	// writeBoot writes what the guest finds at boot besides kernel,
	// initrd and rings.
	writeBoot(ctx context.Context, s *job) error
	// ringPFNs are the xenstore and console ring pages.
	ringPFNs() (store, console uint64)
	// publishRings tells the guest where its rings are (s.res is filled).
	publishRings(ctx context.Context, s *job) error
	// grantTable makes frame 0 of the guest's grant table mappable and
	// returns its GFN, and what undoes that.
	grantTable(ctx context.Context, s *job) (gfn uint64, done func() error, err error)
	// bootVCPU sets vCPU 0 to enter the kernel.
	bootVCPU(ctx context.Context, s *job) error
}

// newGuest picks the guest type for spec and checks what needs no file.
func newGuest(spec domain.Spec) (guest, error) {
	if spec.Kernel == "" {
		return nil, domain.InvalidField("spec.kernel", "a PV or PVH guest needs a kernel to boot directly")
	}
	switch spec.Type {
	case domain.TypePV:
		return &pvGuest{}, nil
	case domain.TypePVH, domain.TypeUnspecified:
		return newPVH(spec)
	}
	return nil, domain.InvalidField("spec.type", "%s: only PV and PVH guests can be built", spec.Type)
}

// build is the skeleton every guest type shares: load kernel and initrd,
// plan the layout, set limits, populate, write guest memory, set up rings
// and event channels, seed grants, set vCPU 0.
func (b *Builder) build(ctx context.Context, d xenctrl.Domid, spec domain.Spec) (domain.BuildResult, Timings, error) {
	var tm Timings
	g, err := newGuest(spec)
	if err != nil {
		return domain.BuildResult{}, tm, err
	}
	s := &job{hv: b.hv, d: d, spec: spec, backend: b.cfg.BackendDomid}
	t0 := time.Now()
	release, err := s.load(ctx, b.cfg.Limits, b.cfg.Memory)
	if err != nil {
		return domain.BuildResult{}, tm, err
	}
	// The image's segments alias the mapped file or the decompressed
	// kernel (held against the memory budget) until then.
	defer release()
	if err := g.plan(s); err != nil {
		return domain.BuildResult{}, tm, err
	}
	tm.Load = time.Since(t0)
	b.log.Debug("builder: layout", "type", spec.Type, "domid", d, "layout", g.String())

	if err := s.setLimits(ctx, g); err != nil {
		return domain.BuildResult{}, tm, err
	}
	t0 = time.Now()
	if s.mem, err = g.populate(ctx, s); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: %w", err)
	}
	tm.Populate = time.Since(t0)
	t0 = time.Now()
	if err := s.writeMemory(ctx, g); err != nil {
		return domain.BuildResult{}, tm, err
	}
	tm.Copy = time.Since(t0)
	t0 = time.Now()
	if err := s.setupRings(ctx, g); err != nil {
		return domain.BuildResult{}, tm, err
	}
	if err := s.seedGrants(ctx, g); err != nil {
		return domain.BuildResult{}, tm, fmt.Errorf("builder: seed grant table: %w", err)
	}
	if err := g.bootVCPU(ctx, s); err != nil {
		return domain.BuildResult{}, tm, err
	}
	tm.Setup = time.Since(t0)
	b.log.Info("builder: guest built", "type", spec.Type, "domid", d, "mem_mib", s.memBytes()>>20, "kernel", spec.Kernel,
		"store_gfn", s.res.StoreGFN, "console_gfn", s.res.ConsoleGFN, "store_port", s.res.StorePort, "console_port", s.res.ConsolePort,
		"load", tm.Load, "populate", tm.Populate, "copy", tm.Copy, "setup", tm.Setup)
	return s.res, tm, nil
}

// load opens the kernel and the initrd; release unmaps the kernel, gives
// its memory back to mem and closes the initrd.
func (s *job) load(ctx context.Context, lim kernel.Limits, mem *kernel.Budget) (release func(), err error) {
	img, unmap, err := kernel.OpenFile(ctx, s.spec.Kernel, lim, mem)
	switch {
	case errors.Is(err, kernel.ErrOverBudget):
		return nil, &domain.Error{Code: domain.CodeResourceExhausted, Field: "spec.kernel", Message: err.Error()} // names the file
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("builder: waiting for memory to load %s: %w", s.spec.Kernel, err)
	case err != nil:
		return nil, domain.InvalidField("spec.kernel", "%s: %v", s.spec.Kernel, err)
	}
	if s.spec.Ramdisk != "" {
		if s.initrd, err = kernel.OpenInitrd(s.spec.Ramdisk, lim); err != nil {
			unmap()
			return nil, domain.InvalidField("spec.ramdisk", "%s: %v", s.spec.Ramdisk, err)
		}
	}
	s.img = img
	return func() {
		unmap()
		if s.initrd != nil {
			s.initrd.Close()
		}
	}, nil
}

// initrdSize is the initrd's size in bytes (0: none).
func (s *job) initrdSize() uint64 {
	if s.initrd == nil {
		return 0
	}
	return s.initrd.Size()
}

// setLimits sets the vCPUs, max_mem (with libxl's 1 MiB of slack,
// LIBXL_MAXMEM_CONSTANT, for the special pages), the memory map and the
// type's own limits.
func (s *job) setLimits(ctx context.Context, g guest) error {
	if err := s.hv.SetMaxVCPUs(ctx, s.d, s.vcpus()); err != nil {
		return fmt.Errorf("builder: max_vcpus %d: %w", s.vcpus(), err)
	}
	if err := s.hv.SetMaxMem(ctx, s.d, s.maxBytes()/1024+1024); err != nil {
		return fmt.Errorf("builder: max_mem: %w", err)
	}
	if err := s.hv.SetMemoryMap(ctx, s.d, g.memoryMap()); err != nil {
		return fmt.Errorf("builder: %w", err)
	}
	return g.limits(ctx, s)
}

// writeMemory loads the kernel's segments (zeroing their bss) and the
// initrd, then the type's boot structures.
func (s *job) writeMemory(ctx context.Context, g guest) error {
	for _, seg := range s.img.Segments {
		if err := s.mem.Write(ctx, g.segmentAddr(seg), seg.Data, seg.MemSize); err != nil {
			return fmt.Errorf("builder: kernel segment %d at %#x: %w", seg.Index, seg.PAddr, err)
		}
	}
	if s.initrd != nil {
		if err := s.writeInitrd(ctx, g.initrdAddr()); err != nil {
			return fmt.Errorf("builder: initrd at %#x: %w", g.initrdAddr(), err)
		}
	}
	return g.writeBoot(ctx, s)
}

// writeInitrd streams the initrd to addr in chunks and zeroes the rest of
// its last page.
func (s *job) writeInitrd(ctx context.Context, addr uint64) error {
	err := s.initrd.Copy(ctx, func(off uint64, chunk []byte) error {
		return s.mem.Write(ctx, addr+off, chunk, uint64(len(chunk)))
	})
	if err != nil {
		return err
	}
	size := s.initrd.Size()
	if tail := alignUp(size) - size; tail > 0 {
		return s.mem.Write(ctx, addr+size, nil, tail)
	}
	return nil
}

// setupRings clears the xenstore and console ring pages, allocates their
// event channels unbound for the backend and tells the guest.
func (s *job) setupRings(ctx context.Context, g guest) error {
	store, console := g.ringPFNs()
	var err error
	for _, p := range []struct {
		pfn  uint64
		gfn  *uint64
		port *uint32
		what string
	}{{store, &s.res.StoreGFN, &s.res.StorePort, "xenstore"}, {console, &s.res.ConsoleGFN, &s.res.ConsolePort, "console"}} {
		if err := s.mem.Write(ctx, p.pfn<<pageShift, nil, pageSize); err != nil {
			return fmt.Errorf("builder: clear %s ring page %#x: %w", p.what, p.pfn, err)
		}
		if *p.gfn, err = s.mem.Frame(p.pfn); err != nil {
			return fmt.Errorf("builder: %s ring: %w", p.what, err)
		}
		if *p.port, err = s.hv.AllocUnboundEvtchn(ctx, s.d, s.backend); err != nil {
			return fmt.Errorf("builder: %s event channel: %w", p.what, err)
		}
	}
	return g.publishRings(ctx, s)
}

// seedGrants fills the reserved grant entries 0 (console) and 1
// (xenstore) so that the backends can map the rings by grant, as
// libxenguest's xc_dom_gnttab_seed does.
func (s *job) seedGrants(ctx context.Context, g guest) error {
	if s.res.ConsoleGFN > 0xffffffff || s.res.StoreGFN > 0xffffffff {
		return fmt.Errorf("ring frames %#x/%#x above the v1 grant entry limit", s.res.ConsoleGFN, s.res.StoreGFN)
	}
	gfn, done, err := g.grantTable(ctx, s)
	if err != nil {
		return err
	}
	err = s.mem.EditFrame(ctx, gfn, func(p []byte) {
		xenctrl.EncodeGrantEntryV1(p[xenctrl.GrantRefConsole*8:], s.backend, uint32(s.res.ConsoleGFN))
		xenctrl.EncodeGrantEntryV1(p[xenctrl.GrantRefXenstore*8:], s.backend, uint32(s.res.StoreGFN))
	})
	if derr := done(); err == nil {
		err = derr
	}
	return err
}
