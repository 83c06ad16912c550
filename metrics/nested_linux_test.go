package metrics

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// TestNestedCollector reads a real Xen (inside the nested harness, which
// sets NX_NESTED=1; elsewhere it skips): the host's series, an idle time
// per pCPU, and a domain of ours with its memory, its vCPUs and their
// CPU time through VMStats.
func TestNestedCollector(t *testing.T) {
	x, err := xenctrl.Open(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		if os.Getenv("NX_NESTED") == "" {
			t.Skipf("no Xen here (NX_NESTED unset): %v", err)
		}
		t.Fatalf("Open on nested Xen: %v", err)
	}
	defer x.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	id := uuid.NewString()
	d, err := x.CreateDomain(ctx, xenctrl.DomainConfig{Handle: xenctrl.Handle(uuid.MustParse(id)), MaxVCPUs: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer x.DestroyDomain(context.Background(), d)
	if err := x.SetMaxVCPUs(ctx, d, 2); err != nil {
		t.Fatal(err)
	}
	if err := x.SetMaxMem(ctx, d, 4096); err != nil {
		t.Fatal(err)
	}
	if err := x.PopulatePhysmap(ctx, d, 256); err != nil {
		t.Fatal(err)
	}
	c := NewCollector(x, fakeVMs{vm(id, "nested", domain.Paused, d)}, CollectorOptions{MaxAge: time.Nanosecond})

	pi, err := x.PhysInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if idle := series(t, c, "xen_host_cpu_idle_seconds_total"); len(idle) != int(pi.MaxCPUID+1) || idle["cpu=0"] <= 0 {
		t.Errorf("pCPU idle %v, want %d CPUs, CPU 0 idle some time", idle, pi.MaxCPUID+1)
	}
	labels := "domid=" + itoa(d) + ",name=nested,uuid=" + id
	if got := series(t, c, "xen_vm_memory_bytes")[labels]; got != 256*xenctrl.PageSize {
		t.Errorf("our domain's memory %v, want %d", got, 256*xenctrl.PageSize)
	}
	if got := series(t, c, "xen_host_domains"); got["state=paused"] < 1 {
		t.Errorf("domains by state %v: ours is paused", got)
	}
	if got := series(t, c, "xen_version_info"); len(got) != 1 {
		t.Errorf("version info %v", got)
	}
	lint(t, c)

	s, err := c.VMStats(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !s.HasDomain || s.DomainState != "paused" || len(s.VCPUs) != 2 || s.MemoryBytes != 256*xenctrl.PageSize {
		t.Errorf("VMStats %+v", s)
	}
	t.Logf("host %d pCPUs; our domain %+v", pi.NrCPUs, s)
}
