package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"

	"github.com/xenopsd-ng/xenopsd-ng/metrics"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// daemonMetrics are what --metrics-listen exports: the gRPC servers'
// metrics, the VM operations, the xenstore round trips and the store's
// commits are observed as they happen; the host's and the VMs' and the
// queue depths are read at each scrape (metrics.Collector,
// metrics.QueueDepth).
type daemonMetrics struct {
	grpc   *grpcprom.ServerMetrics
	ops    *metrics.Operations
	daemon *metrics.Daemon
}

// newDaemonMetrics returns nil without --metrics-listen: nothing is
// observed then.
func newDaemonMetrics(cfg config) *daemonMetrics {
	if cfg.metricsListen == "" {
		return nil
	}
	return &daemonMetrics{grpc: grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram()), ops: metrics.NewOperations(), daemon: metrics.NewDaemon()}
}

// countXenstore makes xs count its round trips (nothing without metrics).
func (m *daemonMetrics) countXenstore(xs *xenstore.Client) {
	if m == nil || xs == nil {
		return
	}
	xs.CountRequests(m.daemon.XenstoreRoundTrips(), m.daemon.XenstoreRequests())
}

// onCommit is store.Options.OnCommit (nil without metrics).
func (m *daemonMetrics) onCommit() func(time.Duration, error) {
	if m == nil {
		return nil
	}
	return m.daemon.ObserveCommit
}

// onOperation is domain.Config.OnOperation (nil without metrics).
func (m *daemonMetrics) onOperation() func(string, error, time.Duration) {
	if m == nil {
		return nil
	}
	return m.ops.Observe
}

// metricsServer serves /metrics over HTTP(S).
type metricsServer struct {
	srv  *http.Server
	addr string
	errs chan error
}

// metricsShutdownTimeout bounds how long a scrape in progress may delay the
// daemon's stop.
const metricsShutdownTimeout = 2 * time.Second

// serveMetrics listens on --metrics-listen and serves the registry of m,
// host and queues there. It returns nil, nil without --metrics-listen.
func serveMetrics(cfg config, m *daemonMetrics, host *metrics.Collector, queues *metrics.QueueDepth, log *slog.Logger) (*metricsServer, error) {
	if m == nil {
		return nil, nil
	}
	log = log.With("component", "metrics")
	reg, err := metrics.NewRegistry(m.grpc, m.ops, m.daemon, queues)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler(reg, host, log))
	if cfg.pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	scheme := "http"
	if cfg.metricsTLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.metricsTLSCert, cfg.metricsTLSKey)
		if err != nil {
			return nil, fmt.Errorf("--metrics-tls-cert/--metrics-tls-key: %w", err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		scheme = "https"
	}
	l, err := net.Listen("tcp", cfg.metricsListen)
	if err != nil {
		return nil, fmt.Errorf("--metrics-listen %s: %w", cfg.metricsListen, err)
	}
	if srv.TLSConfig != nil {
		l = tls.NewListener(l, srv.TLSConfig)
	}
	ms := &metricsServer{srv: srv, addr: l.Addr().String(), errs: make(chan error, 1)}
	go func() {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			ms.errs <- fmt.Errorf("serve metrics on %s: %w", ms.addr, err)
		}
	}()
	log.Info("serving metrics", "addr", ms.addr, "url", scheme+"://"+ms.addr+"/metrics")
	return ms, nil
}

// failed delivers the error of a server that stopped by itself (never,
// for a nil server).
func (s *metricsServer) failed() <-chan error {
	if s == nil {
		return nil
	}
	return s.errs
}

// stop closes the listener and waits, bounded, for scrapes in progress.
func (s *metricsServer) stop() {
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), metricsShutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(ctx); err != nil {
		s.srv.Close()
	}
}
