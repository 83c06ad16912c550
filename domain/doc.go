// Package domain owns the VM lifecycle: specs, power states, the operations
// that move a VM between them, the tasks that track those operations and the
// event log that reports every change.
//
// Model: one owner per VM. Each VM has an ordered operation queue; operations
// on one VM run one at a time in submission order, different VMs run in
// parallel on a bounded worker pool. Every operation is validated before it
// touches the hypervisor, and every state change is persisted (package store)
// before it is reported. The hypervisor is reached only through
// xenctrl.Hypervisor, xenstore through the xenstore client.
//
// # States and operations
//
//	Halted --Start--> Running (or Paused with paused=true)
//	Running --Pause--> Paused --Unpause--> Running
//	Running|Paused --Shutdown/Reboot (clean, with timeout, optional Force)--> per on_poweroff/on_reboot
//	Running|Paused --Destroy--> Halted
//
// A transition is checked twice: when it is submitted, against the state the
// VM will be in after its queued operations (FailedPrecondition naming that
// state, nothing queued), and again when it runs. Lifecycle calls return at
// once with a Pending task; the task is persisted, survives the client, can
// be waited for (WaitTask) or cancelled (CancelTask: a queued task is dropped,
// a running one has its context cancelled and undoes its partial work).
//
// # Persistence and events
//
// Each state change (VM record and/or task snapshots) is one atomic, synced
// store batch together with one event per changed object, so the event log
// and the records never disagree. Revisions increase by one per event and
// survive restarts. ListVMs returns the revision its snapshot is consistent
// with; Watch(after) replays every later event exactly once, then follows
// live ones; if retention compacted the events a watcher needs, it gets
// EventResync first. Task progress between the persisted states is not
// persisted: it reaches watchers live as EventTaskProgress, after the
// persisted events that preceded it, coalesced to the latest report per task
// for a watcher that lags (progressHub), and is never replayed.
//
// # Building a domain
//
// Start picks a free domid itself (the next after the last it picked that
// no claim names and no domain, dying or not, has), syncs a "building"
// marker and the claim on that domid (below) in the VM record, then:
// CreateDomain asking for that domid, with the VM UUID as handle (PVH:
// HVM|HAP, LAPIC emulation; HVM: HVM|HAP, all emulation but vPCI; PV:
// none), Builder.Build (default EmptyBuilder: max_mem + populate_physmap),
// the xenstore layout (below), INTRODUCE, and unpause unless asked to stay
// paused. A domid another toolstack took meanwhile (EEXIST) moves the claim
// to another one. Any failure undoes everything (destroy, release, remove
// the nodes) and records the VM Halted; ENOMEM anywhere is
// ResourceExhausted.
//
// # Domain ownership
//
// Which domains are the daemon's is persisted, never guessed from handles:
// the VM record holds a claim {domid, role, state} for each domain of the
// VM. Roles: primary (the domain the VM runs in), migration-target (a
// domain receiving the VM in a migration, to this host or from it) and
// restore (a domain a saved image is restored into); the last two have no
// operation yet, but reconciliation already keeps their domains. States:
// creating (synced before createdomain), live, destroying (synced before
// destroydomain). A domain is the VM's only if a claim names its domid and
// it carries the VM's handle; a domain with a VM's handle and no claim
// belongs to someone else and is never adopted or destroyed. A VM with
// claims cannot be deleted.
//
// # xenstore layout (as libxl__domain_make / libxl__build_post write it)
//
//	/local/domain/<domid>                 dom0-owned, guest may read (r<domid>)
//	    name, domid, vm (= /vm/<uuid>)
//	    cpu/<i>/availability              online|offline
//	    memory/static-max, memory/target  KiB; memory/videoram (HVM)
//	    control/                          read-only to the guest, except:
//	    control/shutdown, control/feature-{poweroff,reboot,suspend[,s3,s4]},
//	    control/sysrq                     guest-owned (the guest may write)
//	    control/platform-feature-*        "1"
//	    data, drivers, feature, attr, error, device/suspend/event-channel
//	                                      guest-owned
//	    device/, hvmloader/ (HVM)         read-only to the guest
//	    store/{port,ring-ref}, console/{port,ring-ref,type,limit}
//	    platform/<key>                    spec.platform (known keys only)
//	    {data,vm-data}/<key>              spec.xenstore_data (only below these)
//	/vm/<uuid>/{uuid,name,domid}          dom0-owned, guest may read
//	/xenopsd-ng/<uuid>/{domid,type,created}  toolstack-private (dom0 only)
//
// The three roots are created first (so that concurrent builds do not
// conflict on their parents' child lists), everything below them in one
// transaction. Destroy removes all three subtrees. The caller's keys
// cannot reach the daemon's nodes (see keys.go).
//
// # Identity
//
// A VM is referred to by id or name; a canonical UUID is only ever an id,
// and a name may not look like a UUID, so a reference names one VM. A
// CreateVM request_id repeated with the same spec is a retry (the first
// VM), with another spec an error. NIC MACs left empty are generated at
// create (Xen's OUI, unique on the host) and kept in the spec.
//
// # Devices
//
// Disks and NICs (package devices, reached through the Devices interface)
// are plugged by the build, after the xenstore layout and before the
// domain first runs, disks first; VM.Devices records what was plugged and
// is persisted with the Running state. A failed plug undoes the whole
// start. Destroy (and every teardown) removes a domain's devices from what
// xenstore's dom0-owned backend directories say, so a crash loses nothing.
// Before anything is built, Start checks the backing paths (exist, not a
// directory), the bridges, and that no other running VM holds a backing
// file in a conflicting mode (read-write in one VM means in no other;
// files are told apart by device and inode, so a symlink is no way round)
// or one of the MACs. Disks and NICs are hot-plugged into a running or
// paused VM by AddDisk/AddNIC and unplugged by RemoveDisk/RemoveNIC, tasks
// that change the spec and VM.Devices together.
//
// # Guest-initiated shutdowns and reconciliation
//
// A watcher on @releaseDomain (plus a periodic rescan) notices domains that
// shut down, died or vanished and queues a check on the VM's queue, which
// applies on_poweroff / on_reboot / on_crash (destroy, restart = rebuild from
// the same spec, preserve = keep the dead domain, VM Paused with Problem).
// Each restart is counted in VM.Restarts by its cause, and VM.StartedAt is
// when the VM's current domain was built (both persisted with the record).
// A guest that suspended itself (shutdown reason suspend) has not crashed:
// its domain is kept with its memory, the VM is Paused with DomainSuspended
// set (Power Suspended is reserved for a saved image with no domain).
// Suspend asks a guest to do that (control/shutdown = "suspend"); Resume
// lets it carry on in the same domain (a cancelled suspend: its suspend
// call returns 1) and makes the VM Running; saving it is not implemented.
//
// New reconciles before accepting work: tasks left Pending/Running by a
// previous process become TaskInterrupted; each VM's claims are settled
// with the domains that exist: a destroying claim's destroy is finished
// (the VM is Halted with no Problem: the destroy was ours), a creating
// primary claim is an interrupted start (half-built domain destroyed, VM
// Halted with Problem), a live primary domain is adopted (power state from
// DomainInfo; a suspended guest stays suspended) or, if gone, the VM
// becomes Halted with a "vanished" Problem; migration-target and restore
// domains are kept while they exist and their claims dropped once they do
// not. Domains no claim names are logged and left alone.
package domain
