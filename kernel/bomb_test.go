package kernel

import (
	"bytes"
	"errors"
	"runtime"
	"sync"
	"testing"

	"github.com/ulikunitz/xz"
)

// xzZeros returns an .xz stream (LZMA2, CRC64) of n zero bytes.
func xzZeros(t testing.TB, n int) []byte {
	var buf bytes.Buffer
	w, err := xz.WriterConfig{DictCap: 8 << 20}.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	zeros := make([]byte, 1<<20)
	for left := n; left > 0; left -= len(zeros) {
		if _, err := w.Write(zeros[:min(left, len(zeros))]); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var bombOnce struct {
	sync.Once
	img []byte
}

// padded pads an .xz stream to n bytes: bytes after the stream are
// ignored, yet count for the ratio limit, which they raise.
func padded(p []byte, n int) []byte { return append(p, make([]byte, n-len(p))...) }

// xzBomb is a bzImage like the one refused on real Xen: 1.3 MB whose xz
// payload expands far past the ratio limit (64 x 1.3 MB = 83 MB), its size
// trailer claiming a plausible 200 MiB.
func xzBomb(t testing.TB) []byte {
	bombOnce.Do(func() {
		bombOnce.img = makeBzImage(withSize(padded(xzZeros(t, 128<<20), 1300<<10), 200<<20), 3, 0x020f)
	})
	return bombOnce.img
}

// BenchmarkRefuseXZBomb measures the refusal of xzBomb. Measured on the
// 2-core development machine: before streaming into pooled chunks and the
// running ratio check, 2.3-3.7 s and 282 MB allocated per refusal (315k
// allocations); after, 0.44 s and 9.5 MB (69k).
func BenchmarkRefuseXZBomb(b *testing.B) {
	img := xzBomb(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Load(img, Limits{}); !errors.Is(err, ErrTooLarge) {
			b.Fatalf("bomb: %v", err)
		}
	}
}

// allocated returns the bytes f allocates (all goroutines: the package's
// tests do not run in parallel).
func allocated(f func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// TestRefusedBombAllocationBound: refusing a bomb allocates a bounded
// amount, well under its limit: the LZMA2 dictionary (8 MiB here) and at
// most ratioGrace of output chunks, however large the limit. Before, the
// output buffer alone grew to three times the limit.
func TestRefusedBombAllocationBound(t *testing.T) {
	// 32 MiB of zeros in 5 KB, padded to raise the ratio limit to 83 MB; the
	// size limit of 24 MiB is what the old code stopped at.
	img := makeBzImage(withSize(padded(xzZeros(t, 32<<20), 1300<<10), 20<<20), 3, 0x020f)
	lim := Limits{MaxDecompressed: 24 << 20}
	var err error
	n := allocated(func() { _, err = Load(img, lim) })
	if !errors.Is(err, ErrTooLarge) {
		t.Fatalf("bomb: %v", err)
	}
	t.Logf("refusal allocated %d bytes: %v", n, err)
	const bound = 40 << 20
	if n > bound {
		t.Fatalf("refusing the bomb allocated %d bytes, want at most %d", n, bound)
	}
}

// TestDeclaredSizeBound: a bzImage payload may not expand past its size
// trailer (libxenguest requires them equal); the output stops there.
func TestDeclaredSizeBound(t *testing.T) {
	elf := linuxLike().Build()
	for _, declared := range []int{0, len(elf) - 1} {
		img := makeBzImage(withSize(gzipBytes(t, elf), declared), 3, 0x020f)
		if _, err := Load(img, Limits{}); !errors.Is(err, ErrTooLarge) {
			t.Errorf("trailer %d for %d bytes: %v, want ErrTooLarge", declared, len(elf), err)
		}
	}
	img := makeBzImage(withSize(gzipBytes(t, elf), len(elf)), 3, 0x020f)
	if _, err := Load(img, Limits{}); err != nil {
		t.Errorf("exact trailer: %v", err)
	}
}
