package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/builder"
	"github.com/xenopsd-ng/xenopsd-ng/console"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/service"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/store"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// backendError marks a failure to reach the chosen hypervisor backend
// (exit status 3).
type backendError struct{ err error }

func (e *backendError) Error() string { return e.err.Error() }
func (e *backendError) Unwrap() error { return e.err }

// startTimeout bounds start-up steps that wait for another process (the
// sim host, xenstored).
const startTimeout = 60 * time.Second

// stopGrace is how long open RPCs (event watches, waits) get to finish
// after the manager has closed, before they are cut.
const stopGrace = 2 * time.Second

// backend is an open hypervisor and xenstore connection.
type backend struct {
	hv      xenctrl.Hypervisor
	xs      *xenstore.Client
	builder domain.Builder // nil: domain.EmptyBuilder (the simulator's guests)
	close   func()
}

// xenBuilder builds VMs on real Xen: a VM with a kernel through the domain
// builder (PV or PVH by type), a VM without one as an empty domain that has
// memory but no guest, hence no xenstore or console ring to introduce.
type xenBuilder struct {
	guest domain.Builder
	empty domain.EmptyBuilder
}

func (b xenBuilder) Build(ctx context.Context, d xenctrl.Domid, spec domain.Spec) (domain.BuildResult, error) {
	if spec.Kernel != "" {
		return b.guest.Build(ctx, d, spec)
	}
	if _, err := b.empty.Build(ctx, d, spec); err != nil {
		return domain.BuildResult{}, err
	}
	return domain.BuildResult{}, nil
}

// openBackend connects to the hypervisor the command line asks for. It never
// falls back from xen to sim.
func openBackend(ctx context.Context, cfg config, log *slog.Logger) (*backend, error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	switch cfg.backend {
	case "sim":
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find own executable to start the sim host: %w", err)
		}
		hc, err := simhost.Ensure(ctx, cfg.simDir, []string{exe, "sim-host", "--dir", cfg.simDir})
		if err != nil {
			return nil, &backendError{fmt.Errorf("--backend=sim: sim host in %s: %w", cfg.simDir, err)}
		}
		xs, err := xenstore.Dial(ctx, hc.XenstoredPath())
		if err != nil {
			hc.Close()
			return nil, &backendError{fmt.Errorf("--backend=sim: xenstored of the sim host: %w", err)}
		}
		log.Info("sim backend", "sim_dir", cfg.simDir, "sim_host_pid", hc.PID())
		return &backend{hv: hc, xs: xs, close: func() { xs.Close(); hc.Close() }}, nil
	case "xen":
		x, err := xenctrl.Open(log)
		if err != nil {
			return nil, &backendError{fmt.Errorf("--backend=xen: %w (xenopsd-ng does not fall back to the simulator; run with --backend=sim on a machine without Xen)", err)}
		}
		xs, err := xenstore.Dial(ctx, "")
		if err != nil {
			x.Close()
			return nil, &backendError{fmt.Errorf("--backend=xen: connect to xenstored: %w", err)}
		}
		return &backend{hv: x, xs: xs, builder: xenBuilder{
			guest: builder.New(x, builder.Config{Logger: log.With("component", "builder")}),
			empty: domain.EmptyBuilder{Hypervisor: x},
		},
			close: func() { xs.Close(); x.Close() }}, nil
	}
	return nil, fmt.Errorf("unknown backend %q", cfg.backend)
}

