package sim

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// Limits taken from Xen 4.17 (x86).
const (
	// MaxVCPUsHVM is HVM_MAX_VCPUS (public/hvm/hvm_info_table.h).
	MaxVCPUsHVM = 128
	// MaxVCPUsPV is MAX_VIRT_CPUS on x86_64: GDT_LDT_MBYTES (1024) <<
	// (20 - GDT_LDT_VCPU_VA_SHIFT (17)) (arch/x86/include/asm/config.h).
	MaxVCPUsPV = 8192
	// MaxControllerPauses is the toolstack pause-count limit
	// (_domain_pause_by_systemcontroller).
	MaxControllerPauses = 255
	// DefaultMaxGrantFrames and DefaultMaxMaptrackFrames are Xen's
	// opt_max_grant_frames and opt_max_maptrack_frames.
	DefaultMaxGrantFrames    = 64
	DefaultMaxMaptrackFrames = 1024
	// maxPagesLimit: d->max_pages is an unsigned int.
	maxPagesLimit = 1<<32 - 1
	// invalidMaxVCPUID is XEN_INVALID_MAX_VCPU_ID.
	invalidMaxVCPUID = 0xFFFFFFFF
)

// x86 emulation flags (public/arch-x86/xen.h).
const (
	emuLAPIC = 1 << 0
	emuPIT   = 1 << 8
	emuVPCI  = 1 << 10
	emuAll   = 1<<11 - 1
)

const knownCreateFlags = xenctrl.CreateHVM | xenctrl.CreateHAP | xenctrl.CreateS3 |
	xenctrl.CreateOOSOff | xenctrl.CreateXSDomain | xenctrl.CreateIOMMU |
	1<<6 | 1<<7 // XEN_DOMCTL_CDF_nested_virt, XEN_DOMCTL_CDF_vpmu

// Config describes the simulated machine. Zero fields get defaults.
type Config struct {
	// TotalMemory is the host's RAM in bytes (default 16 GiB).
	TotalMemory uint64
	// NrCPUs is the number of physical CPUs (default 8).
	NrCPUs uint32
	// Dom0Memory is what domain 0 owns, in bytes (default: a quarter of the
	// host, at most 1 GiB).
	Dom0Memory uint64
	// XenMemory is what the hypervisor itself keeps (heap, frame table), in
	// bytes (default: 1/128 of the host plus 8 MiB).
	XenMemory uint64
	// ReleaseDelay is how long after its last reference is dropped a dying
	// domain lingers before it disappears. The release always runs on its
	// own goroutine unless ReleaseDelay is negative, in which case it is
	// synchronous (the domain is gone when DestroyDomain returns).
	ReleaseDelay time.Duration
	// OnDomainException is called where Xen sends VIRQ_DOM_EXC, with the
	// domain whose change raised it (which Xen's VIRQ does not carry; the
	// simulator's xenstored uses it to re-check that domain only); no lock
	// is held. It should return quickly.
	OnDomainException func(d xenctrl.Domid)
	// OnGuestBoot is called (no lock held) when a domain's vCPUs first come
	// online, i.e. its guest starts running.
	OnGuestBoot func(xenctrl.Domid)
	// Logger gets debug records of every state change (default: discard).
	Logger *slog.Logger
}

// GuestBehaviour is how the simulated guest inside a domain acts.
type GuestBehaviour struct {
	// IgnoreShutdownRequests: the guest never acknowledges
	// control/shutdown (a hung or uncooperative guest).
	IgnoreShutdownRequests bool
	// Idle: the guest's vCPUs sit blocked (xl list "-b----") and gain no
	// CPU time; otherwise they are busy ("r-----").
	Idle bool
	// ShutdownDelay is how long the guest takes between acknowledging a
	// shutdown request and shutting down (an orderly OS shutdown).
	ShutdownDelay time.Duration
	// DevicesNeverConnect: the guest's disk and NIC frontends never answer
	// their backends (a guest without PV drivers, or a hung one).
	DevicesNeverConnect bool
	// DevicesRefuseClose: once connected, the guest's frontends never
	// close (a guest that keeps its disks mounted).
	DevicesRefuseClose bool
}

// Hypervisor is the simulated hypervisor. Create it with New.
type Hypervisor struct {
	cfg Config
	log *slog.Logger

	totalPages uint64
	xenPages   uint64

	mu        sync.Mutex
	domains   map[xenctrl.Domid]*domain
	dying     map[xenctrl.Domid]*domain // the dying subset of domains
	rover     xenctrl.Domid             // last domid handed out (domctl.c's static rover)
	usedPages uint64                    // pages owned by all domains, dom0 included
	machine   machineFrames             // the host's RAM, frame by frame (frames.go)
	cpus      pcpus                     // the pCPUs' idle time (cpus.go)
}

