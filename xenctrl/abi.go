package xenctrl

// This file holds every Xen ABI number and struct layout the real backend
// uses. Structs are encoded and decoded by hand at fixed byte offsets (never
// by casting Go structs), and the layouts depend on the running Xen version:
// abiFor picks one, and an unknown version is refused rather than guessed.
//
// Offsets come from Xen's public headers (xen/include/public/{domctl,sysctl,
// memory,sched,version}.h) for x86_64; abi_test.go checks them against the
// numbers dumped from the 4.17-4.20 headers.

import (
	"encoding/binary"
	"fmt"
	"time"
)

var le = binary.LittleEndian

// Hypercall numbers (__HYPERVISOR_*), the same on every supported version.
const (
	hcMemoryOp       = 12
	hcXenVersion     = 17
	hcGrantTableOp   = 20
	hcSchedOp        = 29
	hcEventChannelOp = 32
	hcSysctl         = 35
	hcDomctl         = 36
)

// xen_version sub-commands.
const (
	xenverVersion      = 0
	xenverExtraversion = 1 // char[16]
	xenExtraVersionLen = 16
)

// Domctl commands (XEN_DOMCTL_*), unchanged 4.17-4.20.
const (
	domctlCreateDomain    = 1
	domctlDestroyDomain   = 2
	domctlPauseDomain     = 3
	domctlUnpauseDomain   = 4
	domctlGetDomainInfo   = 5
	domctlSetVCPUAffinity = 9
	domctlShadowOp        = 10
	domctlMaxMem          = 11
	domctlGetVCPUInfo     = 14
	domctlMaxVCPUs        = 15
)

// Sysctl commands (XEN_SYSCTL_*).
const (
	sysctlPhysinfo          = 3
	sysctlGetDomainInfoList = 6
	sysctlGetCPUInfo        = 8
)

// Memory and scheduler sub-commands.
const (
	xenmemPopulatePhysmap = 6
	schedopRemoteShutdown = 4
)

// Struct sizes and offsets shared by all supported versions.
const (
	domctlSize     = 144 // struct xen_domctl
	domctlUnionOff = 16  // xen_domctl.u
	sysctlSize     = 136 // struct xen_sysctl
	sysctlUnionOff = 8   // xen_sysctl.u

	domInfoSize = 112 // struct xen_domctl_getdomaininfo

	// getdomaininfo flags (XEN_DOMINF_*).
	dominfDying         = 1 << 0
	dominfHVM           = 1 << 1
	dominfShutdown      = 1 << 2
	dominfPaused        = 1 << 3
	dominfBlocked       = 1 << 4
	dominfRunning       = 1 << 5
	dominfHAP           = 1 << 8
	dominfShutdownShift = 16
	dominfShutdownMask  = 0xff

	memReservationSize = 32 // struct xen_memory_reservation
	remoteShutdownSize = 8  // struct sched_remote_shutdown
)

// abi is the per-version part of the interface.
type abi struct {
	name          string // "4.17"
	domctlVersion uint32 // XEN_DOMCTL_INTERFACE_VERSION
	sysctlVersion uint32 // XEN_SYSCTL_INTERFACE_VERSION
	// createdomain layout: 4.19 inserted altp2m_opts at 48.
	createSize    int
	cdVmtrace     int
	cdCpupool     int
	cdArch        int
	cdAltp2m      int  // -1 when absent
	nextOnMissing bool // getdomaininfo of a missing domid answers the next domain (4.17)
}

var abis = []abi{
	{name: "4.17", domctlVersion: 0x15, sysctlVersion: 0x15, createSize: 64, cdVmtrace: 48, cdCpupool: 52, cdArch: 56, cdAltp2m: -1, nextOnMissing: true},
	{name: "4.18", domctlVersion: 0x16, sysctlVersion: 0x15, createSize: 64, cdVmtrace: 48, cdCpupool: 52, cdArch: 56, cdAltp2m: -1},
	{name: "4.19", domctlVersion: 0x17, sysctlVersion: 0x15, createSize: 68, cdVmtrace: 52, cdCpupool: 56, cdArch: 60, cdAltp2m: 48},
	{name: "4.20", domctlVersion: 0x17, sysctlVersion: 0x15, createSize: 68, cdVmtrace: 52, cdCpupool: 56, cdArch: 60, cdAltp2m: 48},
}

// SupportedVersions lists the Xen versions this package has layouts for.
func SupportedVersions() []string {
	out := make([]string, len(abis))
	for i, a := range abis {
		out[i] = a.name
	}
	return out
}

// abiFor returns the layouts for a Xen major.minor, or an error naming it.
func abiFor(major, minor int) (*abi, error) {
	name := fmt.Sprintf("%d.%d", major, minor)
	for i := range abis {
		if abis[i].name == name {
			return &abis[i], nil
		}
	}
	return nil, fmt.Errorf("xenctrl: Xen %s is not supported (supported: %v): its domctl/sysctl layouts are unknown", name, SupportedVersions())
}

