// Package nested holds the nested-Xen tests that drive the project's
// commands (xenopsd-ng, xopsctl) on real Xen. tests/nested/run builds this
// package with `go test -c` and runs it inside dom0 (NX_NESTED=1), with the
// commands on PATH; elsewhere the tests skip.
package nested

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// env is one daemon under test and the commands to drive it.
type env struct {
	t      *testing.T
	sock   string
	state  string
	daemon *exec.Cmd
	done   chan error
	log    *os.File
	args   []string // extra xenopsd-ng flags
}

func needNested(t *testing.T) (daemon, ctl string) {
	t.Helper()
	if os.Getenv("NX_NESTED") == "" {
		t.Skip("not inside the nested-Xen harness (NX_NESTED unset)")
	}
	var err error
	if daemon, err = exec.LookPath("xenopsd-ng"); err != nil {
		t.Skipf("xenopsd-ng not built into this run: %v", err)
	}
	if ctl, err = exec.LookPath("xopsctl"); err != nil {
		t.Skipf("xopsctl not built into this run: %v", err)
	}
	return daemon, ctl
}

func newEnv(t *testing.T) *env {
	dir := t.TempDir()
	return &env{t: t, sock: filepath.Join(dir, "xenopsd.sock"), state: filepath.Join(dir, "state")}
}

