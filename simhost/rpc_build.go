package simhost

import (
	"context"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// Foreign mapping limits of DomainBuildService.
const (
	// maxMapFrames is the most frames one MapForeign call maps (16 MiB of
	// memory; the builder maps at most 1024 at once). The socket's message
	// limit (maxMessage) is sized for it.
	maxMapFrames = 4096
	// maxOpenMappings bounds the writable mappings the host keeps for its
	// clients: a client that dies between map and unmap leaves its
	// mappings behind until the host stops, and this keeps that bounded.
	maxOpenMappings = 1024
)

// buildHypervisor is what DomainBuildService serves: the part of
// builder.Hypervisor beyond HypervisorService (sim.Hypervisor in the host).
type buildHypervisor interface {
	PopulatePhysmapAt(ctx context.Context, d xenctrl.Domid, order uint32, gpfns []uint64) (int, error)
	MapForeign(ctx context.Context, d xenctrl.Domid, frames []uint64, writable bool) (*xenctrl.ForeignMapping, error)
	SetMemoryMap(ctx context.Context, d xenctrl.Domid, entries []xenctrl.E820Entry) error
	SetPagingMempoolSize(ctx context.Context, d xenctrl.Domid, bytes uint64) error
	SetTSCInfo(ctx context.Context, d xenctrl.Domid, mode uint32) error
	AllocUnboundEvtchn(ctx context.Context, d, remote xenctrl.Domid) (uint32, error)
	SetHVMParam(ctx context.Context, d xenctrl.Domid, idx uint32, v uint64) error
	SharedInfoFrame(ctx context.Context, d xenctrl.Domid) (uint64, error)
	MapGrantTableFrame(ctx context.Context, d xenctrl.Domid, gfn uint64) error
	RemoveFromPhysmap(ctx context.Context, d xenctrl.Domid, gfn uint64) error
	GrantTableFrame(ctx context.Context, d xenctrl.Domid) (uint64, error)
	GetHVMContext(ctx context.Context, d xenctrl.Domid) ([]byte, error)
	SetHVMContext(ctx context.Context, d xenctrl.Domid, blob []byte) error
	HypercallInit(ctx context.Context, d xenctrl.Domid, mfn uint64) error
	PinL4Table(ctx context.Context, d xenctrl.Domid, mfn uint64) error
	SetVCPUContext(ctx context.Context, d xenctrl.Domid, vcpu uint32, vgc []byte) error
	GetVCPUContext(ctx context.Context, d xenctrl.Domid, vcpu uint32) ([]byte, error)
}

// buildServer is the server side of DomainBuildService. It keeps the
// writable foreign mappings its clients hold, by handle.
type buildServer struct {
	pb.UnimplementedDomainBuildServiceServer
	hv buildHypervisor

	mu       sync.Mutex
	next     uint64
	mappings map[uint64]*xenctrl.ForeignMapping
}

func newBuildServer(hv buildHypervisor) *buildServer {
	return &buildServer{hv: hv, mappings: make(map[uint64]*xenctrl.ForeignMapping)}
}

func (s *buildServer) PopulatePhysmapAt(ctx context.Context, r *pb.PopulatePhysmapAtRequest) (*pb.PopulatePhysmapAtResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	frames := r.GetGpfns()
	n, err := s.hv.PopulatePhysmapAt(ctx, d, r.GetOrder(), frames)
	resp := &pb.PopulatePhysmapAtResponse{Populated: uint64(n), Frames: frames}
	if err != nil {
		return nil, rpcError(err, resp)
	}
	return resp, nil
}

func (s *buildServer) MapForeign(ctx context.Context, r *pb.MapForeignRequest) (*pb.MapForeignResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	if n := len(r.GetFrames()); n > maxMapFrames {
		return nil, status.Errorf(codes.InvalidArgument, "frames: %d, at most %d per call", n, maxMapFrames)
	}
	fm, err := s.hv.MapForeign(ctx, d, r.GetFrames(), r.GetWritable())
	if err != nil {
		return nil, rpcError(err)
	}
	if !r.GetWritable() {
		mem := fm.Mem
		if err := fm.Unmap(); err != nil {
			return nil, rpcError(err)
		}
		return &pb.MapForeignResponse{Mem: mem}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.mappings) >= maxOpenMappings {
		_ = fm.Unmap()
		return nil, status.Errorf(codes.ResourceExhausted, "%d writable mappings open; unmap some first", len(s.mappings))
	}
	s.next++
	s.mappings[s.next] = fm
	return &pb.MapForeignResponse{Mem: fm.Mem, Handle: s.next}, nil
}

func (s *buildServer) UnmapForeign(_ context.Context, r *pb.UnmapForeignRequest) (*pb.UnmapForeignResponse, error) {
	s.mu.Lock()
	fm := s.mappings[r.GetHandle()]
	if fm != nil && len(r.GetMem()) == len(fm.Mem) {
		delete(s.mappings, r.GetHandle())
	}
	s.mu.Unlock()
	switch {
	case fm == nil:
		return nil, status.Errorf(codes.NotFound, "handle %d: no such mapping", r.GetHandle())
	case len(r.GetMem()) != len(fm.Mem):
		return nil, status.Errorf(codes.InvalidArgument, "mem: %d bytes, the mapping has %d", len(r.GetMem()), len(fm.Mem))
	}
	copy(fm.Mem, r.GetMem())
	return &pb.UnmapForeignResponse{}, rpcError(fm.Unmap())
}

func (s *buildServer) SetMemoryMap(ctx context.Context, r *pb.SetMemoryMapRequest) (*pb.SetMemoryMapResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	entries := make([]xenctrl.E820Entry, len(r.GetEntries()))
	for i, e := range r.GetEntries() {
		entries[i] = xenctrl.E820Entry{Addr: e.GetAddr(), Size: e.GetSize(), Type: e.GetType()}
	}
	return &pb.SetMemoryMapResponse{}, rpcError(s.hv.SetMemoryMap(ctx, d, entries))
}

func (s *buildServer) SetPagingMempoolSize(ctx context.Context, r *pb.SetPagingMempoolSizeRequest) (*pb.SetPagingMempoolSizeResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.SetPagingMempoolSizeResponse{}, rpcError(s.hv.SetPagingMempoolSize(ctx, d, r.GetBytes()))
}

func (s *buildServer) SetTSCInfo(ctx context.Context, r *pb.SetTSCInfoRequest) (*pb.SetTSCInfoResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.SetTSCInfoResponse{}, rpcError(s.hv.SetTSCInfo(ctx, d, r.GetMode()))
}

func (s *buildServer) AllocUnboundEvtchn(ctx context.Context, r *pb.AllocUnboundEvtchnRequest) (*pb.AllocUnboundEvtchnResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	remote, err := domidArg("remote", r.GetRemote())
	if err != nil {
		return nil, err
	}
	port, err := s.hv.AllocUnboundEvtchn(ctx, d, remote)
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.AllocUnboundEvtchnResponse{Port: port}, nil
}

func (s *buildServer) SetHVMParam(ctx context.Context, r *pb.SetHVMParamRequest) (*pb.SetHVMParamResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.SetHVMParamResponse{}, rpcError(s.hv.SetHVMParam(ctx, d, r.GetIndex(), r.GetValue()))
}

func (s *buildServer) SharedInfoFrame(ctx context.Context, r *pb.SharedInfoFrameRequest) (*pb.SharedInfoFrameResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	f, err := s.hv.SharedInfoFrame(ctx, d)
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.SharedInfoFrameResponse{Frame: f}, nil
}

func (s *buildServer) MapGrantTableFrame(ctx context.Context, r *pb.MapGrantTableFrameRequest) (*pb.MapGrantTableFrameResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.MapGrantTableFrameResponse{}, rpcError(s.hv.MapGrantTableFrame(ctx, d, r.GetGfn()))
}

func (s *buildServer) RemoveFromPhysmap(ctx context.Context, r *pb.RemoveFromPhysmapRequest) (*pb.RemoveFromPhysmapResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.RemoveFromPhysmapResponse{}, rpcError(s.hv.RemoveFromPhysmap(ctx, d, r.GetGfn()))
}

func (s *buildServer) GrantTableFrame(ctx context.Context, r *pb.GrantTableFrameRequest) (*pb.GrantTableFrameResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	f, err := s.hv.GrantTableFrame(ctx, d)
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.GrantTableFrameResponse{Frame: f}, nil
}

func (s *buildServer) GetHVMContext(ctx context.Context, r *pb.GetHVMContextRequest) (*pb.GetHVMContextResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	blob, err := s.hv.GetHVMContext(ctx, d)
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.GetHVMContextResponse{Context: blob}, nil
}

func (s *buildServer) SetHVMContext(ctx context.Context, r *pb.SetHVMContextRequest) (*pb.SetHVMContextResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.SetHVMContextResponse{}, rpcError(s.hv.SetHVMContext(ctx, d, r.GetContext()))
}

func (s *buildServer) HypercallInit(ctx context.Context, r *pb.HypercallInitRequest) (*pb.HypercallInitResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.HypercallInitResponse{}, rpcError(s.hv.HypercallInit(ctx, d, r.GetFrame()))
}

func (s *buildServer) PinL4Table(ctx context.Context, r *pb.PinL4TableRequest) (*pb.PinL4TableResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.PinL4TableResponse{}, rpcError(s.hv.PinL4Table(ctx, d, r.GetMfn()))
}

func (s *buildServer) SetVCPUContext(ctx context.Context, r *pb.SetVCPUContextRequest) (*pb.SetVCPUContextResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.SetVCPUContextResponse{}, rpcError(s.hv.SetVCPUContext(ctx, d, r.GetVcpu(), r.GetContext()))
}

func (s *buildServer) GetVCPUContext(ctx context.Context, r *pb.GetVCPUContextRequest) (*pb.GetVCPUContextResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	vgc, err := s.hv.GetVCPUContext(ctx, d, r.GetVcpu())
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.GetVCPUContextResponse{Context: vgc}, nil
}

// populateProgress is the PopulatePhysmapAtResponse a failed populate's
// status carries (nil if none).
func populateProgress(err error) *pb.PopulatePhysmapAtResponse {
	st, ok := status.FromError(err)
	if !ok {
		return nil
	}
	for _, d := range st.Details() {
		if p, ok := d.(*pb.PopulatePhysmapAtResponse); ok {
			return p
		}
	}
	return nil
}
