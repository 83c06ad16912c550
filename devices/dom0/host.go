package dom0

import (
	"log/slog"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// Host is dom0's side of devices on a real Linux dom0.
type Host struct {
	log *slog.Logger
	// sysfs is where sysfs is mounted ("/sys").
	sysfs string
	// nl makes the rtnetlink requests; the zero Handle opens a socket per
	// request in the calling thread's network namespace.
	nl *netlink.Handle
	// netns is the network namespace link subscriptions are made in (nil:
	// the calling thread's). Set with nl by tests that work in their own.
	netns *netns.NsHandle

	// qemu is the QEMU binary for qdisk backends, qemuLogDir where their
	// output goes, proc where procfs is mounted ("/proc").
	qemu, qemuLogDir, proc string
	// mu guards children (the QEMUs this Host started, closed when reaped)
	// and stopping (those StopQEMU is ending: their exit is no failure).
	mu       sync.Mutex
	children map[int]chan struct{}
	stopping map[int]bool
}

var _ devices.Host = (*Host)(nil)

// New returns a Host working on this dom0's loop devices, sysfs and its
// current network namespace.
func New(log *slog.Logger) *Host {
	return &Host{log: log, sysfs: "/sys", nl: &netlink.Handle{},
		qemu: DefaultQEMU, qemuLogDir: DefaultQEMULogDir, proc: "/proc",
		children: map[int]chan struct{}{}, stopping: map[int]bool{}}
}

// SetQEMU replaces the QEMU binary (DefaultQEMU) and the directory of its
// logs (DefaultQEMULogDir). Call it before the Host is used.
func (h *Host) SetQEMU(binary, logDir string) { h.qemu, h.qemuLogDir = binary, logDir }
