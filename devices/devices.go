// Package devices plugs virtual disks (vbd) and NICs (vif) into domains
// with Xen's split-driver protocol over xenstore
// (xen/include/public/io/xenbus.h, docs/misc/xenstore-paths.pandoc), as
// libxl does, and does dom0's part that libxl leaves to hotplug scripts
// through a Host (loop devices, bridges).
//
// # The model
//
// A device is two xenstore directories and the kernel drivers that watch
// them. The backend directory, /local/domain/0/backend/<kind>/<domid>/<devid>,
// is owned by dom0 and readable by the guest: we write its configuration
// (params, mode, mac, bridge...) and dom0's kernel backend (blkback,
// netback) writes its state and features there. The frontend directory,
// /local/domain/<domid>/device/<kind>/<devid>, is owned by the guest and
// readable by dom0: we create it with the first keys (backend, state,
// virtual-device or handle...), the guest's driver writes its state and
// ring references there. Keys and permissions are libxl's
// (libxl__device_generic_add, device_disk_add, libxl__set_xenstore_nic);
// both directories are written in one transaction.
//
// Each end moves through the XenbusState machine: Initialising, then the
// backend goes InitWait once it can serve (blkback: physical-device
// written; netback: vif<domid>.<devid> created), the frontend publishes its
// rings (Initialised; netfront goes straight to Connected), the backend
// connects (netback only after hotplug-status says connected), the
// frontend connects. Removal is the other way round: the toolstack writes
// online=0 and state Closing into the backend, the frontend closes, the
// backend goes Closed, and only then are dom0's resources released and both
// directories removed. A frontend that never got past Initialising holds
// nothing, so its device is removed without waiting for it.
//
// What hotplug scripts do is done here, in order: for a disk the Host
// attaches the path (a loop device for a file) and we write node,
// physical-device and hotplug-status as the block script does; for a NIC
// the Host puts netback's interface into its bridge (vif-bridge) and we
// write hotplug-status.
//
// A qcow2 disk is not blkback's: like libxl for a PV or PVH guest, we write its
// backend directory under backend/qdisk (params "qcow2:<path>") and the
// domain's one dom0 QEMU (started by the Host at the first qcow2 plug,
// recorded in device-model/<domid>) serves it; see qdisk.go.
//
// Every wait (InitWait after a plug, both ends Connected after a hot-plug,
// Closed on unplug) is driven by xenstore watches, bounded (BackendWait,
// CloseWait) and re-reads the states after each batch of events, so a
// guest flooding its directory costs bounded work per read and cannot
// stretch the wait.
//
// Nothing the guest writes is trusted. The frontend directory is read only
// through one validating reader (parseFrontend): states and ring numbers
// must be canonical decimals in range, the frontend's backend node must be
// the path we wrote, its state must be possible given the backend's, and
// its rings must fit what the backend advertised. A frontend that fails is
// reported with ErrBadFrontend; its device fails, nothing else does.
//
// A plug that fails at any step undoes all it did (dom0's side first, then
// the directories) and names the step. The backend directory, which only
// dom0 can write, is the durable record of what dom0 holds for a device
// (the loop device in node): RemoveDomainDevices releases a destroyed
// domain's devices from it alone, so it works after a daemon crash, and a
// device whose dom0 side could not be released keeps its backend directory
// for a retry.
package devices

import (
	"context"
	"fmt"
	"time"
)

// Kind is a device class: the name of its backend and frontend directories.
type Kind string

const (
	KindVBD Kind = "vbd" // a disk, served by blkback
	KindVIF Kind = "vif" // a NIC, served by netback
	// KindQdisk is not a device class but a backend: a disk (KindVBD, with
	// a vbd frontend directory) served by QEMU's qdisk backend, whose
	// directory is backend/qdisk/<domid>/<devid>.
	KindQdisk Kind = "qdisk"
)

// Format is a disk's backing file format.
type Format string

const (
	FormatRaw   Format = "raw"   // served by blkback through a loop device
	FormatQCOW2 Format = "qcow2" // served by QEMU's qdisk backend
)

// QEMUProc identifies one dom0 QEMU process: its pid and its start time
// (field 22 of /proc/<pid>/stat, in clock ticks since boot), so that a pid
// reused by another process is never taken for it.
type QEMUProc struct {
	Pid   int    `json:"pid"`
	Start uint64 `json:"start"`
}

// String is how the process is recorded in xenstore: "<pid> <start>".
func (q QEMUProc) String() string { return fmt.Sprintf("%d %d", q.Pid, q.Start) }

// parseQEMUProc reads String's form back.
func parseQEMUProc(s string) (QEMUProc, error) {
	var q QEMUProc
	if n, err := fmt.Sscanf(s, "%d %d", &q.Pid, &q.Start); err != nil || n != 2 || q.Pid <= 0 || q.String() != s {
		return QEMUProc{}, fmt.Errorf("%q is not \"<pid> <start time>\"", s)
	}
	return q, nil
}

// State is a XenbusState (io/xenbus.h).
type State int

const (
	StateUnknown       State = 0
	StateInitialising  State = 1
	StateInitWait      State = 2
	StateInitialised   State = 3
	StateConnected     State = 4
	StateClosing       State = 5
	StateClosed        State = 6
	StateReconfiguring State = 7
	StateReconfigured  State = 8
)

