package xenctrl

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Xen is the real hypervisor backend: hypercalls through /dev/xen/privcmd,
// with the struct layouts of the running Xen version. It is safe for
// concurrent use.
type Xen struct {
	log     *slog.Logger
	pc      *privcmd
	abi     *abi
	version Version

	popMu sync.Mutex // serialises PopulatePhysmap
	mu    sync.Mutex
	// nextGPFN tracks, per domain, the next guest frame PopulatePhysmap
	// fills (see PopulatePhysmap).
	nextGPFN map[Domid]uint64
	// grantVersion is XEN_DOMCTL_GRANT_version for new domains: 2 when the
	// host offers grant table v2, else 1 (libxl's default).
	grantVersion uint32
}

var _ Hypervisor = (*Xen)(nil)

// destroyRetries bounds the XEN_DOMCTL_destroydomain loop on EAGAIN/ERESTART.
const destroyRetries = 10000

// ERESTART as Linux numbers it (Xen's -ERESTART leaks through on preemption).
const errRestart = syscall.Errno(85)

// Physical capability bits for grant table versions (XEN_SYSCTL_PHYSCAP_gnttab_v*).
const (
	physCapGnttabV1 uint32 = 1 << 6
	physCapGnttabV2 uint32 = 1 << 7
)

// Open opens /dev/xen/privcmd and checks the running Xen against the
// supported ABIs. Without privcmd (not a Xen dom0) or with a Xen version
// whose layouts this package does not know, it fails with an error saying so.
func Open(logger *slog.Logger) (*Xen, error) {
	if logger == nil {
		logger = slog.Default()
	}
	pc, err := openPrivcmd()
	if err != nil {
		return nil, err
	}
	x := &Xen{log: logger, pc: pc, nextGPFN: map[Domid]uint64{}}
	v, err := x.queryVersion()
	if err != nil {
		pc.close()
		return nil, err
	}
	a, err := abiFor(v.Major, v.Minor)
	if err != nil {
		pc.close()
		return nil, fmt.Errorf("%w (running Xen %s)", err, v)
	}
	x.abi, x.version = a, v
	x.grantVersion = 1
	if pi, err := x.PhysInfo(context.Background()); err != nil {
		pc.close()
		return nil, fmt.Errorf("xenctrl: Xen %s: sysctl physinfo failed, so the sysctl interface version %#x is wrong for it: %w", v, a.sysctlVersion, err)
	} else if pi.Capabilities&physCapGnttabV2 != 0 {
		x.grantVersion = 2
	}
	if _, err := x.domainInfo(0); err != nil {
		pc.close()
		return nil, fmt.Errorf("xenctrl: Xen %s: domctl getdomaininfo for dom0 failed, so the domctl interface version %#x is wrong for it: %w", v, a.domctlVersion, err)
	}
	logger.Info("xenctrl: opened", "xen", v.String(), "abi", a.name, "hypercall_buffers", pc.hcFile != nil)
	return x, nil
}

// Kind reports "xen".
func (x *Xen) Kind() string { return "xen" }

// Close releases privcmd and the buffers.
func (x *Xen) Close() error { return x.pc.close() }

func (x *Xen) queryVersion() (Version, error) {
	r, e := x.pc.hypercall(hcXenVersion, xenverVersion, 0)
	if e != 0 {
		return Version{}, fmt.Errorf("xenctrl: xen_version: %w", &Error{Op: "xen_version", Errno: e})
	}
	v := Version{Major: int(r >> 16), Minor: int(r & 0xffff)}
	extra := make([]byte, xenExtraVersionLen)
	if _, e, err := x.pc.callStruct(hcXenVersion, []uint64{xenverExtraversion}, extra); err != nil {
		return Version{}, err
	} else if e != 0 {
		return Version{}, &Error{Op: "xen_version extraversion", Errno: e}
	}
	if i := strings.IndexByte(string(extra), 0); i >= 0 {
		extra = extra[:i]
	}
	v.Extra = string(extra)
	return v, nil
}

