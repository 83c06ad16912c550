package dom0

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

const (
	diskSize = 1 << 20
	// loFlagsAutoclear is LO_FLAGS_AUTOCLEAR of linux/loop.h: the loop
	// detaches itself at its last close, which ours must not.
	loFlagsAutoclear = 4
)

// needLoops skips the test unless it may attach loop devices.
func needLoops(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches loop devices")
	}
	if _, err := os.Stat(loopControl); err != nil {
		t.Skipf("no loop devices here: %v", err)
	}
}

// loopHost returns a Host and a directory for disk files. Whatever
// happens, no loop bound to a file of that directory outlives the test.
func loopHost(t *testing.T) (*Host, string) {
	t.Helper()
	h := New(slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	t.Cleanup(func() {
		for _, l := range loopsUnder(t, h, dir) {
			if err := clearLoop(l.Loop); err != nil {
				t.Errorf("cleanup: %s: %v", l.Loop, err)
			}
		}
	})
	return h, dir
}

// loopsUnder returns the loops bound to files under dir.
func loopsUnder(t *testing.T, h *Host, dir string) []boundLoop {
	t.Helper()
	loops, err := h.boundLoops()
	if err != nil {
		t.Fatal(err)
	}
	var under []boundLoop
	for _, l := range loops {
		if strings.HasPrefix(l.backing, dir+"/") {
			under = append(under, l)
		}
	}
	return under
}

// clearLoop detaches a loop without the code under test.
func clearLoop(name string) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return err
	}
	return nil
}

