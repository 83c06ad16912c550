package nested

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The harness's guest: the Debian kernel (uncompressed ELF) and a busybox
// initramfs whose init prints GUEST-BOOTED, then (nxmode=loop) GUEST-ALIVE
// <n> every second. xenconsoled in dom0 logs each guest's console to
// /var/log/xen/console/guest-<name>.log.
const (
	guestKernel  = "/guest/vmlinux"
	guestInitrd  = "/guest/initrd.gz"
	guestCmdline = "console=hvc0 nxmode=loop"
	consoleDir   = "/var/log/xen/console"
	// guestVCPUs: the lifecycle guest (and xl's) has two vCPUs; its marker
	// line says how many the kernel brought up (cpus=N).
	guestVCPUs = 2
	// Under software CPU emulation a guest reaches its marker about 10 s
	// after the start call on a quiet machine; the bound allows for a
	// heavily loaded one.
	markerWait = 3 * time.Minute
)

func needGuest(t *testing.T) {
	t.Helper()
	for _, p := range []string{guestKernel, guestInitrd} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("guest image missing in the nested dom0: %v", err)
		}
	}
}

// run runs a dom0 command with a bound.
func run(timeout time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// xsExists reports whether a xenstore node exists (xenstore-exists).
func xsExists(t *testing.T, path string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := exec.CommandContext(ctx, "xenstore-exists", path).Run()
	if err == nil {
		return true
	}
	if _, ok := err.(*exec.ExitError); ok {
		return false
	}
	t.Fatalf("xenstore-exists %s: %v", path, err)
	return false
}

// checkGone fails unless domain domid and the VM's xenstore nodes are gone.
func checkGone(t *testing.T, what, domid, uuid string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for xlDomids(t)[domid] {
		if time.Now().After(deadline) {
			t.Errorf("%s: domain %s still listed by xl 30s later", what, domid)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	paths := []string{"/local/domain/" + domid}
	if uuid != "" {
		paths = append(paths, "/vm/"+uuid, "/xenopsd-ng/"+uuid)
	}
	for _, p := range paths {
		if xsExists(t, p) {
			t.Errorf("%s: xenstore node %s still exists", what, p)
		}
	}
}

// bootTimes is one guest start: API (or xl) call -> domain running, and
// call -> console marker.
type bootTimes struct {
	running, marker time.Duration
	attempts        int
	consoleLog      string // the guest's console log in dom0
}

// TestNestedDaemonGuests drives the harness's Debian kernel + busybox
// initramfs through xenopsd-ng's API (xopsctl) on real Xen, as a PVH and as
// a PV guest. For each type, in the same boot, it starts the same guest
// with `xl create` and reports both start times; then it kills the daemon
// -9 and checks the restarted daemon re-adopts the running guest (whose
// heartbeat goes on), shuts it down cleanly (the guest powers itself off
// on control/shutdown), lets guests power themselves off, reboot
// (on_reboot=restart builds a new domain that boots again) and crash
// (on_crash=destroy), reads the console through xopsctl (also after the
// crash), and destroys a guest mid-boot. Malformed kernels are refused,
// leaving no domain. About 1 PVH boot in 18 triple-faults under QEMU: every
// boot goes through bootRetrying (one retry after a triple fault, with xl's
// guest as the control for ours).
func TestNestedDaemonGuests(t *testing.T) {
	needNested(t)
	needGuest(t)
	e := newEnv(t)
	e.start()

	t.Run("MalformedKernel", func(t *testing.T) { malformedKernel(t, e) })
	for _, typ := range []string{"pvh", "pv"} {
		t.Run(strings.ToUpper(typ), func(t *testing.T) { guestLifecycle(t, e, typ) })
	}
}

// guestLifecycle is TestNestedDaemonGuests for one domain type.
func guestLifecycle(t *testing.T, e *env, typ string) {
	var api bootTimes
	// Every few seconds during each guest boot a fresh xopsctl process asks
	// the daemon for the VM: a dom0 process that crashes (panic, SIGSEGV)
	// while a guest boots means dom0 memory is being corrupted. Seen once
	// with the daemon's PVH guest; counted for both boots to compare.
	var apiCrash, xlCrash crashes
	defer func() {
		for _, c := range []*crashes{&apiCrash, &xlCrash} {
			if c.n > 0 {
				t.Errorf("DOM0 PROCESS CRASHES during the %s: %d of %d probes, first: %s", c.what, c.n, c.probes, c.first)
			} else if c.probes > 0 {
				t.Logf("dom0 probes during the %s: %d, no crash", c.what, c.probes)
			}
		}
	}()
	integrity := startIntegrityCheck()
	defer integrity.stop(t, typ+" guest boots")
	// xl first: the reference, and whether dom0 stays healthy while a
	// guest built by libxenguest boots.
	xl := xlBoot(t, typ, func() {
		_, err := e.ctl("vm", "list", "-o", "json")
		xlCrash.note(t, "xl guest boot", err)
	})

	name := fmt.Sprintf("nx%s%d", typ, os.Getpid())
	if _, err := e.ctl("vm", "create", "--name", name, "--type", typ, "--memory", "256M", "--vcpus", strconv.Itoa(guestVCPUs),
		"--kernel", guestKernel, "--ramdisk", guestInitrd, "--cmdline", guestCmdline); err != nil {
		t.Fatal(err)
	}
	uuid := field(e.ctlJSON("vm", "get", name), "id", "id")
	logPath := filepath.Join(consoleDir, "guest-"+name+".log")
	var domid string
	g := guestBoot{what: "the daemon's " + strings.ToUpper(typ) + " guest", typ: typ, vcpus: guestVCPUs, ours: true}
	api.attempts = bootRetrying(t, g, func(attempt int) error {
		from := fileSize(logPath)
		logFrom := len(e.logText())
		// What one xopsctl process costs by itself under emulation, to
		// read the start time against.
		tb := time.Now()
		e.ctlJSON("vm", "get", name)
		baseline := time.Since(tb)
		t0 := time.Now()
		if _, err := e.ctl("vm", "start", name); err != nil {
			t.Fatalf("vm start: %v\n%s", err, e.logText())
		}
		tRun := time.Now()
		vm := e.ctlJSON("vm", "get", name)
		domid = field(vm, "domid", "domid")
		if s := field(vm, "powerState", "power_state"); domid == "" || domid == "0" || !strings.Contains(s, "RUNNING") {
			t.Fatalf("after vm start: domid %q state %q", domid, s)
		}
		m, why := waitMarker(logPath, from, tRun.Add(markerWait), func() string {
			out, err := e.ctl("vm", "get", name, "-o", "json")
			if err != nil {
				apiCrash.note(t, "xenopsd-ng guest boot", err)
				return "" // a failed probe says nothing about the guest
			}
			vm := map[string]any{}
			if err := json.Unmarshal(out, &vm); err != nil {
				return fmt.Sprintf("vm get: not JSON: %v", err)
			}
			if d, s := field(vm, "domid", "domid"), field(vm, "powerState", "power_state"); d != domid || !strings.Contains(s, "RUNNING") {
				return fmt.Sprintf("the VM is now domid %q %s (the guest rebooted or died: triple fault?)", d, s)
			}
			return ""
		})
		if why != "" {
			t.Logf("xenopsd-ng attempt %d: %s\nconsole tail:\n%s", attempt, why, tail(readFrom(logPath, from), 1500))
			if _, err := e.ctl("vm", "destroy", name); err != nil {
				t.Logf("destroy after failed attempt: %v", err)
			}
			checkGone(t, "failed attempt", domid, uuid)
			if m.booted.IsZero() && !strings.HasPrefix(why, "no marker") {
				return died(domid, why)
			}
			return fmt.Errorf("%s (marker line %q)\n%s", why, m.line, tail([]byte(e.logText()), 3000))
		}
		if want := fmt.Sprintf("cpus=%d", guestVCPUs); !strings.Contains(m.line, want) {
			t.Errorf("the guest did not bring up all its vCPUs: marker %q, want %s", m.line, want)
		}
		// Linux checks its page tables once booted: a builder that
		// leaves writable, executable mappings behind fails here.
		if wx := wxCheck(readFrom(logPath, from)); strings.Contains(wx, "FAILED") {
			t.Errorf("the guest found writable and executable mappings: %s", wx)
		} else {
			t.Logf("xenopsd-ng's guest: %s", wx)
		}
		api = bootTimes{running: tRun.Sub(t0), marker: m.booted.Sub(t0)}
		t.Logf("xenopsd-ng: domain %s running %v after the API call, marker %v after (attempt %d): %s",
			domid, api.running.Round(time.Millisecond), api.marker.Round(time.Millisecond), attempt, m.line)
		t.Logf("an xopsctl vm get took %v; the daemon's log of the start (where the time went):\n%s",
			baseline.Round(time.Millisecond), startLog(e.logText()[logFrom:]))
		return nil
	})

	// The console through the API: what xenconsoled logged.
	if out, err := e.ctl("vm", "console", name, "--tail", "8192"); err != nil || !bytes.Contains(out, []byte("GUEST-BOOTED")) {
		t.Errorf("xopsctl vm console --tail 8192: %v; no GUEST-BOOTED in:\n%s", err, tail(out, 1000))
	}

	// Re-adoption of a real, running guest: kill -9, restart, same domain,
	// and the guest kept running (its heartbeat goes on).
	e.kill9()
	if !xlDomids(t)[domid] {
		t.Fatalf("domain %s vanished with the daemon", domid)
	}
	e.start()
	vm := e.ctlJSON("vm", "get", name)
	if d, s := field(vm, "domid", "domid"), field(vm, "powerState", "power_state"); d != domid || !strings.Contains(s, "RUNNING") {
		t.Errorf("after restart: domid %q state %q problem %q, want domid %s RUNNING", d, s, field(vm, "problem", "problem"), domid)
	}
	t.Run("heartbeat", func(t *testing.T) {
		n0 := aliveCount(readFrom(logPath, 0))
		time.Sleep(4 * time.Second)
		n1 := aliveCount(readFrom(logPath, 0))
		if n1 > n0 {
			t.Logf("re-adopted domain %s; guest heartbeat went on (GUEST-ALIVE %d -> %d)", domid, n0, n1)
			return
		}
		t.Errorf("the re-adopted guest makes no progress (GUEST-ALIVE %d then %d 4s later)", n0, n1)
		t.Logf("console of the stalled guest:\n%s", tail(readFrom(logPath, 0), 12000))
		if xl.consoleLog != "" {
			t.Logf("console of xl's guest:\n%s", tail(readFrom(xl.consoleLog, 0), 12000))
		}
		if _, err := run(30*time.Second, "xl", "debug-keys", "q"); err == nil {
			out, _ := run(30*time.Second, "xl", "dmesg", "-c")
			t.Logf("xl debug-keys q (domain and vCPU state):\n%s", tail(out, 8000))
		}
	})

	// Clean shutdown: xenopsd-ng writes control/shutdown, the guest runs
	// /sbin/poweroff and powers its domain off; no --force.
	t.Run("CleanShutdown", func(t *testing.T) {
		from := fileSize(logPath)
		logFrom := len(e.logText())
		ts := time.Now()
		out, err := e.ctl("vm", "shutdown", name, "--timeout", "2m")
		if err != nil {
			t.Errorf("vm shutdown --timeout 2m: %v\nconsole:\n%s", err, tail(readFrom(logPath, from), 3000))
		}
		t.Logf("vm shutdown took %v: %s", time.Since(ts).Round(time.Millisecond), bytes.TrimSpace(out))
		// The kernel runs /sbin/poweroff without a console: what the guest
		// printed is for the log; the shutdown code below is the evidence.
		t.Logf("guest console after the request:\n%s", tail(readFrom(logPath, from), 600))
		if s := field(e.ctlJSON("vm", "get", name), "powerState", "power_state"); !strings.Contains(s, "HALTED") {
			t.Errorf("after shutdown: state %q, want HALTED", s)
		}
		if lg := e.logText()[logFrom:]; !strings.Contains(lg, "reason=poweroff") {
			t.Errorf("the daemon did not see the domain power off; its log since the request:\n%s", tail([]byte(lg), 3000))
		}
		checkGone(t, "vm shutdown", domid, uuid)
	})

	// The guest reboots itself (nxmode=reboot: marker, one heartbeat,
	// reboot -f): on_reboot=restart builds a new domain that boots again.
	t.Run("GuestReboot", func(t *testing.T) {
		guestShutdown(t, e, typ, "reboot", func(t *testing.T, vmName, logPath string, from int64, first string) {
			deadline := time.Now().Add(markerWait)
			for time.Now().Before(deadline) {
				b := readFrom(logPath, from)
				if i := bytes.Index(b, []byte("GUEST-REBOOTING")); i >= 0 && bytes.Contains(b[i:], []byte("GUEST-BOOTED")) {
					vm := e.ctlJSON("vm", "get", vmName)
					d := field(vm, "domid", "domid")
					t.Logf("guest rebooted itself: domain %s -> %s, state %s, booted again", first, d, field(vm, "powerState", "power_state"))
					if d == first || d == "0" {
						t.Errorf("after the guest's reboot the VM has domid %s (was %s)", d, first)
					}
					checkGone(t, "rebooted domain", first, "")
					// the restart is a boot too: the daemon's on_reboot
					// restart retries one that triple-faults, unseen but
					// for Xen's console (emptied when this guest started)
					if n := bytes.Count(readXenConsole(), []byte("Triple fault")); n == 1 {
						t.Logf("NOTE: BOOT-RETRY the daemon's %s guest's restart: a domain triple-faulted after the guest's reboot; the daemon's next restart booted", strings.ToUpper(typ))
					} else if n > 1 {
						t.Errorf("%d triple faults after the guest's reboot (each restart is a retry): a builder bug", n)
					}
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
			t.Errorf("no reboot and second boot within %v; console:\n%s\ndaemon log:\n%s", markerWait, tail(readFrom(logPath, from), 3000), tail([]byte(e.logText()), 3000))
		})
	})

	// The guest powers itself off (nxmode=poweroff: marker, poweroff -f):
	// on_poweroff=destroy halts the VM.
	t.Run("GuestPoweroff", func(t *testing.T) {
		logFrom := len(e.logText())
		guestShutdown(t, e, typ, "poweroff", func(t *testing.T, vmName, logPath string, from int64, first string) {
			deadline := time.Now().Add(markerWait)
			for time.Now().Before(deadline) {
				if s := field(e.ctlJSON("vm", "get", vmName), "powerState", "power_state"); strings.Contains(s, "HALTED") {
					if !strings.Contains(e.logText()[logFrom:], "reason=poweroff") {
						t.Errorf("VM halted, but the daemon log shows no guest poweroff")
					}
					t.Logf("guest powered itself off; VM halted (on_poweroff=destroy)")
					checkGone(t, "powered-off domain", first, "")
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
			t.Errorf("the VM of a guest that powers off did not halt within %v; console:\n%s", markerWait, tail(readFrom(logPath, from), 3000))
		})
	})

	// The guest panics (nxmode=crash: sysrq c): on_crash=destroy halts it.
	t.Run("GuestCrash", func(t *testing.T) {
		guestShutdown(t, e, typ, "crash", func(t *testing.T, vmName, logPath string, from int64, first string) {
			deadline := time.Now().Add(markerWait)
			for time.Now().Before(deadline) {
				vm := e.ctlJSON("vm", "get", vmName)
				if s := field(vm, "powerState", "power_state"); strings.Contains(s, "HALTED") {
					if !strings.Contains(e.logText(), "reason=crash") {
						t.Errorf("VM halted, but the daemon log shows no crash")
					}
					t.Logf("guest crashed; VM halted (on_crash=destroy)")
					// Post-mortem: the last output outlives the domain.
					if out, err := e.ctl("vm", "console", vmName, "--tail", "16384"); err != nil || !bytes.Contains(out, []byte("GUEST-CRASHING")) {
						t.Errorf("vm console of the halted VM: %v; no GUEST-CRASHING in:\n%s", err, tail(out, 1500))
					}
					checkGone(t, "crashed domain", first, "")
					return
				}
				time.Sleep(500 * time.Millisecond)
			}
			t.Errorf("the crashing guest's VM did not halt within %v; console:\n%s", markerWait, tail(readFrom(logPath, from), 3000))
		})
	})

	// Destroy of a started guest (mid-boot is fine) frees the domain and
	// its xenstore nodes.
	if _, err := e.ctl("vm", "start", name); err != nil {
		t.Fatalf("second vm start: %v\n%s", err, e.logText())
	}
	domid2 := field(e.ctlJSON("vm", "get", name), "domid", "domid")
	if !xlDomids(t)[domid2] || !xsExists(t, "/local/domain/"+domid2+"/console/ring-ref") {
		t.Errorf("second start: domain %s not listed by xl or without console/ring-ref", domid2)
	}
	if _, err := e.ctl("vm", "destroy", name); err != nil {
		t.Fatal(err)
	}
	checkGone(t, "vm destroy", domid2, uuid)
	if _, err := e.ctl("vm", "delete", name); err != nil {
		t.Errorf("vm delete: %v", err)
	}

	ratio := func(a, b time.Duration) string { return fmt.Sprintf("%.2f", a.Seconds()/b.Seconds()) }
	t.Logf("START-TIMES %s xenopsd-ng/xl: call->running %v / %v = %s; call->marker %v / %v = %s; attempts %d / %d",
		typ, api.running.Round(time.Millisecond), xl.running.Round(time.Millisecond), ratio(api.running, xl.running),
		api.marker.Round(time.Millisecond), xl.marker.Round(time.Millisecond), ratio(api.marker, xl.marker),
		api.attempts, xl.attempts)
}

// startLog picks the lines of a daemon log about a VM start: the
// builder's phase timings, the domain's build timings, the start itself.
func startLog(lg string) string {
	var b strings.Builder
	for _, l := range strings.Split(lg, "\n") {
		if strings.Contains(l, "builder") || strings.Contains(l, "domain built") || strings.Contains(l, "VM started") {
			b.WriteString(l)
			b.WriteByte('\n')
		}
	}
	return tail([]byte(b.String()), 3000)
}

// guestShutdown creates and starts a 256 MiB VM of type typ whose guest
// runs nxmode=mode, waits for its marker, hands over to check, and
// destroys and deletes the VM.
func guestShutdown(t *testing.T, e *env, typ, mode string, check func(t *testing.T, vmName, logPath string, from int64, domid string)) {
	vmName := fmt.Sprintf("nx%s%s%d", typ, mode, os.Getpid())
	if _, err := e.ctl("vm", "create", "--name", vmName, "--type", typ, "--memory", "256M", "--vcpus", "1",
		"--kernel", guestKernel, "--ramdisk", guestInitrd, "--cmdline", "console=hvc0 nxmode="+mode); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if s := field(e.ctlJSON("vm", "get", vmName), "powerState", "power_state"); !strings.Contains(s, "HALTED") {
			if _, err := e.ctl("vm", "destroy", vmName); err != nil {
				t.Errorf("destroy: %v", err)
			}
		}
		if _, err := e.ctl("vm", "delete", vmName); err != nil {
			t.Errorf("vm delete: %v", err)
		}
	}()
	logPath := filepath.Join(consoleDir, "guest-"+vmName+".log")
	var from int64
	var domid string
	g := guestBoot{what: fmt.Sprintf("the daemon's %s guest (nxmode=%s)", strings.ToUpper(typ), mode), typ: typ, vcpus: 1, ours: true}
	bootRetrying(t, g, func(attempt int) error {
		from = fileSize(logPath)
		if _, err := e.ctl("vm", "start", vmName); err != nil {
			t.Fatalf("vm start: %v", err)
		}
		domid = field(e.ctlJSON("vm", "get", vmName), "domid", "domid")
		// the guest may halt or reboot itself once it printed its marker;
		// before it, a new domid or a halted VM means it died
		gone := func() string {
			vm := e.ctlJSON("vm", "get", vmName)
			if d, s := field(vm, "domid", "domid"), field(vm, "powerState", "power_state"); d != domid || strings.Contains(s, "HALTED") {
				return fmt.Sprintf("the VM is now domid %q %s", d, s)
			}
			return ""
		}
		_, why := waitMarker(logPath, from, time.Now().Add(markerWait), gone)
		if why == "" || bytes.Contains(readFrom(logPath, from), []byte("GUEST-BOOTED")) {
			return nil
		}
		t.Logf("attempt %d: no marker: %s; console:\n%s", attempt, why, tail(readFrom(logPath, from), 3000))
		if s := field(e.ctlJSON("vm", "get", vmName), "powerState", "power_state"); !strings.Contains(s, "HALTED") {
			if _, err := e.ctl("vm", "destroy", vmName); err != nil {
				t.Fatalf("destroy after a failed attempt: %v", err)
			}
		}
		if strings.HasPrefix(why, "no marker") {
			return errors.New(why)
		}
		return died(domid, why)
	})
	check(t, vmName, logPath, from, domid)
}

// xlBoot boots the same guest with `xl create` (same type, memory, vcpus;
// PVH with tsc_mode native, as xenopsd-ng's default), waits for its marker
// and destroys it; a triple fault is retried once (bootRetrying).
func xlBoot(t *testing.T, typ string, probe func()) bootTimes {
	t.Helper()
	var bt bootTimes
	g := guestBoot{what: "xl's " + strings.ToUpper(typ) + " guest", typ: typ, vcpus: guestVCPUs}
	bt.attempts = bootRetrying(t, g, func(attempt int) error {
		name := fmt.Sprintf("nxxl%s%d-%d", typ, os.Getpid(), attempt)
		cfg := filepath.Join(t.TempDir(), name+".cfg")
		tsc := ""
		if typ == "pvh" {
			tsc = "tsc_mode = \"native\"\n"
		}
		body := fmt.Sprintf("name = %q\ntype = %q\nkernel = %q\nramdisk = %q\nextra = %q\n"+
			"memory = 256\nmaxmem = 256\nvcpus = %d\n%son_reboot = \"destroy\"\non_crash = \"destroy\"\n",
			name, typ, guestKernel, guestInitrd, guestCmdline, guestVCPUs, tsc)
		if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		logPath := filepath.Join(consoleDir, "guest-"+name+".log")
		t0 := time.Now()
		if out, err := run(2*time.Minute, "xl", "create", cfg); err != nil {
			t.Fatalf("xl create: %v\n%s", err, out)
		}
		tRun := time.Now()
		out, err := run(30*time.Second, "xl", "domid", name)
		if err != nil {
			return died("?", fmt.Sprintf("xl domid right after xl create: %v", err))
		}
		domid := strings.TrimSpace(string(out))
		m, why := waitMarker(logPath, 0, tRun.Add(markerWait), func() string {
			probe()
			if !xlDomids(t)[domid] {
				return "domain " + domid + " gone (on_reboot/on_crash destroy: triple fault?)"
			}
			return ""
		})
		if why == "" {
			// for comparison with the daemon's guest across its restart
			n0 := aliveCount(readFrom(logPath, 0))
			time.Sleep(4 * time.Second)
			t.Logf("xl guest heartbeat over 4s: GUEST-ALIVE %d -> %d", n0, aliveCount(readFrom(logPath, 0)))
		}
		if _, err := run(time.Minute, "xl", "destroy", name); err != nil && xlDomids(t)[domid] {
			t.Errorf("xl destroy: %v", err)
		}
		if why != "" {
			t.Logf("xl attempt %d: %s\nconsole tail:\n%s", attempt, why, tail(readFrom(logPath, 0), 1500))
			if m.booted.IsZero() && !strings.HasPrefix(why, "no marker") {
				return died(domid, why)
			}
			return fmt.Errorf("%s (marker line %q)", why, m.line)
		}
		bt = bootTimes{running: tRun.Sub(t0), marker: m.booted.Sub(t0), consoleLog: logPath}
		t.Logf("xl: domain %s running %v after xl create, marker %v after (attempt %d): %s",
			domid, bt.running.Round(time.Millisecond), bt.marker.Round(time.Millisecond), attempt, m.line)
		t.Logf("xl's guest: %s", wxCheck(readFrom(logPath, 0)))
		return nil
	})
	return bt
}

// malformedKernel: a truncated copy of the guest kernel and two with lying
// headers (ELF program headers said to lie past the end of the file; a
// bzImage whose payload length runs past it) are refused at start with
// InvalidArgument naming spec.kernel, and no domain is left behind.
// Decompression bombs are refused by the same code path (kernel.Limits)
// and tested in package kernel, where a bomb is cheap to make.
func malformedKernel(t *testing.T, e *env) {
	elf, err := os.ReadFile(guestKernel)
	if err != nil {
		t.Fatal(err)
	}
	bz, err := os.ReadFile("/guest/vmlinuz")
	if err != nil {
		t.Fatal(err)
	}
	patch := func(b []byte, off int, v uint64, size int) []byte {
		b = bytes.Clone(b)
		for i := 0; i < size; i++ {
			b[off+i] = byte(v >> (8 * i))
		}
		return b
	}
	cases := []struct {
		name string
		data []byte
	}{
		{"truncated", elf[:len(elf)/3]},
		{"phoff-past-end", patch(elf, 0x20, uint64(len(elf))+4096, 8)}, // e_phoff
		{"bz-payload-past-end", patch(bz, 0x24c, uint64(len(bz)), 4)},  // payload_length
	}
	for i, c := range cases {
		bad := filepath.Join(t.TempDir(), "vmlinux-"+c.name)
		if err := os.WriteFile(bad, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("badkernel%d", i)
		before := xlDomids(t)
		if _, err := e.ctl("vm", "create", "--name", name, "--type", "pvh", "--memory", "256M",
			"--kernel", bad, "--ramdisk", guestInitrd, "--cmdline", guestCmdline); err != nil {
			t.Fatalf("vm create (the kernel is read at start, create must accept the path): %v", err)
		}
		_, err = e.ctl("vm", "start", name)
		switch {
		case err == nil:
			t.Errorf("%s: vm start succeeded", c.name)
		case !strings.Contains(err.Error(), "INVALID_ARGUMENT") || !strings.Contains(err.Error(), "spec.kernel"):
			t.Errorf("%s: the error is not InvalidArgument on spec.kernel: %v", c.name, err)
		default:
			t.Logf("%s: refused as expected: %s", c.name, tail([]byte(err.Error()), 300))
		}
		vm := e.ctlJSON("vm", "get", name)
		if s := field(vm, "powerState", "power_state"); !strings.Contains(s, "HALTED") {
			t.Errorf("%s: after a failed start: state %q, want HALTED", c.name, s)
		}
		for d := range xlDomids(t) {
			if !before[d] {
				t.Errorf("%s: domain %s left behind by the failed start (xl list)", c.name, d)
			}
		}
		if _, err := e.ctl("vm", "delete", name); err != nil {
			t.Errorf("%s: vm delete: %v", c.name, err)
		}
	}
}
