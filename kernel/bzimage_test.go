package kernel

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/ulikunitz/xz/lzma"
)

// withSize appends the kernel's 4-byte uncompressed-size trailer.
func withSize(c []byte, n int) []byte { return binary.LittleEndian.AppendUint32(c, uint32(n)) }

func gzipBytes(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

func zstdBytes(t testing.TB, b []byte) []byte {
	e, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	return e.EncodeAll(b, nil)
}

func lzmaBytes(t testing.TB, b []byte) []byte {
	var buf bytes.Buffer
	w, err := lzma.WriterConfig{EOSMarker: true, SizeInHeader: false}.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Close()
	return buf.Bytes()
}

// lz4LegacyBytes frames b as "lz4 -l" does: magic, then per 8 MiB block its
// compressed size and data.
func lz4LegacyBytes(t testing.TB, b []byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, lz4LegacyMagic)
	for len(b) > 0 {
		n := min(len(b), lz4LegacyBlock)
		dst := make([]byte, lz4.CompressBlockBound(n))
		var c lz4.Compressor
		k, err := c.CompressBlock(b[:n], dst)
		if err != nil || k == 0 {
			t.Fatalf("lz4: %v (%d)", err, k)
		}
		out = binary.LittleEndian.AppendUint32(out, uint32(k))
		out = append(out, dst[:k]...)
		b = b[n:]
	}
	return out
}

// cli compresses with an external tool (as the kernel build does) when it
// is installed.
func cli(t testing.TB, b []byte, tool string, args ...string) []byte {
	if _, err := exec.LookPath(tool); err != nil {
		t.Skipf("%s not installed", tool)
	}
	cmd := exec.Command(tool, args...)
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	return out
}

// makeBzImage wraps payload in a minimal x86 boot sector + setup header.
func makeBzImage(payload []byte, setupSects int, version uint16) []byte {
	le := binary.LittleEndian
	n := setupSects
	if n == 0 {
		n = 4 // as the boot protocol reads 0
	}
	setup := make([]byte, (n+1)*512)
	setup[0x1f1] = byte(setupSects)
	le.PutUint16(setup[0x1fe:], 0xAA55)
	copy(setup[0x202:], "HdrS")
	le.PutUint16(setup[0x206:], version)
	const poff = 0x100
	le.PutUint32(setup[0x248:], poff)
	le.PutUint32(setup[0x24c:], uint32(len(payload)))
	img := append(setup, make([]byte, poff)...)
	img = append(img, payload...)
	return append(img, make([]byte, 64)...)
}

func TestBzImageCompressions(t *testing.T) {
	elf := linuxLike().Build()
	cases := []struct {
		format  string
		payload func(t testing.TB) []byte
	}{
		{CompressionGzip, func(t testing.TB) []byte { return withSize(gzipBytes(t, elf), len(elf)) }},
		{CompressionZstd, func(t testing.TB) []byte { return withSize(zstdBytes(t, elf), len(elf)) }},
		{CompressionLZ4, func(t testing.TB) []byte { return withSize(lz4LegacyBytes(t, elf), len(elf)) }},
		{CompressionLZMA, func(t testing.TB) []byte { return withSize(lzmaBytes(t, elf), len(elf)) }},
		{CompressionXZ, func(t testing.TB) []byte {
			return withSize(cli(t, elf, "xz", "--check=crc32", "--x86", "--lzma2=dict=1MiB", "-c"), len(elf))
		}},
		{CompressionXZ + "-crc64-nobcj", func(t testing.TB) []byte {
			return withSize(cli(t, elf, "xz", "--check=crc64", "-c"), len(elf))
		}},
		{CompressionBzip2, func(t testing.TB) []byte { return withSize(cli(t, elf, "bzip2", "-9", "-c"), len(elf)) }},
		{CompressionLZ4 + "-cli", func(t testing.TB) []byte { return withSize(cli(t, elf, "lz4", "-l", "-9", "-c"), len(elf)) }},
		{CompressionZstd + "-cli", func(t testing.TB) []byte { return withSize(cli(t, elf, "zstd", "-19", "-c"), len(elf)) }},
		{CompressionLZMA + "-cli", func(t testing.TB) []byte { return withSize(cli(t, elf, "lzma", "-9", "-c"), len(elf)) }},
	}
	for _, c := range cases {
		t.Run(c.format, func(t *testing.T) {
			bz := makeBzImage(c.payload(t), 3, 0x020f)
			img, err := Load(bz, Limits{})
			if err != nil {
				t.Fatal(err)
			}
			want := "bzImage+" + strings.SplitN(c.format, "-", 2)[0]
			if img.Compression != want || img.Notes.Phys32Entry != 0x1000400 || img.Size != uint64(len(elf)) {
				t.Fatalf("compression %q entry %#x size %d", img.Compression, img.Notes.Phys32Entry, img.Size)
			}
			// The same payload without the bzImage wrapper (vmlinux.gz etc.).
			raw, err := Load(c.payload(t), Limits{})
			if err != nil || raw.Notes.Phys32Entry != 0x1000400 {
				t.Fatalf("bare compressed: %v", err)
			}
		})
	}
}

