package kernel

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
)

func TestParseELF32PVH(t *testing.T) {
	for _, inSections := range []bool{false, true} {
		e := grubLikePVH()
		if inSections {
			e.SectionNotes, e.Notes = e.Notes, nil
		}
		img, err := ParseELF(e.Build(), Limits{})
		if err != nil {
			t.Fatalf("notes in sections %v: %v", inSections, err)
		}
		if img.Class != ELF32 || img.Entry != 0x100000 {
			t.Errorf("class %v entry %#x", img.Class, img.Entry)
		}
		if !img.Notes.HasPhys32Entry || img.Notes.Phys32Entry != 0x100000 || img.Notes.Count != 1 {
			t.Errorf("notes %+v", img.Notes)
		}
		if len(img.Segments) != 2 || img.PhysStart != 0x100000 || img.PhysEnd != 0x106058 {
			t.Fatalf("%d segments, range [%#x,%#x)", len(img.Segments), img.PhysStart, img.PhysEnd)
		}
		s0, s1 := img.Segments[0], img.Segments[1]
		if s0.MemSize != 0x5858 || len(s0.Data) != 0x1ccb || s0.Flags != 7 || s1.PAddr != 0x105858 || len(s1.Data) != 0x800 || s1.Data[0] != 0xAB {
			t.Errorf("segments %+v %+v", s0, s1)
		}
		if err := img.CheckPVH(); err != nil {
			t.Errorf("CheckPVH: %v", err)
		}
	}
	if img, err := ParseELF(linuxLike().Build(), Limits{}); err != nil || img.Class != ELF64 {
		t.Fatalf("ELF64: class %v, %v", img.Class, err)
	}
}

// TestMalformedELF32 corrupts one field of an ELF32 image at a time, or
// describes a bad one, and expects it refused with an error naming what
// was wrong.
func TestMalformedELF32(t *testing.T) {
	le := binary.LittleEndian
	const phoff, phdr = 52, 32
	seg0 := uint64(phoff + phdr) // the first PT_LOAD, after the PT_NOTE
	seg1 := seg0 + phdr
	mutate := func(f func(b []byte)) func() []byte {
		return func() []byte { b := grubLikePVH().Build(); f(b); return b }
	}
	describe := func(f func(e *elftest.Image)) func() []byte {
		return func() []byte { e := grubLikePVH(); f(&e); return e.Build() }
	}
	cases := []struct {
		name  string
		image func() []byte
		kind  error
		want  string
	}{
		{"truncated header", func() []byte { return grubLikePVH().Build()[:40] }, ErrMalformed, "shorter than an ELF32 header (52)"},
		{"truncated ident", func() []byte { return grubLikePVH().Build()[:10] }, ErrMalformed, "ELF identification"},
		{"x86_64 machine", mutate(func(b []byte) { le.PutUint16(b[18:], 62) }), ErrUnsupported, "e_machine"},
		{"big endian", mutate(func(b []byte) { b[5] = 2 }), ErrUnsupported, "EI_DATA"},
		{"phentsize", mutate(func(b []byte) { le.PutUint16(b[42:], 56) }), ErrMalformed, "e_phentsize"},
		{"phoff past end", mutate(func(b []byte) { le.PutUint32(b[28:], uint32(len(b))-10) }), ErrMalformed, "e_phoff"},
		{"phoff near 4G", mutate(func(b []byte) { le.PutUint32(b[28:], 0xfffffff0) }), ErrMalformed, "e_phoff"},
		{"filesz > memsz", mutate(func(b []byte) { le.PutUint32(b[seg0+20:], 10) }), ErrMalformed, "p_filesz"},
		{"segment past end", mutate(func(b []byte) { le.PutUint32(b[seg0+4:], uint32(len(b))-100) }), ErrMalformed, "p_offset"},
		{"paddr past 4G", mutate(func(b []byte) { le.PutUint32(b[seg1+12:], 0xffffff00) }), ErrMalformed, "p_paddr"},
		{"vaddr past 4G", mutate(func(b []byte) { le.PutUint32(b[seg1+8:], 0xffffff00) }), ErrMalformed, "p_vaddr"},
		{"oversized segment", mutate(func(b []byte) { le.PutUint32(b[seg1+20:], 0xf0000000) }), ErrTooLarge, "p_memsz"},
		{"overlap", describe(func(e *elftest.Image) { e.Segments[1].Paddr = 0x105000 }), ErrMalformed, "overlaps program header"},
		{"note past end", mutate(func(b []byte) { le.PutUint32(b[phoff+16:], 1<<20) }), ErrMalformed, "PT_NOTE"},
		{"missing note", describe(func(e *elftest.Image) {
			e.Notes = []elftest.Note{elftest.XenNote(NoteGuestOS, elftest.CString("GRUB"))}
		}),
			ErrUnsupported, "no XEN_ELFNOTE_PHYS32_ENTRY"},
		{"no notes at all", describe(func(e *elftest.Image) { e.Notes = nil }), ErrUnsupported, "no XEN_ELFNOTE_PHYS32_ENTRY"},
		{"entry outside the image", describe(func(e *elftest.Image) { e.Notes[0].Desc = elftest.U32(0x200000) }), ErrMalformed, "not inside any loaded segment"},
		{"entry in the bss", describe(func(e *elftest.Image) { e.Notes[0].Desc = elftest.U32(0x104000) }), ErrMalformed, "not inside any loaded segment"},
		{"entry not executable", describe(func(e *elftest.Image) { e.Segments[0].Flags = 6 }), ErrMalformed, "non-executable"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, err := ParseELF(c.image(), Limits{})
			if err == nil || img != nil {
				t.Fatalf("accepted (image %v)", img != nil)
			}
			if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q: want kind %v mentioning %q", err, c.kind, c.want)
			}
		})
	}
}

