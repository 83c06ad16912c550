package service

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

// Options configure the API servers.
type Options struct {
	// Version is the daemon's version, reported by HostService.GetHost.
	Version string
	// Logger receives internal errors; nil => slog.Default().
	Logger *slog.Logger
	// Console serves VMService.StreamConsole; nil => FAILED_PRECONDITION.
	Console ConsoleLogs
	// Stats serves StatsService; nil => the service is not registered.
	Stats Stats
}

// Server implements the four xenopsd.v1 services on top of a Manager.
type Server struct {
	m    Manager
	opts Options
	log  *slog.Logger
}

// New returns the API servers for m.
func New(m Manager, opts Options) *Server {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Server{m: m, opts: opts, log: log}
}

// Register registers the Host, VM, Task, Event (and with Options.Stats,
// Stats) services on r. A request
// that cannot be decoded is INVALID_ARGUMENT (see registerDecoding).
func (s *Server) Register(r grpc.ServiceRegistrar) {
	registerDecoding(r, &pb.HostService_ServiceDesc, hostServer{Server: s})
	registerDecoding(r, &pb.VMService_ServiceDesc, vmServer{Server: s})
	registerDecoding(r, &pb.TaskService_ServiceDesc, taskServer{Server: s})
	registerDecoding(r, &pb.EventService_ServiceDesc, eventServer{Server: s})
	if s.opts.Stats != nil {
		registerDecoding(r, &pb.StatsService_ServiceDesc, statsServer{Server: s})
	}
}

// fail converts a core error into a status, logging INTERNAL ones (their
// cause is the daemon's, not the caller's).
func (s *Server) fail(ctx context.Context, method string, err error) error {
	st := ToStatus(err)
	if status.Code(st) == codes.Internal {
		s.log.ErrorContext(ctx, "internal error", "method", method, "err", err)
	}
	return st
}

// UnaryLogger logs every unary call at debug level (method, caller, code,
// duration) and failed ones at info level. The caller is who the transport
// says made the call (see callerAttr).
func UnaryLogger(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		logCall(ctx, log, info.FullMethod, start, err)
		return resp, err
	}
}

// StreamLogger is UnaryLogger for streaming calls.
func StreamLogger(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
		start := time.Now()
		err := h(srv, ss)
		logCall(ss.Context(), log, info.FullMethod, start, err)
		return err
	}
}

func logCall(ctx context.Context, log *slog.Logger, method string, start time.Time, err error) {
	code := status.Code(err)
	level := slog.LevelDebug
	if err != nil && code != codes.Canceled {
		level = slog.LevelInfo
	}
	attrs := []any{"method", method, callerAttr(ctx), "code", code.String(), "duration", time.Since(start)}
	if err != nil {
		attrs = append(attrs, "err", status.Convert(err).Message())
	}
	log.Log(ctx, level, "rpc", attrs...)
}
