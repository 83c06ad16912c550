package sim

import (
	"context"
	"time"
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
