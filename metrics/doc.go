// Package metrics exports what the host, every VM and the daemon are doing
// in the Prometheus text and OpenMetrics formats, through the Prometheus Go
// client (github.com/prometheus/client_golang).
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
// A VM's per-domain series (labels uuid, name, domid) exist while the VM has
// a domain that carries its handle; when the domain goes they are no longer
// exported and Prometheus marks them stale. A VM's power state is exported
// for every VM.
//
// Daemon metrics are kept as they happen: Operations observes every VM
// operation the domain manager finishes (kind, outcome, duration); gRPC
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