func TestBzImageMalformed(t *testing.T) {
	elf := linuxLike().Build()
	good := makeBzImage(withSize(gzipBytes(t, elf), len(elf)), 3, 0x020f)
	le := binary.LittleEndian
	cases := []struct {
		name   string
		mutate func([]byte) []byte
		kind   error
		want   string
	}{
		{"truncated", func(b []byte) []byte { return b[:0x230] }, ErrMalformed, "shorter than the setup header"},
		{"boot flag", func(b []byte) []byte { b[0x1fe] = 0; return b }, ErrMalformed, "boot_flag"},
		{"old protocol", func(b []byte) []byte { le.PutUint16(b[0x206:], 0x0204); return b }, ErrUnsupported, "2.08"},
		{"setup_sects past end", func(b []byte) []byte { b[0x1f1] = 255; return b }, ErrMalformed, "setup_sects"},
		{"payload past end", func(b []byte) []byte { le.PutUint32(b[0x24c:], 1<<30); return b }, ErrMalformed, "payload_offset"},
		{"payload offset overflow", func(b []byte) []byte { le.PutUint32(b[0x248:], 0xffffffff); return b }, ErrMalformed, "payload_offset"},
		{"tiny payload", func(b []byte) []byte { le.PutUint32(b[0x24c:], 4); return b }, ErrMalformed, "payload_length"},
		{"trailer lies big", func(b []byte) []byte {
			end := 4*512 + 0x100 + int(le.Uint32(b[0x24c:]))
			le.PutUint32(b[end-4:], 0xfffffff0)
			return b
		}, ErrTooLarge, "declares"},
		{"corrupt gzip", func(b []byte) []byte {
			for i := 4*512 + 0x100 + 20; i < 4*512+0x100+60; i++ {
				b[i] ^= 0x55
			}
			return b
		}, ErrMalformed, "gzip payload"},
		{"unknown compression", func(b []byte) []byte { b[4*512+0x100] = 0x42; return b }, ErrUnsupported, "unknown compression"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(c.mutate(bytes.Clone(good)), Limits{})
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q: want kind %v mentioning %q", err, c.kind, c.want)
			}
		})
	}
}

// TestDecompressionBombs: every format stops at the size and ratio limits.
func TestDecompressionBombs(t *testing.T) {
	zeros := make([]byte, 4<<20)
	payloads := map[string][]byte{
		CompressionGzip: gzipBytes(t, zeros),
		CompressionZstd: zstdBytes(t, zeros),
		CompressionLZ4:  lz4LegacyBytes(t, zeros),
		CompressionLZMA: lzmaBytes(t, zeros),
	}
	if _, err := exec.LookPath("xz"); err == nil {
		payloads[CompressionXZ] = cli(t, zeros, "xz", "--x86", "--lzma2=dict=1MiB", "-c")
	}
	if _, err := exec.LookPath("bzip2"); err == nil {
		payloads[CompressionBzip2] = cli(t, zeros, "bzip2", "-c")
	}
	for name, p := range payloads {
		t.Run(name, func(t *testing.T) {
			// Size limit.
			_, _, err := Decompress(p, Limits{MaxDecompressed: 1 << 20, MaxRatio: 1 << 30})
			if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "decompression bomb") {
				t.Fatalf("size limit: %v", err)
			}
			// Ratio limit (4 MiB of zeros compresses far better than 64:1).
			_, _, err = Decompress(p, Limits{})
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("ratio limit: %v", err)
			}
			// Within both limits it decodes exactly.
			out, _, err := Decompress(p, Limits{MaxRatio: 1 << 30})
			if err != nil || !bytes.Equal(out, zeros) {
				t.Fatalf("within limits: %v (%d bytes)", err, len(out))
			}
		})
	}
}

