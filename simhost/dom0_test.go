package simhost

import (
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

func TestAttachDiskErrorsNameThePath(t *testing.T) {
	c, _ := startHost(t, Config{NoGuests: true})
	ctx := testCtx(t)
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path  string
		errno error
	}{
		{filepath.Join(dir, "missing.img"), fs.ErrNotExist},
		{dir, syscall.EISDIR},
		{fifo, syscall.ENOTBLK},
		{"relative.img", syscall.EINVAL},
	} {
		_, err := c.AttachDisk(ctx, tc.path, false)
		if !errors.Is(err, tc.errno) || !strings.Contains(err.Error(), tc.path) {
			t.Errorf("AttachDisk(%s) = %v, want %v naming the path", tc.path, err, tc.errno)
		}
	}
	if st, _ := c.Dom0State(ctx); len(st.Loops) != 0 {
		t.Errorf("failed attaches left loop devices: %+v", st.Loops)
	}
}

func TestLoopDevicesFoundAndDetached(t *testing.T) {
	c, cfg := startHost(t, Config{NoGuests: true})
	ctx := testCtx(t)
	img := diskFile(t, 4096)
	a0, err := c.AttachDisk(ctx, img, false)
	if err != nil {
		t.Fatal(err)
	}
	a1, err := c.AttachDisk(ctx, img, true)
	if err != nil {
		t.Fatal(err)
	}
	if a0 != (devices.DiskAttachment{PhysicalDevice: "7:0", Loop: "/dev/loop0"}) || a1.PhysicalDevice != "7:1" {
		t.Fatalf("attachments %+v %+v", a0, a1)
	}
	// A new connection (a restarted daemon) finds them.
	c2, err := Dial(ctx, cfg.Dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	found, err := c2.FindDisk(ctx, img)
	if err != nil || !reflect.DeepEqual(found, []devices.DiskAttachment{a0, a1}) {
		t.Fatalf("FindDisk = %+v, %v", found, err)
	}
	for range 2 { // detaching what is gone is no error
		if err := c2.DetachDisk(ctx, a0); err != nil {
			t.Fatal(err)
		}
	}
	if found, _ := c2.FindDisk(ctx, img); !reflect.DeepEqual(found, []devices.DiskAttachment{a1}) {
		t.Fatalf("after detach FindDisk = %+v", found)
	}
	if err := c2.DetachDisk(ctx, devices.DiskAttachment{PhysicalDevice: "8:0", Loop: "/dev/sda"}); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("DetachDisk of a non-loop = %v, want EINVAL", err)
	}
	if err := c2.DetachDisk(ctx, devices.DiskAttachment{PhysicalDevice: "8:0"}); err != nil {
		t.Errorf("DetachDisk of a block device = %v, want nothing to do", err)
	}
}

func TestBridges(t *testing.T) {
	c, _ := startHost(t, Config{NoGuests: true, Bridges: []string{"xenbr0", "br-lan"}})
	ctx := testCtx(t)
	for _, b := range []string{"xenbr0", "br-lan"} {
		if err := c.CheckBridge(ctx, b); err != nil {
			t.Errorf("CheckBridge(%s) = %v", b, err)
		}
	}
	err := c.CheckBridge(ctx, "xenbr9")
	if !errors.Is(err, syscall.ENODEV) || !strings.Contains(err.Error(), "xenbr9") {
		t.Errorf("CheckBridge(xenbr9) = %v, want ENODEV naming it", err)
	}
	if err := c.ConnectVIF(ctx, "vif1.0", "xenbr9", 0); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("ConnectVIF to a missing bridge = %v, want ENODEV at once", err)
	}
	if err := c.ConnectVIF(ctx, "vif1.0", "xenbr0", 70000); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("ConnectVIF with MTU 70000 = %v, want EINVAL", err)
	}
	if err := c.DisconnectVIF(ctx, "vif1.0"); err != nil {
		t.Errorf("DisconnectVIF of a missing interface = %v", err)
	}
	if st, _ := c.Dom0State(ctx); !reflect.DeepEqual(st.Bridges, []string{"br-lan", "xenbr0"}) {
		t.Errorf("bridges %v", st.Bridges)
	}
}

func TestParseBridges(t *testing.T) {
	for in, want := range map[string][]string{"xenbr0": {"xenbr0"}, "a, b,": {"a", "b"}, "": {}} {
		if got, err := parseBridges(in); err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("parseBridges(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"a/b", "sixteen-chars-xx", "br 0", ".."} {
		if _, err := parseBridges(bad); err == nil {
			t.Errorf("parseBridges(%q) accepted", bad)
		}
	}
}
