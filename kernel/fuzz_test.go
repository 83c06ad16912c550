package kernel

import (
	"bytes"
	"encoding/binary"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
)

var fuzzLimits = Limits{MaxDecompressed: 1 << 20, MaxLoadSize: 64 << 20, MaxImageSize: 16 << 20}

// realSeeds returns, when a distribution kernel is at hand, small pieces of
// it: the bzImage's setup sectors (re-pointed at a small payload) and the
// unwrapped ELF's headers and Xen notes.
func realSeeds(t testing.TB) (bz, elfHead, notes []byte) {
	realSeedsOnce.Do(func() { realSeedBz, realSeedHead, realSeedNotes = computeRealSeeds(t) })
	return realSeedBz, realSeedHead, realSeedNotes
}

var (
	realSeedsOnce                           sync.Once
	realSeedBz, realSeedHead, realSeedNotes []byte
)

func computeRealSeeds(t testing.TB) (bz, elfHead, notes []byte) {
	if os.Getenv("XENOPSD_FUZZ_NO_REAL") != "" {
		return nil, nil, nil
	}
	// The bzImage's setup sectors, re-pointed at a small payload: no need
	// to decompress 60 MB in every fuzz worker.
	if ks := debianKernels(t); len(ks) > 0 {
		if f, err := os.Open(ks[0]); err == nil {
			head := make([]byte, 64<<10)
			n, _ := io.ReadFull(f, head)
			f.Close()
			head = head[:n]
			if IsBzImage(head) {
				if setup := (int(head[bzSetupSects]) + 1) * 512; setup <= len(head) {
					elf := linuxLike().Build()
					payload := withSize(gzipBytes(t, elf), len(elf))
					bz = append(bytes.Clone(head[:setup]), payload...)
					binary.LittleEndian.PutUint32(bz[bzPayloadOff:], 0)
					binary.LittleEndian.PutUint32(bz[bzPayloadLen:], uint32(len(payload)))
				}
			}
		}
	}
	// The headers and Xen notes of an uncompressed vmlinux, read in place.
	f, err := openVmlinux()
	if err != nil {
		return bz, nil, nil
	}
	defer f.Close()
	elfHead = make([]byte, 8192)
	n, _ := io.ReadFull(f, elfHead)
	elfHead = elfHead[:n]
	if n < 64 || string(elfHead[:4]) != "\x7fELF" {
		return bz, nil, nil
	}
	le := binary.LittleEndian
	phoff, phnum := le.Uint64(elfHead[32:]), int(le.Uint16(elfHead[56:]))
	for i := 0; i < phnum && phoff+uint64(i+1)*56 <= uint64(n); i++ {
		ph := elfHead[phoff+uint64(i)*56:]
		if le.Uint32(ph) == ptNote {
			off, sz := le.Uint64(ph[8:]), le.Uint64(ph[32:])
			if sz <= 64<<10 {
				notes = make([]byte, sz)
				if _, err := f.ReadAt(notes, int64(off)); err != nil {
					notes = nil
				}
			}
		}
	}
	return bz, elfHead, notes
}

func openVmlinux() (*os.File, error) {
	home, _ := os.UserHomeDir()
	for _, p := range []string{
		os.Getenv("XENOPSD_TEST_VMLINUX"),
		"../tests/nested/.work/img/vmlinux",
		filepath.Join(home, ".cache/nested-xen/img/vmlinux"),
	} {
		if p == "" {
			continue
		}
		if f, err := os.Open(p); err == nil {
			return f, nil
		}
	}
	return nil, os.ErrNotExist
}

// smallLinuxLike is linuxLike with little file Data: small inputs fuzz faster.
func smallLinuxLike() elftest.Image {
	e := linuxLike()
	e.Segments[0].Data = e.Segments[0].Data[:0x800]
	e.Segments[1].Data = e.Segments[1].Data[:64]
	return e
}

