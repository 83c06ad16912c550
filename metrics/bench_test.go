package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// BenchmarkScrape is one whole scrape (snapshot, collection, OpenMetrics
// encoding) of a host with n running VMs on the simulator, never served
// from the snapshot cache. It reports the bytes and the hypervisor calls
// each scrape costs.
func BenchmarkScrape(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			hv, vms := simHost(b, n)
			counted := &countingHV{Hypervisor: hv}
			h := Handler(prometheus.NewRegistry(), NewCollector(counted, vms, CollectorOptions{MaxAge: time.Nanosecond}),
				slog.New(slog.DiscardHandler))
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			req.Header.Set("Accept", "application/openmetrics-text;version=1.0.0")
			var bytes int
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				w := httptest.NewRecorder()
				h.ServeHTTP(w, req)
				if w.Code != http.StatusOK {
					b.Fatalf("scrape: %d %s", w.Code, w.Body)
				}
				bytes = w.Body.Len()
			}
			b.StopTimer()
			b.ReportMetric(float64(bytes), "bytes/scrape")
			b.ReportMetric(float64(counted.calls()-counted.version.Load())/float64(b.N), "hypercalls/scrape")
		})
	}
}

// simHost is a simulator running n VMs' domains, and the VM list.
func simHost(b *testing.B, n int) (*sim.Hypervisor, fakeVMs) {
	b.Helper()
	ctx := context.Background()
	h := sim.New(sim.Config{TotalMemory: 64 << 30})
	vms := make(fakeVMs, 0, n)
	for i := range n {
		id := uuid.NewString()
		d, err := h.CreateDomain(ctx, xenctrl.DomainConfig{Handle: xenctrl.Handle(uuid.MustParse(id)), MaxVCPUs: 2})
		if err == nil {
			err = h.SetMaxMem(ctx, d, 64)
		}
		if err == nil {
			err = h.PopulatePhysmap(ctx, d, 16)
		}
		if err == nil {
			err = h.UnpauseDomain(ctx, d)
		}
		if err != nil {
			b.Fatalf("domain %d: %v", i, err)
		}
		vms = append(vms, vm(id, "vm-"+strconv.Itoa(i), domain.Running, d))
	}
	return h, vms
}
