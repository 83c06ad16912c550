package simhost

import (
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// dom0 is the part of the sim host's dom0 kernel that device plugging
// touches: loop devices over disk files, the network interfaces netback
// creates, and the host's bridges. On a real host libxl's hotplug scripts
// (block, vif-bridge) drive these; here the toolstack drives them through
// Dom0Service (devices.Host), and the simulated blkback and netback use
// them as the kernel's drivers do. It lives as long as the sim host, so a
// toolstack restart finds its loop devices and interfaces again.
type dom0 struct {
	mu        sync.Mutex
	bridges   map[string]bool
	loops     map[uint32]*loopDev // by minor
	blockDevs map[uint64]string   // block devices AttachDisk saw, by device number
	links     map[string]*link    // by name
	changed   chan struct{}       // closed and replaced when links change
	traffic   map[string]*traffic // the devices' I/O, by vbdTrafficKey or link name
	// qemus are the running QEMUs by pid (qemu.go); nextPid numbers them.
	qemus     map[uint32]simQEMU
	nextPid   uint32
	qemuHooks qemuHooks
	// guestCPU is a domain's CPU time now (0 once it is gone), which
	// drives its devices' traffic; nil: no guest runs.
	guestCPU func(domid uint32) time.Duration
}

// loopMajor is LOOP_MAJOR.
const loopMajor = 7

// loopDev is one attached loop device, /dev/loop<minor>.
type loopDev struct {
	minor    uint32
	path     string
	dev, ino uint64 // the backing file's identity: losetup -j matches on it
	readOnly bool
	// users counts blkback's opens; autoclear is set when it is detached
	// while open (LOOP_CLR_FD on a busy device), and it goes at last close.
	users     int
	autoclear bool
}

func (l *loopDev) name() string { return "/dev/loop" + strconv.FormatUint(uint64(l.minor), 10) }

func (l *loopDev) attachment() devices.DiskAttachment {
	return devices.DiskAttachment{PhysicalDevice: fmt.Sprintf("%x:%x", loopMajor, l.minor), Loop: l.name()}
}

// link is a network interface netback created for a guest's NIC.
type link struct {
	name         string
	domid, devid uint32
	bridge       string // "" when in no bridge
	mtu          uint32
	up           bool
}

// Interface MTU limits: ETH_MIN_MTU, and netback's ETH_MAX_MTU minus a
// VLAN Ethernet header.
const (
	defaultMTU = 1500
	minMTU     = 68
	maxMTU     = 65535 - 18
)

func newDom0(bridges []string) *dom0 {
	d := &dom0{
		bridges:   make(map[string]bool),
		loops:     make(map[uint32]*loopDev),
		blockDevs: make(map[uint64]string),
		links:     make(map[string]*link),
		changed:   make(chan struct{}),
		traffic:   make(map[string]*traffic),
		qemus:     make(map[uint32]simQEMU),
	}
	for _, b := range bridges {
		d.bridges[b] = true
	}
	return d
}

// diskError is an AttachDisk failure: the path and the errno.
func diskError(path, what string, errno syscall.Errno) error {
	if what == "" {
		return fmt.Errorf("disk %s: %w", path, errno)
	}
	return fmt.Errorf("disk %s: %s: %w", path, what, errno)
}

// attachDisk is the block hotplug script's work (losetup for a file).
func (d *dom0) attachDisk(path string, readOnly bool) (devices.DiskAttachment, error) {
	if path == "" || !strings.HasPrefix(path, "/") {
		return devices.DiskAttachment{}, diskError(path, "not an absolute path", syscall.EINVAL)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return devices.DiskAttachment{}, diskError(path, "", errnoOf(err))
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		d.mu.Lock()
		d.blockDevs[st.Rdev] = path
		d.mu.Unlock()
		return devices.DiskAttachment{PhysicalDevice: fmt.Sprintf("%x:%x", unix.Major(st.Rdev), unix.Minor(st.Rdev))}, nil
	case unix.S_IFDIR:
		return devices.DiskAttachment{}, diskError(path, "", syscall.EISDIR)
	case unix.S_IFREG:
	default:
		return devices.DiskAttachment{}, diskError(path, "neither a regular file nor a block device", syscall.ENOTBLK)
	}
	// LOOP_CONFIGURE opens the backing file with the device's mode.
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return devices.DiskAttachment{}, diskError(path, "open", errnoOf(err))
	}
	f.Close()
	d.mu.Lock()
	defer d.mu.Unlock()
	minor := uint32(0)
	for d.loops[minor] != nil {
		minor++
	}
	l := &loopDev{minor: minor, path: path, dev: st.Dev, ino: st.Ino, readOnly: readOnly}
	d.loops[minor] = l
	return l.attachment(), nil
}

