package simhost

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/internal/bytesize"
)

// DefaultEnsureWait bounds how long Ensure waits for a host it started when
// ctx has no deadline.
const DefaultEnsureWait = 30 * time.Second

// Ensure returns a client of the sim host serving dir, starting one with
// command if nothing answers. The new host runs detached: in its own
// session, stdin from /dev/null, stdout and stderr appended to
// <dir>/simhost.log, so it outlives the caller as a Xen host outlives its
// toolstack. Ensure waits until the host answers, ctx ends, or
// DefaultEnsureWait passes (when ctx has no deadline), and reports the log's
// tail if the host exits first. The client's Started says whether this
// call started the host.
func Ensure(ctx context.Context, dir string, command []string) (*Client, error) {
	if c, err := Dial(ctx, dir); err == nil {
		return c, nil
	}
	if len(command) == 0 {
		return nil, errors.New("simhost: Ensure: no sim host answers and no command to start one")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("simhost: create dir: %w", err)
	}
	logPath := filepath.Join(dir, LogFile)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("simhost: open log: %w", err)
	}
	defer logf.Close()
	devnull, err := os.Open(os.DevNull)
	if err != nil {
		return nil, err
	}
	defer devnull.Close()
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = devnull, logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("simhost: start %q: %w", command, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reap it if it dies while we live

	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultEnsureWait)
		defer cancel()
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if c, err := Dial(ctx, dir); err == nil {
			// Another Ensure may have won the race for the directory.
			c.started = c.PID() == cmd.Process.Pid
			return c, nil
		}
		select {
		case err := <-exited:
			// Another Ensure may have won the race for the directory.
			if c, derr := Dial(ctx, dir); derr == nil {
				return c, nil
			}
			return nil, fmt.Errorf("simhost: %q exited before answering (%v); log tail:\n%s", command, err, tail(logPath, 2048))
		case <-ctx.Done():
			return nil, fmt.Errorf("simhost: %q did not answer on %s: %w", command, filepath.Join(dir, HypervisorSocket), ctx.Err())
		case <-tick.C:
		}
	}
}

func tail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		_, _ = f.Seek(st.Size()-n, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}

// RunCommand parses a sim-host command line (--dir DIR [--memory 16G]
// [--cpus 8] [--idle-timeout 1h] [--no-guests] [--bridges xenbr0,...]
// [--cpu-profile FILE]) and
// runs the host until
// ctx ends, SIGTERM or SIGINT arrives, it is stopped, or it idles out.
// Logs go to stderr.
func RunCommand(ctx context.Context, args []string) error {
	ctx, cancel := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	fs := flag.NewFlagSet("sim-host", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory for the sockets, pid file and lock (required)")
	mem := fs.String("memory", "16G", "host memory (bytes, or with suffix K, M, G, T)")
	cpus := fs.Uint("cpus", 8, "physical CPUs")
	idle := fs.Duration("idle-timeout", DefaultIdleTimeout, "exit after this long with no client (negative: never)")
	noGuests := fs.Bool("no-guests", false, "run no simulated guests")
	bridgeList := fs.String("bridges", strings.Join(DefaultBridges, ","), "dom0's network bridges, comma-separated (\"\": none)")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	cpuProfile := fs.String("cpu-profile", "", "write the host process's CPU profile (go tool pprof) to this file when it exits")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("sim-host: --dir is required")
	}
	total, err := bytesize.Parse(*mem)
	if err == nil && total == 0 {
		err = errors.New("must be more than 0")
	}
	if err != nil {
		return fmt.Errorf("sim-host: --memory: %w", err)
	}
	if *cpus == 0 || *cpus > 4096 {
		return fmt.Errorf("sim-host: --cpus %d: want 1..4096", *cpus)
	}
	bridges, err := parseBridges(*bridgeList)
	if err != nil {
		return fmt.Errorf("sim-host: --bridges: %w", err)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("sim-host: --log-level: %w", err)
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return fmt.Errorf("sim-host: --cpu-profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("sim-host: --cpu-profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	return Run(ctx, Config{
		Dir:         *dir,
		TotalMemory: total,
		NrCPUs:      uint32(*cpus),
		IdleTimeout: *idle,
		NoGuests:    *noGuests,
		Bridges:     bridges,
		Logger:      slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv})),
	})
}

// parseBridges reads a comma-separated list of interface names (at most 15
// bytes, IFNAMSIZ, without '/', ':' or blanks, as Linux requires).
func parseBridges(list string) ([]string, error) {
	bridges := []string{}
	for _, b := range strings.Split(list, ",") {
		b = strings.TrimSpace(b)
		if b == "" {
			continue
		}
		if len(b) > 15 || b == "." || b == ".." || strings.ContainsAny(b, "/: \t\n") {
			return nil, fmt.Errorf("%q is not an interface name", b)
		}
		bridges = append(bridges, b)
	}
	return bridges, nil
}
