package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// simStopTimeout bounds stopping a sim host after a failed start.
const simStopTimeout = 30 * time.Second

// openSim connects to the sim host serving simDir, starting one as
// `<this executable> sim-host --dir simDir` if none answers. The host
// outlives the daemon, as a Xen host outlives its toolstack.
//
// VMs are built as on Xen (vmBuilder): the builder loads a VM's kernel and
// ramdisk into the simulated domain through the host's DomainBuildService;
// a VM without a kernel is an empty domain whose simulated guest still runs.
//
// If the daemon then fails to start, closing the backend stops the host
// only if this run started it: such a host has nothing but what this run
// did, and would otherwise linger until its idle timeout. A host that was
// already running stays: like a Xen host whose toolstack failed to come up,
// it may run the domains of VMs a previous daemon left running, and the
// next daemon re-adopts them.
func openSim(ctx context.Context, simDir string, log *slog.Logger, mem *kernel.Budget) (*backend, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable to start the sim host: %w", err)
	}
	hc, err := simhost.Ensure(ctx, simDir, []string{exe, "sim-host", "--dir", simDir})
	if err != nil {
		return nil, &backendError{fmt.Errorf("--backend=sim: sim host in %s: %w", simDir, err)}
	}
	release := func(startFailed bool) {
		if startFailed && hc.Started() {
			stopStartedSimHost(hc, log)
		}
		hc.Close()
	}
	xs, err := xenstore.Dial(ctx, hc.XenstoredPath())
	if err != nil {
		release(true)
		return nil, &backendError{fmt.Errorf("--backend=sim: xenstored of the sim host: %w", err)}
	}
	log.Info("sim backend", "sim_dir", simDir, "sim_host_pid", hc.PID(), "started_now", hc.Started())
	return &backend{
		hv:      hc,
		xs:      xs,
		builder: newVMBuilder(hc, log, true, mem),
		// The sim host plays dom0 too: its loop devices, bridges and vifs.
		devices: devices.NewPlugger(xs, hc, log.With("component", "devices")),
		close:   func(startFailed bool) { xs.Close(); release(startFailed) },
	}, nil
}

func stopStartedSimHost(hc *simhost.Client, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), simStopTimeout)
	defer cancel()
	if err := hc.Stop(ctx); err != nil {
		log.Error("start-up failed; could not stop the sim host it started", "sim_dir", hc.Dir(), "pid", hc.PID(), "err", err)
		return
	}
	log.Info("start-up failed; stopped the sim host it started", "sim_dir", hc.Dir(), "pid", hc.PID())
}
