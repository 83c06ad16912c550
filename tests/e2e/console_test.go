package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// lockedBuffer is a bytes.Buffer safe for a writer and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCLIConsole drives `xopsctl vm console` against the daemon on the
// simulator: following a VM shows its guest's boot marker, survives a
// daemon restart and a guest reboot (no byte lost or repeated), and ends by
// itself when the VM shuts down; afterwards the log stays readable
// (post-mortem, --tail); errors name what is missing.
func TestCLIConsole(t *testing.T) {
	bins := binaries(t)
	d := harness.StartDaemon(t, bins)
	cli(t, d, "vm", "create", "--name", "con-e2e", "--memory", "64M")
	cli(t, d, "vm", "start", "con-e2e")
	logPath := filepath.Join(d.SimDir, simhost.ConsoleDir, "guest-con-e2e.log")

	ctx := testCtx(t, 2*time.Minute)
	var out, errOut lockedBuffer
	cmd := exec.CommandContext(ctx, bins.CLI, "--socket", d.Socket, "vm", "console", "con-e2e", "--follow")
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-exited
		}
	}()
	waitOutput := func(what string, n int) {
		t.Helper()
		for strings.Count(out.String(), what) < n {
			select {
			case err := <-exited:
				t.Fatalf("vm console --follow exited (%v) before %d× %q\nstdout: %s\nstderr: %s", err, n, what, out.String(), errOut.String())
			case <-ctx.Done():
				t.Fatalf("no %d× %q from vm console --follow\nstdout: %s\nstderr: %s", n, what, out.String(), errOut.String())
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	waitOutput(simhost.BootMarker, 1)

	// The daemon restarts while the console is followed: the CLI resumes
	// from the next unprinted byte.
	d.Stop()
	d.Start()
	// The guest reboots (on_reboot: restart): a new domain of the same VM,
	// logged to the same file, followed without a break.
	cli(t, d, "vm", "reboot", "con-e2e")
	waitOutput(simhost.BootMarker, 2)
	waitOutput("reboot: Restarting system\n", 1)

	// Ctrl-C ends a follow, successfully.
	intr := exec.CommandContext(ctx, bins.CLI, "--socket", d.Socket, "vm", "console", "con-e2e", "-f", "--tail", "100")
	var intrOut lockedBuffer
	intr.Stdout = &intrOut
	if err := intr.Start(); err != nil {
		t.Fatal(err)
	}
	for !strings.Contains(intrOut.String(), "\n") && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	if err := intr.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := intr.Wait(); err != nil {
		t.Errorf("vm console -f after Ctrl-C: %v, want exit 0", err)
	}

	// A clean shutdown ends the follow by itself, successfully.
	cli(t, d, "vm", "shutdown", "con-e2e")
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("vm console --follow: %v\nstderr: %s", err, errOut.String())
		}
	case <-ctx.Done():
		t.Fatalf("vm console --follow did not end after shutdown\nstdout: %s\nstderr: %s", out.String(), errOut.String())
	}
	if !strings.Contains(errOut.String(), "console closed") {
		t.Errorf("stderr does not say the console closed: %q", errOut.String())
	}
	logged, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != string(logged) {
		t.Fatalf("followed output differs from the console log\nfollowed: %q\nlog:      %q", got, logged)
	}
	if !strings.HasSuffix(string(logged), "reboot: Power down\n") {
		t.Errorf("log does not end with the guest's power-down line: %q", logged)
	}

	// Post-mortem: the halted VM's console is still there.
	if got := cli(t, d, "vm", "console", "con-e2e"); got != string(logged) {
		t.Errorf("vm console after halt printed %q, want the log %q", got, logged)
	}
	if got := cli(t, d, "vm", "console", "con-e2e", "--tail", "19"); got != string(logged[len(logged)-19:]) {
		t.Errorf("vm console --tail 19 printed %q", got)
	}

	// Errors: an unknown VM, a VM that never ran, bad flags.
	if r := d.CLI("vm", "console", "nosuch"); r.Code != 1 || !strings.Contains(r.Stderr, "NOT_FOUND") {
		t.Errorf("console of an unknown VM: exit %d, stderr %q", r.Code, r.Stderr)
	}
	cli(t, d, "vm", "create", "--name", "never-ran", "--memory", "64M")
	if r := d.CLI("vm", "console", "never-ran"); r.Code != 1 || !strings.Contains(r.Stderr, "no console log") {
		t.Errorf("console of a VM that never ran: exit %d, stderr %q", r.Code, r.Stderr)
	}
	if r := d.CLI("vm", "console", "con-e2e", "--tail", "1", "--offset", "1"); r.Code != 2 {
		t.Errorf("--tail with --offset: exit %d, want 2; stderr %q", r.Code, r.Stderr)
	}
}
