package metrics

import (
	"bufio"
	"strconv"
	"strings"

	"github.com/google/uuid"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// vmRow is one VM of a snapshot, with the label sets its series carry.
type vmRow struct {
	vm *domain.VM
	// ids are the VM's labels: `name="web",uuid="…"`.
	ids string
	// dom is the VM's domain, if the snapshot has one with the VM's
	// domid and handle; domLabels are then `domid="7",name=…,uuid=…`.
	dom       *xenctrl.DomainInfo
	domLabels string
	devices   []deviceReading
	uptime    float64 // seconds since the domain was built; < 0: unknown
}

// vmFamily is a per-VM family and how a row's samples are written.
type vmFamily struct {
	family
	write func(e *exposition, r *vmRow)
}

// domainGauge is a family with one sample per VM that has a domain.
func domainGauge(name, help string, value func(r *vmRow) float64) vmFamily {
	return vmFamily{family{name: name, help: help}, func(e *exposition, r *vmRow) {
		if r.dom != nil {
			e.sample("", r.domLabels, value(r))
		}
	}}
}

// deviceCounter is a family with one sample per disk (or NIC) of a VM's
// domain whose counters were read.
func deviceCounter(name, help string, kind devices.Kind, value func(devices.Counters) uint64) vmFamily {
	return vmFamily{family{name: name, help: help, counter: true}, func(e *exposition, r *vmRow) {
		for _, d := range r.devices {
			if d.rec.Kind == kind {
				e.sample(`device="`+deviceLabel(d.rec)+`",`, r.domLabels, float64(value(d.counters)))
			}
		}
	}}
}

// vmFamilies are the per-VM families, in the order they are written.
var vmFamilies = []vmFamily{
	{family{name: "xenopsd_vm_power_state", help: "the VM's power state (1 for the state it is in)"},
		func(e *exposition, r *vmRow) {
			e.sample(`state="`+powerLabel(r.vm.Power)+`",`, r.ids, 1)
		}},
	{family{name: "xenopsd_vm_restarts_total", counter: true,
		help: "domains the daemon rebuilt after the guest shut down with an on_* action of restart, by cause"},
		func(e *exposition, r *vmRow) {
			// reboot and crash always, poweroff (on_poweroff=restart) once it happened
			e.sample(`cause="crash",`, r.ids, float64(r.vm.Restarts.Crash))
			if r.vm.Restarts.Poweroff > 0 {
				e.sample(`cause="poweroff",`, r.ids, float64(r.vm.Restarts.Poweroff))
			}
			e.sample(`cause="reboot",`, r.ids, float64(r.vm.Restarts.Reboot))
		}},
	{family{name: "xen_vm_cpu_seconds_total", counter: true, help: "CPU time the VM's domain has run, summed over its vCPUs"},
		func(e *exposition, r *vmRow) {
			if r.dom != nil {
				e.sample("", r.domLabels, float64(r.dom.CPUTime)/1e9)
			}
		}},
	domainGauge("xen_vm_vcpus_online", "the domain's online vCPUs",
		func(r *vmRow) float64 { return float64(r.dom.OnlineVCPUs) }),
	domainGauge("xen_vm_memory_bytes", "RAM the domain holds now (tot_pages)",
		func(r *vmRow) float64 { return pagesToBytes(r.dom.TotPages) }),
	domainGauge("xen_vm_memory_limit_bytes", "the most RAM Xen lets the domain hold (max_pages)",
		func(r *vmRow) float64 { return pagesToBytes(r.dom.MaxPages) }),
	domainGauge("xen_vm_memory_static_max_bytes", "the VM's static maximum memory (its spec)",
		func(r *vmRow) float64 { return float64(r.vm.Spec.MemoryStaticMax) }),
	domainGauge("xen_vm_memory_target_bytes", "the memory target the toolstack set for the guest (memory/target)",
		func(r *vmRow) float64 { return float64(r.vm.Spec.MemoryDynamicMax) }),
	{family{name: "xen_vm_domain_state", help: "the domain's state as Xen reports it (1 for the state it is in)"},
		func(e *exposition, r *vmRow) {
			if r.dom != nil {
				e.sample(`state="`+domainState(*r.dom)+`",`, r.domLabels, 1)
			}
		}},
	{family{name: "xen_vm_uptime_seconds", help: "time since the VM's domain was built"},
		func(e *exposition, r *vmRow) {
			if r.dom != nil && r.uptime >= 0 {
				e.sample("", r.domLabels, r.uptime)
			}
		}},
	deviceCounter("xen_vm_disk_read_requests_total", "read requests the guest made on the disk (blkback's rd_req)",
		devices.KindVBD, func(k devices.Counters) uint64 { return k.ReadRequests }),
	deviceCounter("xen_vm_disk_write_requests_total", "write requests the guest made on the disk (wr_req)",
		devices.KindVBD, func(k devices.Counters) uint64 { return k.WriteRequests }),
	deviceCounter("xen_vm_disk_read_bytes_total", "bytes the guest read from the disk (rd_sect)",
		devices.KindVBD, func(k devices.Counters) uint64 { return k.ReadBytes }),
	deviceCounter("xen_vm_disk_written_bytes_total", "bytes the guest wrote to the disk (wr_sect)",
		devices.KindVBD, func(k devices.Counters) uint64 { return k.WriteBytes }),
	deviceCounter("xen_vm_disk_out_of_requests_total", "times the guest's ring held more requests than blkback had slots for (oo_req)",
		devices.KindVBD, func(k devices.Counters) uint64 { return k.OutOfRequests }),
	deviceCounter("xen_vm_network_receive_bytes_total", "bytes the guest received on the NIC (its vif's transmitted bytes)",
		devices.KindVIF, func(k devices.Counters) uint64 { return k.RxBytes }),
	deviceCounter("xen_vm_network_transmit_bytes_total", "bytes the guest sent on the NIC (its vif's received bytes)",
		devices.KindVIF, func(k devices.Counters) uint64 { return k.TxBytes }),
	deviceCounter("xen_vm_network_receive_packets_total", "packets the guest received on the NIC",
		devices.KindVIF, func(k devices.Counters) uint64 { return k.RxPackets }),
	deviceCounter("xen_vm_network_transmit_packets_total", "packets the guest sent on the NIC",
		devices.KindVIF, func(k devices.Counters) uint64 { return k.TxPackets }),
	deviceCounter("xen_vm_network_receive_errors_total", "errors sending to the guest on its vif",
		devices.KindVIF, func(k devices.Counters) uint64 { return k.RxErrors }),
	deviceCounter("xen_vm_network_transmit_errors_total", "errors receiving from the guest on its vif",
		devices.KindVIF, func(k devices.Counters) uint64 { return k.TxErrors }),
	deviceCounter("xen_vm_network_receive_drops_total", "packets for the guest its vif dropped",
		devices.KindVIF, func(k devices.Counters) uint64 { return k.RxDrops }),
	deviceCounter("xen_vm_network_transmit_drops_total", "packets from the guest its vif dropped",
		devices.KindVIF, func(k devices.Counters) uint64 { return k.TxDrops }),
}

// vmRows are the snapshot's VMs with their labels, and their domains
// where the snapshot has a domain with the VM's domid and handle (a
// domid whose domain carries another handle is someone else's now).
func vmRows(s snapshot) []vmRow {
	byDomid := make(map[xenctrl.Domid]int, len(s.domains))
	for i, d := range s.domains {
		byDomid[d.Domid] = i
	}
	rows := make([]vmRow, len(s.vms))
	for i := range s.vms {
		vm := &s.vms[i]
		r := &rows[i]
		r.vm = vm
		r.ids = `name="` + vm.Spec.Name + `",uuid="` + vm.ID + `"`
		j, ok := byDomid[xenctrl.Domid(vm.Domid)]
		if vm.Domid == 0 || !ok {
			continue
		}
		if h, err := uuid.Parse(vm.ID); err != nil || xenctrl.Handle(h) != s.domains[j].Handle {
			continue
		}
		r.dom = &s.domains[j]
		r.domLabels = `domid="` + strconv.Itoa(int(vm.Domid)) + `",` + r.ids
		r.devices = s.devices[vm.ID]
		r.uptime = -1
		if !vm.StartedAt.IsZero() {
			r.uptime = max(s.at.Sub(vm.StartedAt).Seconds(), 0)
		}
	}
	return rows
}

// write writes the host's and the VMs' metrics from one snapshot (a scrape's:
// see Handler) to w, and returns what could not be read (the rest is
// written).
func (c *Collector) write(w *bufio.Writer, om bool) error {
	s, version := c.snapshot()
	e := &exposition{w: w, om: om}
	c.writeHost(e, s, version)
	rows := vmRows(s)
	for _, f := range vmFamilies {
		e.begin(f.family)
		for i := range rows {
			f.write(e, &rows[i])
		}
	}
	return s.err
}

// The host's families (Collector.writeHost).
var (
	versionInfo  = family{name: "xen_version_info", help: "the running hypervisor's version (always 1)"}
	hostMemTotal = family{name: "xen_host_memory_total_bytes", help: "the host's RAM as Xen counts it (total_pages)"}
	hostMemFree  = family{name: "xen_host_memory_free_bytes", help: "RAM no domain owns (free_pages)"}
	hostMemScrub = family{name: "xen_host_memory_scrub_pending_bytes", help: "freed RAM Xen is still scrubbing, free once scrubbed (scrub_pages)"}
	hostCPUs     = family{name: "xen_host_cpus", help: "physical CPUs online (nr_cpus)"}
	hostCPUHz    = family{name: "xen_host_cpu_frequency_hertz", help: "the physical CPUs' nominal frequency"}
	hostCPUIdle  = family{name: "xen_host_cpu_idle_seconds_total", counter: true,
		help: "time the physical CPU has been idle since the host booted (busy: 1 - rate of this)"}
	hostDomains = family{name: "xen_host_domains", help: "domains by state, dom0 and domains of other toolstacks included"}
	vmCounts    = family{name: "xenopsd_vms", help: "the daemon's VMs by power state"}
	taskCounts  = family{name: "xenopsd_tasks", help: "the daemon's tasks by state (finished ones until they are pruned)"}
)

func (c *Collector) writeHost(e *exposition, s snapshot, version *xenctrl.Version) {
	if version != nil {
		e.begin(versionInfo)
		e.sample("", `backend="`+c.hv.Kind()+`",major="`+strconv.Itoa(version.Major)+`",minor="`+strconv.Itoa(version.Minor)+
			`",version="`+version.String()+`"`, 1)
	}
	if s.phys != (xenctrl.PhysInfo{}) {
		for _, g := range []struct {
			f family
			v float64
		}{
			{hostMemTotal, pagesToBytes(s.phys.TotalPages)},
			{hostMemFree, pagesToBytes(s.phys.FreePages)},
			{hostMemScrub, pagesToBytes(s.phys.ScrubPages)},
			{hostCPUs, float64(s.phys.NrCPUs)},
			{hostCPUHz, float64(s.phys.CPUkHz) * 1000},
		} {
			e.begin(g.f)
			e.sample("", "", g.v)
		}
	}
	e.begin(hostCPUIdle)
	for cpu, idle := range s.cpuIdle {
		e.sample("", `cpu="`+strconv.Itoa(cpu)+`"`, idle.Seconds())
	}
	if s.domains != nil {
		counts := make(map[string]int, len(domainStates))
		for _, d := range s.domains {
			counts[domainState(d)]++
		}
		e.begin(hostDomains)
		for _, st := range domainStates {
			e.sample("", `state="`+st+`"`, float64(counts[st]))
		}
	}
	if s.vms != nil {
		counts := map[domain.PowerState]int{}
		for _, vm := range s.vms {
			counts[vm.Power]++
		}
		e.begin(vmCounts)
		for _, p := range powerStates {
			e.sample("", `state="`+powerLabel(p)+`"`, float64(counts[p]))
		}
	}
	if s.tasks != nil {
		e.begin(taskCounts)
		for _, st := range taskStates {
			e.sample("", `state="`+strings.ToLower(st.String())+`"`, float64(s.tasks[st]))
		}
	}
}