// TestGRUBImages parses Debian's GRUB for Xen images when they are at
// hand ($XENOPSD_TEST_GRUB_DIR, or the grub-xen-host package's directory):
// the PVH one is an ELF32 that boots as PVH, the PV one an ELF64 PV kernel.
func TestGRUBImages(t *testing.T) {
	dir := os.Getenv("XENOPSD_TEST_GRUB_DIR")
	if dir == "" {
		dir = "/usr/lib/grub-xen"
	}
	pvh, err := LoadFile(filepath.Join(dir, "grub-i386-xen_pvh.bin"), Limits{})
	if errors.Is(err, os.ErrNotExist) {
		t.Skipf("no GRUB for Xen images in %s (set XENOPSD_TEST_GRUB_DIR)", dir)
	}
	if err != nil {
		t.Fatalf("PVH image: %v", err)
	}
	t.Logf("PVH: %v, phys [%#x, %#x), %d segments, PHYS32_ENTRY %#x", pvh.Class, pvh.PhysStart, pvh.PhysEnd, len(pvh.Segments), pvh.Notes.Phys32Entry)
	if pvh.Class != ELF32 || !pvh.Notes.HasPhys32Entry {
		t.Errorf("PVH image: class %v, notes %+v", pvh.Class, pvh.Notes)
	}
	pv, err := LoadFile(filepath.Join(dir, "grub-x86_64-xen.bin"), Limits{})
	if err != nil {
		t.Fatalf("PV image: %v", err)
	}
	t.Logf("PV: %v, phys [%#x, %#x), %d segments, notes %+v", pv.Class, pv.PhysStart, pv.PhysEnd, len(pv.Segments), pv.Notes)
	if pv.Class != ELF64 || pv.Notes.XenVersion != "xen-3.0" || pv.Notes.GuestOS != "GRUB" {
		t.Errorf("PV image: class %v, notes %+v", pv.Class, pv.Notes)
	}
	// The 32-bit PV image is an ELF32 without PHYS32_ENTRY (and its
	// last note runs past its PT_NOTE segment): refused.
	if _, err := LoadFile(filepath.Join(dir, "grub-i386-xen.bin"), Limits{}); err == nil {
		t.Error("32-bit PV image accepted")
	} else {
		t.Logf("32-bit PV image refused: %v", err)
	}
}