// findDisk lists the loop devices backed by path (by the file's identity
// when it still exists, by name otherwise), lowest first.
func (d *dom0) findDisk(path string) []devices.DiskAttachment {
	var st unix.Stat_t
	exists := unix.Stat(path, &st) == nil
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []devices.DiskAttachment
	for _, minor := range slices.Sorted(maps.Keys(d.loops)) {
		l := d.loops[minor]
		if l.autoclear {
			continue // detached already, going at last close
		}
		if (exists && l.dev == st.Dev && l.ino == st.Ino) || (!exists && l.path == path) {
			out = append(out, l.attachment())
		}
	}
	return out
}

// detachDisk is losetup -d: a device blkback holds open goes at its last
// close (autoclear), as the loop driver does.
func (d *dom0) detachDisk(a devices.DiskAttachment) error {
	if a.Loop == "" {
		return nil // a block device: nothing was attached
	}
	n, ok := strings.CutPrefix(a.Loop, "/dev/loop")
	minor, err := strconv.ParseUint(n, 10, 20)
	if !ok || err != nil || a.PhysicalDevice != fmt.Sprintf("%x:%x", loopMajor, minor) {
		return fmt.Errorf("detach %q (%s): not a loop device attachment: %w", a.Loop, a.PhysicalDevice, syscall.EINVAL)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	l := d.loops[uint32(minor)]
	switch {
	case l == nil:
	case l.users > 0:
		l.autoclear = true
	default:
		delete(d.loops, l.minor)
	}
	return nil
}

// blockDev is a block device blkback opened.
type blockDev struct {
	path     string
	readOnly bool // the device refuses writes
	close    func()
}

// sectors is the device's size in 512-byte sectors.
func (b blockDev) sectors() uint64 {
	f, err := os.Open(b.path)
	if err != nil {
		return 0
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0
	}
	return uint64(n) / 512
}

// openBlock is blkback's open of major:minor (bdev_file_open_by_dev):
// ENOENT for a device that does not exist, EROFS to write a read-only one.
func (d *dom0) openBlock(major, minor uint32, write bool) (blockDev, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if major != loopMajor {
		path, ok := d.blockDevs[unix.Mkdev(major, minor)]
		if !ok {
			return blockDev{}, syscall.ENOENT
		}
		return blockDev{path: path, close: func() {}}, nil
	}
	l := d.loops[minor]
	if l == nil || l.autoclear {
		return blockDev{}, syscall.ENOENT
	}
	if write && l.readOnly {
		return blockDev{}, syscall.EROFS
	}
	l.users++
	var once sync.Once
	return blockDev{path: l.path, readOnly: l.readOnly, close: func() { once.Do(func() { d.closeLoop(l) }) }}, nil
}

func (d *dom0) closeLoop(l *loopDev) {
	d.mu.Lock()
	defer d.mu.Unlock()
	l.users--
	if l.users == 0 && l.autoclear && d.loops[l.minor] == l {
		delete(d.loops, l.minor)
	}
}

// checkBridge fails with ENODEV unless bridge exists.
func (d *dom0) checkBridge(bridge string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.checkBridgeLocked(bridge)
}

func (d *dom0) checkBridgeLocked(bridge string) error {
	if !d.bridges[bridge] {
		return fmt.Errorf("bridge %q: %w", bridge, syscall.ENODEV)
	}
	return nil
}

// createLink is netback's register_netdev of vif<domid>.<devid>.
func (d *dom0) createLink(name string, domid, devid uint32) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.links[name] != nil {
		return syscall.EEXIST
	}
	d.links[name] = &link{name: name, domid: domid, devid: devid, mtu: defaultMTU}
	d.traffic[name] = &traffic{kind: devices.KindVIF, domid: domid}
	d.changedLocked()
	return nil
}

