// Package harness builds the real xenopsd-ng and xopsctl binaries and runs
// the daemon on the simulated hypervisor for end-to-end tests and
// benchmarks: each Daemon lives in its own temporary directory (socket, state
// directory, sim host directory) and is stopped, with its sim host, when the
// test ends.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/xenopsd-ng/xenopsd-ng/simhost"
)

// Binaries are the built commands.
type Binaries struct {
	Daemon string // xenopsd-ng
	CLI    string // xopsctl
}

// moduleRoot finds the directory of the module's go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the xenopsd-ng module (go env GOMOD is empty)")
	}
	return filepath.Dir(mod), nil
}

// Build compiles cmd/xenopsd-ng and cmd/xopsctl into dir. Call it once per
// test binary (TestMain): it takes seconds.
func Build(dir string) (*Binaries, error) {
	root, err := moduleRoot()
	if err != nil {
		return nil, err
	}
	b := &Binaries{Daemon: filepath.Join(dir, "xenopsd-ng"), CLI: filepath.Join(dir, "xopsctl")}
	for out, pkg := range map[string]string{b.Daemon: "./cmd/xenopsd-ng", b.CLI: "./cmd/xopsctl"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		if msg, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build %s: %v\n%s", pkg, err, msg)
		}
	}
	return b, nil
}

// Daemon is one xenopsd-ng --backend=sim process (restartable on the same
// directories) and the sim host it started.
type Daemon struct {
	t        testing.TB
	bin      *Binaries
	Dir      string
	Socket   string
	StateDir string
	SimDir   string
	Args     []string // extra daemon arguments

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	logFile *os.File
	starts  int
}

// maxSocketPath is sun_path's size less its terminating NUL.
const maxSocketPath = 107