func TestTruncatedPayloads(t *testing.T) {
	elf := linuxLike().Build()
	for name, p := range map[string][]byte{
		CompressionGzip: gzipBytes(t, elf),
		CompressionZstd: zstdBytes(t, elf),
		CompressionLZ4:  lz4LegacyBytes(t, elf),
		CompressionLZMA: lzmaBytes(t, elf),
	} {
		for _, cut := range []int{len(p) / 3, len(p) / 2, len(p) - 1} {
			if _, err := Load(p[:cut], Limits{}); err == nil {
				t.Errorf("%s cut at %d/%d: accepted", name, cut, len(p))
			}
		}
	}
}

func TestOpenInitrd(t *testing.T) {
	dir := t.TempDir()
	p := dir + "/initrd"
	want := make([]byte, 2*initrdChunk+5000)
	for i := range want {
		want[i] = byte(i * 7)
	}
	if err := os.WriteFile(p, want, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := OpenInitrd(p, Limits{})
	if err != nil || r.Size() != uint64(len(want)) {
		t.Fatalf("OpenInitrd: %v", err)
	}
	defer r.Close()
	var got []byte
	chunks := 0
	err = r.Copy(t.Context(), func(off uint64, chunk []byte) error {
		if off != uint64(len(got)) || len(chunk) > initrdChunk {
			t.Fatalf("chunk at %d of %d bytes after %d bytes", off, len(chunk), len(got))
		}
		got = append(got, chunk...)
		chunks++
		return nil
	})
	if err != nil || !bytes.Equal(got, want) || chunks != 3 {
		t.Fatalf("Copy: %v, %d chunks, equal %v", err, chunks, bytes.Equal(got, want))
	}
	// The file grows after it was opened: the copy fails.
	if err := os.WriteFile(p, append(want, 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Copy(t.Context(), func(uint64, []byte) error { return nil }); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("grown: %v", err)
	}
	if err := os.WriteFile(p, want[:100], 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.Copy(t.Context(), func(uint64, []byte) error { return nil }); err == nil {
		t.Fatal("shrunk: copied")
	}
	if _, err := OpenInitrd(p, Limits{MaxInitrdSize: 50}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("over the limit: %v", err)
	}
	if _, err := OpenInitrd(dir, Limits{}); err == nil {
		t.Fatal("a directory was accepted as an initrd")
	}
	os.WriteFile(p, nil, 0o644)
	if _, err := OpenInitrd(p, Limits{}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty: %v", err)
	}
}

func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	elf := linuxLike().Build()
	for name, content := range map[string][]byte{
		"vmlinux":    elf,
		"vmlinux.gz": gzipBytes(t, elf),
		"bzImage":    makeBzImage(withSize(zstdBytes(t, elf), len(elf)), 3, 0x020f),
	} {
		p := dir + "/" + name
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		img, release, err := OpenFile(t.Context(), p, Limits{}, nil)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if img.Notes.Phys32Entry != 0x1000400 || !bytes.Equal(img.Segments[0].Data[:16], bytes.Repeat([]byte{0x90}, 16)) {
			t.Errorf("%s: wrong image", name)
		}
		if err := release(); err != nil {
			t.Errorf("%s: release: %v", name, err)
		}
		if err := release(); err != nil {
			t.Errorf("%s: second release: %v", name, err)
		}
	}
	bad := dir + "/bad"
	os.WriteFile(bad, elf[:100], 0o644)
	if _, _, err := OpenFile(t.Context(), bad, Limits{}, nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("truncated: %v", err)
	}
	os.WriteFile(bad, nil, 0o644)
	if _, _, err := OpenFile(t.Context(), bad, Limits{}, nil); !errors.Is(err, ErrMalformed) {
		t.Errorf("empty: %v", err)
	}
	if _, _, err := OpenFile(t.Context(), dir, Limits{}, nil); err == nil {
		t.Errorf("directory accepted")
	}
	if _, _, err := OpenFile(t.Context(), dir+"/vmlinux", Limits{MaxImageSize: 100}, nil); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over the limit: %v", err)
	}
}
