package kernel

import (
	"encoding/binary"
	"sort"
	"strconv"
)

// ELF constants used here (System V gABI, x86_64 psABI).
const (
	elfClass64    = 2
	elfDataLSB    = 1
	elfVersion    = 1
	etExec        = 2
	etDyn         = 3
	emX86_64      = 62
	ptLoad        = 1
	ptNote        = 4
	shtNote       = 7
	ehdrSize      = 64
	phdrSize      = 56
	shdrSize      = 64
	pnXNum        = 0xffff
	maxPhys32Addr = 1 << 32
)

// Segment is one PT_LOAD segment: Data (the file bytes, possibly empty) is
// placed at PAddr and followed by zeros up to MemSize.
type Segment struct {
	Index   int // program header index
	PAddr   uint64
	VAddr   uint64
	MemSize uint64
	Flags   uint32 // PF_X 1, PF_W 2, PF_R 4
	Data    []byte // aliases the image bytes; do not modify
}

// Image is a parsed ELF kernel ready to be placed in guest memory.
type Image struct {
	// Entry is e_entry (a virtual address for PV kernels).
	Entry uint64
	// Segments are the loadable segments with a non-zero size, sorted by
	// PAddr, with no two overlapping.
	Segments []Segment
	// PhysStart and PhysEnd bound the segments' physical range [start, end).
	PhysStart, PhysEnd uint64
	Notes              XenNotes
	// Compression names what the image was unwrapped from ("" when it was a
	// bare ELF file; e.g. "bzImage+xz", "gzip").
	Compression string
	// Size is the length of the ELF file the image was parsed from.
	Size uint64
}

