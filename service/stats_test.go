package service

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/metrics"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// fakeStats answers for one VM, "web", and the host.
type fakeStats struct{}

func (fakeStats) HostStats(context.Context) (metrics.HostStats, error) {
	return metrics.HostStats{HypervisorVersion: "4.17.3", TotalMemoryBytes: 16 << 30, CPUs: 2,
		CPUIdle: []time.Duration{time.Second, 2 * time.Second}, Domains: map[string]uint32{"running": 2},
		VMs: map[domain.PowerState]uint32{domain.Running: 1, domain.Halted: 3}}, nil
}

func (fakeStats) VMStats(_ context.Context, ref string) (metrics.VMStats, error) {
	if ref != "web" {
		return metrics.VMStats{}, &domain.Error{Code: domain.CodeNotFound, Field: "id", Message: "no VM named " + ref}
	}
	return metrics.VMStats{VM: domain.VM{ID: "web-id", Power: domain.Running, Domid: 7, Restarts: domain.Restarts{Reboot: 3, Crash: 1},
		Spec: domain.Spec{Name: "web", MemoryStaticMax: 512 << 20, MemoryDynamicMax: 256 << 20}},
		HasDomain: true, DomainState: "running", CPUTime: 1500 * time.Millisecond, VCPUsOnline: 2, Uptime: time.Minute,
		MemoryBytes: 256 << 20, MemoryLimitBytes: 257 << 20,
		VCPUs: []xenctrl.VCPUInfo{{VCPU: 0, Online: true, Running: true, CPUTime: 1e9, CPU: 3}, {VCPU: 1, Online: true, Blocked: true, CPUTime: 5e8}}}, nil
}

func TestStatsService(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := pb.NewStatsServiceClient(serve(t, newFake(), Options{Stats: fakeStats{}}).conn)

	h, err := c.GetHostStats(ctx, &pb.GetHostStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	hs := h.GetStats()
	if hs.GetHypervisorVersion() != "4.17.3" || hs.GetCpus() != 2 || len(hs.GetCpuIdle()) != 2 ||
		hs.GetCpuIdle()[1].AsDuration() != 2*time.Second || hs.GetDomains()["running"] != 2 || len(hs.GetVms()) != 2 ||
		hs.GetVms()[0].GetPowerState() != pb.PowerState_POWER_STATE_HALTED || hs.GetVms()[0].GetCount() != 3 {
		t.Errorf("host stats %v", hs)
	}

	v, err := c.GetVMStats(ctx, &pb.GetVMStatsRequest{Id: "web"})
	if err != nil {
		t.Fatal(err)
	}
	vs := v.GetStats()
	if vs.GetId() != "web-id" || vs.GetName() != "web" || !vs.GetHasDomain() || vs.GetDomid() != 7 ||
		vs.GetCpuTime().AsDuration() != 1500*time.Millisecond || vs.GetVcpusOnline() != 2 || vs.GetMemoryBytes() != 256<<20 ||
		vs.GetMemoryLimitBytes() != 257<<20 || vs.GetMemoryStaticMaxBytes() != 512<<20 || vs.GetMemoryTargetBytes() != 256<<20 ||
		vs.GetPowerState() != pb.PowerState_POWER_STATE_RUNNING || vs.GetDomainState() != "running" ||
		vs.GetUptime().AsDuration() != time.Minute || vs.GetRestarts().GetReboot() != 3 || vs.GetRestarts().GetCrash() != 1 {
		t.Errorf("web's stats %v", vs)
	}
	if v := vs.GetVcpus(); len(v) != 2 || !v[0].GetRunning() || v[0].GetCpu() != 3 || v[0].GetCpuTime().AsDuration() != time.Second ||
		v[1].GetVcpu() != 1 || !v[1].GetBlocked() || v[1].GetCpuTime().AsDuration() != 500*time.Millisecond {
		t.Errorf("web's vCPUs %v", v)
	}
	if _, err := c.GetVMStats(ctx, &pb.GetVMStatsRequest{Id: "nosuch"}); status.Code(err) != codes.NotFound {
		t.Errorf("unknown VM: %v, want NOT_FOUND", err)
	}

	// Without Stats the service is not there.
	bare := pb.NewStatsServiceClient(serve(t, newFake(), Options{}).conn)
	if _, err := bare.GetHostStats(ctx, &pb.GetHostStatsRequest{}); status.Code(err) != codes.Unimplemented {
		t.Errorf("GetHostStats without Stats: %v, want UNIMPLEMENTED", err)
	}
}
