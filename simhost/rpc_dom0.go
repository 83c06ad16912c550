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
	for _, q := range st.QEMUs {
		resp.Qemus = append(resp.Qemus, &pb.QEMUProcess{Pid: q.Pid, Start: q.Start, Domid: q.Domid})
	}
	return resp, nil
}

func (s *dom0Server) DeviceCounters(_ context.Context, r *pb.DeviceCountersRequest) (*pb.DeviceCountersResponse, error) {
	var key string
	switch devices.Kind(r.GetKind()) {
	case devices.KindVBD:
		key = vbdTrafficKey(r.GetDomid(), r.GetDevid())
	case devices.KindVIF:
		if r.GetVif() == "" {
			return nil, status.Error(codes.InvalidArgument, "vif: empty")
		}
		key = r.GetVif()
	default:
		return nil, status.Errorf(codes.InvalidArgument, "kind: %q is neither vbd nor vif", r.GetKind())
	}
	c, err := s.d.counters(key)
	if err != nil {
		return nil, rpcError(err)
	}
	return countersToRPC(c), nil
}

func countersToRPC(c devices.Counters) *pb.DeviceCountersResponse {
	return &pb.DeviceCountersResponse{
		ReadRequests: c.ReadRequests, WriteRequests: c.WriteRequests,
		ReadBytes: c.ReadBytes, WriteBytes: c.WriteBytes, OutOfRequests: c.OutOfRequests,
		RxBytes: c.RxBytes, TxBytes: c.TxBytes, RxPackets: c.RxPackets, TxPackets: c.TxPackets,
		RxErrors: c.RxErrors, TxErrors: c.TxErrors, RxDrops: c.RxDrops, TxDrops: c.TxDrops,
	}
}

func countersFromRPC(m *pb.DeviceCountersResponse) devices.Counters {
	return devices.Counters{
		ReadRequests: m.GetReadRequests(), WriteRequests: m.GetWriteRequests(),
		ReadBytes: m.GetReadBytes(), WriteBytes: m.GetWriteBytes(), OutOfRequests: m.GetOutOfRequests(),
		RxBytes: m.GetRxBytes(), TxBytes: m.GetTxBytes(), RxPackets: m.GetRxPackets(), TxPackets: m.GetTxPackets(),
		RxErrors: m.GetRxErrors(), TxErrors: m.GetTxErrors(), RxDrops: m.GetRxDrops(), TxDrops: m.GetTxDrops(),
	}
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
	for _, q := range m.GetQemus() {
		st.QEMUs = append(st.QEMUs, QEMUProcess{Pid: q.GetPid(), Start: q.GetStart(), Domid: q.GetDomid()})
	}
	return st
}

func (s *dom0Server) StartQEMU(_ context.Context, r *pb.StartQEMURequest) (*pb.StartQEMUResponse, error) {
	if r.GetDomid() == 0 {
		return nil, status.Error(codes.InvalidArgument, "domid: 0 is dom0")
	}
	q, err := s.d.startQEMU(r.GetDomid())
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.StartQEMUResponse{Qemu: &pb.QEMUProcess{Pid: q.pid, Start: q.start, Domid: q.domid}}, nil
}

func (s *dom0Server) QEMUAlive(_ context.Context, r *pb.QEMUAliveRequest) (*pb.QEMUAliveResponse, error) {
	return &pb.QEMUAliveResponse{Alive: s.d.qemuAlive(qemuFromRPC(r.GetQemu()))}, nil
}

func (s *dom0Server) StopQEMU(_ context.Context, r *pb.StopQEMURequest) (*pb.StopQEMUResponse, error) {
	s.d.stopQEMU(qemuFromRPC(r.GetQemu()))
	return &pb.StopQEMUResponse{}, nil
}

func qemuFromRPC(m *pb.QEMUProcess) simQEMU {
	return simQEMU{pid: m.GetPid(), start: m.GetStart(), domid: m.GetDomid()}
}
