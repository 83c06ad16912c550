package simhost

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// guestControls is what GuestService drives (sim.Hypervisor in the sim host).
type guestControls interface {
	GuestShutdown(ctx context.Context, d xenctrl.Domid, reason xenctrl.ShutdownReason) error
	SetGuestBehaviour(ctx context.Context, d xenctrl.Domid, b sim.GuestBehaviour) error
}

// guestServer is the server side of GuestService.
type guestServer struct {
	pb.UnimplementedGuestServiceServer
	hv guestControls
	// onShutdown, if set, runs before a GuestShutdown is carried out (the
	// sim host prints the guest's last words on its console).
	onShutdown func(xenctrl.Domid, xenctrl.ShutdownReason)
}

func (s *guestServer) GuestShutdown(ctx context.Context, r *pb.GuestShutdownRequest) (*pb.GuestShutdownResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	reason, err := reasonArg(r.GetReason())
	if err != nil {
		return nil, err
	}
	if s.onShutdown != nil {
		s.onShutdown(d, reason)
	}
	return &pb.GuestShutdownResponse{}, rpcError(s.hv.GuestShutdown(ctx, d, reason))
}

func (s *guestServer) SetGuestBehaviour(ctx context.Context, r *pb.SetGuestBehaviourRequest) (*pb.SetGuestBehaviourResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	b, err := guestBehaviourFromRPC(r.GetBehaviour())
	if err != nil {
		return nil, err
	}
	return &pb.SetGuestBehaviourResponse{}, rpcError(s.hv.SetGuestBehaviour(ctx, d, b))
}

func guestBehaviourToRPC(b sim.GuestBehaviour) *pb.GuestBehaviour {
	m := &pb.GuestBehaviour{IgnoreShutdownRequests: b.IgnoreShutdownRequests, Idle: b.Idle,
		DevicesNeverConnect: b.DevicesNeverConnect, DevicesRefuseClose: b.DevicesRefuseClose}
	if b.ShutdownDelay != 0 {
		m.ShutdownDelay = durationpb.New(b.ShutdownDelay)
	}
	return m
}

func guestBehaviourFromRPC(m *pb.GuestBehaviour) (sim.GuestBehaviour, error) {
	b := sim.GuestBehaviour{IgnoreShutdownRequests: m.GetIgnoreShutdownRequests(), Idle: m.GetIdle(),
		DevicesNeverConnect: m.GetDevicesNeverConnect(), DevicesRefuseClose: m.GetDevicesRefuseClose()}
	if d := m.GetShutdownDelay(); d != nil {
		if err := d.CheckValid(); err != nil {
			return b, status.Errorf(codes.InvalidArgument, "behaviour.shutdown_delay: %v", err)
		}
		b.ShutdownDelay = d.AsDuration()
	}
	if b.ShutdownDelay < 0 {
		return b, status.Errorf(codes.InvalidArgument, "behaviour.shutdown_delay %v: must not be negative", b.ShutdownDelay)
	}
	return b, nil
}