// ParseELF parses and checks an ELF64 x86_64 kernel. The returned Image
// aliases data.
func ParseELF(data []byte, lim Limits) (*Image, error) {
	lim = lim.withDefaults()
	size := uint64(len(data))
	if size > lim.MaxImageSize {
		return nil, tooLarge("elf", "image is %d bytes (limit %d)", size, lim.MaxImageSize)
	}
	if size < ehdrSize {
		return nil, malformed("elf header", "file is %d bytes, shorter than an ELF64 header (64)", size)
	}
	if string(data[:4]) != "\x7fELF" {
		return nil, malformed("elf header e_ident", "no ELF magic")
	}
	if data[4] != elfClass64 {
		return nil, unsupported("elf header e_ident[EI_CLASS]", "class %d, only ELF64 (2) is supported", data[4])
	}
	if data[5] != elfDataLSB {
		return nil, unsupported("elf header e_ident[EI_DATA]", "encoding %d, only little-endian (1) is supported", data[5])
	}
	if data[6] != elfVersion {
		return nil, malformed("elf header e_ident[EI_VERSION]", "version %d, want 1", data[6])
	}
	le := binary.LittleEndian
	etype := le.Uint16(data[16:])
	if etype != etExec && etype != etDyn {
		return nil, unsupported("elf header e_type", "type %d, want ET_EXEC (2) or ET_DYN (3)", etype)
	}
	if m := le.Uint16(data[18:]); m != emX86_64 {
		return nil, unsupported("elf header e_machine", "machine %d, only x86_64 (62) is supported", m)
	}
	img := &Image{Entry: le.Uint64(data[24:]), Size: size}
	phoff := le.Uint64(data[32:])
	shoff := le.Uint64(data[40:])
	phentsize := le.Uint16(data[54:])
	phnum := int(le.Uint16(data[56:]))
	shentsize := le.Uint16(data[58:])
	shnum := int(le.Uint16(data[60:]))

	if phnum == 0 {
		return nil, malformed("elf header e_phnum", "no program headers: nothing to load")
	}
	if phnum == pnXNum {
		return nil, unsupported("elf header e_phnum", "extended numbering (PN_XNUM) is not supported")
	}
	if phnum > lim.MaxSegments {
		return nil, tooLarge("elf header e_phnum", "%d program headers (limit %d)", phnum, lim.MaxSegments)
	}
	if phentsize != phdrSize {
		return nil, malformed("elf header e_phentsize", "%d, want %d", phentsize, phdrSize)
	}
	if _, ok := span(phoff, uint64(phnum)*phdrSize, size); !ok {
		return nil, malformed("elf header e_phoff", "program header table at %#x (%d entries) runs past the end of the file (%d bytes)", phoff, phnum, size)
	}

	var total uint64
	var notes [][2]uint64 // offset, size of PT_NOTE segments
	for i := 0; i < phnum; i++ {
		ph := data[phoff+uint64(i)*phdrSize:]
		where := "elf program header " + strconv.Itoa(i)
		ptype := le.Uint32(ph[0:])
		flags := le.Uint32(ph[4:])
		off := le.Uint64(ph[8:])
		vaddr := le.Uint64(ph[16:])
		paddr := le.Uint64(ph[24:])
		filesz := le.Uint64(ph[32:])
		memsz := le.Uint64(ph[40:])
		switch ptype {
		case ptNote:
			if _, ok := span(off, filesz, size); !ok {
				return nil, malformed(where+" p_offset", "PT_NOTE at %#x size %d runs past the end of the file (%d bytes)", off, filesz, size)
			}
			notes = append(notes, [2]uint64{off, filesz})
		case ptLoad:
			if filesz > memsz {
				return nil, malformed(where+" p_filesz", "%d is larger than p_memsz %d", filesz, memsz)
			}
			if _, ok := span(off, filesz, size); !ok {
				return nil, malformed(where+" p_offset", "segment at %#x size %d runs past the end of the file (%d bytes)", off, filesz, size)
			}
			if memsz > lim.MaxLoadSize {
				return nil, tooLarge(where+" p_memsz", "%d bytes (limit %d)", memsz, lim.MaxLoadSize)
			}
			if _, ok := span(paddr, memsz, ^uint64(0)); !ok {
				return nil, malformed(where+" p_paddr", "%#x + p_memsz %#x overflows", paddr, memsz)
			}
			if _, ok := span(vaddr, memsz, ^uint64(0)); !ok {
				return nil, malformed(where+" p_vaddr", "%#x + p_memsz %#x overflows", vaddr, memsz)
			}
			total += memsz
			if total > lim.MaxLoadSize {
				return nil, tooLarge(where+" p_memsz", "loadable segments total more than %d bytes", lim.MaxLoadSize)
			}
			if memsz == 0 {
				continue
			}
			img.Segments = append(img.Segments, Segment{
				Index: i, PAddr: paddr, VAddr: vaddr, MemSize: memsz, Flags: flags,
				Data: data[off : off+filesz : off+filesz],
			})
		}
	}
	if len(img.Segments) == 0 {
		return nil, malformed("elf program headers", "no PT_LOAD segment with a non-zero size")
	}
	sort.Slice(img.Segments, func(a, b int) bool { return img.Segments[a].PAddr < img.Segments[b].PAddr })
	for i := 1; i < len(img.Segments); i++ {
		p, s := img.Segments[i-1], img.Segments[i]
		if s.PAddr < p.PAddr+p.MemSize {
			return nil, malformed("elf program header "+strconv.Itoa(s.Index)+" p_paddr",
				"segment [%#x, %#x) overlaps program header %d's [%#x, %#x)",
				s.PAddr, s.PAddr+s.MemSize, p.Index, p.PAddr, p.PAddr+p.MemSize)
		}
	}
	img.PhysStart = img.Segments[0].PAddr
	last := img.Segments[len(img.Segments)-1]
	img.PhysEnd = last.PAddr + last.MemSize
	if img.PhysEnd-img.PhysStart > lim.MaxLoadSize {
		return nil, tooLarge("elf program headers", "segments span [%#x, %#x), more than %d bytes", img.PhysStart, img.PhysEnd, lim.MaxLoadSize)
	}

	for i, n := range notes {
		if err := ParseNotes(data[n[0]:n[0]+n[1]], &img.Notes, lim.MaxNotes, "elf PT_NOTE segment "+strconv.Itoa(i)); err != nil {
			return nil, err
		}
	}
	if img.Notes.Count == 0 && shnum > 0 && shoff != 0 {
		if err := sectionNotes(data, shoff, shentsize, shnum, lim, &img.Notes); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// sectionNotes reads Xen notes from SHT_NOTE sections, for images whose
// notes are not covered by a PT_NOTE segment.
func sectionNotes(data []byte, shoff uint64, shentsize uint16, shnum int, lim Limits, n *XenNotes) error {
	le := binary.LittleEndian
	size := uint64(len(data))
	if shnum > 4*lim.MaxSegments+64 {
		return tooLarge("elf header e_shnum", "%d section headers (limit %d)", shnum, 4*lim.MaxSegments+64)
	}
	if shentsize != shdrSize {
		return malformed("elf header e_shentsize", "%d, want %d", shentsize, shdrSize)
	}
	if _, ok := span(shoff, uint64(shnum)*shdrSize, size); !ok {
		return malformed("elf header e_shoff", "section header table at %#x (%d entries) runs past the end of the file (%d bytes)", shoff, shnum, size)
	}
	for i := 0; i < shnum; i++ {
		sh := data[shoff+uint64(i)*shdrSize:]
		if le.Uint32(sh[4:]) != shtNote {
			continue
		}
		where := "elf section header " + strconv.Itoa(i)
		off, sz := le.Uint64(sh[24:]), le.Uint64(sh[32:])
		if _, ok := span(off, sz, size); !ok {
			return malformed(where+" sh_offset", "SHT_NOTE at %#x size %d runs past the end of the file (%d bytes)", off, sz, size)
		}
		if err := ParseNotes(data[off:off+sz], n, lim.MaxNotes, "elf SHT_NOTE section "+strconv.Itoa(i)); err != nil {
			return err
		}
	}
	return nil
}

// CheckPVH checks the image can be started in a PVH container: it has a
// XEN_ELFNOTE_PHYS32_ENTRY inside one of its executable segments, and all
// of it lies below 4 GiB (the entry runs in 32-bit protected mode).
func (img *Image) CheckPVH() error {
	if !img.Notes.HasPhys32Entry {
		return unsupported("elf notes", "no XEN_ELFNOTE_PHYS32_ENTRY: the kernel does not support PVH boot")
	}
	if img.PhysEnd > maxPhys32Addr {
		return unsupported("elf program headers", "segments end at %#x, above 4 GiB; PVH loads below 4 GiB", img.PhysEnd)
	}
	e := uint64(img.Notes.Phys32Entry)
	for _, s := range img.Segments {
		if e >= s.PAddr && e < s.PAddr+uint64(len(s.Data)) {
			if s.Flags&1 == 0 {
				return malformed("elf notes XEN_ELFNOTE_PHYS32_ENTRY", "entry %#x lies in non-executable program header %d", e, s.Index)
			}
			return nil
		}
	}
	return malformed("elf notes XEN_ELFNOTE_PHYS32_ENTRY", "entry %#x is not inside any loaded segment's file data", e)
}
