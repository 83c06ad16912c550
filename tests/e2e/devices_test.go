package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// TestDevices runs a VM with a read-write and a read-only disk and a NIC on
// the simulator through xopsctl: the guest's frontends connect (vm get shows
// both ends Connected), a disk and a NIC are hot-plugged and unplugged, a
// kill -9 of the daemon loses nothing, and a destroy after the restart
// leaves no loop device, vif or backend directory in the sim host's dom0.
func TestDevices(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	ctx := testCtx(t, 3*time.Minute)
	dir := t.TempDir()
	img := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, make([]byte, 4<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	rw, ro, hot := img("rw.img"), img("ro.img"), img("hot.img")

	cli(t, d, "vm", "create", "--name", "dev1", "--memory", "128M",
		"--disk", "xvda:"+rw+":rw", "--disk", "xvdb:"+ro+":ro", "--nic", "bridge=xenbr0,mtu=9000")
	cli(t, d, "vm", "start", "dev1")
	connected := func(want int) func() string {
		return func() string {
			vm := cliVM(t, d, "dev1")
			if len(vm.GetDevices()) != want {
				return fmt.Sprintf("%d devices plugged, want %d", len(vm.GetDevices()), want)
			}
			for _, dev := range vm.GetDevices() {
				if dev.GetBackendState() != "Connected" || dev.GetFrontendState() != "Connected" {
					return fmt.Sprintf("%s%s: backend %q frontend %q %s", dev.GetDevice(), dev.GetVif(), dev.GetBackendState(), dev.GetFrontendState(), dev.GetError())
				}
			}
			return ""
		}
	}
	eventually(t, 30*time.Second, connected(3))
	vm := cliVM(t, d, "dev1")
	if got := vm.GetDevices()[1]; !got.GetReadOnly() || got.GetPath() != ro || got.GetLoopDevice() == "" {
		t.Fatalf("read-only disk plugged as %v", got)
	}
	checkDom0(t, ctx, simc, 2, 1)

	// A file read-write in a running VM is in no other.
	cli(t, d, "vm", "create", "--name", "dev2", "--memory", "64M", "--disk", "xvda:"+rw)
	if r := d.CLI("vm", "start", "dev2"); r.Code == 0 || !strings.Contains(r.Stderr, "read-write in running VM") {
		t.Fatalf("second VM with the same rw file started: exit %d %s", r.Code, r.Stderr)
	}

	// Hot-plug and unplug.
	cli(t, d, "vm", "disk", "add", "dev1", "xvdc:"+hot)
	cli(t, d, "vm", "nic", "add", "dev1", "bridge=xenbr0")
	eventually(t, 30*time.Second, connected(5))
	checkDom0(t, ctx, simc, 3, 2)
	mac := cliVM(t, d, "dev1").GetSpec().GetNics()[1].GetMac()
	cli(t, d, "vm", "disk", "rm", "dev1", "xvdc")
	cli(t, d, "vm", "nic", "rm", "dev1", mac)
	eventually(t, 30*time.Second, connected(3))
	checkDom0(t, ctx, simc, 2, 1)

	// kill -9, restart: the devices are still there and connected, and a
	// destroy cleans everything up.
	d.Kill()
	d.Start()
	eventually(t, 30*time.Second, connected(3))
	cli(t, d, "vm", "destroy", "dev1")
	checkDom0(t, ctx, simc, 0, 0)
	for _, kind := range []string{"vbd", "vif"} {
		if kids := xsList(t, ctx, simc, "/local/domain/0/backend/"+kind); len(kids) != 0 {
			t.Errorf("backend/%s after destroy: %v", kind, kids)
		}
	}
	// Now the file is free.
	cli(t, d, "vm", "start", "dev2")
}

// checkDom0 fails unless the sim host's dom0 has loops loop devices and
// vifs vif interfaces.
func checkDom0(t *testing.T, ctx context.Context, simc *simhost.Client, loops, vifs int) {
	t.Helper()
	eventually(t, 10*time.Second, func() string {
		st, err := simc.Dom0State(ctx)
		if err != nil {
			return err.Error()
		}
		if len(st.Loops) != loops || len(st.Links) != vifs {
			return fmt.Sprintf("dom0 has %d loops and %d vifs, want %d and %d: %+v", len(st.Loops), len(st.Links), loops, vifs, st)
		}
		return ""
	})
}

// xsList lists a xenstore directory of the sim host (ENOENT: none).
func xsList(t *testing.T, ctx context.Context, simc *simhost.Client, path string) []string {
	t.Helper()
	xs, err := xenstore.Dial(ctx, simc.XenstoredPath())
	if err != nil {
		t.Fatal(err)
	}
	defer xs.Close()
	kids, err := xs.List(ctx, path)
	if err != nil && !errors.Is(err, syscall.ENOENT) {
		t.Fatal(err)
	}
	return kids
}
