package simhost

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// noLeaks waits until dom0 holds no loop device and no interface.
func (ts *toolstack) noLeaks(t *testing.T) {
	t.Helper()
	ts.waitDom0(t, "let go of every loop device and interface", func(st Dom0State) bool {
		return len(st.Loops) == 0 && len(st.Links) == 0
	})
}

func TestVBDConnectsAndCloses(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	v := ts.plugVBD(t, d, 51712, diskFile(t, 1<<20), false)
	ts.waitState(t, v.be, devices.StateConnected)
	ts.waitState(t, v.fe, devices.StateConnected)
	for k, want := range map[string]string{"sectors": "2048", "info": "0", "sector-size": "512", "feature-persistent": "1"} {
		if got := ts.read(t, v.be+"/"+k); got != want {
			t.Errorf("backend %s = %q, want %q", k, got, want)
		}
	}
	for _, k := range []string{"ring-ref", "event-channel", "protocol"} {
		if ts.read(t, v.fe+"/"+k) == "" {
			t.Errorf("frontend wrote no %s", k)
		}
	}
	st, _ := ts.hv.Dom0State(testCtx(t))
	if len(st.Loops) != 1 || !st.Loops[0].OpenByBackend || st.Loops[0].Name != v.disk.Loop || v.disk.PhysicalDevice != "7:0" {
		t.Fatalf("loop devices %+v for attachment %+v", st.Loops, v.disk)
	}

	ts.unplug(t, v)
	ts.waitState(t, v.fe, devices.StateClosed)
	ts.waitState(t, v.be, devices.StateClosed)
	ts.removeDirs(t, v)
	ts.noLeaks(t)
}

func TestReadOnlyVBD(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	v := ts.plugVBD(t, d, 51728, diskFile(t, 4096), true)
	ts.waitState(t, v.be, devices.StateConnected)
	if got := ts.read(t, v.be+"/info"); got != "4" {
		t.Errorf("info = %q, want 4 (VDISK_READONLY)", got)
	}
	// A read-only loop device cannot back a disk blkback opens to write.
	w := ts.newVBD(t, d, 51744, "w")
	ts.write(t, w.be+"/physical-device", v.disk.PhysicalDevice)
	if e := ts.waitError(t, w.backendError()); !strings.HasPrefix(e, "30 creating vbd structure") {
		t.Errorf("error = %q, want EROFS creating vbd structure", e)
	}
	ts.waitClosed(t, w.be)
}

func TestVIFConnectsAndCloses(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	v := ts.plugVIF(t, d, 0)
	ts.waitState(t, v.be, devices.StateConnected)
	ts.waitState(t, v.fe, devices.StateConnected)
	for _, k := range []string{"tx-ring-ref", "rx-ring-ref", "event-channel", "request-rx-copy"} {
		if ts.read(t, v.fe+"/"+k) == "" {
			t.Errorf("frontend wrote no %s", k)
		}
	}
	st, _ := ts.hv.Dom0State(testCtx(t))
	if len(st.Links) != 1 || st.Links[0] != (Link{Name: v.linkName, Domid: uint32(d), Bridge: "xenbr0", MTU: 1500, Up: true}) {
		t.Fatalf("links %+v", st.Links)
	}

	ts.unplug(t, v)
	ts.waitState(t, v.fe, devices.StateClosed)
	ts.waitState(t, v.be, devices.StateClosed)
	ts.noLeaks(t) // netback freed the interface as it unregistered
	ts.removeDirs(t, v)
}

func TestVIFWaitsForHotplug(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	v := ts.newVIF(t, d, 1)
	// The frontend connects; netback defers Connected until the hotplug
	// side says "connected".
	ts.waitState(t, v.fe, devices.StateConnected)
	if got := ts.read(t, v.be+"/state"); got != "2" {
		t.Fatalf("backend state %s before hotplug-status, want 2", got)
	}
	ts.write(t, v.be+"/hotplug-status", "connected")
	ts.waitState(t, v.be, devices.StateConnected)
}

func TestConnectVIFWaitsForInterface(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	ctx, cancel := context.WithTimeout(testCtx(t), 50*time.Millisecond)
	defer cancel()
	if err := ts.hv.ConnectVIF(ctx, "vif9.9", "xenbr0", 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("ConnectVIF of an interface that never comes = %v, want the context's end", err)
	}
	done := make(chan error, 1)
	go func() { done <- ts.hv.ConnectVIF(testCtx(t), "vif"+itoa(int(d))+".3", "xenbr0", 9000) }()
	ts.newVIF(t, d, 3)
	if err := <-done; err != nil {
		t.Fatalf("ConnectVIF: %v", err)
	}
	st, _ := ts.hv.Dom0State(testCtx(t))
	if len(st.Links) != 1 || st.Links[0].MTU != 9000 || !st.Links[0].Up || st.Links[0].Bridge != "xenbr0" {
		t.Fatalf("links %+v", st.Links)
	}
}