func FuzzParseELF(f *testing.F) {
	f.Add(smallLinuxLike().Build())
	e := smallLinuxLike()
	e.SectionNotes, e.Notes = e.Notes, nil
	f.Add(e.Build())
	if _, head, _ := realSeeds(f); head != nil {
		f.Add(head)
	}
	// ELF32 (PVH only), with its note in a segment and in a section.
	e32 := smallGRUBLike()
	f.Add(e32.Build())
	e32.SectionNotes, e32.Notes = e32.Notes, nil
	f.Add(e32.Build())
	f.Fuzz(func(t *testing.T, data []byte) {
		img, err := ParseELF(data, fuzzLimits)
		if err != nil {
			if img != nil {
				t.Fatal("image returned with an error")
			}
			return
		}
		var total uint64
		for i, s := range img.Segments {
			if uint64(len(s.Data)) > s.MemSize || s.PAddr+s.MemSize < s.PAddr {
				t.Fatalf("segment %d inconsistent", i)
			}
			if i > 0 && s.PAddr < img.Segments[i-1].PAddr+img.Segments[i-1].MemSize {
				t.Fatalf("segments %d and %d overlap", i-1, i)
			}
			total += s.MemSize
		}
		if total > fuzzLimits.MaxLoadSize || img.PhysEnd < img.PhysStart {
			t.Fatalf("limits not enforced: total %d range [%#x,%#x)", total, img.PhysStart, img.PhysEnd)
		}
		switch img.Class {
		case ELF32: // accepted only as PVH: all below 4 GiB, entry checked
			if err := img.CheckPVH(); err != nil || img.PhysEnd > 1<<32 {
				t.Fatalf("ELF32 image accepted that cannot boot as PVH: %v, ends at %#x", err, img.PhysEnd)
			}
		case ELF64:
			_ = img.CheckPVH()
		default:
			t.Fatalf("image of class %v accepted", img.Class)
		}
	})
}

// smallGRUBLike is grubLikePVH with little file Data.
func smallGRUBLike() elftest.Image {
	e := grubLikePVH()
	e.Segments[0].Data = e.Segments[0].Data[:0x100]
	e.Segments[1].Data = e.Segments[1].Data[:64]
	return e
}

func FuzzParseNotes(f *testing.F) {
	f.Add(elftest.EncodeNotes(linuxLike().Notes))
	f.Add(elftest.EncodeNotes([]elftest.Note{elftest.XenNote(NotePhys32Reloc, append(elftest.U32(0x200000), elftest.U32(0x1000000)...))}))
	if _, _, notes := realSeeds(f); notes != nil {
		f.Add(notes)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var n XenNotes
		if err := ParseNotes(data, &n, 64, "fuzz"); err != nil {
			return
		}
		if n.Count > 64 || len(n.Phys32Reloc) > 3 || len(n.GuestOS) > maxStringNote {
			t.Fatalf("limits not enforced: %+v", n)
		}
		_ = n.FeatureList()
	})
}

func FuzzUnwrapBzImage(f *testing.F) {
	elf := linuxLike().Build()
	f.Add(makeBzImage(withSize(gzipBytes(f, elf), len(elf)), 3, 0x020f))
	f.Add(makeBzImage(withSize(zstdBytes(f, elf), len(elf)), 1, 0x020c))
	f.Add(makeBzImage(withSize(lz4LegacyBytes(f, elf), len(elf)), 0, 0x0208))
	f.Add(makeBzImage(withSize(lzmaBytes(f, elf), len(elf)), 2, 0x020f))
	if bz, _, _ := realSeeds(f); bz != nil {
		f.Add(bz)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		out, _, err := Unwrap(data, fuzzLimits)
		if err == nil && uint64(len(out)) > fuzzLimits.MaxDecompressed {
			t.Fatalf("output %d bytes over the limit", len(out))
		}
		// What OpenFile takes from the memory budget covers the output,
		// its copy and the decoder's window.
		if cost := decompressionCost(data, fuzzLimits); err == nil && cost < 3*uint64(len(out)) {
			t.Fatalf("cost %d for %d bytes of output", cost, len(out))
		}
		_, _ = Load(data, fuzzLimits)
	})
}