// removeLink is netback freeing the interface: it leaves its bridge too.
func (d *dom0) removeLink(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.links[name] != nil {
		delete(d.links, name)
		delete(d.traffic, name)
		d.changedLocked()
	}
}

func (d *dom0) changedLocked() {
	close(d.changed)
	d.changed = make(chan struct{})
}

// connectVIF is vif-bridge's "online": wait for the interface, set its
// MTU, add it to bridge, bring it up.
func (d *dom0) connectVIF(ctx context.Context, name, bridge string, mtu uint32) error {
	if mtu == 0 {
		mtu = defaultMTU
	}
	if mtu < minMTU || mtu > maxMTU {
		return fmt.Errorf("%s: MTU %d: want %d..%d: %w", name, mtu, minMTU, maxMTU, syscall.EINVAL)
	}
	for {
		d.mu.Lock()
		if err := d.checkBridgeLocked(bridge); err != nil {
			d.mu.Unlock()
			return err
		}
		if l := d.links[name]; l != nil {
			l.bridge, l.mtu, l.up = bridge, mtu, true
			d.mu.Unlock()
			return nil
		}
		ch := d.changed
		d.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("waiting for interface %s: %w", name, ctx.Err())
		}
	}
}

// disconnectVIF is vif-bridge's "offline".
func (d *dom0) disconnectVIF(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if l := d.links[name]; l != nil {
		l.bridge, l.up = "", false
	}
}

// Dom0State is what a sim host's dom0 holds, for tests' leak checks.
type Dom0State struct {
	Loops   []LoopDevice
	Links   []Link
	Bridges []string
	QEMUs   []QEMUProcess
}

// QEMUProcess is one running QEMU.
type QEMUProcess struct {
	Pid   uint32
	Start uint64
	Domid uint32
}

// LoopDevice is one attached loop device.
type LoopDevice struct {
	Name          string // /dev/loop<Minor>
	Minor         uint32
	Path          string // backing file
	ReadOnly      bool
	OpenByBackend bool // blkback holds it open
	Autoclear     bool // detached while open: goes when blkback closes it
}

// Link is one network interface netback created.
type Link struct {
	Name         string
	Domid, DevID uint32
	Bridge       string // "" when in no bridge
	MTU          uint32
	Up           bool
}

func (d *dom0) state() Dom0State {
	d.mu.Lock()
	defer d.mu.Unlock()
	var s Dom0State
	for _, minor := range slices.Sorted(maps.Keys(d.loops)) {
		l := d.loops[minor]
		s.Loops = append(s.Loops, LoopDevice{Name: l.name(), Minor: l.minor, Path: l.path, ReadOnly: l.readOnly,
			OpenByBackend: l.users > 0, Autoclear: l.autoclear})
	}
	for _, name := range slices.Sorted(maps.Keys(d.links)) {
		l := d.links[name]
		s.Links = append(s.Links, Link{Name: l.name, Domid: l.domid, DevID: l.devid, Bridge: l.bridge, MTU: l.mtu, Up: l.up})
	}
	s.Bridges = slices.Sorted(maps.Keys(d.bridges))
	for _, pid := range slices.Sorted(maps.Keys(d.qemus)) {
		q := d.qemus[pid]
		s.QEMUs = append(s.QEMUs, QEMUProcess{Pid: q.pid, Start: q.start, Domid: q.domid})
	}
	return s
}
