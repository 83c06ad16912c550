package xenstore_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore/xenstored"
)

// benchServer starts the embedded server on a temp unix socket and returns
// a connected client. XENSTORE_BENCH_SOCKET points the benchmarks at another
// daemon instead.
func benchServer(b *testing.B) *xenstore.Client {
	b.Helper()
	sock := os.Getenv("XENSTORE_BENCH_SOCKET")
	if sock == "" {
		dir := b.TempDir()
		sock = filepath.Join(dir, "xs.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			b.Fatal(err)
		}
		s := xenstored.New(xenstored.Config{})
		go s.Serve(l)
		b.Cleanup(func() { s.Close() })
	}
	c, err := xenstore.Dial(context.Background(), sock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c.Remove(context.Background(), "/bench")
		c.Close()
	})
	return c
}

func opsPerSec(b *testing.B, ops int) {
	b.ReportMetric(float64(ops)/b.Elapsed().Seconds(), "ops/s")
}

func BenchmarkReadSerial(b *testing.B) {
	c := benchServer(b)
	ctx := context.Background()
	if err := c.Write(ctx, "/bench/r", []byte("value")); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Read(ctx, "/bench/r"); err != nil {
			b.Fatal(err)
		}
	}
	opsPerSec(b, b.N)
}

func BenchmarkWriteSerial(b *testing.B) {
	c := benchServer(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := c.Write(ctx, "/bench/w", []byte("value")); err != nil {
			b.Fatal(err)
		}
	}
	opsPerSec(b, b.N)
}

// pipelined runs op from 64 goroutines sharing one client (one connection).
func pipelined(b *testing.B, op func(ctx context.Context, c *xenstore.Client, i int64) error) {
	c := benchServer(b)
	ctx := context.Background()
	if err := c.Write(ctx, "/bench/r", []byte("value")); err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	b.SetParallelism(64 / max(1, runtimeProcs()))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := op(ctx, c, n.Add(1)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	opsPerSec(b, b.N)
}

func BenchmarkReadPipelined(b *testing.B) {
	pipelined(b, func(ctx context.Context, c *xenstore.Client, _ int64) error {
		_, err := c.Read(ctx, "/bench/r")
		return err
	})
}

func BenchmarkWritePipelined(b *testing.B) {
	pipelined(b, func(ctx context.Context, c *xenstore.Client, i int64) error {
		return c.Write(ctx, fmt.Sprintf("/bench/p/%d", i%256), []byte("value"))
	})
}

// BenchmarkTransaction: start, read, write, commit on a node of its own.
func BenchmarkTransaction(b *testing.B) {
	c := benchServer(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
			if _, err := tx.Read(ctx, "/bench/t"); err != nil && i > 0 {
				return err
			}
			return tx.Write(ctx, "/bench/t", []byte("v"))
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	opsPerSec(b, b.N)
}

// domainLayout is ~30 nodes like the ones libxl/xenopsd write per domain.
func domainLayout(domid int) map[string]string {
	// Under /bench so that a run against a real daemon leaves nothing behind.
	d := fmt.Sprintf("/bench/local/domain/%d", domid)
	vm := fmt.Sprintf("/bench/vm/00000000-0000-0000-0000-%012d", domid)
	l := map[string]string{
		d + "/name": fmt.Sprintf("vm-%d", domid), d + "/domid": fmt.Sprint(domid), d + "/vm": vm,
		d + "/memory/static-max": "1048576", d + "/memory/target": "1048576", d + "/memory/videoram": "0",
		d + "/cpu/0/availability": "online", d + "/cpu/1/availability": "online",
		d + "/control/shutdown": "", d + "/control/feature-poweroff": "", d + "/control/feature-reboot": "",
		d + "/control/feature-suspend": "", d + "/control/sysrq": "", d + "/data": "", d + "/drivers": "",
		d + "/feature": "", d + "/attr": "", d + "/error": "", d + "/device": "", d + "/device/suspend/event-channel": "",
		d + "/store/port": "1", d + "/store/ring-ref": "1234", d + "/console/port": "2", d + "/console/ring-ref": "1235",
		d + "/console/limit": "1048576", d + "/console/type": "xenconsoled", d + "/image/os_type": "linux",
		vm + "/uuid": fmt.Sprintf("00000000-0000-0000-0000-%012d", domid), vm + "/name": fmt.Sprintf("vm-%d", domid),
		vm + "/image/ostype": "linux",
	}
	return l
}

// BenchmarkDomainLayout writes one domain's whole layout (~30 nodes, with
// guest permissions on two of them) in one transaction, all writes in one
// Batch (one round trip).
func BenchmarkDomainLayout(b *testing.B) { benchLayout(b, true) }

// BenchmarkDomainLayoutSerial is the same with one round trip per write.
func BenchmarkDomainLayoutSerial(b *testing.B) { benchLayout(b, false) }

func benchLayout(b *testing.B, batch bool) {
	c := benchServer(b)
	ctx := context.Background()
	nodes := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		domid := 1 + i%30000
		layout := domainLayout(domid)
		d := fmt.Sprintf("/bench/local/domain/%d", domid)
		// dom0 owns, the guest may read and write (a real daemon refuses a
		// non-existent owner but ignores entries for unknown domains).
		guest := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: uint32(domid), Access: xenstore.AccessBoth}}
		var ops []xenstore.Op
		for p, v := range layout {
			ops = append(ops, xenstore.WriteOp(p, []byte(v)))
		}
		ops = append(ops, xenstore.SetPermsOp(d+"/data", guest), xenstore.SetPermsOp(d+"/control/shutdown", guest))
		nodes += len(layout)
		err := c.Transaction(ctx, func(tx *xenstore.Tx) error {
			if batch {
				return tx.Batch(ctx, ops...)
			}
			for _, op := range ops {
				if err := tx.Batch(ctx, op); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "domains/s")
	b.ReportMetric(float64(nodes)/float64(b.N), "nodes/domain")
}
