// Command xenopsd-ng is the Xen host daemon: it owns domain lifecycle below
// the pool manager and serves the xenopsd.v1 gRPC API on a unix socket (and
// optionally on TCP with TLS).
//
//	xenopsd-ng --backend=sim|xen --socket PATH --state-dir DIR [--sim-dir DIR]
//	           [--listen HOST:PORT (--tls-cert F --tls-key F (--tls-client-ca F | --insecure-no-client-cert)
//	                                | --insecure-listen on a loopback HOST)]
//	           [--workers N] [--log-level debug|info|warn|error] [--log-format text|json]
//	           [--drain-timeout D] [--memory-limit SIZE (default 64M; 0: none)]
//	xenopsd-ng sim-host --dir DIR [--memory 16G] [--cpus 8] [--bridges xenbr0]
//
// With --backend=sim the daemon talks to a simulated machine (package
// simhost), starting it as `xenopsd-ng sim-host --dir <sim-dir>` if none is
// running; that process outlives the daemon as a Xen host outlives its
// toolstack. With --backend=xen it needs /dev/xen/privcmd and never falls
// back to the simulator. One daemon at a time uses a state directory (it
// flocks <state-dir>/xenopsd-ng.lock; a second one is told the holder's pid).
//
// Exit status: 0 after a clean stop (SIGTERM or SIGINT), 2 for a bad command
// line, 3 when the chosen backend is not usable on this machine, 1 for any
// other failure.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/simhost"
)

// version is set at link time (-ldflags "-X main.version=v1.2.3"); when not,
// it comes from the build info.
var version = ""

// Exit codes.
const (
	exitOK        = 0
	exitFailure   = 1
	exitUsage     = 2
	exitNoBackend = 3
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// run is main without the process: it returns the exit status.
func run(ctx context.Context, args []string, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "sim-host" {
		if err := simhost.RunCommand(ctx, args[1:]); err != nil {
			fmt.Fprintf(stderr, "xenopsd-ng sim-host: %v\n", err)
			return exitFailure
		}
		return exitOK
	}
	cfg, err := parseFlags(args, stderr)
	if errors.Is(err, errHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "xenopsd-ng: %v\n", err)
		return exitUsage
	}
	if cfg.showVersion {
		fmt.Fprintln(stderr, daemonVersion())
		return exitOK
	}
	logger, err := newLogger(cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "xenopsd-ng: %v\n", err)
		return exitUsage
	}
	if cfg.memoryLimit != 0 {
		// Process-wide, hence here and not in runDaemon (which tests run
		// in their own process).
		debug.SetMemoryLimit(int64(min(cfg.memoryLimit, math.MaxInt64)))
	}
	if err := runDaemon(ctx, cfg, logger, nil); err != nil {
		logger.Error("xenopsd-ng failed", "err", err)
		var be *backendError
		if errors.As(err, &be) {
			return exitNoBackend
		}
		return exitFailure
	}
	return exitOK
}

// daemonVersion is the version reported by GetHost and --version.
func daemonVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	return v
}