func TestColdPluggedDevicesConnectAtBoot(t *testing.T) {
	ts := newToolstack(t, Config{})
	var vs []vdev
	ts.bootWith(t, func(d xenctrl.Domid) {
		ts.domainDirs(t, d)
		for i := range 3 {
			vs = append(vs, ts.plugVBD(t, d, 51712+16*i, diskFile(t, 4096), i == 2))
		}
		for i := range 2 {
			v := ts.newVIF(t, d, i)
			ts.write(t, v.be+"/hotplug-status", "connected")
			vs = append(vs, v)
		}
	})
	for _, v := range vs {
		ts.waitState(t, v.be, devices.StateConnected)
		ts.waitState(t, v.fe, devices.StateConnected)
	}
	refs := map[string]bool{}
	for _, v := range vs {
		for _, k := range []string{"ring-ref", "tx-ring-ref", "rx-ring-ref"} {
			if r := ts.read(t, v.fe+"/"+k); r != "" {
				if refs[r] {
					t.Errorf("grant reference %s handed out twice", r)
				}
				refs[r] = true
			}
		}
	}
	for _, v := range vs {
		ts.unplug(t, v)
	}
	for _, v := range vs {
		ts.waitState(t, v.be, devices.StateClosed)
		ts.removeDirs(t, v)
	}
	ts.noLeaks(t)
}

func TestDevicesNeverConnect(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	if err := ts.hv.SetGuestBehaviour(testCtx(t), d, sim.GuestBehaviour{DevicesNeverConnect: true}); err != nil {
		t.Fatal(err)
	}
	v := ts.plugVBD(t, d, 51712, diskFile(t, 4096), false)
	ts.waitState(t, v.be, devices.StateInitWait)
	ts.unplug(t, v)
	// The frontend never answers: the backend stays Closing; the toolstack
	// gives up and removes the device by force.
	ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
	defer cancel()
	if got, ok := ts.waitNode(t, ctx, v.be+"/state", func(v string, _ bool) bool { return v == "6" }); ok {
		t.Fatalf("backend reached Closed (%s) with a frontend that never connected", got)
	}
	if got := ts.read(t, v.fe+"/state"); got != "1" {
		t.Fatalf("frontend state %s, want 1", got)
	}
	ts.removeDirs(t, v)
	ts.noLeaks(t) // blkback closed the loop device, which went at last close
}

func TestDevicesRefuseClose(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	vbd := ts.plugVBD(t, d, 51712, diskFile(t, 4096), false)
	vif := ts.plugVIF(t, d, 0)
	ts.waitState(t, vbd.fe, devices.StateConnected)
	ts.waitState(t, vif.be, devices.StateConnected)
	if err := ts.hv.SetGuestBehaviour(testCtx(t), d, sim.GuestBehaviour{DevicesRefuseClose: true}); err != nil {
		t.Fatal(err)
	}
	ts.unplug(t, vbd)
	// blkfront with its disk in use says so and stays Closing.
	e := ts.waitError(t, "/local/domain/"+itoa(int(d))+"/error/device/vbd/51712/error")
	if e != "16 Device in use; refusing to close" {
		t.Errorf("frontend error %q", e)
	}
	ts.waitState(t, vbd.fe, devices.StateClosing)
	ts.unplug(t, vif)
	for _, v := range []vdev{vbd, vif} {
		ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
		got, ok := ts.waitNode(t, ctx, v.be+"/state", func(v string, _ bool) bool { return v == "6" })
		cancel()
		if ok {
			t.Fatalf("%s backend reached Closed (%s) with a frontend that refuses to close", v.kind, got)
		}
	}
	if got := ts.read(t, vif.fe+"/state"); got != "4" {
		t.Fatalf("netfront state %s, want 4", got)
	}
	ts.removeDirs(t, vbd)
	ts.removeDirs(t, vif)
	ts.noLeaks(t)
}

func TestPausedGuestConnectsWhenUnpaused(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	if err := ts.hv.PauseDomain(testCtx(t), d); err != nil {
		t.Fatal(err)
	}
	v := ts.plugVBD(t, d, 51712, diskFile(t, 4096), false)
	ts.waitState(t, v.be, devices.StateInitWait)
	if got := ts.read(t, v.fe+"/state"); got != "1" {
		t.Fatalf("a paused guest's frontend moved to %s", got)
	}
	if err := ts.hv.UnpauseDomain(testCtx(t), d); err != nil {
		t.Fatal(err)
	}
	ts.waitState(t, v.be, devices.StateConnected)
	ts.waitState(t, v.fe, devices.StateConnected)
}