// NewDaemon prepares a daemon in a new temporary directory and arranges for
// it and its sim host to be stopped when the test ends. Call Start to run it.
func NewDaemon(t testing.TB, bin *Binaries, extraArgs ...string) *Daemon {
	t.Helper()
	dir := t.TempDir()
	if len(filepath.Join(dir, "state", "sim", "xenstored.sock")) > maxSocketPath {
		// Long test names make long temp dirs; unix socket paths are short.
		var err error
		if dir, err = os.MkdirTemp("", "xo"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	d := &Daemon{
		t: t, bin: bin, Dir: dir,
		Socket:   filepath.Join(dir, "xenopsd.sock"),
		StateDir: filepath.Join(dir, "state"),
		SimDir:   filepath.Join(dir, "state", "sim"),
		Args:     extraArgs,
	}
	t.Cleanup(d.cleanup)
	return d
}

// StartDaemon is NewDaemon followed by Start.
func StartDaemon(t testing.TB, bin *Binaries, extraArgs ...string) *Daemon {
	t.Helper()
	d := NewDaemon(t, bin, extraArgs...)
	d.Start()
	return d
}

// Start runs the daemon and waits (bounded) until its gRPC health service
// says SERVING.
func (d *Daemon) Start() {
	d.t.Helper()
	d.mu.Lock()
	if d.cmd != nil {
		d.mu.Unlock()
		d.t.Fatal("harness: daemon already running")
	}
	d.starts++
	logPath := filepath.Join(d.Dir, fmt.Sprintf("daemon-%d.log", d.starts))
	lf, err := os.Create(logPath)
	if err != nil {
		d.mu.Unlock()
		d.t.Fatal(err)
	}
	args := append([]string{"--backend=sim", "--socket", d.Socket, "--state-dir", d.StateDir}, d.Args...)
	cmd := exec.Command(d.bin.Daemon, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		d.mu.Unlock()
		lf.Close()
		d.t.Fatalf("harness: starting %s: %v", d.bin.Daemon, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	d.cmd, d.exited, d.logFile = cmd, exited, lf
	d.mu.Unlock()

	if err := d.waitServing(60 * time.Second); err != nil {
		d.t.Fatalf("harness: daemon did not become ready: %v\n--- daemon log:\n%s", err, d.Log())
	}
}

func (d *Daemon) waitServing(limit time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var last error
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("daemon exited during start-up: %v", d.cmd.ProcessState)
		default:
		}
		if _, err := os.Stat(d.Socket); err == nil {
			last = d.checkHealth(ctx)
			if last == nil {
				return nil
			}
		} else {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not serving after %v: %v", limit, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (d *Daemon) checkHealth(ctx context.Context) error {
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health: %v", resp.GetStatus())
	}
	return nil
}

// Pid is the running daemon's process id.
func (d *Daemon) Pid() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cmd == nil {
		return 0
	}
	return d.cmd.Process.Pid
}

// Kill sends SIGKILL (a crash) and waits for the process to go.
func (d *Daemon) Kill() { d.t.Helper(); d.signalAndWait(syscall.SIGKILL, 10*time.Second) }

// Stop sends SIGTERM (an orderly stop) and waits, bounded, for the process
// to exit; it kills it if it does not.
func (d *Daemon) Stop() {
	d.t.Helper()
	if !d.signalAndWait(syscall.SIGTERM, 60*time.Second) {
		d.t.Errorf("harness: daemon did not exit within 60s of SIGTERM; killed\n--- daemon log:\n%s", d.Log())
		d.signalAndWait(syscall.SIGKILL, 10*time.Second)
	}
}

// signalAndWait signals the daemon and waits up to limit for it to exit;
// false if it did not.
func (d *Daemon) signalAndWait(sig syscall.Signal, limit time.Duration) bool {
	d.mu.Lock()
	cmd, exited := d.cmd, d.exited
	d.mu.Unlock()
	if cmd == nil {
		return true
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(limit):
		return false
	}
	d.mu.Lock()
	d.cmd = nil
	if d.logFile != nil {
		d.logFile.Close()
		d.logFile = nil
	}
	d.mu.Unlock()
	return true
}

// Log returns everything the daemon wrote in all its runs.
func (d *Daemon) Log() string {
	var b bytes.Buffer
	for i := 1; i <= d.starts; i++ {
		data, err := os.ReadFile(filepath.Join(d.Dir, fmt.Sprintf("daemon-%d.log", i)))
		if err != nil {
			continue
		}
		fmt.Fprintf(&b, "--- run %d\n%s", i, data)
	}
	return b.String()
}

func (d *Daemon) cleanup() {
	d.Stop()
	if d.t.Failed() && d.starts > 0 {
		log := d.Log()
		if len(log) > 64<<10 {
			log = "...\n" + log[len(log)-64<<10:]
		}
		d.t.Logf("daemon log (%s):\n%s", d.Dir, log)
	}
	d.StopSimHost()
}

// StartSimHost starts the simulated machine before the daemon, with
// `xenopsd-ng sim-host --dir SimDir` plus args (e.g. "--memory", "64G"), and
// waits (bounded) until it answers; the daemon then adopts it instead of
// starting its own with default size.
func (d *Daemon) StartSimHost(args ...string) {
	d.t.Helper()
	if err := os.MkdirAll(d.SimDir, 0o700); err != nil {
		d.t.Fatal(err)
	}
	lf, err := os.Create(filepath.Join(d.Dir, "sim-host.log"))
	if err != nil {
		d.t.Fatal(err)
	}
	defer lf.Close()
	cmd := exec.Command(d.bin.Daemon, append([]string{"sim-host", "--dir", d.SimDir}, args...)...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		d.t.Fatalf("harness: starting the sim host: %v", err)
	}
	go cmd.Wait()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := simhost.Dial(ctx, d.SimDir)
		cancel()
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("harness: the sim host did not answer within 30s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// StopSimHost asks the sim host (which outlives the daemon, as Xen does) to
// exit. Harmless when none is running.
func (d *Daemon) StopSimHost() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := simhost.Dial(ctx, d.SimDir)
	if err != nil {
		return
	}
	defer c.Close()
	if err := c.Stop(ctx); err != nil {
		d.t.Logf("harness: stopping the sim host in %s: %v", d.SimDir, err)
	}
}

// Conn is a new gRPC connection to the daemon, closed when the test ends.
func (d *Daemon) Conn() *grpc.ClientConn {
	d.t.Helper()
	conn, err := grpc.NewClient("unix://"+d.Socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { conn.Close() })
	return conn
}

// Sim connects to the sim host: the "hardware" under the daemon, for
// checking what the hypervisor really holds and for guest controls.
func (d *Daemon) Sim() *simhost.Client {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := simhost.Dial(ctx, d.SimDir)
	if err != nil {
		d.t.Fatalf("harness: dialling the sim host in %s: %v", d.SimDir, err)
	}
	d.t.Cleanup(func() { c.Close() })
	return c
}

// Result is one xopsctl run.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// CLI runs xopsctl against this daemon (bounded: 2 minutes).
func (d *Daemon) CLI(args ...string) Result {
	d.t.Helper()
	return RunCLI(d.t, d.bin, d.Socket, args...)
}

// RunCLI runs xopsctl with --socket socket.
func RunCLI(t testing.TB, bin *Binaries, socket string, args ...string) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin.CLI, append([]string{"--socket", socket}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := Result{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.Code = ee.ExitCode()
	default:
		t.Fatalf("running xopsctl %v: %v", args, err)
	}
	return r
}

// RSS is the process's resident set size in bytes (/proc/PID/status VmRSS).
func RSS(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb); err != nil {
				return 0, fmt.Errorf("parsing VmRSS %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
