package simhost

import (
	"context"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// hypervisor is what HypervisorService serves: xenctrl.Hypervisor and the
// max-vCPUs domctl (sim.Hypervisor in the sim host).
type hypervisor interface {
	xenctrl.Hypervisor
	SetMaxVCPUs(ctx context.Context, d xenctrl.Domid, n uint32) error
	ResumeDomain(ctx context.Context, d xenctrl.Domid) error
}

// hypervisorServer is the server side of HypervisorService. Every handler
// passes its call's context to the simulator, so the client's deadline and
// cancellation reach it.
type hypervisorServer struct {
	pb.UnimplementedHypervisorServiceServer
	hv hypervisor
}

func (s *hypervisorServer) Version(ctx context.Context, _ *pb.VersionRequest) (*pb.VersionResponse, error) {
	v, err := s.hv.Version(ctx)
	if err != nil {
		return nil, rpcError(err)
	}
	return versionToRPC(v), nil
}

func (s *hypervisorServer) PhysInfo(ctx context.Context, _ *pb.PhysInfoRequest) (*pb.PhysInfoResponse, error) {
	p, err := s.hv.PhysInfo(ctx)
	if err != nil {
		return nil, rpcError(err)
	}
	return physInfoToRPC(p), nil
}

func (s *hypervisorServer) CPUIdle(ctx context.Context, _ *pb.CPUIdleRequest) (*pb.CPUIdleResponse, error) {
	idle, err := s.hv.CPUIdle(ctx)
	if err != nil {
		return nil, rpcError(err)
	}
	r := &pb.CPUIdleResponse{IdleNs: make([]uint64, len(idle))}
	for i, d := range idle {
		r.IdleNs[i] = uint64(d)
	}
	return r, nil
}

func (s *hypervisorServer) CreateDomain(ctx context.Context, r *pb.CreateDomainRequest) (*pb.CreateDomainResponse, error) {
	cfg, err := domainConfigFromRPC(r.GetConfig())
	if err != nil {
		return nil, err
	}
	d, err := s.hv.CreateDomain(ctx, cfg)
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.CreateDomainResponse{Domid: uint32(d)}, nil
}

func (s *hypervisorServer) SetMaxMem(ctx context.Context, r *pb.SetMaxMemRequest) (*pb.SetMaxMemResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.SetMaxMemResponse{}, rpcError(s.hv.SetMaxMem(ctx, d, r.GetKib()))
}

func (s *hypervisorServer) SetMaxVCPUs(ctx context.Context, r *pb.SetMaxVCPUsRequest) (*pb.SetMaxVCPUsResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.SetMaxVCPUsResponse{}, rpcError(s.hv.SetMaxVCPUs(ctx, d, r.GetVcpus()))
}

func (s *hypervisorServer) PopulatePhysmap(ctx context.Context, r *pb.PopulatePhysmapRequest) (*pb.PopulatePhysmapResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.PopulatePhysmapResponse{}, rpcError(s.hv.PopulatePhysmap(ctx, d, r.GetPages()))
}

func (s *hypervisorServer) PauseDomain(ctx context.Context, r *pb.PauseDomainRequest) (*pb.PauseDomainResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.PauseDomainResponse{}, rpcError(s.hv.PauseDomain(ctx, d))
}

func (s *hypervisorServer) UnpauseDomain(ctx context.Context, r *pb.UnpauseDomainRequest) (*pb.UnpauseDomainResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.UnpauseDomainResponse{}, rpcError(s.hv.UnpauseDomain(ctx, d))
}

func (s *hypervisorServer) ResumeDomain(ctx context.Context, r *pb.ResumeDomainRequest) (*pb.ResumeDomainResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.ResumeDomainResponse{}, rpcError(s.hv.ResumeDomain(ctx, d))
}

func (s *hypervisorServer) ShutdownDomain(ctx context.Context, r *pb.ShutdownDomainRequest) (*pb.ShutdownDomainResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	reason, err := reasonArg(r.GetReason())
	if err != nil {
		return nil, err
	}
	return &pb.ShutdownDomainResponse{}, rpcError(s.hv.ShutdownDomain(ctx, d, reason))
}

func (s *hypervisorServer) DestroyDomain(ctx context.Context, r *pb.DestroyDomainRequest) (*pb.DestroyDomainResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	return &pb.DestroyDomainResponse{}, rpcError(s.hv.DestroyDomain(ctx, d))
}

func (s *hypervisorServer) DomainInfo(ctx context.Context, r *pb.DomainInfoRequest) (*pb.DomainInfoResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	di, err := s.hv.DomainInfo(ctx, d)
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.DomainInfoResponse{Domain: &pb.DomainRecords{Records: encodeInfos([]xenctrl.DomainInfo{di})}}, nil
}

func (s *hypervisorServer) GetVCPUInfo(ctx context.Context, r *pb.GetVCPUInfoRequest) (*pb.GetVCPUInfoResponse, error) {
	d, err := domidArg("domid", r.GetDomid())
	if err != nil {
		return nil, err
	}
	v, err := s.hv.GetVCPUInfo(ctx, d, r.GetVcpu())
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.GetVCPUInfoResponse{Vcpu: v.VCPU, Online: v.Online, Blocked: v.Blocked, Running: v.Running,
		CpuTimeNs: v.CPUTime, Cpu: v.CPU}, nil
}

func (s *hypervisorServer) ListDomains(ctx context.Context, _ *pb.ListDomainsRequest) (*pb.ListDomainsResponse, error) {
	ds, err := s.hv.ListDomains(ctx)
	if err != nil {
		return nil, rpcError(err)
	}
	return &pb.ListDomainsResponse{Domains: &pb.DomainRecords{Records: encodeInfos(ds)}}, nil
}