// Disk is a disk to plug.
type Disk struct {
	Device   string // guest name: xvda, hda, sda...
	Path     string // dom0 path of the backing file or block device
	Format   Format // "" is FormatRaw
	ReadOnly bool
	CDROM    bool
}

// NIC is a NIC to plug.
type NIC struct {
	DevID  int    // the vif's index in the guest (its "handle")
	MAC    string // "00:16:3e:xx:xx:xx"
	Bridge string // dom0 bridge the vif joins
	MTU    uint32 // 0: 1500
}

// DiskAttachment is dom0's block device for a disk.
type DiskAttachment struct {
	// PhysicalDevice is "major:minor" in hex, as blkback reads it from the
	// backend's physical-device node.
	PhysicalDevice string `json:"physical_device"`
	// Loop is the loop device the Host attached the file to ("" for a
	// block device path).
	Loop string `json:"loop,omitempty"`
}

// Host is dom0's side of devices: what libxl's hotplug scripts (block,
// vif-bridge) do. The real one uses loop devices and netlink; the
// simulator plays it.
type Host interface {
	// AttachDisk makes path a block device blkback can open: a block device
	// as it is, a regular file through a (read-only if readOnly) loop device.
	AttachDisk(ctx context.Context, path string, readOnly bool) (DiskAttachment, error)
	// FindDisk returns the attachments the Host made earlier for path (the
	// loop devices backed by it), for re-adoption after a crash.
	FindDisk(ctx context.Context, path string) ([]DiskAttachment, error)
	// DetachDisk undoes AttachDisk; detaching what is gone is no error.
	DetachDisk(ctx context.Context, a DiskAttachment) error
	// CheckBridge fails unless bridge exists and is a bridge.
	CheckBridge(ctx context.Context, bridge string) error
	// ConnectVIF waits (until ctx ends) for netback's interface name to
	// appear, sets its MTU, attaches it to bridge and brings it up.
	ConnectVIF(ctx context.Context, name, bridge string, mtu uint32) error
	// DisconnectVIF takes name out of its bridge; a missing one is no error.
	DisconnectVIF(ctx context.Context, name string) error
	// StartQEMU starts a dom0 QEMU serving the qdisk backends of domain
	// domid (QEMU's Xen PV machine attached to the domain, as libxl starts
	// it for a PV or PVH guest) and returns it. It does not wait for QEMU to be
	// ready. The process outlives the daemon.
	StartQEMU(ctx context.Context, domid uint32) (QEMUProc, error)
	// QEMUAlive reports whether q is still running (the same process: pid
	// and start time match, and it serves domid).
	QEMUAlive(ctx context.Context, q QEMUProc, domid uint32) (bool, error)
	// StopQEMU ends q (SIGTERM, then SIGKILL) and waits, until ctx ends,
	// for it to be gone; a process that is gone already is no error.
	StopQEMU(ctx context.Context, q QEMUProc, domid uint32) error
	// Counters reads the I/O counters dom0 keeps for a plugged device:
	// blkback's statistics for a vbd, the interface's counters for a vif.
	// The error wraps fs.ErrNotExist while dom0 has no such device (a vbd
	// blkback has not set up, a vif netback has not created).
	Counters(ctx context.Context, rec Record) (Counters, error)
}

// Counters are a device's I/O counters since blkback set it up (a vbd) or
// netback created its interface (a vif). A vbd fills the disk fields,
// a vif the NIC fields; the others stay zero.
type Counters struct {
	// A disk's, from blkback: requests and bytes the guest read and wrote.
	ReadRequests, WriteRequests uint64
	ReadBytes, WriteBytes       uint64
	// OutOfRequests counts the times the guest's ring held more requests
	// than blkback had free slots for (oo_req): blkback counts no errors.
	OutOfRequests uint64

	// A NIC's, from the guest's point of view: Rx is what the guest
	// received (what dom0 sent on the vif), Tx what it sent.
	RxBytes, TxBytes     uint64
	RxPackets, TxPackets uint64
	RxErrors, TxErrors   uint64
	RxDrops, TxDrops     uint64
}

// Record is what is persisted about one plugged device: enough to show it,
// re-adopt it after a restart and remove it, with nothing from the guest.
type Record struct {
	Kind     Kind   `json:"kind"`
	Domid    uint32 `json:"domid"` // the frontend's domain
	DevID    int    `json:"devid"` // vbd: virtual device number; vif: handle
	Device   string `json:"device,omitempty"`
	Path     string `json:"path,omitempty"`
	ReadOnly bool   `json:"read_only,omitempty"`
	// BackendKind is the backend's kind when it is not Kind: KindQdisk for a
	// qcow2 disk, served by QEMU (whose process is QEMU).
	BackendKind Kind           `json:"backend,omitempty"`
	Format      Format         `json:"format,omitempty"`
	QEMU        QEMUProc       `json:"qemu,omitempty"`
	Disk        DiskAttachment `json:"disk,omitempty"`
	VIF         string         `json:"vif,omitempty"` // vif<domid>.<devid>
	Bridge      string         `json:"bridge,omitempty"`
	MAC         string         `json:"mac,omitempty"`
	MTU         uint32         `json:"mtu,omitempty"`
}

// Status is a device as xenstore and dom0 show it now.
type Status struct {
	Backend, Frontend State
	Error             string // why the device failed, if it did
}

// Timeouts for the waits inside plug and unplug.
const (
	BackendWait = 30 * time.Second
	CloseWait   = 30 * time.Second
)