// newDomctl returns a zeroed xen_domctl with the header filled in.
func (a *abi) newDomctl(cmd uint32, d Domid) []byte {
	b := make([]byte, domctlSize)
	le.PutUint32(b[0:], cmd)
	le.PutUint32(b[4:], a.domctlVersion)
	le.PutUint16(b[8:], uint16(d))
	return b
}

// newSysctl returns a zeroed xen_sysctl with the header filled in.
func (a *abi) newSysctl(cmd uint32) []byte {
	b := make([]byte, sysctlSize)
	le.PutUint32(b[0:], cmd)
	le.PutUint32(b[4:], a.sysctlVersion)
	return b
}

// Defaults applied by CreateDomain to zero fields of DomainConfig, as libxl does.
const (
	defaultMaxEvtchnPort = 1023 // libxl's event_channels default
)

// encodeCreateDomain fills xen_domctl.u.createdomain.
func (a *abi) encodeCreateDomain(dc []byte, cfg DomainConfig, grantVersion uint32) {
	u := dc[domctlUnionOff:]
	// ssidref @0 stays 0.
	copy(u[4:20], cfg.Handle[:])
	le.PutUint32(u[20:], uint32(cfg.Flags))
	// iommu_opts @24 stays 0.
	le.PutUint32(u[28:], cfg.MaxVCPUs)
	evt := cfg.MaxEvtchnPort
	if evt == 0 {
		evt = defaultMaxEvtchnPort
	}
	le.PutUint32(u[32:], evt)
	// max_grant_frames, max_maptrack_frames: -1 asks for Xen's defaults.
	gf, mf := int32(-1), int32(-1)
	if cfg.MaxGrantFrames != 0 {
		gf = int32(cfg.MaxGrantFrames)
	}
	if cfg.MaxMaptrackFrames != 0 {
		mf = int32(cfg.MaxMaptrackFrames)
	}
	le.PutUint32(u[36:], uint32(gf))
	le.PutUint32(u[40:], uint32(mf))
	le.PutUint32(u[44:], grantVersion) // grant_opts = XEN_DOMCTL_GRANT_version(v)
	// vmtrace_size, cpupool_id (and altp2m_opts) stay 0.
	le.PutUint32(u[a.cdArch:], cfg.EmulationFlags)
	// arch.misc_flags stays 0.
}

// decodeDomainInfo decodes one struct xen_domctl_getdomaininfo.
func decodeDomainInfo(b []byte) DomainInfo {
	flags := le.Uint32(b[4:])
	var di DomainInfo
	di.Domid = Domid(le.Uint16(b[0:]))
	di.Dying = flags&dominfDying != 0
	di.HVM = flags&dominfHVM != 0
	di.HAP = flags&dominfHAP != 0
	di.Shutdown = flags&dominfShutdown != 0
	di.ShutdownReason = ShutdownReason((flags >> dominfShutdownShift) & dominfShutdownMask)
	di.Paused = flags&dominfPaused != 0
	di.Blocked = flags&dominfBlocked != 0
	di.Running = flags&dominfRunning != 0
	di.TotPages = le.Uint64(b[8:])
	di.MaxPages = le.Uint64(b[16:])
	di.CPUTime = le.Uint64(b[56:])
	di.OnlineVCPUs = le.Uint32(b[64:])
	di.MaxVCPUID = le.Uint32(b[68:])
	copy(di.Handle[:], b[76:92])
	di.CPUPool = le.Uint32(b[92:])
	return di
}

// decodePhysInfo decodes struct xen_sysctl_physinfo (same layout 4.17-4.20).
func decodePhysInfo(b []byte) PhysInfo {
	return PhysInfo{
		ThreadsPerCore: le.Uint32(b[0:]),
		CoresPerSocket: le.Uint32(b[4:]),
		NrCPUs:         le.Uint32(b[8:]),
		MaxCPUID:       le.Uint32(b[12:]),
		NrNodes:        le.Uint32(b[16:]),
		CPUkHz:         le.Uint32(b[24:]),
		Capabilities:   le.Uint32(b[28:]),
		TotalPages:     le.Uint64(b[40:]),
		FreePages:      le.Uint64(b[48:]),
		ScrubPages:     le.Uint64(b[56:]),
	}
}

// encodeGetDomainInfoList fills xen_sysctl.u.getdomaininfolist.
func encodeGetDomainInfoList(sc []byte, first Domid, max uint32, buf uintptr) {
	u := sc[sysctlUnionOff:]
	le.PutUint16(u[0:], uint16(first))
	le.PutUint32(u[4:], max)
	le.PutUint64(u[8:], uint64(buf))
}

// getDomainInfoListCount reads num_domains back.
func getDomainInfoListCount(sc []byte) uint32 { return le.Uint32(sc[sysctlUnionOff+16:]) }

