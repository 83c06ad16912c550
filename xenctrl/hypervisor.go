// Package xenctrl is the toolstack's only door to the hypervisor.
//
// Hypervisor is the contract: the domain lifecycle code in package domain
// reaches Xen only through it. Two implementations exist:
//
//   - the real one, which issues hypercalls through /dev/xen/privcmd in pure
//     Go (the Xen ABI structs live in this package alone), and
//   - the simulator (package xenctrl/sim), which behaves like Xen 4.17 for
//     machines and tests without a hypervisor.
//
// Errors from either carry the errno Xen would return (see Error), so callers
// can test them with errors.Is(err, syscall.ESRCH) and the like.
package xenctrl

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// PageSize is the size of a Xen x86 page frame in bytes.
const PageSize = 4096

// Domid identifies a domain on one host (Xen's domid_t). Domain 0 is the
// control domain; guest domids start at 1 and stay below DomidFirstReserved.
type Domid uint16

// DomidFirstReserved is DOMID_FIRST_RESERVED: no domain has this id or above.
const DomidFirstReserved Domid = 0x7FF0

// Handle is the 16-byte domain handle Xen keeps for every domain. The
// toolstack sets it to the VM's UUID so that domains can be matched to VMs
// after a restart.
type Handle [16]byte

// CreateFlags are XEN_DOMCTL_CDF_* bits.
type CreateFlags uint32

const (
	CreateHVM      CreateFlags = 1 << 0 // XEN_DOMCTL_CDF_hvm: HVM or PVH container
	CreateHAP      CreateFlags = 1 << 1 // XEN_DOMCTL_CDF_hap: hardware-assisted paging
	CreateS3       CreateFlags = 1 << 2
	CreateOOSOff   CreateFlags = 1 << 3
	CreateXSDomain CreateFlags = 1 << 4
	CreateIOMMU    CreateFlags = 1 << 5
)

// DomainConfig is what CreateDomain needs (struct xen_domctl_createdomain,
// and the domid asked for in the domctl's header).
type DomainConfig struct {
	// Domid is the domid to create the domain with: 1..DomidFirstReserved-1
	// (EEXIST if a domain, dying ones included, has it), or 0 to let Xen
	// pick a free one. Xen would also pick one for a reserved value; both
	// backends refuse that with EINVAL instead, so that a caller never gets
	// a domid other than the one it asked for.
	Domid             Domid
	Handle            Handle
	Flags             CreateFlags
	MaxVCPUs          uint32
	MaxEvtchnPort     uint32
	MaxGrantFrames    uint32
	MaxMaptrackFrames uint32
	// EmulationFlags is xen_arch_domainconfig.emulation_flags (XEN_X86_EMU_*):
	// 0 for PV, XEN_X86_EMU_LAPIC for PVH, XEN_X86_EMU_ALL for HVM.
	EmulationFlags uint32
}

// ShutdownReason is the SHUTDOWN_* code a domain shut down with.
type ShutdownReason uint8

const (
	ShutdownPoweroff  ShutdownReason = 0
	ShutdownReboot    ShutdownReason = 1
	ShutdownSuspend   ShutdownReason = 2
	ShutdownCrash     ShutdownReason = 3
	ShutdownWatchdog  ShutdownReason = 4
	ShutdownSoftReset ShutdownReason = 5
)

func (r ShutdownReason) String() string {
	switch r {
	case ShutdownPoweroff:
		return "poweroff"
	case ShutdownReboot:
		return "reboot"
	case ShutdownSuspend:
		return "suspend"
	case ShutdownCrash:
		return "crash"
	case ShutdownWatchdog:
		return "watchdog"
	case ShutdownSoftReset:
		return "soft_reset"
	}
	return fmt.Sprintf("shutdown-code-%d", uint8(r))
}

// DomainInfo is one domain as the hypervisor reports it
// (struct xen_domctl_getdomaininfo, decoded).
type DomainInfo struct {
	Domid          Domid
	Handle         Handle
	Dying          bool
	HVM            bool
	HAP            bool
	Shutdown       bool
	ShutdownReason ShutdownReason // valid when Shutdown
	Paused         bool
	Blocked        bool
	Running        bool
	TotPages       uint64 // pages the domain owns now
	MaxPages       uint64 // its memory limit in pages
	CPUTime        uint64 // nanoseconds
	OnlineVCPUs    uint32
	MaxVCPUID      uint32 // InvalidMaxVCPUID until the vCPUs exist
	CPUPool        uint32
}

