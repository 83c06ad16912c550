package xenctrl

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"unsafe"
)

// These tests exercise the memory-safety paths of the privcmd backend
// without Xen: the hypercall buffer pool (run them with -race), the ioctl
// wrapper's handling of closed descriptors, and MMAPBATCH_V2 error checks.

// newTestPrivcmd returns a privcmd with no devices: buffers come from
// locked anonymous memory. It skips when the memlock limit refuses them.
func newTestPrivcmd(t *testing.T) *privcmd {
	t.Helper()
	p := &privcmd{maxFree: 4}
	b, err := p.alloc(PageSize)
	if err != nil {
		t.Skipf("no locked anonymous memory here (RLIMIT_MEMLOCK?): %v", err)
	}
	p.release(b)
	return p
}

// TestHypercallBufferPoolExclusive checks that no buffer is handed to two
// users at once and that every buffer comes back zeroed: each goroutine
// fills its buffers with its own pattern, yields, and checks the pattern
// is intact before releasing.
func TestHypercallBufferPoolExclusive(t *testing.T) {
	p := newTestPrivcmd(t)
	const workers, rounds = 8, 200
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for r := 0; r < rounds; r++ {
				n := 1 + (w*rounds+r)%(2*PageSize+1) // one to three pages
				b, err := p.alloc(n)
				if err != nil {
					errc <- err
					return
				}
				if len(b.mem) < n || len(b.mem)%PageSize != 0 {
					errc <- fmt.Errorf("alloc(%d) gave %d bytes", n, len(b.mem))
					return
				}
				for i, c := range b.mem {
					if c != 0 {
						errc <- fmt.Errorf("alloc(%d): byte %d is %#x, want a zeroed buffer", n, i, c)
						return
					}
				}
				pat := byte(w + 1)
				for i := range b.mem {
					b.mem[i] = pat
				}
				if r%8 == 0 {
					// give the others a chance to grab the same buffer
					runtime.Gosched()
				}
				for i, c := range b.mem {
					if c != pat {
						errc <- fmt.Errorf("worker %d: byte %d of its buffer became %#x: shared with another user", w, i, c)
						return
					}
				}
				p.release(b)
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Error(err)
	}
	p.mu.Lock()
	cached := len(p.free)
	p.mu.Unlock()
	if cached > p.maxFree {
		t.Errorf("%d cached buffers, limit %d", cached, p.maxFree)
	}
}

// TestPrivcmdReleaseAfterClose checks that a buffer released after close
// (a hypercall that was in flight) is unmapped, not cached in a pool that
// nobody will empty.
func TestPrivcmdReleaseAfterClose(t *testing.T) {
	p := newTestPrivcmd(t)
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	p.fd = f
	b, err := p.alloc(PageSize)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	p.release(b)
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) != 0 {
		t.Errorf("%d buffers cached after close", len(p.free))
	}
}

// TestHypercallIoctlPaths drives hypercall through a descriptor that is not
// privcmd (the ioctl must reach it and fail with ENOTTY) and through a
// closed one (EBADF, and no ioctl on whatever file reuses the number).
func TestHypercallIoctlPaths(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	p := &privcmd{fd: f, maxFree: 1}
	if _, e := p.hypercall(hcXenVersion, xenverVersion, 0); e != syscall.ENOTTY {
		t.Errorf("hypercall on %s: errno %v, want ENOTTY", os.DevNull, e)
	}
	f.Close()
	if _, e := p.hypercall(hcXenVersion, xenverVersion, 0); e != syscall.EBADF {
		t.Errorf("hypercall after close: errno %v, want EBADF", e)
	}
	var x int
	if _, e := ioctl(f, ioctlPrivcmdHypercall, unsafe.Pointer(&x)); e != syscall.EBADF {
		t.Errorf("ioctl after close: errno %v, want EBADF", e)
	}
}

// TestMmapBatchError pins the MMAPBATCH_V2 outcome rules: a per-frame error
// fails the call even when the ioctl itself returned 0 (what Linux does
// for every error but ENOENT).
func TestMmapBatchError(t *testing.T) {
	gfns := []uint64{0x10, 0x11, 0x12}
	if err := mmapBatchError(7, gfns, make([]int32, 3), 0); err != nil {
		t.Errorf("all frames mapped: %v", err)
	}
	err := mmapBatchError(7, gfns, []int32{0, -int32(syscall.EINVAL), 0}, 0)
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("frame 1 failed with EINVAL, ioctl returned 0: got %v", err)
	}
	if want := "0x11"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name frame %s", err, want)
	}
	if err := mmapBatchError(7, gfns, make([]int32, 3), syscall.ENOENT); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("ioctl ENOENT: got %v", err)
	}
	if err := mmapBatchError(7, gfns, []int32{0, 0, -int32(syscall.EPERM)}, syscall.ENOENT); !errors.Is(err, syscall.EPERM) {
		t.Errorf("per-frame EPERM should be reported first: got %v", err)
	}
}
