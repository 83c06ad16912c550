package simhost

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// dom0Server is the server side of Dom0Service.
type dom0Server struct {
	pb.UnimplementedDom0ServiceServer
	d *dom0
}

func (s *dom0Server) AttachDisk(_ context.Context, r *pb.AttachDiskRequest) (*pb.AttachDiskResponse, error) {
	a, err := s.d.attachDisk(r.GetPath(), r.GetReadOnly())
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.AttachDiskResponse{Attachment: diskAttachmentToRPC(a)}, nil
}

func (s *dom0Server) FindDisk(_ context.Context, r *pb.FindDiskRequest) (*pb.FindDiskResponse, error) {
	if r.GetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "path: empty")
	}
	resp := &pb.FindDiskResponse{}
	for _, a := range s.d.findDisk(r.GetPath()) {
		resp.Attachments = append(resp.Attachments, diskAttachmentToRPC(a))
	}
	return resp, nil
}

func (s *dom0Server) DetachDisk(_ context.Context, r *pb.DetachDiskRequest) (*pb.DetachDiskResponse, error) {
	return &pb.DetachDiskResponse{}, rpcError(s.d.detachDisk(diskAttachmentFromRPC(r.GetAttachment())))
}

func (s *dom0Server) CheckBridge(_ context.Context, r *pb.CheckBridgeRequest) (*pb.CheckBridgeResponse, error) {
	return &pb.CheckBridgeResponse{}, rpcError(s.d.checkBridge(r.GetBridge()))
}

func (s *dom0Server) ConnectVIF(ctx context.Context, r *pb.ConnectVIFRequest) (*pb.ConnectVIFResponse, error) {
	if r.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name: empty")
	}
	return &pb.ConnectVIFResponse{}, rpcError(s.d.connectVIF(ctx, r.GetName(), r.GetBridge(), r.GetMtu()))
}

func (s *dom0Server) DisconnectVIF(_ context.Context, r *pb.DisconnectVIFRequest) (*pb.DisconnectVIFResponse, error) {
	s.d.disconnectVIF(r.GetName())
	return &pb.DisconnectVIFResponse{}, nil
}

func (s *dom0Server) Dom0State(context.Context, *pb.Dom0StateRequest) (*pb.Dom0StateResponse, error) {
	st := s.d.state()
	resp := &pb.Dom0StateResponse{Bridges: st.Bridges}
	for _, l := range st.Loops {
		resp.Loops = append(resp.Loops, &pb.LoopDevice{Name: l.Name, Minor: l.Minor, Path: l.Path, ReadOnly: l.ReadOnly,
			OpenByBackend: l.OpenByBackend, Autoclear: l.Autoclear})
	}
	for _, l := range st.Links {
		resp.Links = append(resp.Links, &pb.Link{Name: l.Name, Domid: l.Domid, Devid: l.DevID, Bridge: l.Bridge, Mtu: l.MTU, Up: l.Up})
	}
	return resp, nil
}

func diskAttachmentToRPC(a devices.DiskAttachment) *pb.DiskAttachment {
	return &pb.DiskAttachment{PhysicalDevice: a.PhysicalDevice, Loop: a.Loop}
}

func diskAttachmentFromRPC(m *pb.DiskAttachment) devices.DiskAttachment {
	return devices.DiskAttachment{PhysicalDevice: m.GetPhysicalDevice(), Loop: m.GetLoop()}
}

func dom0StateFromRPC(m *pb.Dom0StateResponse) Dom0State {
	st := Dom0State{Bridges: m.GetBridges()}
	for _, l := range m.GetLoops() {
		st.Loops = append(st.Loops, LoopDevice{Name: l.GetName(), Minor: l.GetMinor(), Path: l.GetPath(), ReadOnly: l.GetReadOnly(),
			OpenByBackend: l.GetOpenByBackend(), Autoclear: l.GetAutoclear()})
	}
	for _, l := range m.GetLinks() {
		st.Links = append(st.Links, Link{Name: l.GetName(), Domid: l.GetDomid(), DevID: l.GetDevid(), Bridge: l.GetBridge(), MTU: l.GetMtu(), Up: l.GetUp()})
	}
	return st
}