// InvalidMaxVCPUID is XEN_INVALID_MAX_VCPU_ID: the max_vcpu_id of a domain
// whose vCPUs do not exist yet.
const InvalidMaxVCPUID uint32 = 0xFFFFFFFF

// Version is the running hypervisor's version (XENVER_version, XENVER_extraversion).
type Version struct {
	Major, Minor int
	Extra        string // e.g. ".7" or "-unstable"
}

func (v Version) String() string { return fmt.Sprintf("%d.%d%s", v.Major, v.Minor, v.Extra) }

// PhysInfo describes the host (struct xen_sysctl_physinfo, decoded).
type PhysInfo struct {
	ThreadsPerCore uint32
	CoresPerSocket uint32
	NrCPUs         uint32
	MaxCPUID       uint32
	NrNodes        uint32
	CPUkHz         uint32
	Capabilities   uint32 // XEN_SYSCTL_PHYSCAP_*
	TotalPages     uint64
	FreePages      uint64
	ScrubPages     uint64
}

// Physical capability bits (XEN_SYSCTL_PHYSCAP_*).
const (
	PhysCapHVM uint32 = 1 << 0
	PhysCapPV  uint32 = 1 << 1
	PhysCapHAP uint32 = 1 << 5 // XEN_SYSCTL_PHYSCAP_hap
)

// Hypervisor is the set of hypervisor operations the toolstack uses.
// Every method may block and honours ctx.
type Hypervisor interface {
	// Kind is "xen" for real hardware, "sim" for the simulator.
	Kind() string
	Version(ctx context.Context) (Version, error)
	PhysInfo(ctx context.Context) (PhysInfo, error)
	// CPUIdle reports how long each physical CPU has been idle since the
	// host booted, indexed by CPU number; an offline CPU reads 0
	// (XEN_SYSCTL_getcpuinfo).
	CPUIdle(ctx context.Context) ([]time.Duration, error)

	// CreateDomain creates a paused domain with no memory
	// (XEN_DOMCTL_createdomain), with cfg.Domid if it is not 0.
	CreateDomain(ctx context.Context, cfg DomainConfig) (Domid, error)
	// SetMaxMem sets the domain's memory limit in KiB (XEN_DOMCTL_max_mem).
	SetMaxMem(ctx context.Context, d Domid, kib uint64) error
	// PopulatePhysmap gives the domain nrPages more pages of RAM
	// (XENMEM_populate_physmap); ENOMEM when the host or the domain's limit
	// runs out.
	PopulatePhysmap(ctx context.Context, d Domid, nrPages uint64) error
	// PauseDomain and UnpauseDomain adjust the toolstack's pause count
	// (refcounted: n pauses need n unpauses).
	PauseDomain(ctx context.Context, d Domid) error
	UnpauseDomain(ctx context.Context, d Domid) error
	// ShutdownDomain marks the domain shut down with a reason, as
	// SCHEDOP_remote_shutdown does; the domain stops running but keeps its
	// memory until destroyed.
	ShutdownDomain(ctx context.Context, d Domid, reason ShutdownReason) error
	// DestroyDomain starts tearing the domain down; it stays listed as dying
	// until its last reference is released (XEN_DOMCTL_destroydomain).
	DestroyDomain(ctx context.Context, d Domid) error
	// DomainInfo reports one domain; an error matching syscall.ESRCH if it
	// does not exist.
	DomainInfo(ctx context.Context, d Domid) (DomainInfo, error)
	// GetVCPUInfo reports one vCPU of d (XEN_DOMCTL_getvcpuinfo): EINVAL
	// for a vcpu at or past the domain's vCPU count, ESRCH while its vCPUs
	// do not exist yet.
	GetVCPUInfo(ctx context.Context, d Domid, vcpu uint32) (VCPUInfo, error)
	// ListDomains reports every domain, dom0 included, in domid order.
	ListDomains(ctx context.Context) ([]DomainInfo, error)
	Close() error
}

// Error is a failed hypervisor operation: which operation, and the errno
// Xen returned.
type Error struct {
	Op    string // e.g. "domctl createdomain"
	Domid Domid  // 0 when the operation has no domain
	Errno syscall.Errno
}

func (e *Error) Error() string {
	if e.Domid != 0 {
		return fmt.Sprintf("%s (domain %d): %v", e.Op, e.Domid, e.Errno)
	}
	return fmt.Sprintf("%s: %v", e.Op, e.Errno)
}

// Unwrap lets errors.Is(err, syscall.ENOMEM) and friends work.
func (e *Error) Unwrap() error { return e.Errno }

// IsNoDomain reports whether err says the domain does not exist.
func IsNoDomain(err error) bool { return errors.Is(err, syscall.ESRCH) }