// runDaemon runs the daemon until ctx ends, then drains and returns nil.
// ready, if not nil, is called once the API is being served, with the
// addresses served (the socket path, then the TCP address if any).
func runDaemon(ctx context.Context, cfg config, log *slog.Logger, ready func(addrs []string)) error {
	log.Info("xenopsd-ng starting", "version", daemonVersion(), "backend", cfg.backend,
		"socket", cfg.socket, "state_dir", cfg.stateDir, "workers", cfg.workers, "console_log_dir", cfg.consoleLogDir)
	be, err := openBackend(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer be.close()
	if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	hvVersion, err := be.hv.Version(ctx)
	if err != nil {
		return &backendError{fmt.Errorf("%s backend: hypervisor version: %w", cfg.backend, err)}
	}
	log.Info("hypervisor", "kind", be.hv.Kind(), "version", hvVersion.String())

	st, err := store.Open(filepath.Join(cfg.stateDir, "db"), log.With("component", "store"))
	if err != nil {
		return fmt.Errorf("open state database: %w", err)
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("close state database", "err", err)
		}
	}()
	mgr, err := domain.New(ctx, domain.Config{
		Hypervisor: be.hv,
		Xenstore:   be.xs,
		Store:      st,
		Builder:    be.builder,
		Workers:    cfg.workers,
		Logger:     log.With("component", "domain"),
	})
	if err != nil {
		return fmt.Errorf("start VM manager: %w", err)
	}
	managerClosed := false
	defer func() {
		if !managerClosed {
			closeManager(mgr, cfg.drainTimeout, log)
		}
	}()

	api := service.New(mgr, service.Options{Version: daemonVersion(), Logger: log.With("component", "api"),
		Console: &console.Logs{Dir: cfg.consoleLogDir}})
	healthSrv := health.NewServer()
	newServer := func(opts ...grpc.ServerOption) *grpc.Server {
		apiLog := log.With("component", "grpc")
		opts = append(opts, grpc.ChainUnaryInterceptor(service.UnaryLogger(apiLog)),
			grpc.ChainStreamInterceptor(service.StreamLogger(apiLog)))
		s := grpc.NewServer(opts...)
		api.Register(s)
		healthpb.RegisterHealthServer(s, healthSrv)
		reflection.Register(s)
		return s
	}

	type serving struct {
		srv  *grpc.Server
		l    net.Listener
		name string
	}
	var servers []serving
	ul, removeSocket, err := listenUnix(cfg.socket)
	if err != nil {
		return err
	}
	defer removeSocket()
	servers = append(servers, serving{newServer(), ul, cfg.socket})
	if cfg.listen != "" {
		var opts []grpc.ServerOption
		if !cfg.insecureListen {
			creds, err := serverTLS(cfg)
			if err != nil {
				ul.Close()
				return err
			}
			opts = append(opts, grpc.Creds(creds))
		}
		tl, err := net.Listen("tcp", cfg.listen)
		if err != nil {
			ul.Close()
			return fmt.Errorf("--listen %s: %w", cfg.listen, err)
		}
		servers = append(servers, serving{newServer(opts...), tl, tl.Addr().String()})
		if cfg.insecureListen {
			log.Warn("serving the API on TCP WITHOUT TLS (--insecure-listen)", "addr", tl.Addr().String())
		}
	}

	for _, name := range []string{"", pb.HostService_ServiceDesc.ServiceName, pb.VMService_ServiceDesc.ServiceName,
		pb.TaskService_ServiceDesc.ServiceName, pb.EventService_ServiceDesc.ServiceName} {
		healthSrv.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	serveErr := make(chan error, len(servers))
	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.srv.Serve(s.l); err != nil {
				serveErr <- fmt.Errorf("serve %s: %w", s.name, err)
			}
		}()
		log.Info("serving the xenopsd.v1 API", "addr", s.name)
	}
	if ready != nil {
		addrs := make([]string, 0, len(servers))
		for _, s := range servers {
			addrs = append(addrs, s.name)
		}
		ready(addrs)
	}

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("stopping: signal received; no new requests, draining tasks", "drain_timeout", cfg.drainTimeout)
	case runErr = <-serveErr:
		log.Error("stopping: API server failed", "err", runErr)
	}
	healthSrv.Shutdown()
	stopped := make(chan struct{})
	go func() {
		// Stop accepting connections and calls; running calls may finish.
		var sw sync.WaitGroup
		for _, s := range servers {
			sw.Add(1)
			go func() { defer sw.Done(); s.srv.GracefulStop() }()
		}
		sw.Wait()
		close(stopped)
	}()
	closeManager(mgr, cfg.drainTimeout, log)
	managerClosed = true
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		log.Info("cutting open API calls (event watches, waits)")
		for _, s := range servers {
			s.srv.Stop()
		}
		<-stopped
	}
	wg.Wait()
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