// Version reports the running Xen's version.
func (x *Xen) Version(ctx context.Context) (Version, error) {
	if err := ctx.Err(); err != nil {
		return Version{}, err
	}
	return x.version, nil
}

// domctl runs one domctl; buf is the 144-byte struct, updated in place.
func (x *Xen) domctl(op string, buf []byte) error {
	_, e, err := x.pc.callStruct(hcDomctl, nil, buf)
	if err != nil {
		return err
	}
	if e != 0 {
		return &Error{Op: "domctl " + op, Domid: Domid(le.Uint16(buf[8:])), Errno: e}
	}
	return nil
}

func (x *Xen) sysctl(op string, buf []byte) error {
	_, e, err := x.pc.callStruct(hcSysctl, nil, buf)
	if err != nil {
		return err
	}
	if e != 0 {
		return &Error{Op: "sysctl " + op, Errno: e}
	}
	return nil
}

// PhysInfo reports the host (XEN_SYSCTL_physinfo).
func (x *Xen) PhysInfo(ctx context.Context) (PhysInfo, error) {
	if err := ctx.Err(); err != nil {
		return PhysInfo{}, err
	}
	sc := x.abi.newSysctl(sysctlPhysinfo)
	if err := x.sysctl("physinfo", sc); err != nil {
		return PhysInfo{}, err
	}
	return decodePhysInfo(sc[sysctlUnionOff:]), nil
}

// CPUIdle is XEN_SYSCTL_getcpuinfo for every possible CPU (max_cpu_id+1
// of physinfo).
func (x *Xen) CPUIdle(ctx context.Context) ([]time.Duration, error) {
	pi, err := x.PhysInfo(ctx)
	if err != nil {
		return nil, err
	}
	max := pi.MaxCPUID + 1
	buf, err := x.pc.alloc(int(max) * cpuInfoSize)
	if err != nil {
		return nil, err
	}
	defer x.pc.release(buf)
	sc := x.abi.newSysctl(sysctlGetCPUInfo)
	encodeGetCPUInfo(sc, max, buf.addr())
	if err := x.sysctl("getcpuinfo", sc); err != nil {
		return nil, err
	}
	n := getCPUInfoCount(sc)
	if n > max {
		return nil, fmt.Errorf("xenctrl: getcpuinfo returned %d CPUs for a buffer of %d", n, max)
	}
	return decodeCPUIdle(buf.mem, int(n)), nil
}

// CreateDomain creates a paused domain with no memory. Zero fields of cfg
// get libxl's defaults: MaxEvtchnPort 1023, grant and maptrack frames Xen's
// own defaults (-1), grant table version 2 when the host offers it, else 1.
// MaxVCPUs must be at least 1 (Xen answers EINVAL otherwise). A requested
// cfg.Domid goes in the domctl's domain field (0: Xen picks the domid).
func (x *Xen) CreateDomain(ctx context.Context, cfg DomainConfig) (Domid, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if cfg.Domid >= DomidFirstReserved {
		return 0, &Error{Op: "domctl createdomain", Domid: cfg.Domid, Errno: syscall.EINVAL}
	}
	dc := x.abi.newDomctl(domctlCreateDomain, cfg.Domid)
	x.abi.encodeCreateDomain(dc, cfg, x.grantVersion)
	if err := x.domctl("createdomain", dc); err != nil {
		return 0, err
	}
	d := Domid(le.Uint16(dc[8:]))
	x.mu.Lock()
	x.nextGPFN[d] = 0
	x.mu.Unlock()
	x.log.Debug("xenctrl: domain created", "domid", d)
	return d, nil
}

// SetMaxMem sets the domain's memory limit in KiB (XEN_DOMCTL_max_mem).
func (x *Xen) SetMaxMem(ctx context.Context, d Domid, kib uint64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dc := x.abi.newDomctl(domctlMaxMem, d)
	le.PutUint64(dc[domctlUnionOff:], kib)
	return x.domctl("max_mem", dc)
}

