// Package sim is an in-memory simulated Xen 4.17 hypervisor implementing
// xenctrl.Hypervisor, for tests and for machines without Xen.
//
// It is a model of the hypervisor's domain bookkeeping, not a stub: every
// rule below is taken from Xen 4.17's own source (xen/common/domctl.c,
// xen/common/domain.c, xen/arch/x86/domain.c, xen/common/page_alloc.c,
// xen/common/grant_table.c) and returns the errno Xen returns.
//
//   - Domain 0 exists from boot, owns part of the host's memory and sits
//     idle (blocked, gaining no CPU time).
//   - New domids come from a rover: the search starts after the last domid
//     handed out, wraps from DOMID_FIRST_RESERVED back to 1 and skips every
//     domid still in use, dying domains included (XEN_DOMCTL_createdomain,
//     is_free_domid). No free domid: ENOMEM. A domid asked for in the
//     config is used as given and leaves the rover alone; EEXIST while any
//     domain has it, dying ones included (checked before the config, as
//     do_domctl does); a reserved one is EINVAL (the xenctrl contract).
//   - createdomain is validated like sanitise_domain_config and
//     arch_sanitise_domain_config: unknown flags, zero vCPUs, more than 128
//     (HVM) or 8192 (PV) vCPUs, HAP without HVM: EINVAL; emulation flags that
//     x86 emulation_flags_ok refuses: EOPNOTSUPP; grant/maptrack frame
//     limits above Xen's defaults (64/1024): EINVAL.
//   - A new domain is paused once by the controller, has no memory and a
//     max_pages of 0. Pause/unpause are refcounted (controller_pause_count):
//     more than 255 pauses is EOVERFLOW, unpausing at 0 is EINVAL. Pausing
//     or destroying dom0 (the caller's own domain) is EINVAL.
//   - vCPUs: as on 4.17, createdomain only sizes the vCPU array
//     (max_vcpu_id reads XEN_INVALID_MAX_VCPU_ID); SetMaxVCPUs
//     (XEN_DOMCTL_max_vcpus, EINVAL unless it repeats the createdomain
//     count) creates them.
//   - The first unpause finishes creation. A domain that has memory then
//     "boots": its vCPUs are created if needed and come online (whether
//     or not a builder set vCPU 0's context: the simulator runs no guest
//     code, so it stands in for a builder that did not) and it runs,
//     gaining CPU time, until paused, shut down or destroyed. A domain
//     without memory never runs.
//   - Shutdown (remote or from the guest) records the first reason only;
//     later shutdowns succeed and change nothing (domain_shutdown).
//   - Destroy frees the domain's memory at once and leaves it dying
//     (XEN_DOMINF_dying) until the last reference to it is dropped, as
//     domain_kill/put_domain do; destroying a dying domain again succeeds.
//     References are taken with Hold (what a foreign mapping by xenstored or
//     a backend does); with none held, the final release runs on its own
//     goroutine after Config.ReleaseDelay.
//   - Memory: max_mem sets max_pages (KiB >> 2, capped at 2^32-1);
//     populate_physmap assigns pages one by one until the domain's limit or
//     the host's free memory runs out, keeps what it got (Xen does not roll
//     back) and fails with ENOMEM. A dying domain gets no page (assign_pages)
//     and ENOMEM too: the hypercall only returns a short count.
//   - Guest memory is frames (frames.go, memory.go): the host's RAM is
//     machine frames, handed out in 2 MiB extents (order 9) where an
//     aligned free run exists, else 4 KiB pages, with the accounting
//     above. An HVM/PVH domain's physmap maps guest frames to them; a PV
//     domain gets the machine frames themselves back from populate.
//     Only frames something wrote hold bytes; the rest read as zeros.
//     MapForeign maps frames the domain has (guest frames for HVM,
//     machine frames for PV, plus its shared info and grant frames) and
//     fails with EINVAL for any other, as Xen's mod_l1_entry does.
//   - What a domain builder sets up (setup.go, pagetables.go) is kept and
//     checked: event channels allocated unbound from port 1, HVM params
//     (HVM only), the memory map, TSC mode, paging pool, the grant table
//     frame placed in and removed from an HVM physmap, HVM context records
//     (header, CPU, MTRR; sethvmcontext checks magic, version, sizes and
//     vCPUs), the hypercall page, and for PV the page tables, validated
//     at pin and at setvcpucontext like Xen's type system does (tables and
//     mapped frames the domain's, no table writable), and the vCPU
//     context (whole size, existing vCPU). Destroy frees all of it.
//   - What a dom0 backend checks when a frontend hands it a ring (rings.go):
//     a grant reference inside the domain's grant table (max_grant_frames
//     × 512 version-1 entries, the first 8 reserved) and an event channel
//     the domain allocated unbound for the backend; EINVAL otherwise. No
//     grant entries are kept: a reference inside the table counts as
//     granted.
//   - Unknown domids: ESRCH.
//
// Where the simulator departs from Xen, on purpose: populate takes
// orders 0 and 9 only (EINVAL otherwise) and refuses a guest frame that
// is populated already (EEXIST; Xen would replace it); a foreign mapping
// is a copy written back at unmap; shutting down dom0 is
// EINVAL (Xen would power off or reboot the host); a shutdown code above
// SHUTDOWN_soft_reset is EINVAL (Xen stores any byte); the host has no
// IOMMU, vPMU or TBOOT, so asking for them is EINVAL as on such a host;
// a running guest's vCPUs are all busy, so its CPU time rises by one
// second per second for each online vCPU (none when GuestBehaviour.Idle),
// and with no scheduler the busy vCPUs are spread evenly over the pCPUs:
// every pCPU reports the same idle time (getcpuinfo), growing at
// max(0, 1 - busy vCPUs/pCPUs) seconds per second; getvcpuinfo gives each
// vCPU an equal share of its domain's CPU time, on pCPU vcpu mod pCPUs;
// GuestShutdown from a guest that is not running (never booted, paused,
// shut down, dying) is EBUSY, since it cannot execute the hypercall.
//
// Config.OnDomainException is called where Xen raises VIRQ_DOM_EXC, with the
// domain concerned: after a shutdown, after destroy marks a domain dying,
// and after its final release.
// It is called without any simulator lock held, so it may call back in.
//
// All methods are safe for concurrent use; the cost of an operation does
// not grow with the number of domains except for ListDomains.
package sim