type domain struct {
	id        xenctrl.Domid
	handle    xenctrl.Handle
	hvm, hap  bool
	maxVCPUs  uint32
	gntFrames uint32 // grant table frames the domain may have
	vcpus     bool   // vCPU structs exist (XEN_DOMCTL_max_vcpus, or boot)
	pauses    int    // controller_pause_count
	created   bool
	vcpusUp   bool
	shutdown  bool
	reason    xenctrl.ShutdownReason
	dying     bool
	refs      int
	totPages  uint64
	maxPages  uint64
	cpuNS     uint64
	runSince  time.Time // zero unless running
	behaviour GuestBehaviour
	mem       guestMemory   // its RAM (memory.go)
	setup     setupState    // what its builder set up (setup.go)
	changed   chan struct{} // closed and replaced on every state change
}

// runnable reports whether the domain's vCPUs can run.
func (d *domain) runnable() bool {
	return d.vcpusUp && d.pauses == 0 && !d.shutdown && !d.dying
}

func (d *domain) busy() bool { return d.runnable() && !d.behaviour.Idle }

// New boots a simulated host: Xen and domain 0 exist, nothing else.
func New(cfg Config) *Hypervisor {
	if cfg.TotalMemory == 0 {
		cfg.TotalMemory = 16 << 30
	}
	if cfg.NrCPUs == 0 {
		cfg.NrCPUs = 8
	}
	if cfg.XenMemory == 0 {
		cfg.XenMemory = cfg.TotalMemory/128 + 8<<20
	}
	if cfg.Dom0Memory == 0 {
		cfg.Dom0Memory = min(cfg.TotalMemory/4, 1<<30)
	}
	if cfg.XenMemory+cfg.Dom0Memory > cfg.TotalMemory {
		cfg.XenMemory = cfg.TotalMemory / 8
		cfg.Dom0Memory = cfg.TotalMemory / 8
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &Hypervisor{
		cfg:        cfg,
		log:        log,
		totalPages: cfg.TotalMemory / xenctrl.PageSize,
		xenPages:   cfg.XenMemory / xenctrl.PageSize,
		domains:    make(map[xenctrl.Domid]*domain),
		dying:      make(map[xenctrl.Domid]*domain),
		cpus:       pcpus{nr: cfg.NrCPUs, since: time.Now()},
	}
	dom0Pages := cfg.Dom0Memory / xenctrl.PageSize
	h.domains[0] = &domain{
		id:       0,
		maxVCPUs: cfg.NrCPUs,
		vcpus:    true,
		created:  true,
		vcpusUp:  true,
		totPages: dom0Pages,
		maxPages: maxPagesLimit,
		// dom0 sits idle: the simulator runs no toolstack in it, and a
		// busy dom0 would gain CPU time on every pCPU at once.
		behaviour: GuestBehaviour{Idle: true},
		changed:   make(chan struct{}),
	}
	h.usedPages = dom0Pages
	return h
}

func errno(op string, d xenctrl.Domid, e syscall.Errno) error {
	return &xenctrl.Error{Op: op, Domid: d, Errno: e}
}

// Kind implements xenctrl.Hypervisor.
func (h *Hypervisor) Kind() string { return "sim" }

// Close implements xenctrl.Hypervisor. The simulated machine keeps running:
// closing a handle to a hypervisor does not stop its domains.
func (h *Hypervisor) Close() error { return nil }

// Version reports Xen 4.17 with a "-sim" extra version.
func (h *Hypervisor) Version(ctx context.Context) (xenctrl.Version, error) {
	if err := ctx.Err(); err != nil {
		return xenctrl.Version{}, err
	}
	return xenctrl.Version{Major: 4, Minor: 17, Extra: "-sim"}, nil
}

// PhysInfo reports the simulated host (XEN_SYSCTL_physinfo).
func (h *Hypervisor) PhysInfo(ctx context.Context) (xenctrl.PhysInfo, error) {
	if err := ctx.Err(); err != nil {
		return xenctrl.PhysInfo{}, err
	}
	h.mu.Lock()
	free := h.freePagesLocked()
	h.mu.Unlock()
	return xenctrl.PhysInfo{
		ThreadsPerCore: 1,
		CoresPerSocket: h.cfg.NrCPUs,
		NrCPUs:         h.cfg.NrCPUs,
		MaxCPUID:       h.cfg.NrCPUs - 1,
		NrNodes:        1,
		CPUkHz:         2_400_000,
		Capabilities:   xenctrl.PhysCapHVM | xenctrl.PhysCapPV | xenctrl.PhysCapHAP,
		TotalPages:     h.totalPages,
		FreePages:      free,
	}, nil
}

func (h *Hypervisor) freePagesLocked() uint64 {
	used := h.xenPages + h.usedPages
	if used >= h.totalPages {
		return 0
	}
	return h.totalPages - used
}

// validate applies sanitise_domain_config, arch_sanitise_domain_config,
// emulation_flags_ok and grant_table_init's checks.
func validate(cfg xenctrl.DomainConfig) syscall.Errno {
	hvm := cfg.Flags&xenctrl.CreateHVM != 0
	hap := cfg.Flags&xenctrl.CreateHAP != 0
	switch {
	case cfg.Flags&^knownCreateFlags != 0:
		return syscall.EINVAL // "Unknown CDF flags"
	case cfg.MaxVCPUs < 1:
		return syscall.EINVAL // "No vCPUS"
	case hap && !hvm:
		return syscall.EINVAL // "HAP requested for non-HVM guest"
	case cfg.Flags&xenctrl.CreateIOMMU != 0:
		return syscall.EINVAL // "IOMMU requested but not available"
	case cfg.Flags&(1<<7) != 0:
		return syscall.EINVAL // vpmu "cannot be enabled this way"
	case hvm && cfg.MaxVCPUs > MaxVCPUsHVM, !hvm && cfg.MaxVCPUs > MaxVCPUsPV:
		return syscall.EINVAL // "Requested vCPUs (%u) exceeds max (%u)"
	case cfg.Flags&xenctrl.CreateS3 != 0:
		return syscall.EINVAL // "S3 integrity check not valid without CONFIG_TBOOT"
	case cfg.Flags&(1<<6) != 0 && !hap:
		return syscall.EINVAL // "Nested virt not supported without HAP"
	}
	// grant_table_init: 0 here means "Xen's default" (the real backend
	// passes -1 for it).
	if int32(cfg.MaxGrantFrames) < 0 || cfg.MaxGrantFrames > DefaultMaxGrantFrames ||
		int32(cfg.MaxMaptrackFrames) < 0 || cfg.MaxMaptrackFrames > DefaultMaxMaptrackFrames {
		return syscall.EINVAL // "Bad grant table sizes"
	}
	em := cfg.EmulationFlags
	if em&^emuAll != 0 {
		return syscall.EINVAL // "Invalid emulation bitmap"
	}
	if hvm {
		if em != emuAll&^emuVPCI && em != emuLAPIC {
			return syscall.EOPNOTSUPP
		}
	} else if em != 0 && em != emuPIT {
		return syscall.EOPNOTSUPP
	}
	return 0
}

// CreateDomain is XEN_DOMCTL_createdomain: a new domain, paused once by the
// controller, with no memory. A requested cfg.Domid is EEXIST while any
// domain, dying ones included, has it (is_free_domid); 0 picks one.
func (h *Hypervisor) CreateDomain(ctx context.Context, cfg xenctrl.DomainConfig) (xenctrl.Domid, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if cfg.Domid >= xenctrl.DomidFirstReserved {
		// The xenctrl contract; Xen itself would pick a domid instead.
		return 0, errno("domctl createdomain", cfg.Domid, syscall.EINVAL)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, used := h.domains[cfg.Domid]; cfg.Domid != 0 && used {
		return 0, errno("domctl createdomain", cfg.Domid, syscall.EEXIST)
	}
	if e := validate(cfg); e != 0 {
		return 0, errno("domctl createdomain", 0, e)
	}
	dom := cfg.Domid
	if dom == 0 {
		var ok bool
		if dom, ok = h.pickDomid(); !ok {
			return 0, errno("domctl createdomain", 0, syscall.ENOMEM)
		}
	}
	h.domains[dom] = &domain{
		id:        dom,
		handle:    cfg.Handle,
		hvm:       cfg.Flags&xenctrl.CreateHVM != 0,
		hap:       cfg.Flags&xenctrl.CreateHAP != 0,
		maxVCPUs:  cfg.MaxVCPUs,
		gntFrames: cmp.Or(cfg.MaxGrantFrames, DefaultMaxGrantFrames),
		pauses:    1,
		changed:   make(chan struct{}),
	}
	h.log.Debug("sim: domain created", "domid", dom, "vcpus", cfg.MaxVCPUs, "hvm", cfg.Flags&xenctrl.CreateHVM != 0)
	return dom, nil
}

// pickDomid is the rover search of do_domctl(XEN_DOMCTL_createdomain),
// bounded to one full lap (Xen's loop never ends when rover is 0 and every
// domid is taken). A requested domid does not move the rover. h.mu must be
// held.
func (h *Hypervisor) pickDomid() (xenctrl.Domid, bool) {
	dom := h.rover
	for i := 0; i < int(xenctrl.DomidFirstReserved); i++ {
		dom++
		if dom >= xenctrl.DomidFirstReserved {
			dom = 1
		}
		if dom == h.rover {
			break
		}
		if _, used := h.domains[dom]; !used {
			h.rover = dom
			return dom, true
		}
	}
	return 0, false
}

// lookup returns the domain or ESRCH. h.mu must be held.
func (h *Hypervisor) lookup(op string, d xenctrl.Domid) (*domain, error) {
	if dom, ok := h.domains[d]; ok {
		return dom, nil
	}
	return nil, errno(op, d, syscall.ESRCH)
}

// SetMaxMem is XEN_DOMCTL_max_mem: max_pages = kib >> 2. A limit below the
// current allocation is allowed; new allocations then fail.
func (h *Hypervisor) SetMaxMem(ctx context.Context, d xenctrl.Domid, kib uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup("domctl max_mem", d)
	if err != nil {
		return err
	}
	dom.maxPages = min(kib>>2, maxPagesLimit)
	return nil
}

// SetMaxVCPUs is XEN_DOMCTL_max_vcpus: it creates the vCPUs sized by
// createdomain. n must equal the createdomain value (EINVAL otherwise, and
// for dom0); repeating it is harmless. The simulator also creates them
// itself when a domain boots, standing in for a builder that did not.
func (h *Hypervisor) SetMaxVCPUs(ctx context.Context, d xenctrl.Domid, n uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	const op = "domctl max_vcpus"
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return err
	}
	if d == 0 || n != dom.maxVCPUs {
		return errno(op, d, syscall.EINVAL)
	}
	dom.vcpus = true
	return nil
}

// DomainInfo is XEN_DOMCTL_getdomaininfo for exactly d.
func (h *Hypervisor) DomainInfo(ctx context.Context, d xenctrl.Domid) (xenctrl.DomainInfo, error) {
	if err := ctx.Err(); err != nil {
		return xenctrl.DomainInfo{}, err
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup("domctl getdomaininfo", d)
	if err != nil {
		return xenctrl.DomainInfo{}, err
	}
	return dom.info(now), nil
}

// DomainStatus is the part of XEN_DOMCTL_getdomaininfo a xenstored's sweep
// reads after a domain exception: whether domain d exists, and whether it
// has shut down or is dying. It computes nothing else (no CPU time), so a
// sweep over 10,000 domains stays cheap.
func (h *Hypervisor) DomainStatus(d xenctrl.Domid) (exists, shutdownOrDying bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, ok := h.domains[d]
	if !ok {
		return false, false
	}
	return true, dom.shutdown || dom.dying
}

// ListDomains is XEN_SYSCTL_getdomaininfolist over every domain.
func (h *Hypervisor) ListDomains(ctx context.Context) ([]xenctrl.DomainInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	ids := make([]xenctrl.Domid, 0, len(h.domains))
	for id := range h.domains {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]xenctrl.DomainInfo, len(ids))
	for i, id := range ids {
		out[i] = h.domains[id].info(now)
	}
	return out, nil
}

// info decodes the domain the way getdomaininfo() in domctl.c does.
func (d *domain) info(now time.Time) xenctrl.DomainInfo {
	di := xenctrl.DomainInfo{
		Domid:    d.id,
		Handle:   d.handle,
		Dying:    d.dying,
		HVM:      d.hvm,
		HAP:      d.hap,
		Shutdown: d.shutdown,
		Paused:   d.pauses > 0,
		TotPages: d.totPages,
		MaxPages: d.maxPages,
		CPUTime:  d.cpuNS,
		// XEN_INVALID_MAX_VCPU_ID until the vCPUs exist: on 4.17
		// createdomain only sizes the array, XEN_DOMCTL_max_vcpus fills it.
		MaxVCPUID: invalidMaxVCPUID,
	}
	if d.vcpus {
		di.MaxVCPUID = d.maxVCPUs - 1
	}
	if d.shutdown {
		di.ShutdownReason = d.reason
	}
	if d.vcpusUp && !d.dying {
		di.OnlineVCPUs = d.maxVCPUs
		// Blocked only if every online vCPU is blocked; running if any is.
		// Paused or shut-down vCPUs are neither.
		di.Running = d.busy()
		di.Blocked = d.runnable() && d.behaviour.Idle
	}
	if !d.runSince.IsZero() {
		di.CPUTime += d.ranSince(now)
	}
	return di
}

// ranSince is the CPU time in nanoseconds a busy domain gained since
// runSince: like Xen's cpu_time (the sum of its vCPUs' running time), one
// second per second for each online vCPU.
func (d *domain) ranSince(now time.Time) uint64 {
	return uint64(now.Sub(d.runSince)) * uint64(d.maxVCPUs)
}