func TestDestroyedDomainTakesItsBackendsDown(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	vbd := ts.plugVBD(t, d, 51712, diskFile(t, 4096), false)
	vif := ts.plugVIF(t, d, 0)
	ts.waitState(t, vbd.be, devices.StateConnected)
	ts.waitState(t, vif.be, devices.StateConnected)
	if err := ts.hv.DestroyDomain(testCtx(t), d); err != nil {
		t.Fatal(err)
	}
	// xenstored removes the dead guest's nodes, its frontends among them;
	// the backends see them vanish and let go.
	ts.waitState(t, vif.be, devices.StateClosed)
	ts.waitDom0(t, "freed the interface and closed the loop device", func(st Dom0State) bool {
		return len(st.Links) == 0 && len(st.Loops) == 1 && !st.Loops[0].OpenByBackend
	})
	ts.removeDirs(t, vbd)
	ts.removeDirs(t, vif)
	ts.noLeaks(t)
}

// garbageFrontend writes a frontend's keys as a hostile guest could (from
// dom0's connection: the frontend directory is the guest's to fill).
func TestGarbageFrontend(t *testing.T) {
	ts := newToolstack(t, Config{NoGuests: true})
	d, err := ts.hv.CreateDomain(testCtx(t), xenctrl.DomainConfig{MaxVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	ts.domainDirs(t, d)
	port, err := ts.hv.AllocUnboundEvtchn(testCtx(t), d, 0)
	if err != nil {
		t.Fatal(err)
	}
	ev := itoa(int(port))

	cases := []struct {
		name  string
		keys  map[string]string
		error string // prefix of the backend's error node
	}{
		{"absurd ring-ref", map[string]string{"ring-ref": "4294967295", "event-channel": ev, "state": "3"}, "22 mapping ring-ref port"},
		{"reserved ring-ref", map[string]string{"ring-ref": "1", "event-channel": ev, "state": "3"}, "22 mapping ring-ref port"},
		{"foreign event channel", map[string]string{"ring-ref": "8", "event-channel": "4000", "state": "3"}, "22 mapping ring-ref port 4000"},
		{"non-numeric ring-ref", map[string]string{"ring-ref": "ring", "event-channel": ev, "state": "4"}, "22 reading"},
		{"unknown protocol", map[string]string{"protocol": "sparc-abi", "state": "3"}, "38 unknown fe protocol sparc-abi"},
		{"state out of range", map[string]string{"state": "99"}, "22 saw state 99 at frontend"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := ts.plugVBD(t, d, 51712+16*i, diskFile(t, 4096), false)
			ts.waitState(t, v.be, devices.StateInitWait)
			for k, val := range c.keys {
				if k != "state" {
					ts.write(t, v.fe+"/"+k, val)
				}
			}
			ts.write(t, v.fe+"/state", c.keys["state"])
			if e := ts.waitError(t, v.backendError()); !strings.HasPrefix(e, c.error) {
				t.Errorf("error %q, want %q...", e, c.error)
			}
			ts.waitState(t, v.be, devices.StateClosing)
			// A state that does not scan is Unknown: the backend goes.
			ts.write(t, v.fe+"/state", "banana")
			ts.waitState(t, v.be, devices.StateClosed)
			ts.removeDirs(t, v)
		})
	}

	vif := ts.newVIF(t, d, 0)
	ts.waitState(t, vif.be, devices.StateInitWait)
	for k, val := range map[string]string{"tx-ring-ref": "8", "rx-ring-ref": "99999999", "event-channel": ev} {
		ts.write(t, vif.fe+"/"+k, val)
	}
	ts.write(t, vif.fe+"/state", "4")
	if e := ts.waitError(t, vif.backendError()); !strings.HasPrefix(e, "22 mapping shared-frames 8/99999999") {
		t.Errorf("vif error %q", e)
	}
	ts.waitState(t, vif.be, devices.StateClosing)
	ts.removeDirs(t, vif)
	ts.noLeaks(t)
}

func TestBackendFailures(t *testing.T) {
	ts := newToolstack(t, Config{})
	d := ts.bootWithDevices(t)
	// physical-device naming no device: blkback cannot open it.
	v := ts.newVBD(t, d, 51712, "w")
	ts.write(t, v.be+"/physical-device", "7:3f")
	if e := ts.waitError(t, v.backendError()); e != "2 creating vbd structure" {
		t.Errorf("unknown device: error %q", e)
	}
	ts.waitClosed(t, v.be)

	// A vif without the script key fails at probe, as netback does.
	w := ts.newVIF(t, d, 5, "script")
	if e := ts.waitError(t, w.backendError()); e != "2 reading script" {
		t.Errorf("vif without script: error %q", e)
	}
	ts.waitClosed(t, w.be)
	if st, _ := ts.hv.Dom0State(testCtx(t)); len(st.Links) != 0 {
		t.Errorf("links %+v after a failed probe", st.Links)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
