package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// failStart runs the daemon with args, expecting start-up to fail.
func failStart(t *testing.T, args ...string) error {
	t.Helper()
	cfg, err := parseFlags(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = runDaemon(ctx, cfg, testLogger(t), func([]string) { t.Error("the daemon served") })
	if err == nil {
		t.Fatal("the daemon started")
	}
	return err
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// notASocket returns a path where the API socket cannot be made: serving
// the API, the last step of start-up, fails.
func notASocket(t *testing.T, dir string) string {
	path := filepath.Join(dir, "api.sock")
	if err := os.WriteFile(path, []byte("a file"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func simHostAnswers(dir string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := simhost.Dial(ctx, dir)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestFailedStartStopsTheSimHostItStarted(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	simDir := filepath.Join(state, "sim")
	t.Cleanup(func() { stopSimHost(t, simDir) })
	err := failStart(t, "--backend=sim", "--socket", notASocket(t, dir), "--state-dir", state)
	if !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("start-up failed with %v, want the socket error", err)
	}
	if simHostAnswers(simDir) {
		t.Fatal("the sim host this start started is still running")
	}
	if _, err := os.Stat(filepath.Join(simDir, simhost.PIDFile)); !os.IsNotExist(err) {
		t.Fatalf("sim host pid file: %v, want none", err)
	}
}

func TestFailedStartKeepsARunningSimHost(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	simDir := filepath.Join(state, "sim")
	t.Cleanup(func() { stopSimHost(t, simDir) })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	hc, err := simhost.Ensure(ctx, simDir, []string{os.Args[0], "sim-host", "--dir", simDir, "--idle-timeout", "10m"})
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	d, err := hc.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
	if err != nil {
		t.Fatal(err)
	}

	failStart(t, "--backend=sim", "--socket", notASocket(t, dir), "--state-dir", state)
	if _, err := hc.DomainInfo(ctx, d); err != nil {
		t.Fatalf("domain %d of the sim host that was running: %v", d, err)
	}
}

func TestStateDirLockNamesTheHolder(t *testing.T) {
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	unlock, err := lockStateDir(state)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	err = failStart(t, "--backend=sim", "--socket", filepath.Join(dir, "api.sock"), "--state-dir", state)
	want := fmt.Sprintf("in use by pid %d (%s", os.Getpid(), os.Args[0])
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("second daemon on %s: %v; want it to say %q", state, err, want)
	}
	if simHostAnswers(filepath.Join(state, "sim")) {
		t.Fatal("a daemon refused the state directory started a sim host")
	}
	// Released, the directory is free again.
	unlock()
	unlock2, err := lockStateDir(state)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}
