// Package metrics exports what the host, every VM and the daemon are doing
// in the Prometheus text and OpenMetrics formats. The daemon's own metrics
// go through the Prometheus Go client (github.com/prometheus/client_golang);
// the host's and the VMs' are written by Handler itself (exposition.go),
// eight times cheaper at 1,000 VMs than through the client's Gather.
//
// # Model
//
// Host and VM metrics are not kept between scrapes: they are facts the
// hypervisor already holds (CPU time, pages owned, states), so Collector
// reads them when Prometheus asks, as one snapshot. A scrape costs one
// ListDomains (XEN_SYSCTL_getdomaininfolist, every domain in one batch),
// one PhysInfo, one CPUIdle (XEN_SYSCTL_getcpuinfo, every pCPU), one
// ListVMs and one ListTasks of the domain manager, whatever the number of
// VMs; the Xen version
// is read once. Scrapes that come within MaxAge of the
// last snapshot reuse it, so several scrapers cost no more than one.
//
// Disk and NIC counters (CollectorOptions.Devices) cost one read of dom0
// per device plugged into a VM that has a domain, and nothing else: no
// hypercall, no xenstore. On a real dom0 that is blkback's five sysfs
// statistics files for a disk and one rtnetlink link request for a NIC;
// on the simulator one call to the sim host. A device dom0 has no counters
// for yet is left out of the scrape; one that cannot be read is reported
// (one error for all of them) and the others are exported.
//
// A VM's per-domain series (labels uuid, name, domid) exist while the VM has
// a domain that carries its handle; when the domain goes they are no longer
// exported and Prometheus marks them stale. Among them: the domain's uptime
// (since the domain manager built it: VM.StartedAt), and per plugged device
// (label device: a disk's guest name, a NIC's index) its I/O counters, a
// NIC's from the guest's side (receive is what the guest received). A VM's
// power state and its restarts by cause (VM.Restarts, persisted by the
// domain manager; reboot and crash always, poweroff once it happened) are
// exported for every VM.
//
// Daemon metrics are kept as they happen: Operations observes every VM
// operation the domain manager finishes (kind, outcome, duration); Daemon
// counts the xenstore client's round trips and requests (through
// xenstore.Client.CountRequests, which takes any counter) and times the
// state store's commits (store.Options.OnCommit); QueueDepth reads the
// domain manager's queue depths at each scrape (one call, whatever the
// number of VMs), so xenstore, store and domain know nothing of
// Prometheus; gRPC
// server metrics come from the grpc-ecosystem middleware's Prometheus
// provider and the Go runtime and process metrics from the client's own
// collectors (NewRegistry puts them together).
//
// # Names
//
// Base units (seconds, bytes), counters end in _total. xen_host_* and
// xen_vm_* are facts of the hypervisor; xenopsd_* are the toolstack's own
// (power states, operations, gRPC).
package metrics
