package sim

import (
	"context"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// pcpus accounts the host's physical CPUs' idle time. The simulator has no
// scheduler: the busy vCPUs of all domains are spread evenly over the
// pCPUs, so every pCPU is idle at the rate max(0, 1 - busy/nr) and all
// report the same idle time.
type pcpus struct {
	nr    uint32
	busy  uint64        // vCPUs running now
	idle  time.Duration // each pCPU's idle time up to since
	since time.Time
}

// idleAt is each pCPU's idle time at now.
func (p *pcpus) idleAt(now time.Time) time.Duration {
	if p.busy >= uint64(p.nr) {
		return p.idle
	}
	// Divide first: el*nr could overflow after years of uptime.
	return p.idle + now.Sub(p.since)/time.Duration(p.nr)*time.Duration(uint64(p.nr)-p.busy)
}

// addBusy changes the number of busy vCPUs by delta at now.
func (p *pcpus) addBusy(now time.Time, delta int64) {
	p.idle = p.idleAt(now)
	p.since = now
	p.busy = uint64(int64(p.busy) + delta)
}

// CPUIdle is XEN_SYSCTL_getcpuinfo: each pCPU's idle time since the
// simulated host started.
func (h *Hypervisor) CPUIdle(ctx context.Context) ([]time.Duration, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	now := time.Now()
	h.mu.Lock()
	idle := h.cpus.idleAt(now)
	h.mu.Unlock()
	out := make([]time.Duration, h.cpus.nr)
	for i := range out {
		out[i] = idle
	}
	return out, nil
}

// GetVCPUInfo is XEN_DOMCTL_getvcpuinfo. The simulator's vCPUs of a domain
// all do the same, so each has an equal share of the domain's CPU time; vCPU
// i sits on pCPU i modulo the host's pCPUs.
func (h *Hypervisor) GetVCPUInfo(ctx context.Context, d xenctrl.Domid, vcpu uint32) (xenctrl.VCPUInfo, error) {
	if err := ctx.Err(); err != nil {
		return xenctrl.VCPUInfo{}, err
	}
	const op = "domctl getvcpuinfo"
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return xenctrl.VCPUInfo{}, err
	}
	switch {
	case vcpu >= dom.maxVCPUs:
		return xenctrl.VCPUInfo{}, errno(op, d, syscall.EINVAL)
	case !dom.vcpus:
		return xenctrl.VCPUInfo{}, errno(op, d, syscall.ESRCH)
	}
	di := dom.info(now)
	return xenctrl.VCPUInfo{
		VCPU:    vcpu,
		Online:  di.OnlineVCPUs > 0,
		Blocked: di.Blocked,
		Running: di.Running,
		CPUTime: di.CPUTime / uint64(dom.maxVCPUs),
		CPU:     vcpu % h.cpus.nr,
	}, nil
}
