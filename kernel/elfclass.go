package kernel

import (
	"encoding/binary"
	"strconv"
)

// ELFClass is an image's ELF class, e_ident[EI_CLASS]: the width of its
// addresses and the layout of its headers.
type ELFClass uint8

// The ELF classes ParseELF reads. An ELF64 image is an x86_64 kernel (PV or
// PVH); an ELF32 image is an i386 one, which boots only as PVH: it must
// carry XEN_ELFNOTE_PHYS32_ENTRY (GRUB's i386-xen_pvh image is one).
const (
	ELF32 ELFClass = 1
	ELF64 ELFClass = 2
)

func (c ELFClass) String() string {
	switch c {
	case ELF32:
		return "ELF32"
	case ELF64:
		return "ELF64"
	}
	return "ELF class " + strconv.Itoa(int(c))
}

// e_machine values (System V gABI).
const (
	em386    = 3
	emX86_64 = 62
)

// elfFormat is what differs between the two classes: the sizes and field
// offsets of the headers (System V gABI, Elf32_* and Elf64_*), the machine
// an image of the class must be built for, and how far its addresses reach.
type elfFormat struct {
	class       ELFClass
	machine     uint16
	machineName string
	ehdrSize    uint64
	phdrSize    uint64
	shdrSize    uint64
	addrLimit   uint64 // segments end at or below it (the last address + 1)
}

var (
	elf32Format = elfFormat{class: ELF32, machine: em386, machineName: "i386", ehdrSize: 52, phdrSize: 32, shdrSize: 40, addrLimit: 1 << 32}
	elf64Format = elfFormat{class: ELF64, machine: emX86_64, machineName: "x86_64", ehdrSize: 64, phdrSize: 56, shdrSize: 64, addrLimit: ^uint64(0)}
)

// formatOf returns the format of EI_CLASS c, or nil for a class not read here.
func formatOf(c byte) *elfFormat {
	switch ELFClass(c) {
	case ELF32:
		return &elf32Format
	case ELF64:
		return &elf64Format
	}
	return nil
}

// fileHeader is the part of the ELF header ParseELF reads, widened to 64 bits.
type fileHeader struct {
	etype, machine      uint16
	entry, phoff, shoff uint64
	phentsize, phnum    uint16
	shentsize, shnum    uint16
}

// progHeader is one program header, widened to 64 bits.
type progHeader struct {
	typ, flags                       uint32
	off, vaddr, paddr, filesz, memsz uint64
}

// fileHeader decodes the ELF header in b (at least f.ehdrSize bytes).
func (f *elfFormat) fileHeader(b []byte) fileHeader {
	le := binary.LittleEndian
	h := fileHeader{etype: le.Uint16(b[16:]), machine: le.Uint16(b[18:])}
	if f.class == ELF32 {
		h.entry, h.phoff, h.shoff = uint64(le.Uint32(b[24:])), uint64(le.Uint32(b[28:])), uint64(le.Uint32(b[32:]))
		h.phentsize, h.phnum, h.shentsize, h.shnum = le.Uint16(b[42:]), le.Uint16(b[44:]), le.Uint16(b[46:]), le.Uint16(b[48:])
		return h
	}
	h.entry, h.phoff, h.shoff = le.Uint64(b[24:]), le.Uint64(b[32:]), le.Uint64(b[40:])
	h.phentsize, h.phnum, h.shentsize, h.shnum = le.Uint16(b[54:]), le.Uint16(b[56:]), le.Uint16(b[58:]), le.Uint16(b[60:])
	return h
}

// progHeader decodes the program header at the start of b (at least
// f.phdrSize bytes).
func (f *elfFormat) progHeader(b []byte) progHeader {
	le := binary.LittleEndian
	if f.class == ELF32 {
		return progHeader{
			typ: le.Uint32(b[0:]), off: uint64(le.Uint32(b[4:])),
			vaddr: uint64(le.Uint32(b[8:])), paddr: uint64(le.Uint32(b[12:])),
			filesz: uint64(le.Uint32(b[16:])), memsz: uint64(le.Uint32(b[20:])),
			flags: le.Uint32(b[24:]),
		}
	}
	return progHeader{
		typ: le.Uint32(b[0:]), flags: le.Uint32(b[4:]), off: le.Uint64(b[8:]),
		vaddr: le.Uint64(b[16:]), paddr: le.Uint64(b[24:]),
		filesz: le.Uint64(b[32:]), memsz: le.Uint64(b[40:]),
	}
}

// sectionHeader decodes the type, file offset and size of the section
// header at the start of b (at least f.shdrSize bytes).
func (f *elfFormat) sectionHeader(b []byte) (typ uint32, off, size uint64) {
	le := binary.LittleEndian
	if f.class == ELF32 {
		return le.Uint32(b[4:]), uint64(le.Uint32(b[16:])), uint64(le.Uint32(b[20:]))
	}
	return le.Uint32(b[4:]), le.Uint64(b[24:]), le.Uint64(b[32:])
}
