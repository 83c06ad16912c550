// Package elftest builds small ELF images for tests and fuzz seeds, ELF64
// x86-64 or ELF32 i386: loadable segments, Xen ELF notes in a PT_NOTE
// segment or a SHT_NOTE section. It writes exactly what it is given, so a
// test can also describe an image that lies; addresses and sizes of an
// ELF32 image are truncated to 32 bits, as its headers hold them.
package elftest

import (
	"encoding/binary"
)

// Image describes an ELF executable.
type Image struct {
	// ELF32 makes an ELF32 i386 image; the default is ELF64 x86-64.
	ELF32        bool
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
	c := elf64
	if im.ELF32 {
		c = elf32
	}
	nph := len(im.Segments)
	if len(im.Notes) > 0 {
		nph++
	}
	out := c.header(im.Entry, nph)
	off := uint64(len(out) + c.phdrSize*nph)
	var phdrs, body []byte
	if len(im.Notes) > 0 {
		nb := EncodeNotes(im.Notes)
		phdrs = c.progHeader(phdrs, 4, 4, off, 0, 0, uint64(len(nb)), uint64(len(nb))) // PT_NOTE
		body = append(body, nb...)
		off += uint64(len(nb))
	}
	for _, s := range im.Segments {
		memsz := s.Memsz
		if memsz == 0 {
			memsz = uint64(len(s.Data))
		}
		phdrs = c.progHeader(phdrs, 1, s.Flags, off, s.Vaddr, s.Paddr, uint64(len(s.Data)), memsz) // PT_LOAD
		body = append(body, s.Data...)
		off += uint64(len(s.Data))
	}
	out = append(append(out, phdrs...), body...)
	if len(im.SectionNotes) > 0 {
		nb := EncodeNotes(im.SectionNotes)
		noteOff := uint64(len(out))
		out = append(out, nb...)
		out = c.sectionTable(out, noteOff, uint64(len(nb)))
	}
	return out
}

// class is how one ELF class lays out its headers (System V gABI).
type class struct {
	ident, machine                 byte
	ehdrSize, phdrSize, shdrSize   int
	entry, phoff, shoff, phentsize int // e_* offsets; e_phnum, e_shentsize and e_shnum follow e_phentsize
	word                           func(b []byte, v uint64) []byte
	wordSize                       int
}

var (
	elf32 = class{ident: 1, machine: 3, ehdrSize: 52, phdrSize: 32, shdrSize: 40, entry: 24, phoff: 28, shoff: 32, phentsize: 42,
		word: func(b []byte, v uint64) []byte { return binary.LittleEndian.AppendUint32(b, uint32(v)) }, wordSize: 4}
	elf64 = class{ident: 2, machine: 62, ehdrSize: 64, phdrSize: 56, shdrSize: 64, entry: 24, phoff: 32, shoff: 40, phentsize: 54,
		word: binary.LittleEndian.AppendUint64, wordSize: 8}
)

func (c class) put(b []byte, at int, v uint64) {
	copy(b[at:at+c.wordSize], c.word(nil, v))
}

// header is the ELF header of an ET_EXEC image with nph program headers
// right after it.
func (c class) header(entry uint64, nph int) []byte {
	le := binary.LittleEndian
	h := make([]byte, c.ehdrSize)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = c.ident, 1, 1 // class, little-endian, version 1
	le.PutUint16(h[16:], 2)          // ET_EXEC
	le.PutUint16(h[18:], uint16(c.machine))
	le.PutUint32(h[20:], 1)
	c.put(h, c.entry, entry)
	c.put(h, c.phoff, uint64(c.ehdrSize))
	le.PutUint16(h[c.phentsize-2:], uint16(c.ehdrSize)) // e_ehsize
	le.PutUint16(h[c.phentsize:], uint16(c.phdrSize))
	le.PutUint16(h[c.phentsize+2:], uint16(nph))
	le.PutUint16(h[c.phentsize+4:], uint16(c.shdrSize))
	return h
}

// progHeader appends a program header to b.
func (c class) progHeader(b []byte, typ, flags uint32, off, vaddr, paddr, filesz, memsz uint64) []byte {
	le := binary.LittleEndian
	b = le.AppendUint32(b, typ)
	if c.ident == 2 {
		b = le.AppendUint32(b, flags)
	}
	for _, v := range []uint64{off, vaddr, paddr, filesz, memsz} {
		b = c.word(b, v)
	}
	if c.ident == 1 {
		b = le.AppendUint32(b, flags)
	}
	return c.word(b, 4096) // p_align
}

// sectionTable appends a section header table (the null section, then one
// SHT_NOTE at noteOff) to out and points the ELF header at it.
func (c class) sectionTable(out []byte, noteOff, noteSize uint64) []byte {
	shoff := uint64(len(out))
	sh := make([]byte, 2*c.shdrSize)
	note := sh[c.shdrSize:]
	binary.LittleEndian.PutUint32(note[4:], 7) // SHT_NOTE
	// sh_flags and sh_addr are words, then sh_offset and sh_size.
	c.put(note, 8+2*c.wordSize, noteOff)
	c.put(note, 8+3*c.wordSize, noteSize)
	out = append(out, sh...)
	c.put(out, c.shoff, shoff)
	binary.LittleEndian.PutUint16(out[c.phentsize+6:], 2) // e_shnum
	return out
}

// XenNote is a note in the "Xen" namespace (XEN_ELFNOTE_*).
func XenNote(typ uint32, desc []byte) Note { return Note{Name: "Xen", Type: typ, Desc: desc} }
