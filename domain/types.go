package domain

import (
	"fmt"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// Type is the guest virtualisation mode.
type Type int

const (
	TypeUnspecified Type = iota
	TypePV
	TypePVH
	TypeHVM
)

// PowerState is a VM's power state as the toolstack tracks it.
type PowerState int

const (
	PowerUnspecified PowerState = iota
	Halted                      // no domain
	Running                     // domain exists and is unpaused
	Paused                      // domain exists and is paused by the toolstack
	Suspended                   // memory image saved, no domain (no operation saves one yet)
)

// Action is what to do when the guest powers off, reboots or crashes.
type Action int

const (
	ActionUnspecified Action = iota
	ActionDestroy            // tear the domain down, VM becomes Halted
	ActionRestart            // destroy and rebuild from the same spec
	ActionPreserve           // keep the dead domain for inspection
)

// DiskMode is read-only or read-write.
type DiskMode int

const (
	DiskModeUnspecified DiskMode = iota
	DiskRO
	DiskRW
)

// DiskFormat is a disk's backing file format.
type DiskFormat int

const (
	DiskFormatUnspecified DiskFormat = iota // raw
	DiskRaw                                 // blkback, through a loop device for a file
	DiskQCOW2                               // QEMU's qdisk backend (PV and PVH guests)
)

// Disk is a virtual block device, plugged when the VM starts.
type Disk struct {
	Device string // guest device name, e.g. "xvda"
	Path   string // backing file or block device in dom0
	Mode   DiskMode
	CDROM  bool
	Format DiskFormat
}

// NIC is a virtual network interface, plugged when the VM starts. An empty
// Bridge means DefaultBridge.
type NIC struct {
	MAC    string // "00:16:3e:xx:xx:xx"
	Bridge string
	MTU    uint32
}

// Spec is what XAPI asks for: the VM's configuration, independent of whether
// it runs. Memory sizes are in bytes.
type Spec struct {
	UUID             string // canonical lower-case 8-4-4-4-12
	Name             string
	Type             Type
	MemoryStaticMax  uint64
	MemoryDynamicMin uint64
	MemoryDynamicMax uint64
	VCPUsMax         uint32
	VCPUsAtStartup   uint32
	Kernel           string // direct boot: dom0 path of the kernel image
	Ramdisk          string
	Cmdline          string
	Platform         map[string]string // platform/ keys (e.g. "tsc_mode")
	XenstoreData     map[string]string // extra keys written under the domain's xenstore path
	OnPoweroff       Action
	OnReboot         Action
	OnCrash          Action
	Disks            []Disk
	NICs             []NIC
}

// VM is a spec plus what the toolstack knows about its running state.
type VM struct {
	ID    string // equals Spec.UUID
	Spec  Spec
	Power PowerState
	Domid uint32 // 0 when there is no domain
	// DomainSuspended: the guest suspended itself (its domain shut down
	// with reason suspend). The domain is kept, memory intact, not running;
	// Power is Paused. Resume lets the guest carry on (Running again);
	// saving it (which would make the VM Suspended, with no domain) is not
	// implemented.
	DomainSuspended bool
	// Devices are the disks and NICs plugged into the VM's domain (none
	// when it has no domain).
	Devices []devices.Record
	// StartedAt is when the VM's domain was built: the last one built, so
	// it means something only while Domid is not 0.
	StartedAt time.Time
	// Restarts counts the domains the daemon rebuilt after the guest shut
	// down with an on_* action of restart, by the shutdown's cause.
	Restarts Restarts
	// Problem is set when reconciliation found something wrong, e.g. the
	// VM's domain vanished while the daemon was down.
	Problem   string
	CreatedAt time.Time
	UpdatedAt time.Time
	// Generation increases with every change to the record.
	Generation uint64
}

// Restarts are a VM's domain restarts by cause (the shutdown reason that
// led to them: reboot and soft reset count as reboot, watchdog as crash).
type Restarts struct {
	Reboot, Crash, Poweroff uint64
}

// TaskState is where a task is in its life.
type TaskState int

const (
	TaskUnspecified TaskState = iota
	TaskPending
	TaskRunning
	TaskSucceeded
	TaskFailed
	TaskCancelled
	// TaskInterrupted: the daemon stopped (crash or SIGTERM) while the task
	// ran; what it had done was reconciled on restart.
	TaskInterrupted
)

// Done reports whether the state is final.
func (s TaskState) Done() bool {
	return s == TaskSucceeded || s == TaskFailed || s == TaskCancelled || s == TaskInterrupted
}

// Task is one lifecycle operation on one VM.
type Task struct {
	ID        string
	VMID      string
	Op        string // "start", "pause", "unpause", "shutdown", "reboot", "destroy"
	State     TaskState
	Progress  float64 // 0..1
	Err       *Error  // set when State is Failed, Cancelled or Interrupted
	CreatedAt time.Time
	UpdatedAt time.Time
}

// EventKind says what an event is about.
type EventKind int

const (
	EventUnspecified EventKind = iota
	EventVMChanged             // VM created or updated; VM is set
	EventVMDeleted             // VM deleted; VMID is set
	EventTaskChanged           // task created or updated; Task is set
	// EventResync: the events after the watcher's revision were compacted
	// away; Revision is the head the stream continues from. The watcher
	// must re-list (ListVMs, ListTasks) to catch up.
	EventResync
	// EventTaskProgress: a running task's progress, live only (not
	// persisted, never replayed); Progress is set. Its Revision is not a new
	// one but that of the last persisted event sent before it.
	EventTaskProgress
)

// Event is one change, numbered by a revision that increases by one with
// every event the daemon ever records (persisted, so it survives restarts).
// EventTaskProgress is the exception: it is not recorded, and it carries the
// revision of the persisted event it follows.
type Event struct {
	Revision uint64
	Kind     EventKind
	VMID     string
	VM       *VM
	Task     *Task
	Progress *TaskProgress
	Time     time.Time
}

// TaskProgress is a live progress report of a running task.
type TaskProgress struct {
	TaskID   string
	VMID     string
	Progress float64 // 0..1
}

// HostInfo describes the host the daemon manages, in the core's own terms
// (no hypervisor ABI types).
type HostInfo struct {
	Backend string // "xen" or "sim"
	// Hypervisor version: Major.Minor and the extra part (e.g. ".7").
	VersionMajor, VersionMinor int
	VersionExtra               string
	NrCPUs                     uint32
	NrNodes                    uint32
	CoresPerSocket             uint32
	ThreadsPerCore             uint32
	CPUkHz                     uint32
	// Capabilities are the virtualisation modes the host offers, in this
	// order where present: "hvm", "pv", "hap".
	Capabilities []string
	FreeMemory   uint64 // bytes
	TotalMemory  uint64 // bytes
}

// Version is the hypervisor's version as Xen prints it, e.g. "4.17.7".
func (h HostInfo) Version() string {
	return fmt.Sprintf("%d.%d%s", h.VersionMajor, h.VersionMinor, h.VersionExtra)
}

// ShutdownOptions tune Shutdown and Reboot.
type ShutdownOptions struct {
	// Timeout bounds the wait for the guest to act on the request
	// (0: DefaultShutdownTimeout).
	Timeout time.Duration
	// Force: when the guest has not shut down after Timeout, destroy the
	// domain (hard shutdown, or hard reboot) instead of failing.
	Force bool
}

// DefaultShutdownTimeout is the clean shutdown timeout when none is given.
const DefaultShutdownTimeout = 5 * time.Minute

// MaxShutdownTimeout is the longest clean shutdown timeout accepted.
const MaxShutdownTimeout = 24 * time.Hour