// SetMaxVCPUs is XEN_DOMCTL_max_vcpus. Since Xen 4.12 vCPUs are allocated
// by createdomain and this domctl is gone: expect ENOSYS/EOPNOTSUPP there.
func (x *Xen) SetMaxVCPUs(ctx context.Context, d Domid, n uint32) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dc := x.abi.newDomctl(domctlMaxVCPUs, d)
	le.PutUint32(dc[domctlUnionOff:], n)
	return x.domctl("max_vcpus", dc)
}

// PauseDomain takes one controller pause reference (XEN_DOMCTL_pausedomain).
func (x *Xen) PauseDomain(ctx context.Context, d Domid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return x.domctl("pausedomain", x.abi.newDomctl(domctlPauseDomain, d))
}

// UnpauseDomain drops one controller pause reference
// (XEN_DOMCTL_unpausedomain); EINVAL when none is held.
func (x *Xen) UnpauseDomain(ctx context.Context, d Domid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return x.domctl("unpausedomain", x.abi.newDomctl(domctlUnpauseDomain, d))
}

// ShutdownDomain is SCHEDOP_remote_shutdown.
func (x *Xen) ShutdownDomain(ctx context.Context, d Domid, reason ShutdownReason) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b := make([]byte, remoteShutdownSize)
	encodeRemoteShutdown(b, d, reason)
	_, e, err := x.pc.callStruct(hcSchedOp, []uint64{schedopRemoteShutdown}, b)
	if err != nil {
		return err
	}
	if e != 0 {
		return &Error{Op: "sched_op remote_shutdown", Domid: d, Errno: e}
	}
	return nil
}

// DestroyDomain is XEN_DOMCTL_destroydomain, repeated while Xen answers
// EAGAIN or ERESTART (as libxc does), a bounded number of times.
func (x *Xen) DestroyDomain(ctx context.Context, d Domid) error {
	for i := 0; ; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		err := x.domctl("destroydomain", x.abi.newDomctl(domctlDestroyDomain, d))
		if err == nil {
			break
		}
		var xe *Error
		if !errors.As(err, &xe) || (xe.Errno != syscall.EAGAIN && xe.Errno != errRestart) || i >= destroyRetries {
			return err
		}
		if i > 100 {
			time.Sleep(time.Millisecond)
		}
	}
	x.mu.Lock()
	delete(x.nextGPFN, d)
	x.mu.Unlock()
	return nil
}

// domainInfo runs XEN_DOMCTL_getdomaininfo and checks the answer is for d
// (Xen 4.17 answers the next existing domain when d does not exist).
func (x *Xen) domainInfo(d Domid) (DomainInfo, error) {
	dc := x.abi.newDomctl(domctlGetDomainInfo, d)
	if err := x.domctl("getdomaininfo", dc); err != nil {
		return DomainInfo{}, err
	}
	di := decodeDomainInfo(dc[domctlUnionOff:])
	if di.Domid != d {
		return DomainInfo{}, &Error{Op: "domctl getdomaininfo", Domid: d, Errno: syscall.ESRCH}
	}
	return di, nil
}

// DomainInfo reports one domain; ESRCH when it does not exist.
func (x *Xen) DomainInfo(ctx context.Context, d Domid) (DomainInfo, error) {
	if err := ctx.Err(); err != nil {
		return DomainInfo{}, err
	}
	return x.domainInfo(d)
}

// listBatch is how many domains one getdomaininfolist call fetches.
const listBatch = 64

// ListDomains reports every domain in domid order (XEN_SYSCTL_getdomaininfolist).
func (x *Xen) ListDomains(ctx context.Context) ([]DomainInfo, error) {
	buf, err := x.pc.alloc(listBatch * domInfoSize)
	if err != nil {
		return nil, err
	}
	defer x.pc.release(buf)
	var out []DomainInfo
	first := Domid(0)
	for first < DomidFirstReserved {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		sc := x.abi.newSysctl(sysctlGetDomainInfoList)
		encodeGetDomainInfoList(sc, first, listBatch, buf.addr())
		if err := x.sysctl("getdomaininfolist", sc); err != nil {
			return nil, err
		}
		n := getDomainInfoListCount(sc)
		if n > listBatch {
			return nil, fmt.Errorf("xenctrl: getdomaininfolist returned %d domains for a buffer of %d", n, listBatch)
		}
		for i := uint32(0); i < n; i++ {
			di := decodeDomainInfo(buf.mem[int(i)*domInfoSize:])
			out = append(out, di)
			first = di.Domid + 1
		}
		if n < listBatch {
			break
		}
	}
	return out, nil
}

