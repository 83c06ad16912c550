package nested

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestNestedDaemonSuspend: xopsctl vm suspend / vm resume of real PVH and
// PV guests (Debian's kernel, nxmode=loop) on real Xen. The daemon asks
// the guest through control/shutdown; the guest's kernel suspends itself
// (xl list shows the domain shut down: state s), its heartbeat stops; a
// kill -9 of the daemon while it is suspended leaves it suspended; vm
// resume lets it carry on in the same domain: the heartbeat goes on from
// where it stopped (the same init process, no second GUEST-BOOTED).
func TestNestedDaemonSuspend(t *testing.T) {
	needNested(t)
	needGuest(t)
	e := newEnv(t)
	e.start()
	for _, typ := range []string{"pvh", "pv"} {
		t.Run(strings.ToUpper(typ), func(t *testing.T) { guestSuspend(t, e, typ) })
	}
}

// xlState is the State column of `xl list` for domid ("" if not listed).
func xlState(t *testing.T, domid string) string {
	t.Helper()
	out, err := run(30*time.Second, "xl", "list")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 6 && f[1] == domid {
			return f[4]
		}
	}
	return ""
}

func guestSuspend(t *testing.T, e *env, typ string) {
	name := fmt.Sprintf("nxsus%s%d", typ, os.Getpid())
	if _, err := e.ctl("vm", "create", "--name", name, "--type", typ, "--memory", "256M", "--vcpus", "1",
		"--kernel", guestKernel, "--ramdisk", guestInitrd, "--cmdline", guestCmdline); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if s := field(e.ctlJSON("vm", "get", name), "powerState", "power_state"); !strings.Contains(s, "HALTED") {
			if _, err := e.ctl("vm", "destroy", name); err != nil {
				t.Errorf("destroy: %v", err)
			}
		}
		if _, err := e.ctl("vm", "delete", name); err != nil {
			t.Errorf("vm delete: %v", err)
		}
	}()
	logPath := filepath.Join(consoleDir, "guest-"+name+".log")
	domid, from := startToMarker(t, e, name, typ, 1)
	// Linux advertises control/feature-suspend early in its boot.
	feature := "/local/domain/" + domid + "/control/feature-suspend"
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := run(30*time.Second, "xenstore-read", feature)
		if err == nil && strings.TrimSpace(string(out)) == "1" {
			break
		}
		if time.Now().After(deadline) {
			vm := e.ctlJSON("vm", "get", name)
			ls, lerr := run(30*time.Second, "xenstore-ls", "-f", "/local/domain/"+domid)
			xl, _ := run(30*time.Second, "xl", "list")
			t.Fatalf("the guest never advertised %s: %q, %v\nVM now: domid %s state %s problem %q\nxenstore (%v):\n%s\nxl list:\n%s\nconsole:\n%s",
				feature, out, err, field(vm, "domid", "domid"), field(vm, "powerState", "power_state"), field(vm, "problem", "problem"),
				lerr, tail(ls, 4000), xl, tail(readFrom(logPath, from), 4000))
		}
		time.Sleep(time.Second)
	}
	// Let a few heartbeats go by first.
	for time.Now().Before(deadline) && aliveCount(readFrom(logPath, from)) < 3 {
		time.Sleep(time.Second)
	}

	suspendAt := fileSize(logPath)
	ts := time.Now()
	out, err := e.ctl("vm", "suspend", name, "--timeout", "2m")
	if err != nil {
		t.Fatalf("vm suspend: %v\nconsole:\n%s\ndaemon log:\n%s", err, tail(readFrom(logPath, suspendAt), 3000), tail([]byte(e.logText()), 3000))
	}
	t.Logf("vm suspend took %v: %s", time.Since(ts).Round(time.Millisecond), bytes.TrimSpace(out))
	t.Logf("guest console during the suspend:\n%s", tail(readFrom(logPath, suspendAt), 2000))
	suspended := func(when string) {
		t.Helper()
		vm := e.ctlJSON("vm", "get", name)
		if d, s, sus := field(vm, "domid", "domid"), field(vm, "powerState", "power_state"), field(vm, "domainSuspended", "domain_suspended"); d != domid || !strings.Contains(s, "PAUSED") || sus != "true" {
			t.Fatalf("%s: domid %q state %q domain_suspended %q; want domain %s PAUSED and suspended", when, d, s, sus, domid)
		}
		if st := xlState(t, domid); !strings.Contains(st, "s") {
			t.Fatalf("%s: xl list state of domain %s is %q, want shut down (s)", when, domid, st)
		}
	}
	suspended("after vm suspend")
	n0 := aliveCount(readFrom(logPath, from))
	time.Sleep(3 * time.Second)
	if n1 := aliveCount(readFrom(logPath, from)); n1 != n0 {
		t.Errorf("the suspended guest's heartbeat went on: GUEST-ALIVE %d then %d", n0, n1)
	}

	// kill -9 while suspended: found suspended again.
	e.kill9()
	e.start()
	suspended("after kill -9 and restart")

	resumeAt := fileSize(logPath)
	ts = time.Now()
	out, err = e.ctl("vm", "resume", name)
	if err != nil {
		t.Fatalf("vm resume: %v\nconsole:\n%s\ndaemon log:\n%s", err, tail(readFrom(logPath, resumeAt), 3000), tail([]byte(e.logText()), 3000))
	}
	t.Logf("vm resume took %v: %s", time.Since(ts).Round(time.Millisecond), bytes.TrimSpace(out))
	vm := e.ctlJSON("vm", "get", name)
	if d, s, sus := field(vm, "domid", "domid"), field(vm, "powerState", "power_state"), field(vm, "domainSuspended", "domain_suspended"); d != domid || !strings.Contains(s, "RUNNING") || sus == "true" {
		t.Fatalf("after vm resume: domid %q state %q domain_suspended %q; want domain %s RUNNING", d, s, sus, domid)
	}
	if st := xlState(t, domid); strings.Contains(st, "s") || st == "" {
		t.Errorf("after vm resume: xl list state of domain %s is %q, want it not shut down", domid, st)
	}
	// The guest carries on: the same init's heartbeat continues past n0.
	deadline = time.Now().Add(2 * time.Minute)
	for {
		after := readFrom(logPath, resumeAt)
		if n := aliveCount(after); n > n0 {
			if bytes.Contains(readFrom(logPath, suspendAt), []byte("GUEST-BOOTED")) {
				t.Errorf("the guest booted again instead of resuming:\n%s", tail(readFrom(logPath, suspendAt), 3000))
			}
			t.Logf("resumed: heartbeat GUEST-ALIVE %d before the suspend, %d after the resume; console after the resume:\n%s", n0, n, tail(after, 1500))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no heartbeat after the resume within 2m (last before suspend %d); console:\n%s\nxl list state %q", n0, tail(readFrom(logPath, suspendAt), 4000), xlState(t, domid))
		}
		time.Sleep(time.Second)
	}
	// Still the same guest: a clean shutdown works as before.
	if _, err := e.ctl("vm", "shutdown", name, "--timeout", "2m"); err != nil {
		t.Errorf("vm shutdown after the resume: %v\nconsole:\n%s", err, tail(readFrom(logPath, resumeAt), 3000))
	}
}
