// Package elftest builds small ELF64 x86-64 images for tests and fuzz seeds:
// loadable segments, Xen ELF notes in a PT_NOTE segment or a SHT_NOTE
// section. It writes exactly what it is given, so a test can also describe
// an image that lies.
package elftest

import (
	"bytes"
	"encoding/binary"
)

// Image describes an ELF64 executable.
type Image struct {
	Entry        uint64
	Segments     []Segment
	Notes        []Note // in a PT_NOTE segment
	SectionNotes []Note // in a SHT_NOTE section only
}

// Segment is a PT_LOAD segment. A zero Memsz means len(Data).
type Segment struct {
	Paddr, Vaddr uint64
	Data         []byte
	Memsz        uint64
	Flags        uint32 // PF_X=1, PF_W=2, PF_R=4
}

// Note is an ELF note.
type Note struct {
	Name string
	Type uint32
	Desc []byte
}

// U32, U64 and CString encode note descriptors.
func U32(v uint32) []byte     { return binary.LittleEndian.AppendUint32(nil, v) }
func U64(v uint64) []byte     { return binary.LittleEndian.AppendUint64(nil, v) }
func CString(s string) []byte { return append([]byte(s), 0) }

// EncodeNotes lays out notes as they stand in a note segment: each header,
// name and descriptor padded to 4 bytes.
func EncodeNotes(ns []Note) []byte {
	le := binary.LittleEndian
	var b []byte
	for _, n := range ns {
		name := CString(n.Name)
		b = le.AppendUint32(b, uint32(len(name)))
		b = le.AppendUint32(b, uint32(len(n.Desc)))
		b = le.AppendUint32(b, n.Type)
		b = append(b, name...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		b = append(b, n.Desc...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// Build lays out: ELF header, program headers, note data, segment data,
// then (with SectionNotes) those notes and a section header table.
func (im Image) Build() []byte {
	le := binary.LittleEndian
	nph := len(im.Segments)
	if len(im.Notes) > 0 {
		nph++
	}
	hdr := make([]byte, 64)
	copy(hdr, "\x7fELF")
	hdr[4], hdr[5], hdr[6] = 2, 1, 1 // 64-bit, little-endian, version 1
	le.PutUint16(hdr[16:], 2)        // ET_EXEC
	le.PutUint16(hdr[18:], 62)       // EM_X86_64
	le.PutUint32(hdr[20:], 1)
	le.PutUint64(hdr[24:], im.Entry)
	le.PutUint64(hdr[32:], 64) // e_phoff
	le.PutUint16(hdr[52:], 64) // e_ehsize
	le.PutUint16(hdr[54:], 56) // e_phentsize
	le.PutUint16(hdr[56:], uint16(nph))
	le.PutUint16(hdr[58:], 64) // e_shentsize

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
	if len(im.Notes) > 0 {
		nb := EncodeNotes(im.Notes)
		ph(4, 4, off, 0, 0, uint64(len(nb)), uint64(len(nb))) // PT_NOTE
		body.Write(nb)
		off += uint64(len(nb))
	}
	for _, s := range im.Segments {
		memsz := s.Memsz
		if memsz == 0 {
			memsz = uint64(len(s.Data))
		}
		ph(1, s.Flags, off, s.Vaddr, s.Paddr, uint64(len(s.Data)), memsz) // PT_LOAD
		body.Write(s.Data)
		off += uint64(len(s.Data))
	}
	out := append(append(hdr, phdrs.Bytes()...), body.Bytes()...)
	if len(im.SectionNotes) > 0 {
		nb := EncodeNotes(im.SectionNotes)
		noteOff := uint64(len(out))
		out = append(out, nb...)
		shoff := uint64(len(out))
		sh := make([]byte, 128) // the null section, then one SHT_NOTE
		le.PutUint32(sh[64+4:], 7)
		le.PutUint64(sh[64+24:], noteOff)
		le.PutUint64(sh[64+32:], uint64(len(nb)))
		out = append(out, sh...)
		le.PutUint64(out[40:], shoff)
		le.PutUint16(out[60:], 2)
	}
	return out
}

// XenNote is a note in the "Xen" namespace (XEN_ELFNOTE_*).
func XenNote(typ uint32, desc []byte) Note { return Note{Name: "Xen", Type: typ, Desc: desc} }