// GetVCPUInfo reports one vCPU (XEN_DOMCTL_getvcpuinfo).
func (x *Xen) GetVCPUInfo(ctx context.Context, d Domid, vcpu uint32) (VCPUInfo, error) {
	if err := ctx.Err(); err != nil {
		return VCPUInfo{}, err
	}
	dc := x.abi.newDomctl(domctlGetVCPUInfo, d)
	le.PutUint32(dc[domctlUnionOff:], vcpu)
	if err := x.domctl("getvcpuinfo", dc); err != nil {
		return VCPUInfo{}, err
	}
	return decodeVCPUInfo(dc[domctlUnionOff:]), nil
}

// SetVCPUAffinity sets a vCPU's hard (and, when soft is non-nil, soft)
// affinity: bit i of a map = physical CPU i (XEN_DOMCTL_setvcpuaffinity).
// Xen writes the effective maps back; they are returned.
func (x *Xen) SetVCPUAffinity(ctx context.Context, d Domid, vcpu uint32, hard, soft []byte) (effHard, effSoft []byte, err error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	if len(hard) == 0 {
		return nil, nil, fmt.Errorf("xenctrl: SetVCPUAffinity: hard: empty CPU map")
	}
	n := len(hard)
	if len(soft) > n {
		n = len(soft)
	}
	hb, err := x.pc.alloc(2 * n)
	if err != nil {
		return nil, nil, err
	}
	defer x.pc.release(hb)
	copy(hb.mem, hard)
	flags := uint32(affinityHard)
	softAddr, softBits := uintptr(0), uint32(0)
	if soft != nil {
		copy(hb.mem[n:], soft)
		flags |= affinitySoft
		softAddr, softBits = hb.addr()+uintptr(n), uint32(len(soft)*8)
	}
	dc := x.abi.newDomctl(domctlSetVCPUAffinity, d)
	encodeVCPUAffinity(dc, vcpu, flags, hb.addr(), uint32(len(hard)*8), softAddr, softBits)
	if err := x.domctl("setvcpuaffinity", dc); err != nil {
		return nil, nil, err
	}
	effHard = append([]byte(nil), hb.mem[:len(hard)]...)
	if soft != nil {
		effSoft = append([]byte(nil), hb.mem[n:n+len(soft)]...)
	}
	return effHard, effSoft, nil
}

// ShadowOp runs XEN_DOMCTL_shadow_op. For CLEAN and PEEK, bitmap receives
// the dirty bitmap (one bit per page, pages bits); for SET_ALLOCATION mb is
// the pool size in MiB.
func (x *Xen) ShadowOp(ctx context.Context, d Domid, op, mode, mb uint32, bitmap []byte, pages uint64) (ShadowStats, error) {
	if err := ctx.Err(); err != nil {
		return ShadowStats{}, err
	}
	var bb *hbuf
	var addr uintptr
	if len(bitmap) > 0 {
		if uint64(len(bitmap))*8 < pages {
			return ShadowStats{}, fmt.Errorf("xenctrl: ShadowOp: bitmap: %d bytes cannot hold %d pages", len(bitmap), pages)
		}
		var err error
		if bb, err = x.pc.alloc(len(bitmap)); err != nil {
			return ShadowStats{}, err
		}
		defer x.pc.release(bb)
		addr = bb.addr()
	}
	dc := x.abi.newDomctl(domctlShadowOp, d)
	encodeShadowOp(dc, op, mode, mb, addr, pages)
	if err := x.domctl("shadow_op", dc); err != nil {
		return ShadowStats{}, err
	}
	if bb != nil {
		copy(bitmap, bb.mem)
	}
	return decodeShadowOp(dc), nil
}
