package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/metrics"
	"github.com/xenopsd-ng/xenopsd-ng/store"
)

// runDaemon runs the daemon until ctx ends, then drains and returns nil.
// ready, if not nil, is called once the API is being served, with the
// addresses served (the socket path, then the TCP address if any).
func runDaemon(ctx context.Context, cfg config, log *slog.Logger, ready func(addrs []string)) error {
	log.Info("xenopsd-ng starting", "version", daemonVersion(), "backend", cfg.backend,
		"socket", cfg.socket, "state_dir", cfg.stateDir, "workers", cfg.workers, "console_log_dir", cfg.consoleLogDir,
		"memory_limit", (*byteSize)(&cfg.memoryLimit).String())
	// The backend comes first: a daemon that cannot reach its hypervisor
	// leaves no state directory behind.
	be, err := openBackend(ctx, cfg, log)
	if err != nil {
		return err
	}
	// Until the API is served, a failure also undoes what opening the
	// backend set up for this run alone (a sim host it started).
	serving := false
	defer func() { be.close(!serving) }()

	unlock, err := lockStateDir(cfg.stateDir)
	if err != nil {
		return err
	}
	defer unlock()

	dm := newDaemonMetrics(cfg)
	dm.countXenstore(be.xs)
	st, err := store.OpenWithOptions(filepath.Join(cfg.stateDir, "db"), store.Options{Logger: log.With("component", "store"), OnCommit: dm.onCommit()})
	if err != nil {
		return fmt.Errorf("open state database: %w", err)
	}
	defer closeStore(st, log)

	mgr, err := domain.New(ctx, domain.Config{
		Hypervisor:  be.hv,
		Xenstore:    be.xs,
		Store:       st,
		Builder:     be.builder,
		Devices:     be.devices,
		Workers:     cfg.workers,
		Logger:      log.With("component", "domain"),
		OnOperation: dm.onOperation(),
	})
	if err != nil {
		return fmt.Errorf("start VM manager: %w", err)
	}

	// The host's and the VMs' metrics, for the metrics listener and the
	// API's StatsService alike.
	collector := metrics.NewCollector(be.hv, mgr, metrics.CollectorOptions{Logger: log.With("component", "metrics"), Devices: be.devices})
	ms, err := serveMetrics(cfg, dm, collector, metrics.NewQueueDepth(mgr), log)
	if err != nil {
		closeManager(mgr, cfg.drainTimeout, log)
		return err
	}
	api, err := serveAPI(cfg, mgr, dm, collector, log)
	if err != nil {
		ms.stop()
		closeManager(mgr, cfg.drainTimeout, log)
		return err
	}
	serving = true
	if ready != nil {
		ready(api.addrs())
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping: signal received; no new requests, draining tasks", "drain_timeout", cfg.drainTimeout)
	case runErr = <-api.failed():
		log.Error("stopping: API server failed", "err", runErr)
	case runErr = <-ms.failed():
		log.Error("stopping: metrics server failed", "err", runErr)
	}
	api.stop(func() { closeManager(mgr, cfg.drainTimeout, log) })
	ms.stop()
	log.Info("xenopsd-ng stopped")
	return runErr
}

// closeManager stops the VM manager, letting in-flight tasks finish until the
// drain deadline; the rest are recorded as interrupted.
func closeManager(mgr *domain.Manager, drain time.Duration, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	if err := mgr.Close(ctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Error("close VM manager", "err", err)
	}
}

func closeStore(st *store.Store, log *slog.Logger) {
	if err := st.Close(); err != nil {
		log.Error("close state database", "err", err)
	}
}
