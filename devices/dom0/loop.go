package dom0

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// The loop device ABI is Linux's (include/uapi/linux/loop.h).
// golang.org/x/sys/unix has its ioctl numbers (LOOP_CTL_GET_FREE,
// LOOP_CONFIGURE, LOOP_SET_FD, LOOP_SET_STATUS64, LOOP_CLR_FD) and its
// structs (struct loop_config as unix.LoopConfig, struct loop_info64 as
// unix.LoopInfo64), but not the lo_flags values.
const (
	// loFlagsReadOnly is LO_FLAGS_READ_ONLY: the loop refuses writes.
	loFlagsReadOnly = 1
)

const (
	loopControl = "/dev/loop-control"
	// loopTries bounds the attempts to take a free loop device when other
	// processes keep taking the one LOOP_CTL_GET_FREE named first.
	loopTries = 16
)

// AttachDisk makes path a block device blkback can open: a block device as
// it is, a regular file through a new loop device (read-only if readOnly).
func (h *Host) AttachDisk(ctx context.Context, path string, readOnly bool) (devices.DiskAttachment, error) {
	if err := ctx.Err(); err != nil {
		return devices.DiskAttachment{}, err
	}
	if !filepath.IsAbs(path) {
		return devices.DiskAttachment{}, fmt.Errorf("disk %q: not an absolute path", path)
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return devices.DiskAttachment{}, fmt.Errorf("disk %q does not exist", path)
	case err != nil:
		return devices.DiskAttachment{}, fmt.Errorf("disk %q: %w", path, err)
	case fi.Mode().IsRegular():
		return h.attachLoop(ctx, path, readOnly)
	case fi.Mode()&fs.ModeDevice != 0 && fi.Mode()&fs.ModeCharDevice == 0:
		st := fi.Sys().(*syscall.Stat_t)
		return devices.DiskAttachment{PhysicalDevice: physicalDevice(uint64(st.Rdev))}, nil
	default:
		return devices.DiskAttachment{}, fmt.Errorf("disk %q is a %s, not a regular file or a block device", path, fileKind(fi.Mode()))
	}
}

// attachLoop binds a free loop device to the regular file at path.
func (h *Host) attachLoop(ctx context.Context, path string, readOnly bool) (devices.DiskAttachment, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	backing, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return devices.DiskAttachment{}, fmt.Errorf("disk %q: %w", path, err)
	}
	defer backing.Close()
	if fi, err := backing.Stat(); err != nil || !fi.Mode().IsRegular() {
		return devices.DiskAttachment{}, fmt.Errorf("disk %q changed while it was opened", path)
	}
	ctl, err := os.OpenFile(loopControl, os.O_RDWR, 0)
	if err != nil {
		return devices.DiskAttachment{}, fmt.Errorf("disk %q: no loop devices: %w", path, err)
	}
	defer ctl.Close()
	for range loopTries {
		if err := ctx.Err(); err != nil {
			return devices.DiskAttachment{}, err
		}
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return devices.DiskAttachment{}, fmt.Errorf("disk %q: LOOP_CTL_GET_FREE: %w", path, err)
		}
		a, err := bindLoop(n, backing, path, readOnly)
		if errors.Is(err, unix.EBUSY) {
			continue // another process bound loop n first
		}
		if err != nil {
			return devices.DiskAttachment{}, err
		}
		h.log.Info("loop device attached", "path", path, "loop", a.Loop,
			"physical_device", a.PhysicalDevice, "read_only", readOnly)
		return a, nil
	}
	return devices.DiskAttachment{}, fmt.Errorf("disk %q: other processes took each of %d free loop devices first", path, loopTries)
}

// bindLoop binds /dev/loop<n> to backing, opened from path.
func bindLoop(n int, backing *os.File, path string, readOnly bool) (devices.DiskAttachment, error) {
	name := "/dev/loop" + strconv.Itoa(n)
	// Read-write even for a read-only disk: the kernel makes a loop opened
	// read-only read-only whatever the flags say.
	loop, err := os.OpenFile(name, os.O_RDWR, 0)
	if err != nil {
		return devices.DiskAttachment{}, fmt.Errorf("disk %q: %w", path, err)
	}
	defer loop.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(loop.Fd()), &st); err != nil {
		return devices.DiskAttachment{}, fmt.Errorf("disk %q: stat %s: %w", path, name, err)
	}
	if err := configureLoop(int(loop.Fd()), int(backing.Fd()), path, readOnly); err != nil {
		return devices.DiskAttachment{}, fmt.Errorf("disk %q: bind %s: %w", path, name, err)
	}
	return devices.DiskAttachment{PhysicalDevice: physicalDevice(uint64(st.Rdev)), Loop: name}, nil
}

// configureLoop binds the loop device open as loop to the file open as
// backing: in one LOOP_CONFIGURE (Linux >= 5.8), else LOOP_SET_FD then
// LOOP_SET_STATUS64. Not autoclear: the loop outlives our descriptors.
func configureLoop(loop, backing int, path string, readOnly bool) error {
	var info unix.LoopInfo64
	copy(info.File_name[:unix.LO_NAME_SIZE-1], path)
	if readOnly {
		info.Flags = loFlagsReadOnly
	}
	err := unix.IoctlLoopConfigure(loop, &unix.LoopConfig{Fd: uint32(backing), Info: info})
	if errors.Is(err, unix.ENOTTY) || errors.Is(err, unix.EINVAL) {
		return setLoopFD(loop, backing, &info) // an older kernel
	}
	return err
}