// encodeGetCPUInfo fills xen_sysctl.u.getcpuinfo: max_cpus at 0, the
// xen_sysctl_cpuinfo array (one uint64 idletime each) at 8.
func encodeGetCPUInfo(sc []byte, max uint32, buf uintptr) {
	u := sc[sysctlUnionOff:]
	le.PutUint32(u[0:], max)
	le.PutUint64(u[8:], uint64(buf))
}

// getCPUInfoCount reads nr_cpus back: min(max_cpus, nr_cpu_ids).
func getCPUInfoCount(sc []byte) uint32 { return le.Uint32(sc[sysctlUnionOff+16:]) }

// cpuInfoSize is sizeof(struct xen_sysctl_cpuinfo).
const cpuInfoSize = 8

// decodeCPUIdle decodes n xen_sysctl_cpuinfo entries (idle nanoseconds).
func decodeCPUIdle(b []byte, n int) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = time.Duration(le.Uint64(b[i*cpuInfoSize:]))
	}
	return out
}

// encodeMemReservation writes struct xen_memory_reservation.
func encodeMemReservation(b []byte, extents uintptr, nr uint64, order uint32, d Domid) {
	le.PutUint64(b[0:], uint64(extents))
	le.PutUint64(b[8:], nr)
	le.PutUint32(b[16:], order)
	le.PutUint32(b[20:], 0) // mem_flags
	le.PutUint16(b[24:], uint16(d))
}

// encodeRemoteShutdown writes struct sched_remote_shutdown.
func encodeRemoteShutdown(b []byte, d Domid, reason ShutdownReason) {
	le.PutUint16(b[0:], uint16(d))
	le.PutUint32(b[4:], uint32(reason))
}

// VCPUInfo is one vCPU's state (struct xen_domctl_getvcpuinfo).
type VCPUInfo struct {
	VCPU    uint32
	Online  bool
	Blocked bool
	Running bool
	CPUTime uint64 // nanoseconds
	CPU     uint32 // physical CPU it runs on
}

func decodeVCPUInfo(u []byte) VCPUInfo {
	return VCPUInfo{
		VCPU:    le.Uint32(u[0:]),
		Online:  u[4] != 0,
		Blocked: u[5] != 0,
		Running: u[6] != 0,
		CPUTime: le.Uint64(u[8:]),
		CPU:     le.Uint32(u[16:]),
	}
}

// Shadow (paging) operations for ShadowOp (XEN_DOMCTL_SHADOW_OP_*).
const (
	ShadowOpOff            uint32 = 0
	ShadowOpEnableLogDirty uint32 = 2
	ShadowOpClean          uint32 = 11
	ShadowOpPeek           uint32 = 12
	ShadowOpGetAllocation  uint32 = 30
	ShadowOpSetAllocation  uint32 = 31
)

// encodeShadowOp fills xen_domctl.u.shadow_op.
func encodeShadowOp(dc []byte, op, mode, mb uint32, bitmap uintptr, pages uint64) {
	u := dc[domctlUnionOff:]
	le.PutUint32(u[0:], op)
	le.PutUint32(u[4:], mode)
	le.PutUint32(u[8:], mb)
	le.PutUint64(u[16:], uint64(bitmap))
	le.PutUint64(u[24:], pages)
}

// ShadowStats is what a shadow op reports back.
type ShadowStats struct {
	MB         uint32 // allocation in MiB (GET/SET_ALLOCATION)
	Pages      uint64 // pages covered by the dirty bitmap
	FaultCount uint32
	DirtyCount uint32
}

func decodeShadowOp(dc []byte) ShadowStats {
	u := dc[domctlUnionOff:]
	return ShadowStats{
		MB:         le.Uint32(u[8:]),
		Pages:      le.Uint64(u[24:]),
		FaultCount: le.Uint32(u[32:]),
		DirtyCount: le.Uint32(u[36:]),
	}
}

// vCPU affinity flags (XEN_VCPUAFFINITY_*).
const (
	affinityHard = 1 << 0
	affinitySoft = 1 << 1
)

// encodeVCPUAffinity fills xen_domctl.u.vcpuaffinity: vcpu@0 flags@4,
// cpumap_hard{bitmap@8 nr_bits@16}, cpumap_soft{bitmap@24 nr_bits@32}.
func encodeVCPUAffinity(dc []byte, vcpu, flags uint32, hard uintptr, hardBits uint32, soft uintptr, softBits uint32) {
	u := dc[domctlUnionOff:]
	le.PutUint32(u[0:], vcpu)
	le.PutUint32(u[4:], flags)
	le.PutUint64(u[8:], uint64(hard))
	le.PutUint32(u[16:], hardBits)
	le.PutUint64(u[24:], uint64(soft))
	le.PutUint32(u[32:], softBits)
}