// start runs the daemon on real Xen and waits (bounded) until it answers.
func (e *env) start() {
	e.t.Helper()
	f, err := os.OpenFile(filepath.Join(filepath.Dir(e.sock), "daemon.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	e.log = f
	cmd := exec.Command("xenopsd-ng", append([]string{"--backend=xen", "--socket", e.sock, "--state-dir", e.state}, e.args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("start xenopsd-ng: %v", err)
	}
	e.daemon, e.done = cmd, make(chan error, 1)
	go func() { e.done <- cmd.Wait() }()
	e.t.Cleanup(e.stop)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := e.ctl("host", "info"); err == nil {
			return
		}
		select {
		case err := <-e.done:
			e.daemon = nil
			e.t.Fatalf("xenopsd-ng exited at start-up: %v\n%s", err, e.logText())
		default:
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("xenopsd-ng did not answer within 60s\n%s", e.logText())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (e *env) logText() string {
	b, _ := os.ReadFile(filepath.Join(filepath.Dir(e.sock), "daemon.log"))
	return string(b)
}

// kill9 kills the daemon without letting it clean up.
func (e *env) kill9() {
	e.t.Helper()
	if e.daemon == nil {
		return
	}
	_ = e.daemon.Process.Signal(syscall.SIGKILL)
	select {
	case <-e.done:
	case <-time.After(10 * time.Second):
		e.t.Fatal("xenopsd-ng did not die on SIGKILL")
	}
	e.daemon = nil
}

func (e *env) stop() {
	if e.daemon != nil {
		_ = e.daemon.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.done:
		case <-time.After(20 * time.Second):
			_ = e.daemon.Process.Kill()
			<-e.done
		}
		e.daemon = nil
	}
	if e.log != nil {
		e.log.Close()
	}
}

func (e *env) ctl(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "xopsctl", append([]string{"--socket", e.sock}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return out, fmt.Errorf("xopsctl %v: %v: %s", args, err, ee.Stderr)
		}
		return out, fmt.Errorf("xopsctl %v: %v", args, err)
	}
	return out, nil
}

func (e *env) ctlJSON(args ...string) map[string]any {
	e.t.Helper()
	out, err := e.ctl(append(args, "-o", "json")...)
	if err != nil {
		e.t.Fatal(err)
	}
	m := map[string]any{}
	if err := json.Unmarshal(out, &m); err != nil {
		e.t.Fatalf("xopsctl %v: not JSON: %v\n%s", args, err, out)
	}
	return m
}

// field reads a protojson field by its JSON (lowerCamel) or proto name.
func field(m map[string]any, camel, snake string) string {
	v, ok := m[camel]
	if !ok {
		v = m[snake]
	}
	switch x := v.(type) {
	case nil:
		return ""
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	default:
		return fmt.Sprint(x)
	}
}

func xlInfo(t *testing.T) map[string]string {
	t.Helper()
	out, err := exec.Command("xl", "info").Output()
	if err != nil {
		t.Fatalf("xl info: %v", err)
	}
	kv := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			kv[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return kv
}

func mib(s string) string {
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return "bad:" + s
	}
	return strconv.FormatUint(n>>20, 10)
}

// TestNestedDaemonHostInfo: `xopsctl host info` on --backend=xen shows what
// `xl info` shows.
func TestNestedDaemonHostInfo(t *testing.T) {
	needNested(t)
	e := newEnv(t)
	e.start()
	h := e.ctlJSON("host", "info")
	xl := xlInfo(t)
	t.Logf("xopsctl host info: %v", h)
	if got, want := field(h, "hypervisorVersion", "hypervisor_version"), xl["xen_major"]+"."+xl["xen_minor"]+xl["xen_extra"]; got != want {
		t.Errorf("version: xopsctl %q, xl %q", got, want)
	}
	if got := field(h, "nrCpus", "nr_cpus"); got != xl["nr_cpus"] {
		t.Errorf("nr_cpus: xopsctl %q, xl %q", got, xl["nr_cpus"])
	}
	if got := mib(field(h, "totalMemoryBytes", "total_memory_bytes")); got != xl["total_memory"] {
		t.Errorf("total memory MiB: xopsctl %q, xl %q", got, xl["total_memory"])
	}
	if got := mib(field(h, "freeMemoryBytes", "free_memory_bytes")); got != xl["free_memory"] {
		t.Errorf("free memory MiB: xopsctl %q, xl %q", got, xl["free_memory"])
	}
}

// xlDomids lists domids as xl sees them.
func xlDomids(t testing.TB) map[string]bool {
	t.Helper()
	out, err := exec.Command("xl", "list").Output()
	if err != nil {
		t.Fatalf("xl list: %v", err)
	}
	ids := map[string]bool{}
	for _, l := range strings.Split(string(out), "\n")[1:] {
		if f := strings.Fields(l); len(f) > 1 {
			ids[f[1]] = true
		}
	}
	return ids
}

// TestNestedDaemonReadopt: a VM started by the daemon keeps running when
// the daemon is killed -9, and the restarted daemon adopts its domain.
func TestNestedDaemonReadopt(t *testing.T) {
	needNested(t)
	e := newEnv(t)
	e.start()
	// An empty domain (no kernel: memory, no guest, no rings). The real
	// guest's re-adoption is checked by TestNestedDaemonGuests.
	args := []string{"vm", "create", "--name", "readopt", "--memory", "128M", "--type", "pvh"}
	if _, err := e.ctl(args...); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctl("vm", "start", "readopt"); err != nil {
		t.Fatalf("%v\n%s", err, e.logText())
	}
	vm := e.ctlJSON("vm", "get", "readopt")
	domid, state := field(vm, "domid", "domid"), field(vm, "powerState", "power_state")
	t.Logf("started: domid %s, %s", domid, state)
	if domid == "" || domid == "0" || !strings.Contains(state, "RUNNING") {
		t.Fatalf("after start: domid %q state %q", domid, state)
	}
	if !xlDomids(t)[domid] {
		t.Fatalf("xl list does not show domain %s", domid)
	}
	nBefore := len(xlDomids(t))
	e.kill9()
	if !xlDomids(t)[domid] {
		t.Fatalf("domain %s vanished with the daemon", domid)
	}
	e.start()
	vm = e.ctlJSON("vm", "get", "readopt")
	if d, s := field(vm, "domid", "domid"), field(vm, "powerState", "power_state"); d != domid || !strings.Contains(s, "RUNNING") {
		t.Errorf("after restart: domid %q state %q problem %q, want domid %s RUNNING", d, s, field(vm, "problem", "problem"), domid)
	}
	if n := len(xlDomids(t)); n != nBefore || !xlDomids(t)[domid] {
		t.Errorf("after restart xl lists %d domains (before the kill: %d), domain %s listed: %v", n, nBefore, domid, xlDomids(t)[domid])
	}
	if _, err := e.ctl("vm", "destroy", "readopt"); err != nil {
		t.Fatal(err)
	}
	checkGone(t, "vm destroy", domid, field(vm, "id", "id"))
}
