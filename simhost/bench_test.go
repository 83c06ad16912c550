package simhost

import (
	"context"
	"runtime"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// BenchmarkCreateDestroy: one client, one create+destroy round trip pair
// per iteration over the unix socket.
func BenchmarkCreateDestroy(b *testing.B) {
	c, _ := startHost(b, Config{})
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := c.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.DestroyDomain(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}

// BenchmarkCreateDestroyParallel: GOMAXPROCS*8 goroutines share one client.
func BenchmarkCreateDestroyParallel(b *testing.B) {
	c, _ := startHost(b, Config{})
	ctx := context.Background()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			d, err := c.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
			if err != nil {
				b.Error(err)
				return
			}
			if err := c.DestroyDomain(ctx, d); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
}

// BenchmarkBootDestroy includes memory, unpause (a guest starts and
// connects to xenstored) and destroy, with 0 or 10,000 booted domains
// around.
func BenchmarkBootDestroy(b *testing.B) {
	b.Run("existing=0", func(b *testing.B) { benchBootDestroy(b, 0) })
	b.Run("existing=10000", func(b *testing.B) { benchBootDestroy(b, 10000) })
}

func benchBootDestroy(b *testing.B, existing int) {
	c, _ := startHost(b, Config{TotalMemory: 64 << 30})
	ctx := context.Background()
	boot := func() xenctrl.Domid {
		d, err := c.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1})
		if err != nil {
			b.Fatal(err)
		}
		if err := c.SetMaxMem(ctx, d, 1024); err != nil {
			b.Fatal(err)
		}
		if err := c.PopulatePhysmap(ctx, d, 256); err != nil {
			b.Fatal(err)
		}
		if err := c.UnpauseDomain(ctx, d); err != nil {
			b.Fatal(err)
		}
		return d
	}
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < existing; i++ {
		boot()
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	n := float64(max(existing, 1))
	heap := float64(after.HeapInuse-before.HeapInuse) / n
	stack := float64(after.StackInuse-before.StackInuse) / n
	goroutines := float64(runtime.NumGoroutine()) / n
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.DestroyDomain(ctx, boot()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "boots/s")
	b.ReportMetric(heap, "heapB/guest")
	b.ReportMetric(stack, "stackB/guest")
	b.ReportMetric(goroutines, "goroutines/guest")
}

// BenchmarkListDomains10k lists 10,001 domains over the socket.
func BenchmarkListDomains10k(b *testing.B) {
	c, _ := startHost(b, Config{})
	ctx := context.Background()
	for i := 0; i < 10000; i++ {
		if _, err := c.CreateDomain(ctx, xenctrl.DomainConfig{MaxVCPUs: 1}); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		doms, err := c.ListDomains(ctx)
		if err != nil || len(doms) != 10001 {
			b.Fatalf("ListDomains: %d domains, %v", len(doms), err)
		}
	}
}
