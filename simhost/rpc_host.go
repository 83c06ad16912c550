package simhost

import (
	"context"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// hostServer is the server side of SimHostService: the process itself.
type hostServer struct {
	pb.UnimplementedSimHostServiceServer
	hello *pb.HelloResponse
	stop  func()
	calls callCounter
}

func (s *hostServer) Hello(context.Context, *pb.HelloRequest) (*pb.HelloResponse, error) {
	return s.hello, nil
}

func (s *hostServer) Stop(context.Context, *pb.StopRequest) (*pb.StopResponse, error) {
	s.stop()
	return &pb.StopResponse{}, nil
}

func (s *hostServer) Calls(context.Context, *pb.CallsRequest) (*pb.CallsResponse, error) {
	return &pb.CallsResponse{Calls: s.calls.counts()}, nil
}

// callCounter counts the RPCs served, by full method name.
type callCounter struct {
	byMethod sync.Map // full method name -> *atomic.Uint64
}

// count is a unary interceptor that counts each call before serving it.
func (c *callCounter) count(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	n, ok := c.byMethod.Load(info.FullMethod)
	if !ok {
		n, _ = c.byMethod.LoadOrStore(info.FullMethod, new(atomic.Uint64))
	}
	n.(*atomic.Uint64).Add(1)
	return handler(ctx, req)
}

func (c *callCounter) counts() map[string]uint64 {
	out := make(map[string]uint64)
	c.byMethod.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// services is everything the hypervisor socket serves, one server per
// service of xenopsd.simhost.v1.
type services struct {
	host       *hostServer
	hypervisor *hypervisorServer
	build      *buildServer
	guest      *guestServer
	dom0       *dom0Server
}

// Both ends of the hypervisor socket use fixed HTTP/2 flow-control windows
// large enough for a 10,000-domain list (560 KB): the socket is local, so
// there is no bandwidth to probe, and a list then needs no window updates.
//
// Their message limit is raised above gRPC's 4 MiB default, on both ends
// alike: a foreign mapping crosses whole (DomainBuildService.MapForeign
// answers up to maxMapFrames frames, UnmapForeign sends them back), so a
// message holds up to 16 MiB of guest memory plus its framing.
const (
	streamWindow = 4 << 20
	connWindow   = 16 << 20
	maxMessage   = maxMapFrames*xenctrl.PageSize + 1<<20
)

// newRPCServer returns a gRPC server with every service registered.
func newRPCServer(s services) *grpc.Server {
	srv := grpc.NewServer(
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.MaxRecvMsgSize(maxMessage),
		grpc.MaxSendMsgSize(maxMessage),
		grpc.UnaryInterceptor(s.host.calls.count),
	)
	pb.RegisterSimHostServiceServer(srv, s.host)
	pb.RegisterHypervisorServiceServer(srv, s.hypervisor)
	pb.RegisterDomainBuildServiceServer(srv, s.build)
	pb.RegisterGuestServiceServer(srv, s.guest)
	pb.RegisterDom0ServiceServer(srv, s.dom0)
	return srv
}