// setLoopFD binds a loop as Linux before 5.8 does: LOOP_SET_FD, then
// LOOP_SET_STATUS64. That cannot set LO_FLAGS_READ_ONLY: the kernel sets
// it for a backing file open read-only.
func setLoopFD(loop, backing int, info *unix.LoopInfo64) error {
	if err := unix.IoctlSetInt(loop, unix.LOOP_SET_FD, backing); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(loop, info); err != nil {
		_ = unix.IoctlSetInt(loop, unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}

// FindDisk returns the loop devices backed by the file at path: the same
// path once symbolic links are resolved, or the same file (device and
// inode) under another name.
func (h *Host) FindDisk(ctx context.Context, path string) ([]devices.DiskAttachment, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("disk %q: not an absolute path", path)
	}
	want := filepath.Clean(path)
	if resolved, err := filepath.EvalSymlinks(path); err == nil {
		want = resolved
	}
	wantInfo, statErr := os.Stat(path)
	loops, err := h.boundLoops()
	if err != nil {
		return nil, err
	}
	var found []devices.DiskAttachment
	for _, l := range loops {
		same := l.backing == want
		if !same && statErr == nil {
			fi, err := os.Stat(l.backing)
			same = err == nil && os.SameFile(fi, wantInfo)
		}
		if same {
			found = append(found, l.DiskAttachment)
		}
	}
	return found, nil
}

// DetachDisk undoes AttachDisk. A block device has nothing to undo; a loop
// device that is gone or no longer bound is already detached. The kernel
// no longer refuses (EBUSY) to detach a loop that blkback still holds
// open: it marks it autoclear and detaches it at blkback's last close.
func (h *Host) DetachDisk(ctx context.Context, a devices.DiskAttachment) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if a.Loop == "" {
		return nil
	}
	if !isLoopDevice(a.Loop) {
		return fmt.Errorf("detach %q: not a loop device (/dev/loopN)", a.Loop)
	}
	loop, err := os.OpenFile(a.Loop, os.O_RDONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	defer loop.Close()
	err = unix.IoctlSetInt(int(loop.Fd()), unix.LOOP_CLR_FD, 0)
	switch {
	case errors.Is(err, unix.ENXIO):
		return nil // not bound
	case err != nil:
		return fmt.Errorf("detach %s: LOOP_CLR_FD: %w", a.Loop, err)
	}
	if _, err := os.Stat(h.loopSysfs(a.Loop, "loop/backing_file")); err == nil {
		h.log.Info("loop device still open elsewhere: the kernel detaches it at its last close", "loop", a.Loop)
	} else {
		h.log.Info("loop device detached", "loop", a.Loop)
	}
	return nil
}

// boundLoop is a loop device bound to a file.
type boundLoop struct {
	devices.DiskAttachment
	backing string // the file's path as the kernel shows it now
}

// boundLoops lists the bound loop devices from sysfs.
func (h *Host) boundLoops() ([]boundLoop, error) {
	entries, err := os.ReadDir(filepath.Join(h.sysfs, "block"))
	if err != nil {
		return nil, fmt.Errorf("list loop devices: %w", err)
	}
	var loops []boundLoop
	for _, e := range entries {
		if _, ok := loopNumber(e.Name()); !ok {
			continue
		}
		name := "/dev/" + e.Name()
		backing, err := os.ReadFile(h.loopSysfs(name, "loop/backing_file"))
		if errors.Is(err, fs.ErrNotExist) {
			continue // not bound
		}
		if err != nil {
			return nil, fmt.Errorf("list loop devices: %w", err)
		}
		dev, err := os.ReadFile(h.loopSysfs(name, "dev"))
		if err != nil {
			return nil, fmt.Errorf("list loop devices: %w", err)
		}
		var major, minor uint32
		if _, err := fmt.Sscanf(string(dev), "%d:%d", &major, &minor); err != nil {
			return nil, fmt.Errorf("list loop devices: %s dev %q: %w", name, dev, err)
		}
		loops = append(loops, boundLoop{
			DiskAttachment: devices.DiskAttachment{PhysicalDevice: fmt.Sprintf("%x:%x", major, minor), Loop: name},
			backing:        strings.TrimSuffix(string(backing), "\n"),
		})
	}
	return loops, nil
}

// loopSysfs is the path of attribute attr of the loop device /dev/loopN.
func (h *Host) loopSysfs(loop, attr string) string {
	return filepath.Join(h.sysfs, "block", strings.TrimPrefix(loop, "/dev/"), attr)
}

// isLoopDevice tells whether path is "/dev/loopN".
func isLoopDevice(path string) bool {
	name, ok := strings.CutPrefix(path, "/dev/")
	_, isLoop := loopNumber(name)
	return ok && isLoop
}

// loopNumber returns N of a device name "loopN".
func loopNumber(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, "loop")
	if !ok || digits == "" || strings.TrimLeft(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	return n, err == nil
}

// physicalDevice formats a device number as blkback reads physical-device.
func physicalDevice(rdev uint64) string {
	return fmt.Sprintf("%x:%x", unix.Major(rdev), unix.Minor(rdev))
}

// fileKind names the type of a file that is neither regular nor a block
// device.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	default:
		return "special file"
	}
}
