package kernel

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// budgetKernel writes a bzImage (gzip payload) of linuxLike's ELF to a
// file and returns its path and what loading it costs.
func budgetKernel(t *testing.T) (string, uint64) {
	elf := linuxLike().Build()
	img := makeBzImage(withSize(gzipBytes(t, elf), len(elf)), 3, 0x020f)
	p := filepath.Join(t.TempDir(), "bzImage")
	if err := os.WriteFile(p, img, 0o644); err != nil {
		t.Fatal(err)
	}
	cost := decompressionCost(img, Limits{})
	if cost != 3*uint64(len(elf)) {
		t.Fatalf("cost %d for a %d-byte kernel, want 3x", cost, len(elf))
	}
	return p, cost
}

// waitForWaiter returns once some Acquire waits on b, or when done is
// closed (then the waiter did not wait).
func waitForWaiter(t *testing.T, b *Budget, done <-chan struct{}) {
	t.Helper()
	// TryAcquire fails, even with room, while anyone waits.
	for i := 0; b.sem.TryAcquire(1); i++ {
		b.sem.Release(1)
		select {
		case <-done:
			t.Fatal("the second load did not wait for the first")
		default:
		}
		if i > 1e7 {
			t.Fatal("the second load never waited")
		}
		runtime.Gosched()
	}
}

// TestBudgetQueues: while one load holds its share, a second one that
// does not fit the rest waits, and proceeds once the first is released.
func TestBudgetQueues(t *testing.T) {
	p, cost := budgetKernel(t)
	b := NewBudget(cost + cost/2)
	_, release1, err := OpenFile(t.Context(), p, Limits{}, b)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	var img2 *Image
	var err2 error
	go func() {
		defer close(done)
		var release2 func() error
		if img2, release2, err2 = OpenFile(t.Context(), p, Limits{}, b); err2 == nil {
			release2()
		}
	}()
	waitForWaiter(t, b, done)
	release1()
	release1() // a second release gives nothing back twice
	<-done
	if err2 != nil || img2 == nil {
		t.Fatalf("second load after the first was released: %v", err2)
	}
	// Everything was given back: the whole budget is free.
	if !b.sem.TryAcquire(int64(b.Total())) {
		t.Fatal("the budget was not given back in full")
	}
}

// TestBudgetCancel: a load waiting for the budget ends with its context.
func TestBudgetCancel(t *testing.T) {
	p, cost := budgetKernel(t)
	b := NewBudget(cost)
	_, release, err := OpenFile(t.Context(), p, Limits{}, b)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _, err = OpenFile(ctx, p, Limits{}, b)
	}()
	waitForWaiter(t, b, done)
	cancel()
	<-done
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
}

// TestBudgetRefusesOversize: a kernel that needs more than the whole
// budget is refused at once, naming the file and the budget; a failed
// load gives its share back; an ELF kernel (mapped) costs nothing.
func TestBudgetRefusesOversize(t *testing.T) {
	p, cost := budgetKernel(t)
	b := NewBudget(cost - 1)
	_, _, err := OpenFile(t.Context(), p, Limits{}, b)
	if !errors.Is(err, ErrOverBudget) || !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "budget of "+strconv.FormatUint(cost-1, 10)+" bytes") {
		t.Fatalf("over budget: %v", err)
	}
	t.Logf("refused: %v", err)

	bomb := filepath.Join(t.TempDir(), "bomb")
	if err := os.WriteFile(bomb, makeBzImage(withSize(padded(xzZeros(t, 4<<20), 64<<10), 1<<20), 3, 0x020f), 0o644); err != nil {
		t.Fatal(err)
	}
	b = NewBudget(64 << 20)
	if _, _, err := OpenFile(t.Context(), bomb, Limits{}, b); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("bomb: %v", err)
	}
	if !b.sem.TryAcquire(64 << 20) {
		t.Fatal("a refused bomb kept its share of the budget")
	}
	b.sem.Release(64 << 20)

	elf := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(elf, linuxLike().Build(), 0o644); err != nil {
		t.Fatal(err)
	}
	_, release, err := OpenFile(t.Context(), elf, Limits{}, NewBudget(1))
	if err != nil {
		t.Fatalf("ELF under a 1-byte budget: %v", err)
	}
	release()
}

func TestNewBudgetZeroIsNoLimit(t *testing.T) {
	if b := NewBudget(0); b != nil || b.Total() != 0 {
		t.Fatalf("NewBudget(0) = %v", b)
	}
	p, _ := budgetKernel(t)
	if _, release, err := OpenFile(t.Context(), p, Limits{}, nil); err != nil {
		t.Fatal(err)
	} else {
		release()
	}
}
