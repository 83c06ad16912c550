package metrics

import (
	"context"
	"time"

	"github.com/google/uuid"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// HostStats is the host's part of a scrape, for callers that do not scrape
// (the API's GetHostStats).
type HostStats struct {
	HypervisorVersion string
	TotalMemoryBytes  uint64
	FreeMemoryBytes   uint64
	ScrubMemoryBytes  uint64
	CPUs              uint32
	CPUIdle           []time.Duration   // per pCPU, since boot
	Domains           map[string]uint32 // by state (see xen_host_domains)
	VMs               map[domain.PowerState]uint32
}

// VMStats is one VM's part of a scrape (the API's GetVMStats).
type VMStats struct {
	VM domain.VM
	// HasDomain: the fields below are the VM's domain's; otherwise they
	// are zero.
	HasDomain        bool
	DomainState      string // as xen_vm_domain_state labels it
	CPUTime          time.Duration
	VCPUsOnline      uint32
	MemoryBytes      uint64        // what the domain holds
	MemoryLimitBytes uint64        // max_pages
	Uptime           time.Duration // since the domain was built (VM.StartedAt)
	// VCPUs are the domain's vCPUs, one getvcpuinfo each (the scrape
	// exports no per-vCPU series: that would cost a hypercall per vCPU
	// of every VM).
	VCPUs []xenctrl.VCPUInfo
}

// HostStats reads the host's statistics (a snapshot within MaxAge of the
// last one is reused, as for a scrape).
func (c *Collector) HostStats(ctx context.Context) (HostStats, error) {
	s, version := c.snapshotCtx(ctx)
	if s.err != nil {
		return HostStats{}, s.err
	}
	h := HostStats{
		TotalMemoryBytes: s.phys.TotalPages * xenctrl.PageSize,
		FreeMemoryBytes:  s.phys.FreePages * xenctrl.PageSize,
		ScrubMemoryBytes: s.phys.ScrubPages * xenctrl.PageSize,
		CPUs:             s.phys.NrCPUs,
		CPUIdle:          s.cpuIdle,
		Domains:          map[string]uint32{},
		VMs:              map[domain.PowerState]uint32{},
	}
	if version != nil {
		h.HypervisorVersion = version.String()
	}
	for _, st := range domainStates {
		h.Domains[st] = 0
	}
	for _, d := range s.domains {
		h.Domains[domainState(d)]++
	}
	for _, vm := range s.vms {
		h.VMs[vm.Power]++
	}
	return h, nil
}

// VMStats reads one VM's statistics: the VM by id or name (the domain
// manager's errors for a bad or unknown ref), one getdomaininfo of its
// domain, if it has one, and one getvcpuinfo per vCPU.
func (c *Collector) VMStats(ctx context.Context, ref string) (VMStats, error) {
	vm, err := c.mgr.GetVM(ctx, ref)
	if err != nil {
		return VMStats{}, err
	}
	out := VMStats{VM: vm}
	if vm.Domid == 0 {
		return out, nil
	}
	d, err := c.hv.DomainInfo(ctx, xenctrl.Domid(vm.Domid))
	if xenctrl.IsNoDomain(err) {
		return out, nil // gone since the VM record was read
	}
	if err != nil {
		return VMStats{}, err
	}
	if h, err := uuid.Parse(vm.ID); err != nil || xenctrl.Handle(h) != d.Handle {
		return out, nil
	}
	out.HasDomain = true
	out.DomainState = domainState(d)
	out.CPUTime = time.Duration(d.CPUTime)
	out.VCPUsOnline = d.OnlineVCPUs
	out.MemoryBytes = d.TotPages * xenctrl.PageSize
	out.MemoryLimitBytes = d.MaxPages * xenctrl.PageSize
	if !vm.StartedAt.IsZero() {
		out.Uptime = max(time.Since(vm.StartedAt), 0)
	}
	if d.MaxVCPUID == xenctrl.InvalidMaxVCPUID {
		return out, nil // the vCPUs do not exist yet
	}
	for vcpu := uint32(0); vcpu <= d.MaxVCPUID; vcpu++ {
		v, err := c.hv.GetVCPUInfo(ctx, d.Domid, vcpu)
		if xenctrl.IsNoDomain(err) {
			return out, nil // destroyed meanwhile: what was read stands
		}
		if err != nil {
			return VMStats{}, err
		}
		out.VCPUs = append(out.VCPUs, v)
	}
	return out, nil
}
