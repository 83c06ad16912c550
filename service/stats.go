package service

import (
	"context"
	"maps"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/metrics"
)

// Stats is what StatsService reads; *metrics.Collector implements it.
// Errors are the domain manager's (*domain.Error) or the hypervisor's.
type Stats interface {
	HostStats(ctx context.Context) (metrics.HostStats, error)
	VMStats(ctx context.Context, ref string) (metrics.VMStats, error)
}

type statsServer struct {
	*Server
	pb.UnimplementedStatsServiceServer
}

var _ pb.StatsServiceServer = statsServer{}

func (s statsServer) GetHostStats(ctx context.Context, _ *pb.GetHostStatsRequest) (*pb.GetHostStatsResponse, error) {
	h, err := s.opts.Stats.HostStats(ctx)
	if err != nil {
		return nil, s.fail(ctx, "GetHostStats", err)
	}
	return &pb.GetHostStatsResponse{Stats: HostStatsToPB(h)}, nil
}

func (s statsServer) GetVMStats(ctx context.Context, r *pb.GetVMStatsRequest) (*pb.GetVMStatsResponse, error) {
	v, err := s.opts.Stats.VMStats(ctx, r.GetId())
	if err != nil {
		return nil, s.fail(ctx, "GetVMStats", err)
	}
	return &pb.GetVMStatsResponse{Stats: VMStatsToPB(v)}, nil
}

// HostStatsToPB converts host statistics to the API.
func HostStatsToPB(h metrics.HostStats) *pb.HostStats {
	out := &pb.HostStats{
		HypervisorVersion: h.HypervisorVersion,
		TotalMemoryBytes:  h.TotalMemoryBytes,
		FreeMemoryBytes:   h.FreeMemoryBytes,
		ScrubPendingBytes: h.ScrubMemoryBytes,
		Cpus:              h.CPUs,
		Domains:           h.Domains,
	}
	for _, d := range h.CPUIdle {
		out.CpuIdle = append(out.CpuIdle, durationpb.New(d))
	}
	for _, p := range slices.Sorted(maps.Keys(h.VMs)) {
		out.Vms = append(out.Vms, &pb.PowerStateCount{PowerState: powerStates[p], Count: h.VMs[p]})
	}
	return out
}

// VMStatsToPB converts one VM's statistics to the API.
func VMStatsToPB(v metrics.VMStats) *pb.VMStats {
	out := &pb.VMStats{
		Id:                   v.VM.ID,
		Name:                 v.VM.Spec.Name,
		PowerState:           powerStates[v.VM.Power],
		MemoryStaticMaxBytes: v.VM.Spec.MemoryStaticMax,
		MemoryTargetBytes:    v.VM.Spec.MemoryDynamicMax,
		Restarts:             &pb.VMRestarts{Reboot: v.VM.Restarts.Reboot, Crash: v.VM.Restarts.Crash, Poweroff: v.VM.Restarts.Poweroff},
	}
	if v.HasDomain {
		out.HasDomain = true
		out.Domid = v.VM.Domid
		out.DomainState = v.DomainState
		out.CpuTime = durationpb.New(v.CPUTime)
		out.VcpusOnline = v.VCPUsOnline
		out.MemoryBytes = v.MemoryBytes
		out.MemoryLimitBytes = v.MemoryLimitBytes
		out.Uptime = durationpb.New(v.Uptime)
	}
	for _, c := range v.VCPUs {
		out.Vcpus = append(out.Vcpus, &pb.VCPUStats{Vcpu: c.VCPU, Online: c.Online, Running: c.Running, Blocked: c.Blocked,
			CpuTime: durationpb.New(time.Duration(c.CPUTime)), Cpu: c.CPU})
	}
	return out
}
