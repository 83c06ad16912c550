package simhost

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// bootNamed is toolstack.boot with the domain's name written first, as
// libxl (and the daemon) do before the domain runs. An empty name writes
// none.
func (ts *toolstack) bootNamed(t *testing.T, name string) xenctrl.Domid {
	t.Helper()
	ctx := testCtx(t)
	d, err := ts.hv.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := ts.hv.SetMaxMem(ctx, d, 64<<10); err != nil {
		t.Fatal(err)
	}
	if err := ts.hv.PopulatePhysmap(ctx, d, 1024); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("/local/domain/%d", d)
	if name != "" {
		if err := ts.xs.Write(ctx, base+"/name", []byte(name)); err != nil {
			t.Fatal(err)
		}
	}
	own := []xenstore.Perm{{Domid: uint32(d), Access: xenstore.AccessNone}}
	for _, n := range []string{"control/shutdown", "control/feature-poweroff", "control/feature-reboot", "control/feature-suspend"} {
		if err := ts.xs.Write(ctx, base+"/"+n, nil); err != nil {
			t.Fatal(err)
		}
		if err := ts.xs.SetPerms(ctx, base+"/"+n, own); err != nil {
			t.Fatal(err)
		}
	}
	if err := ts.xs.Introduce(ctx, uint32(d), 0xfeffc, 1); err != nil {
		t.Fatal(err)
	}
	if err := ts.hv.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// waitLog waits (bounded) until the console log of name contains want n
// times, and returns the log.
func waitLog(t *testing.T, dir, name, want string, n int) string {
	t.Helper()
	ctx := testCtx(t)
	path := filepath.Join(dir, ConsoleDir, "guest-"+name+".log")
	for {
		b, _ := os.ReadFile(path)
		if strings.Count(string(b), want) >= n {
			return string(b)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never had %q %d times; has %q", path, want, n, b)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// TestGuestConsoleLog: the sim host acts as xenconsoled --log=guest. A
// booted guest's marker lands in console/guest-<name>.log, its shutdown is
// logged, the log outlives the domain, a new domain of the same name
// appends to it, and a domain without a name gets no log.
func TestGuestConsoleLog(t *testing.T) {
	ts := newToolstack(t, Config{})
	dir := ts.hv.Dir()
	ctx := testCtx(t)

	d := ts.bootNamed(t, "web-1")
	log := waitLog(t, dir, "web-1", fmt.Sprintf("%s domid=%d\n", BootMarker, d), 1)
	if !strings.Contains(log, "Linux version") || strings.Index(log, "Linux version") > strings.Index(log, BootMarker) {
		t.Errorf("boot output lacks the kernel banner before the marker: %q", log)
	}

	// Clean shutdown through control/shutdown: the guest says what it does.
	if err := ts.xs.Write(ctx, fmt.Sprintf("/local/domain/%d/control/shutdown", d), []byte("poweroff")); err != nil {
		t.Fatal(err)
	}
	ts.waitInfo(t, d, "shut down", func(di xenctrl.DomainInfo, gone bool) bool { return gone || di.Shutdown })
	waitLog(t, dir, "web-1", "reboot: Power down\n", 1)
	if err := ts.hv.DestroyDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	ts.waitInfo(t, d, "gone", func(_ xenctrl.DomainInfo, gone bool) bool { return gone })

	// Post-mortem: the log is still there; a rebuilt domain appends.
	d2 := ts.bootNamed(t, "web-1")
	log = waitLog(t, dir, "web-1", BootMarker, 2)
	if !strings.Contains(log, fmt.Sprintf("%s domid=%d\n", BootMarker, d)) ||
		!strings.Contains(log, fmt.Sprintf("%s domid=%d\n", BootMarker, d2)) {
		t.Fatalf("log does not hold both boots (domids %d, %d): %q", d, d2, log)
	}
	if strings.Index(log, "reboot: Power down") > strings.LastIndex(log, BootMarker) {
		t.Errorf("first boot's shutdown line is not before the second boot: %q", log)
	}

	// A guest crashing itself (SCHEDOP_shutdown crash) prints a panic.
	if err := ts.hv.GuestShutdown(ctx, d2, xenctrl.ShutdownCrash); err != nil {
		t.Fatal(err)
	}
	waitLog(t, dir, "web-1", "Kernel panic - not syncing", 1)

	// No name in xenstore: xenconsoled writes no log, nor does the sim.
	d3 := ts.bootNamed(t, "")
	// The guest is up once it advertised its features; it printed by then.
	ts.waitFeature(t, d3)
	ents, err := os.ReadDir(filepath.Join(dir, ConsoleDir))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "guest-web-1.log" {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("console dir holds %v, want only guest-web-1.log", names)
	}
}

// waitFeature waits until d's guest has advertised feature-poweroff.
func (ts *toolstack) waitFeature(t *testing.T, d xenctrl.Domid) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testCtx(t), time.Minute)
	defer cancel()
	for {
		v, err := ts.xs.Read(ctx, fmt.Sprintf("/local/domain/%d/control/feature-poweroff", d))
		if err == nil && string(v) == "1" {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("guest %d never wrote feature-poweroff", d)
		case <-time.After(2 * time.Millisecond):
		}
	}
}
