package metrics

import "github.com/prometheus/client_golang/prometheus"

// descs are the host and VM metrics Collector exports.
type descs struct {
	scrapeError *prometheus.Desc
	versionInfo *prometheus.Desc

	hostMemTotal, hostMemFree, hostMemScrub *prometheus.Desc
	hostCPUs, hostCPUHz, hostCPUIdle        *prometheus.Desc
	hostDomains                             *prometheus.Desc
	vms, tasks                              *prometheus.Desc

	vmPower                                *prometheus.Desc
	vmCPU, vmVCPUs                         *prometheus.Desc
	vmMem, vmMemMax, vmStaticMax, vmTarget *prometheus.Desc
	vmDomainState                          *prometheus.Desc
	vmUptime, vmRestarts                   *prometheus.Desc

	diskReads, diskWrites, diskReadBytes, diskWriteBytes, diskOutOfRequests *prometheus.Desc
	netRxBytes, netTxBytes, netRxPackets, netTxPackets                      *prometheus.Desc
	netRxErrors, netTxErrors, netRxDrops, netTxDrops                        *prometheus.Desc
}

// vmLabels name a VM's domain: the VM, and the domain it runs in now.
var vmLabels = []string{"uuid", "name", "domid"}

// deviceLabels name a device of a VM's domain: a disk's guest name, a
// NIC's index.
var deviceLabels = append([]string{"device"}, vmLabels...)

func newDescs() descs {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, labels, nil)
	}
	return descs{
		scrapeError: d("xenopsd_metrics_snapshot", "reading the hypervisor, the VM list or dom0's device counters for a scrape failed"),
		versionInfo: d("xen_version_info", "the running hypervisor's version (always 1)", "version", "major", "minor", "backend"),

		hostMemTotal: d("xen_host_memory_total_bytes", "the host's RAM as Xen counts it (total_pages)"),
		hostMemFree:  d("xen_host_memory_free_bytes", "RAM no domain owns (free_pages)"),
		hostMemScrub: d("xen_host_memory_scrub_pending_bytes", "freed RAM Xen is still scrubbing, free once scrubbed (scrub_pages)"),
		hostCPUs:     d("xen_host_cpus", "physical CPUs online (nr_cpus)"),
		hostCPUHz:    d("xen_host_cpu_frequency_hertz", "the physical CPUs' nominal frequency"),
		hostCPUIdle:  d("xen_host_cpu_idle_seconds_total", "time the physical CPU has been idle since the host booted (busy: 1 - rate of this)", "cpu"),
		hostDomains:  d("xen_host_domains", "domains by state, dom0 and domains of other toolstacks included", "state"),
		vms:          d("xenopsd_vms", "the daemon's VMs by power state", "state"),
		tasks:        d("xenopsd_tasks", "the daemon's tasks by state (finished ones until they are pruned)", "state"),

		vmPower:       d("xenopsd_vm_power_state", "the VM's power state (1 for the state it is in)", "uuid", "name", "state"),
		vmCPU:         d("xen_vm_cpu_seconds_total", "CPU time the VM's domain has run, summed over its vCPUs", vmLabels...),
		vmVCPUs:       d("xen_vm_vcpus_online", "the domain's online vCPUs", vmLabels...),
		vmMem:         d("xen_vm_memory_bytes", "RAM the domain holds now (tot_pages)", vmLabels...),
		vmMemMax:      d("xen_vm_memory_limit_bytes", "the most RAM Xen lets the domain hold (max_pages)", vmLabels...),
		vmStaticMax:   d("xen_vm_memory_static_max_bytes", "the VM's static maximum memory (its spec)", vmLabels...),
		vmTarget:      d("xen_vm_memory_target_bytes", "the memory target the toolstack set for the guest (memory/target)", vmLabels...),
		vmDomainState: d("xen_vm_domain_state", "the domain's state as Xen reports it (1 for the state it is in)", append(vmLabels, "state")...),
		vmUptime:      d("xen_vm_uptime_seconds", "time since the VM's domain was built", vmLabels...),
		vmRestarts:    d("xenopsd_vm_restarts_total", "domains the daemon rebuilt after the guest shut down with an on_* action of restart, by cause", "uuid", "name", "cause"),

		diskReads:         d("xen_vm_disk_read_requests_total", "read requests the guest made on the disk (blkback's rd_req)", deviceLabels...),
		diskWrites:        d("xen_vm_disk_write_requests_total", "write requests the guest made on the disk (wr_req)", deviceLabels...),
		diskReadBytes:     d("xen_vm_disk_read_bytes_total", "bytes the guest read from the disk (rd_sect)", deviceLabels...),
		diskWriteBytes:    d("xen_vm_disk_written_bytes_total", "bytes the guest wrote to the disk (wr_sect)", deviceLabels...),
		diskOutOfRequests: d("xen_vm_disk_out_of_requests_total", "times the guest's ring held more requests than blkback had slots for (oo_req)", deviceLabels...),
		netRxBytes:        d("xen_vm_network_receive_bytes_total", "bytes the guest received on the NIC (its vif's transmitted bytes)", deviceLabels...),
		netTxBytes:        d("xen_vm_network_transmit_bytes_total", "bytes the guest sent on the NIC (its vif's received bytes)", deviceLabels...),
		netRxPackets:      d("xen_vm_network_receive_packets_total", "packets the guest received on the NIC", deviceLabels...),
		netTxPackets:      d("xen_vm_network_transmit_packets_total", "packets the guest sent on the NIC", deviceLabels...),
		netRxErrors:       d("xen_vm_network_receive_errors_total", "errors sending to the guest on its vif", deviceLabels...),
		netTxErrors:       d("xen_vm_network_transmit_errors_total", "errors receiving from the guest on its vif", deviceLabels...),
		netRxDrops:        d("xen_vm_network_receive_drops_total", "packets for the guest its vif dropped", deviceLabels...),
		netTxDrops:        d("xen_vm_network_transmit_drops_total", "packets from the guest its vif dropped", deviceLabels...),
	}
}

func (d descs) describe(ch chan<- *prometheus.Desc) {
	for _, x := range []*prometheus.Desc{d.scrapeError, d.versionInfo, d.hostMemTotal, d.hostMemFree, d.hostMemScrub,
		d.hostCPUs, d.hostCPUHz, d.hostCPUIdle, d.hostDomains, d.vms, d.tasks, d.vmPower, d.vmCPU, d.vmVCPUs, d.vmMem, d.vmMemMax,
		d.vmStaticMax, d.vmTarget, d.vmDomainState, d.vmUptime, d.vmRestarts,
		d.diskReads, d.diskWrites, d.diskReadBytes, d.diskWriteBytes, d.diskOutOfRequests,
		d.netRxBytes, d.netTxBytes, d.netRxPackets, d.netTxPackets, d.netRxErrors, d.netTxErrors, d.netRxDrops, d.netTxDrops} {
		ch <- x
	}
}

func (descs) gauge(desc *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
}