// diskFile creates a zeroed disk file.
func diskFile(t *testing.T, dir, name string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, make([]byte, diskSize), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func attach(t *testing.T, h *Host, path string, readOnly bool) devices.DiskAttachment {
	t.Helper()
	a, err := h.AttachDisk(context.Background(), path, readOnly)
	if err != nil {
		t.Fatalf("AttachDisk(%s, ro=%v): %v", path, readOnly, err)
	}
	return a
}

// wantNoLoops fails unless no loop is bound to a file under dir.
func wantNoLoops(t *testing.T, h *Host, dir string) {
	t.Helper()
	if left := loopsUnder(t, h, dir); len(left) != 0 {
		t.Errorf("loops left bound: %+v", left)
	}
}

func TestAttachReadWrite(t *testing.T) {
	needLoops(t)
	h, dir := loopHost(t)
	path := diskFile(t, dir, "rw.img")
	a := attach(t, h, path, false)

	var st unix.Stat_t
	if err := unix.Stat(a.Loop, &st); err != nil {
		t.Fatal(err)
	}
	if !isLoopDevice(a.Loop) || a.PhysicalDevice != physicalDevice(uint64(st.Rdev)) {
		t.Fatalf("attachment %+v; %s is %s", a, a.Loop, physicalDevice(uint64(st.Rdev)))
	}
	if ro := readSysfs(t, h.loopSysfs(a.Loop, "ro")); ro != "0" {
		t.Errorf("%s ro = %s, want 0", a.Loop, ro)
	}

	pattern := bytes.Repeat([]byte("xenopsd!"), 512)
	loop, err := os.OpenFile(a.Loop, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	info, err := unix.IoctlLoopGetStatus64(int(loop.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if name := unix.ByteSliceToString(info.File_name[:]); name != path || info.Flags&(loFlagsReadOnly|loFlagsAutoclear) != 0 {
		t.Errorf("loop status: name %q flags %#x; want %q, neither read-only nor autoclear", name, info.Flags, path)
	}
	if _, err := loop.WriteAt(pattern, 8192); err != nil {
		t.Fatalf("write through %s: %v", a.Loop, err)
	}
	if err := loop.Sync(); err != nil {
		t.Fatal(err)
	}
	loop.Close()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[8192:8192+len(pattern)], pattern) {
		t.Error("the write through the loop did not land in the file")
	}

	if err := h.DetachDisk(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	wantNoLoops(t, h, dir)
	if err := h.DetachDisk(context.Background(), a); err != nil {
		t.Errorf("second DetachDisk: %v", err)
	}
}

func TestAttachReadOnly(t *testing.T) {
	needLoops(t)
	h, dir := loopHost(t)
	path := diskFile(t, dir, "ro.img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xa5}, diskSize), 0o600); err != nil {
		t.Fatal(err)
	}
	a := attach(t, h, path, true)

	if ro := readSysfs(t, h.loopSysfs(a.Loop, "ro")); ro != "1" {
		t.Errorf("%s ro = %s, want 1", a.Loop, ro)
	}
	if f, err := os.OpenFile(a.Loop, os.O_WRONLY, 0); err == nil {
		_, werr := f.WriteAt(make([]byte, 4096), 0)
		serr := f.Sync()
		f.Close()
		if werr == nil && serr == nil {
			t.Fatalf("wrote through read-only %s", a.Loop)
		}
	}
	got, err := os.ReadFile(a.Loop)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != diskSize || got[0] != 0xa5 || got[diskSize-1] != 0xa5 {
		t.Errorf("read %d bytes through %s, not the file", len(got), a.Loop)
	}
	file, _ := os.ReadFile(path)
	if !bytes.Equal(file, bytes.Repeat([]byte{0xa5}, diskSize)) {
		t.Error("the file changed under a read-only loop")
	}

	if err := h.DetachDisk(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	wantNoLoops(t, h, dir)
}

func TestFindDisk(t *testing.T) {
	needLoops(t)
	h, dir := loopHost(t)
	path := diskFile(t, dir, "find.img")
	other := diskFile(t, dir, "other.img")
	symlink := filepath.Join(dir, "symlink.img")
	hardlink := filepath.Join(dir, "hardlink.img")
	if err := os.Symlink(path, symlink); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(path, hardlink); err != nil {
		t.Fatal(err)
	}
	a := attach(t, h, path, false)
	b := attach(t, h, path, true)
	attach(t, h, other, false)

	for _, p := range []string{path, symlink, hardlink} {
		found, err := h.FindDisk(context.Background(), p)
		if err != nil {
			t.Fatal(err)
		}
		if len(found) != 2 || !containsAttachment(found, a) || !containsAttachment(found, b) {
			t.Errorf("FindDisk(%s) = %+v, want %+v and %+v", p, found, a, b)
		}
	}
	for _, x := range []devices.DiskAttachment{a, b} {
		if err := h.DetachDisk(context.Background(), x); err != nil {
			t.Fatal(err)
		}
	}
	if found, err := h.FindDisk(context.Background(), path); err != nil || len(found) != 0 {
		t.Errorf("after detach: FindDisk = %+v, %v; want none", found, err)
	}
	if found, err := h.FindDisk(context.Background(), filepath.Join(dir, "missing.img")); err != nil || len(found) != 0 {
		t.Errorf("FindDisk(missing) = %+v, %v; want none", found, err)
	}
}

func containsAttachment(list []devices.DiskAttachment, a devices.DiskAttachment) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

func TestAttachBlockDevice(t *testing.T) {
	needLoops(t)
	h, dir := loopHost(t)
	loop := attach(t, h, diskFile(t, dir, "block.img"), false)

	// A block device is used as it is: the loop stands in for one.
	a := attach(t, h, loop.Loop, false)
	if a.Loop != "" || a.PhysicalDevice != loop.PhysicalDevice {
		t.Fatalf("AttachDisk(%s) = %+v, want the device itself (%s)", loop.Loop, a, loop.PhysicalDevice)
	}
	if err := h.DetachDisk(context.Background(), a); err != nil {
		t.Fatal(err)
	}
	if len(loopsUnder(t, h, dir)) != 1 {
		t.Error("detaching a block device detached its loop")
	}
}

func TestAttachBadPaths(t *testing.T) {
	h := New(slog.New(slog.DiscardHandler))
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{filepath.Join(dir, "missing.img"), "does not exist"},
		{dir, "is a directory, not a regular file or a block device"},
		{"/dev/null", "is a character device"},
		{fifo, "is a named pipe"},
		{"disk.img", "not an absolute path"},
	} {
		a, err := h.AttachDisk(context.Background(), c.path, false)
		if err == nil {
			t.Errorf("AttachDisk(%s) = %+v, want an error", c.path, a)
			continue
		}
		if !strings.Contains(err.Error(), c.path) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("AttachDisk(%s): %v; want the path and %q", c.path, err, c.want)
		}
	}
	if os.Geteuid() == 0 {
		wantNoLoops(t, h, dir)
	}
}

func TestDetachNotALoop(t *testing.T) {
	h := New(slog.New(slog.DiscardHandler))
	for _, name := range []string{"/etc/passwd", "/dev/sda", "loop0", "/dev/loop", "/dev/loop1x"} {
		if err := h.DetachDisk(context.Background(), devices.DiskAttachment{Loop: name}); err == nil {
			t.Errorf("DetachDisk(%s) succeeded", name)
		}
	}
	gone := devices.DiskAttachment{PhysicalDevice: "7:fffff", Loop: "/dev/loop1048575"}
	if err := h.DetachDisk(context.Background(), gone); err != nil {
		t.Errorf("DetachDisk of a missing loop: %v", err)
	}
}

// A loop that someone (blkback) still holds open is detached at its last
// close: the kernel does not refuse LOOP_CLR_FD.
func TestDetachWhileOpen(t *testing.T) {
	needLoops(t)
	h, dir := loopHost(t)
	a := attach(t, h, diskFile(t, dir, "held.img"), false)
	holder, err := os.Open(a.Loop)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.DetachDisk(context.Background(), a); err != nil {
		holder.Close()
		t.Fatalf("DetachDisk of a held loop: %v", err)
	}
	if len(loopsUnder(t, h, dir)) != 1 {
		t.Error("the loop was freed while still open")
	}
	holder.Close()
	for i := 0; len(loopsUnder(t, h, dir)) != 0; i++ {
		if i == 500 {
			t.Fatal("the loop is still bound after its last close")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Concurrent attaches race for the same free loop device: each gets its
// own.
func TestAttachConcurrent(t *testing.T) {
	needLoops(t)
	h, dir := loopHost(t)
	const n = 8
	var wg sync.WaitGroup
	got := make([]devices.DiskAttachment, n)
	errs := make([]error, n)
	for i := range n {
		path := diskFile(t, dir, fmt.Sprintf("c%d.img", i))
		wg.Go(func() { got[i], errs[i] = h.AttachDisk(context.Background(), path, i%2 == 1) })
	}
	wg.Wait()
	seen := map[string]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if seen[got[i].Loop] {
			t.Errorf("%s given twice", got[i].Loop)
		}
		seen[got[i].Loop] = true
	}
	if bound := loopsUnder(t, h, dir); len(bound) != n {
		t.Errorf("%d loops bound, want %d", len(bound), n)
	}
	for _, a := range got {
		if err := h.DetachDisk(context.Background(), a); err != nil {
			t.Error(err)
		}
	}
	wantNoLoops(t, h, dir)
}

func readSysfs(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// The way of kernels without LOOP_CONFIGURE works too, read-only included.
func TestSetLoopFD(t *testing.T) {
	needLoops(t)
	h, dir := loopHost(t)
	for _, readOnly := range []bool{false, true} {
		path := diskFile(t, dir, fmt.Sprintf("legacy-%v.img", readOnly))
		flag := os.O_RDWR
		if readOnly {
			flag = os.O_RDONLY
		}
		backing, err := os.OpenFile(path, flag, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer backing.Close()
		ctl, err := os.OpenFile(loopControl, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		ctl.Close()
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("/dev/loop%d", n)
		loop, err := os.OpenFile(name, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		var info unix.LoopInfo64
		copy(info.File_name[:], path)
		err = setLoopFD(int(loop.Fd()), int(backing.Fd()), &info)
		loop.Close()
		if err != nil {
			t.Fatal(err)
		}
		found, err := h.FindDisk(context.Background(), path)
		if err != nil || len(found) != 1 || found[0].Loop != name {
			t.Fatalf("FindDisk(%s) = %+v, %v; want %s", path, found, err, name)
		}
		want := map[bool]string{false: "0", true: "1"}[readOnly]
		if ro := readSysfs(t, h.loopSysfs(name, "ro")); ro != want {
			t.Errorf("%s ro = %s, want %s", name, ro, want)
		}
		if err := h.DetachDisk(context.Background(), found[0]); err != nil {
			t.Fatal(err)
		}
	}
	wantNoLoops(t, h, dir)
}
