package metrics

import (
	"context"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

func TestStats(t *testing.T) {
	ctx := context.Background()
	h := sim.New(sim.Config{NrCPUs: 2})
	web := bootDomain(t, h, webID, 2)
	stranger := bootDomain(t, h, otherID, 1)
	w := vm(webID, "web", domain.Running, web)
	w.StartedAt = time.Now().Add(-time.Hour)
	c := NewCollector(h, fakeVMs{
		w,
		vm(dbID, "db", domain.Halted, 0),
		vm("44444444-4444-4444-8444-444444444444", "imposter", domain.Running, stranger),
	}, CollectorOptions{})

	hs, err := c.HostStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if hs.CPUs != 2 || len(hs.CPUIdle) != 2 || hs.TotalMemoryBytes == 0 || hs.HypervisorVersion != "4.17-sim" ||
		hs.Domains["running"] != 2 || hs.Domains["blocked"] != 1 || hs.VMs[domain.Running] != 2 || hs.VMs[domain.Halted] != 1 {
		t.Errorf("host stats %+v", hs)
	}

	s, err := c.VMStats(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	if !s.HasDomain || s.VM.ID != webID || s.DomainState != "running" || s.VCPUsOnline != 2 || s.MemoryBytes != 256*4096 ||
		s.MemoryLimitBytes != 1024<<10 || s.CPUTime <= 0 || len(s.VCPUs) != 2 || s.Uptime < time.Hour {
		t.Fatalf("web's stats %+v", s)
	}
	for i, v := range s.VCPUs {
		if v.VCPU != uint32(i) || !v.Online || !v.Running || v.CPUTime == 0 {
			t.Errorf("web's vCPU %d: %+v", i, v)
		}
	}
	for _, ref := range []string{"db", "imposter"} {
		if s, err := c.VMStats(ctx, ref); err != nil || s.HasDomain || s.CPUTime != 0 || s.Uptime != 0 {
			t.Errorf("%s: %+v, %v; want no domain stats", ref, s, err)
		}
	}
	if _, err := c.VMStats(ctx, "nosuch"); domain.CodeOf(err) != domain.CodeNotFound {
		t.Errorf("unknown VM: %v, want NotFound", err)
	}
}
