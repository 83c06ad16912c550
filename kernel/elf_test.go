package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
)

func TestParseELFLinuxLike(t *testing.T) {
	img, err := ParseELF(linuxLike().Build(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	n := img.Notes
	if n.Count != 14 {
		t.Errorf("Xen note count = %d, want 14", n.Count)
	}
	if !n.HasPhys32Entry || n.Phys32Entry != 0x1000400 {
		t.Errorf("PHYS32_ENTRY = %#x (%v)", n.Phys32Entry, n.HasPhys32Entry)
	}
	if n.VirtBase != 0xffffffff80000000 || n.Entry != 0xffffffff81001000 || n.HypercallPage != 0xffffffff81002000 {
		t.Errorf("numeric notes wrong: %+v", n)
	}
	if n.GuestOS != "linux" || n.Loader != "generic" || n.PAEMode != "yes" || n.XenVersion != "xen-3.0" {
		t.Errorf("string notes wrong: %+v", n)
	}
	if n.SupportedFeatures != 0x801 || n.InitP2M != 0x8000000000 || !n.HasModStartPFN || n.SuspendCancel != 1 {
		t.Errorf("other notes wrong: %+v", n)
	}
	fl := n.FeatureList()
	if len(fl) != 2 || fl[0] != (Feature{"writable_page_tables", true}) || fl[1] != (Feature{"pae_pgdir_above_4gb", false}) {
		t.Errorf("features = %+v", fl)
	}
	if len(img.Segments) != 2 || img.PhysStart != 0x1000000 || img.PhysEnd != 0x1014000 {
		t.Errorf("segments %d range [%#x,%#x)", len(img.Segments), img.PhysStart, img.PhysEnd)
	}
	if img.Segments[1].MemSize != 0x10000 || len(img.Segments[1].Data) != 4096 {
		t.Errorf("bss segment: memsz %#x filesz %d", img.Segments[1].MemSize, len(img.Segments[1].Data))
	}
	if err := img.CheckPVH(); err != nil {
		t.Errorf("CheckPVH: %v", err)
	}
}

func TestSectionNotesFallback(t *testing.T) {
	e := linuxLike()
	e.SectionNotes, e.Notes = e.Notes, nil
	img, err := ParseELF(e.Build(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if img.Notes.Count != 14 || img.Notes.Phys32Entry != 0x1000400 {
		t.Fatalf("section notes not read: %+v", img.Notes)
	}
}

// TestMalformedELF corrupts one field at a time and expects an error naming it.
func TestMalformedELF(t *testing.T) {
	le := binary.LittleEndian
	good := linuxLike().Build()
	phoff := uint64(64)
	seg1 := phoff + 56 // first PT_LOAD (after PT_NOTE)
	cases := []struct {
		name   string
		mutate func(b []byte) []byte
		kind   error
		want   string
	}{
		{"truncated header", func(b []byte) []byte { return b[:40] }, ErrMalformed, "shorter than an ELF64 header"},
		{"bad magic", func(b []byte) []byte { b[1] = 'X'; return b }, ErrMalformed, "no ELF magic"},
		{"unknown class", func(b []byte) []byte { b[4] = 3; return b }, ErrUnsupported, "EI_CLASS"},
		{"elf32 class on x86_64", func(b []byte) []byte { b[4] = 1; return b }, ErrUnsupported, "an ELF32 kernel must be i386"},
		{"i386 machine in elf64", func(b []byte) []byte { le.PutUint16(b[18:], 3); return b }, ErrUnsupported, "an ELF64 kernel must be x86_64"},
		{"big endian", func(b []byte) []byte { b[5] = 2; return b }, ErrUnsupported, "EI_DATA"},
		{"arm64", func(b []byte) []byte { le.PutUint16(b[18:], 183); return b }, ErrUnsupported, "e_machine"},
		{"relocatable", func(b []byte) []byte { le.PutUint16(b[16:], 1); return b }, ErrUnsupported, "e_type"},
		{"no phdrs", func(b []byte) []byte { le.PutUint16(b[56:], 0); return b }, ErrMalformed, "e_phnum"},
		{"too many phdrs", func(b []byte) []byte { le.PutUint16(b[56:], 1000); return b }, ErrTooLarge, "e_phnum"},
		{"phentsize", func(b []byte) []byte { le.PutUint16(b[54:], 32); return b }, ErrMalformed, "e_phentsize"},
		{"phoff past end", func(b []byte) []byte { le.PutUint64(b[32:], uint64(len(b))-10); return b }, ErrMalformed, "e_phoff"},
		{"phoff overflow", func(b []byte) []byte { le.PutUint64(b[32:], ^uint64(0)-20); return b }, ErrMalformed, "e_phoff"},
		{"filesz > memsz", func(b []byte) []byte { le.PutUint64(b[seg1+40:], 10); return b }, ErrMalformed, "p_filesz"},
		{"segment past end", func(b []byte) []byte { le.PutUint64(b[seg1+8:], uint64(len(b))-100); return b }, ErrMalformed, "p_offset"},
		{"offset overflow", func(b []byte) []byte { le.PutUint64(b[seg1+8:], ^uint64(0)-5); return b }, ErrMalformed, "p_offset"},
		{"paddr overflow", func(b []byte) []byte { le.PutUint64(b[seg1+24:], ^uint64(0)-5); return b }, ErrMalformed, "p_paddr"},
		{"huge memsz", func(b []byte) []byte { le.PutUint64(b[seg1+40:], 1<<40); return b }, ErrTooLarge, "p_memsz"},
		{"overlap", func(b []byte) []byte { le.PutUint64(b[seg1+56+24:], 0x1001000); return b }, ErrMalformed, "overlaps"},
		{"note past end", func(b []byte) []byte { le.PutUint64(b[phoff+32:], 1<<20); return b }, ErrMalformed, "PT_NOTE"},
		{"note namesz lies", func(b []byte) []byte {
			off := le.Uint64(b[phoff+8:])
			le.PutUint32(b[off:], 0xfffffff0)
			return b
		}, ErrMalformed, "n_namesz"},
		{"note descsz lies", func(b []byte) []byte {
			off := le.Uint64(b[phoff+8:])
			le.PutUint32(b[off+4:], 0x7fffffff)
			return b
		}, ErrMalformed, "n_descsz"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := c.mutate(bytes.Clone(good))
			_, err := ParseELF(b, Limits{})
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, c.kind) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q: want kind %v mentioning %q", err, c.kind, c.want)
			}
		})
	}
}

func TestBadNotes(t *testing.T) {
	cases := []struct {
		name string
		note elftest.Note
		want string
	}{
		{"numeric 3 bytes", elftest.XenNote(NoteEntry, []byte{1, 2, 3}), "n_descsz 3"},
		{"phys32 above 4G", elftest.XenNote(NotePhys32Entry, elftest.U64(1<<33)), "above 4 GiB"},
		{"control byte", elftest.XenNote(NoteGuestOS, []byte("li\x01nux\x00")), "control byte"},
		{"bad utf8", elftest.XenNote(NoteLoader, []byte{0xff, 0xfe, 0}), "UTF-8"},
		{"reloc 5 bytes", elftest.XenNote(NotePhys32Reloc, make([]byte, 5)), "PHYS32_RELOC"},
		{"huge string", elftest.XenNote(NoteFeatures, bytes.Repeat([]byte("a"), 5000)), "limit"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var n XenNotes
			err := ParseNotes(elftest.EncodeNotes([]elftest.Note{c.note}), &n, 16, "test")
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want mention of %q", err, c.want)
			}
		})
	}
	// A non-Xen note with a bad size is not our business; it is skipped.
	var n XenNotes
	if err := ParseNotes(elftest.EncodeNotes([]elftest.Note{{Name: "GNU", Type: NoteEntry, Desc: []byte{1}}}), &n, 16, "test"); err != nil || n.Count != 0 {
		t.Fatalf("GNU note: err %v count %d", err, n.Count)
	}
	// Too many notes.
	many := make([]elftest.Note, 20)
	for i := range many {
		many[i] = elftest.XenNote(NoteInfo, nil)
	}
	if err := ParseNotes(elftest.EncodeNotes(many), &n, 16, "test"); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("20 notes with limit 16: %v", err)
	}
}

func TestCheckPVH(t *testing.T) {
	e := linuxLike()
	e.Notes = e.Notes[:len(e.Notes)-2] // drop PHYS32_ENTRY
	img, err := ParseELF(e.Build(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.CheckPVH(); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("no PHYS32_ENTRY: %v", err)
	}
	e = linuxLike()
	e.Notes[len(e.Notes)-2].Desc = elftest.U32(0x1004800) // in the data segment
	img, err = ParseELF(e.Build(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if err := img.CheckPVH(); err == nil || !strings.Contains(err.Error(), "non-executable") {
		t.Fatalf("entry in Data: %v", err)
	}
	e.Notes[len(e.Notes)-2].Desc = elftest.U32(0x2000000) // outside
	img, _ = ParseELF(e.Build(), Limits{})
	if err := img.CheckPVH(); err == nil || !strings.Contains(err.Error(), "not inside") {
		t.Fatalf("entry outside: %v", err)
	}
}
