package main

import (
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/console"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/service"
)

// stopGrace is how long open RPCs (event watches, waits) get to finish
// after the manager has closed, before they are cut.
const stopGrace = 2 * time.Second

// apiServers serve the xenopsd.v1 API on the unix socket and, with
// --listen, on TCP.
type apiServers struct {
	log          *slog.Logger
	health       *health.Server
	servers      []serving
	removeSocket func()
	errs         chan error
	wg           sync.WaitGroup
}

type serving struct {
	srv  *grpc.Server
	l    net.Listener
	name string
}

// serveAPI listens where cfg says and serves mgr's API there (and stats'
// StatsService), observed by dm's gRPC metrics unless dm is nil.
func serveAPI(cfg config, mgr *domain.Manager, dm *daemonMetrics, stats service.Stats, log *slog.Logger) (*apiServers, error) {
	api := service.New(mgr, service.Options{Version: daemonVersion(), Logger: log.With("component", "api"),
		Console: &console.Logs{Dir: cfg.consoleLogDir}, Stats: stats})
	a := &apiServers{log: log, health: health.NewServer()}
	newServer := func(opts ...grpc.ServerOption) *grpc.Server {
		apiLog := log.With("component", "grpc")
		opts = append(opts, grpc.ChainUnaryInterceptor(service.UnaryLogger(apiLog)),
			grpc.ChainStreamInterceptor(service.StreamLogger(apiLog)))
		if dm != nil {
			opts = append(opts, grpc.ChainUnaryInterceptor(dm.grpc.UnaryServerInterceptor()),
				grpc.ChainStreamInterceptor(dm.grpc.StreamServerInterceptor()))
		}
		s := grpc.NewServer(opts...)
		api.Register(s)
		healthpb.RegisterHealthServer(s, a.health)
		reflection.Register(s)
		if dm != nil {
			dm.grpc.InitializeMetrics(s)
		}
		return s
	}

	ul, removeSocket, err := listenUnix(cfg.socket)
	if err != nil {
		return nil, err
	}
	a.removeSocket = removeSocket
	a.servers = append(a.servers, serving{newServer(grpc.Creds(service.UnixPeerCredentials())), ul, cfg.socket})
	if cfg.listen != "" {
		s, err := listenTCP(cfg, newServer, log)
		if err != nil {
			ul.Close()
			removeSocket()
			return nil, err
		}
		a.servers = append(a.servers, s)
	}

	for _, name := range []string{"", pb.HostService_ServiceDesc.ServiceName, pb.VMService_ServiceDesc.ServiceName,
		pb.TaskService_ServiceDesc.ServiceName, pb.EventService_ServiceDesc.ServiceName, pb.StatsService_ServiceDesc.ServiceName} {
		a.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	a.errs = make(chan error, len(a.servers))
	for _, s := range a.servers {
		a.wg.Go(func() {
			if err := s.srv.Serve(s.l); err != nil {
				a.errs <- fmt.Errorf("serve %s: %w", s.name, err)
			}
		})
		log.Info("serving the xenopsd.v1 API", "addr", s.name)
	}
	return a, nil
}

// listenTCP is the --listen server: TLS unless --insecure-listen.
func listenTCP(cfg config, newServer func(...grpc.ServerOption) *grpc.Server, log *slog.Logger) (serving, error) {
	var opts []grpc.ServerOption
	if !cfg.insecureListen {
		creds, err := serverTLS(cfg, log)
		if err != nil {
			return serving{}, err
		}
		opts = append(opts, grpc.Creds(creds))
	}
	tl, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return serving{}, fmt.Errorf("--listen %s: %w", cfg.listen, err)
	}
	if cfg.insecureListen {
		log.Warn("serving the API on TCP WITHOUT TLS (--insecure-listen)", "addr", tl.Addr().String())
	}
	return serving{newServer(opts...), tl, tl.Addr().String()}, nil
}

// addrs are the addresses served: the socket path, then the TCP address.
func (a *apiServers) addrs() []string {
	out := make([]string, 0, len(a.servers))
	for _, s := range a.servers {
		out = append(out, s.name)
	}
	return out
}

// failed delivers the error of a server that stopped serving by itself.
func (a *apiServers) failed() <-chan error { return a.errs }

// stop refuses new calls, runs drain while the calls in progress finish,
// then cuts those still open after stopGrace (event watches, waits) and
// removes the socket.
func (a *apiServers) stop(drain func()) {
	a.health.Shutdown()
	stopped := make(chan struct{})
	go func() {
		var sw sync.WaitGroup
		for _, s := range a.servers {
			sw.Go(s.srv.GracefulStop)
		}
		sw.Wait()
		close(stopped)
	}()
	drain()
	select {
	case <-stopped:
	case <-time.After(stopGrace):
		a.log.Info("cutting open API calls (event watches, waits)")
		for _, s := range a.servers {
			s.srv.Stop()
		}
		<-stopped
	}
	a.wg.Wait()
	a.removeSocket()
}
