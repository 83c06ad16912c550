package kernel

import (
	"bytes"
	"encoding/binary"
)

// testELF describes a tiny ELF64 kernel for tests and fuzz seeds.
type testELF struct {
	entry    uint64
	segs     []testSeg
	notes    []testNote // put in a PT_NOTE segment
	secNotes []testNote // put in a SHT_NOTE section only
}

type testSeg struct {
	paddr, vaddr uint64
	data         []byte
	memsz        uint64
	flags        uint32
}

type testNote struct {
	name string
	typ  uint32
	desc []byte
}

func u32(v uint32) []byte  { return binary.LittleEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte  { return binary.LittleEndian.AppendUint64(nil, v) }
func cstr(s string) []byte { return append([]byte(s), 0) }

func encodeNotes(ns []testNote) []byte {
	var b []byte
	for _, n := range ns {
		name := cstr(n.name)
		b = binary.LittleEndian.AppendUint32(b, uint32(len(name)))
		b = binary.LittleEndian.AppendUint32(b, uint32(len(n.desc)))
		b = binary.LittleEndian.AppendUint32(b, n.typ)
		b = append(b, name...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		b = append(b, n.desc...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// build lays out: ELF header, program headers, note data, segment data,
// then (if secNotes) section notes and a section header table.
func (e testELF) build() []byte {
	le := binary.LittleEndian
	nph := len(e.segs)
	if len(e.notes) > 0 {
		nph++
	}
	hdr := make([]byte, 64)
	copy(hdr, "\x7fELF")
	hdr[4], hdr[5], hdr[6] = 2, 1, 1
	le.PutUint16(hdr[16:], 2)
	le.PutUint16(hdr[18:], 62)
	le.PutUint32(hdr[20:], 1)
	le.PutUint64(hdr[24:], e.entry)
	le.PutUint64(hdr[32:], 64)
	le.PutUint16(hdr[52:], 64)
	le.PutUint16(hdr[54:], 56)
	le.PutUint16(hdr[56:], uint16(nph))
	le.PutUint16(hdr[58:], 64)

	off := uint64(64 + 56*nph)
	var phdrs, body bytes.Buffer
	ph := func(typ, flags uint32, fileOff, vaddr, paddr, filesz, memsz uint64) {
		p := make([]byte, 56)
		le.PutUint32(p[0:], typ)
		le.PutUint32(p[4:], flags)
		le.PutUint64(p[8:], fileOff)
		le.PutUint64(p[16:], vaddr)
		le.PutUint64(p[24:], paddr)
		le.PutUint64(p[32:], filesz)
		le.PutUint64(p[40:], memsz)
		le.PutUint64(p[48:], 4096)
		phdrs.Write(p)
	}
	if len(e.notes) > 0 {
		nb := encodeNotes(e.notes)
		ph(4, 4, off, 0, 0, uint64(len(nb)), uint64(len(nb)))
		body.Write(nb)
		off += uint64(len(nb))
	}
	for _, s := range e.segs {
		memsz := s.memsz
		if memsz == 0 {
			memsz = uint64(len(s.data))
		}
		ph(1, s.flags, off, s.vaddr, s.paddr, uint64(len(s.data)), memsz)
		body.Write(s.data)
		off += uint64(len(s.data))
	}
	out := append(append(hdr, phdrs.Bytes()...), body.Bytes()...)
	if len(e.secNotes) > 0 {
		nb := encodeNotes(e.secNotes)
		noteOff := uint64(len(out))
		out = append(out, nb...)
		shoff := uint64(len(out))
		sh := make([]byte, 128) // null section + one SHT_NOTE
		le.PutUint32(sh[64+4:], 7)
		le.PutUint64(sh[64+24:], noteOff)
		le.PutUint64(sh[64+32:], uint64(len(nb)))
		out = append(out, sh...)
		le.PutUint64(out[40:], shoff)
		le.PutUint16(out[60:], 2)
	}
	return out
}

// linuxLike is a small image shaped like a Linux x86_64 vmlinux with its Xen
// notes: text at 16 MiB physical, PVH entry inside it.
func linuxLike() testELF {
	text := bytes.Repeat([]byte{0x90}, 8192)
	data := bytes.Repeat([]byte{0xAB}, 4096)
	return testELF{
		entry: 0xffffffff81000000,
		segs: []testSeg{
			{paddr: 0x1000000, vaddr: 0xffffffff81000000, data: text, flags: 5},
			{paddr: 0x1004000, vaddr: 0xffffffff81004000, data: data, memsz: 0x10000, flags: 6},
		},
		notes: []testNote{
			{"Xen", NoteGuestOS, cstr("linux")},
			{"Xen", NoteGuestVersion, cstr("2.6")},
			{"Xen", NoteXenVersion, cstr("xen-3.0")},
			{"Xen", NoteVirtBase, u64(0xffffffff80000000)},
			{"Xen", NoteEntry, u64(0xffffffff81001000)},
			{"Xen", NoteHypercallPage, u64(0xffffffff81002000)},
			{"Xen", NoteFeatures, cstr("!writable_page_tables|pae_pgdir_above_4gb")},
			{"Xen", NoteSupportedFeatures, u32(0x801)},
			{"Xen", NotePAEMode, cstr("yes")},
			{"Xen", NoteLoader, cstr("generic")},
			{"Xen", NoteSuspendCancel, u32(1)},
			{"Xen", NoteInitP2M, u64(0x8000000000)},
			{"Xen", NoteModStartPFN, u32(1)},
			{"Xen", NotePhys32Entry, u32(0x1000400)},
			{"GNU", 3, []byte{1, 2, 3, 4}},
		},
	}
}
