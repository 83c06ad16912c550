package kernel

import (
	"sort"
	"strconv"
)

// ELF constants used here (System V gABI, x86 psABIs).
const (
	elfIdentSize  = 16
	elfDataLSB    = 1
	elfVersion    = 1
	etExec        = 2
	etDyn         = 3
	ptLoad        = 1
	ptNote        = 4
	shtNote       = 7
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
	// Class is the ELF class: ELF64 (x86_64) or ELF32 (i386, PVH only).
	Class ELFClass
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

// ParseELF parses and checks an ELF kernel: an ELF64 x86_64 one, or an
// ELF32 i386 one that can boot as PVH (it has a XEN_ELFNOTE_PHYS32_ENTRY in
// an executable segment, and everything lies below 4 GiB: CheckPVH). The
// returned Image aliases data.
func ParseELF(data []byte, lim Limits) (*Image, error) {
	lim = lim.withDefaults()
	size := uint64(len(data))
	if size > lim.MaxImageSize {
		return nil, tooLarge("elf", "image is %d bytes (limit %d)", size, lim.MaxImageSize)
	}
	f, h, err := parseHeader(data)
	if err != nil {
		return nil, err
	}
	img := &Image{Class: f.class, Entry: h.entry, Size: size}
	notes, err := img.loadSegments(data, f, h, lim)
	if err != nil {
		return nil, err
	}
	for i, n := range notes {
		if err := ParseNotes(data[n[0]:n[0]+n[1]], &img.Notes, lim.MaxNotes, "elf PT_NOTE segment "+strconv.Itoa(i)); err != nil {
			return nil, err
		}
	}
	if img.Notes.Count == 0 && h.shnum > 0 && h.shoff != 0 {
		if err := sectionNotes(data, f, h, lim, &img.Notes); err != nil {
			return nil, err
		}
	}
	if f.class == ELF32 {
		// A 32-bit kernel is loaded for PVH only: refuse now what
		// could not boot that way.
		if !img.Notes.HasPhys32Entry {
			return nil, unsupported("elf notes", "an ELF32 kernel has no XEN_ELFNOTE_PHYS32_ENTRY: 32-bit kernels boot only as PVH, which starts there")
		}
		if err := img.CheckPVH(); err != nil {
			return nil, err
		}
	}
	return img, nil
}

// parseHeader checks the ELF identification and header of data and returns
// the format of its class with the header decoded.
func parseHeader(data []byte) (*elfFormat, fileHeader, error) {
	size := uint64(len(data))
	if size < elfIdentSize {
		return nil, fileHeader{}, malformed("elf header", "file is %d bytes, shorter than an ELF identification (16)", size)
	}
	if string(data[:4]) != "\x7fELF" {
		return nil, fileHeader{}, malformed("elf header e_ident", "no ELF magic")
	}
	f := formatOf(data[4])
	if f == nil {
		return nil, fileHeader{}, unsupported("elf header e_ident[EI_CLASS]", "class %d, only ELF32 (1) and ELF64 (2) are supported", data[4])
	}
	if size < f.ehdrSize {
		return nil, fileHeader{}, malformed("elf header", "file is %d bytes, shorter than an %s header (%d)", size, f.class, f.ehdrSize)
	}
	if data[5] != elfDataLSB {
		return nil, fileHeader{}, unsupported("elf header e_ident[EI_DATA]", "encoding %d, only little-endian (1) is supported", data[5])
	}
	if data[6] != elfVersion {
		return nil, fileHeader{}, malformed("elf header e_ident[EI_VERSION]", "version %d, want 1", data[6])
	}
	h := f.fileHeader(data)
	if h.etype != etExec && h.etype != etDyn {
		return nil, fileHeader{}, unsupported("elf header e_type", "type %d, want ET_EXEC (2) or ET_DYN (3)", h.etype)
	}
	if h.machine != f.machine {
		return nil, fileHeader{}, unsupported("elf header e_machine", "machine %d: an %s kernel must be %s (%d)", h.machine, f.class, f.machineName, f.machine)
	}
	return f, h, nil
}

// loadSegments checks the program header table and collects the loadable
// segments into img, sorted and without overlaps; it returns the file
// ranges (offset, size) of the PT_NOTE segments.
func (img *Image) loadSegments(data []byte, f *elfFormat, h fileHeader, lim Limits) (notes [][2]uint64, err error) {
	size := uint64(len(data))
	phnum := int(h.phnum)
	switch {
	case phnum == 0:
		return nil, malformed("elf header e_phnum", "no program headers: nothing to load")
	case phnum == pnXNum:
		return nil, unsupported("elf header e_phnum", "extended numbering (PN_XNUM) is not supported")
	case phnum > lim.MaxSegments:
		return nil, tooLarge("elf header e_phnum", "%d program headers (limit %d)", phnum, lim.MaxSegments)
	case uint64(h.phentsize) != f.phdrSize:
		return nil, malformed("elf header e_phentsize", "%d, want %d for %s", h.phentsize, f.phdrSize, f.class)
	}
	if _, ok := span(h.phoff, uint64(phnum)*f.phdrSize, size); !ok {
		return nil, malformed("elf header e_phoff", "program header table at %#x (%d entries) runs past the end of the file (%d bytes)", h.phoff, phnum, size)
	}
	var total uint64
	for i := 0; i < phnum; i++ {
		ph := f.progHeader(data[h.phoff+uint64(i)*f.phdrSize:])
		where := "elf program header " + strconv.Itoa(i)
		switch ph.typ {
		case ptNote:
			if _, ok := span(ph.off, ph.filesz, size); !ok {
				return nil, malformed(where+" p_offset", "PT_NOTE at %#x size %d runs past the end of the file (%d bytes)", ph.off, ph.filesz, size)
			}
			notes = append(notes, [2]uint64{ph.off, ph.filesz})
		case ptLoad:
			if err := checkLoad(ph, f, size, lim, where); err != nil {
				return nil, err
			}
			if total += ph.memsz; total > lim.MaxLoadSize {
				return nil, tooLarge(where+" p_memsz", "loadable segments total more than %d bytes", lim.MaxLoadSize)
			}
			if ph.memsz == 0 {
				continue
			}
			img.Segments = append(img.Segments, Segment{
				Index: i, PAddr: ph.paddr, VAddr: ph.vaddr, MemSize: ph.memsz, Flags: ph.flags,
				Data: data[ph.off : ph.off+ph.filesz : ph.off+ph.filesz],
			})
		}
	}
	return notes, img.placeSegments(lim)
}

// checkLoad checks one PT_LOAD program header against the file's size,
// the limits and the class's address space.
func checkLoad(ph progHeader, f *elfFormat, size uint64, lim Limits, where string) error {
	if ph.filesz > ph.memsz {
		return malformed(where+" p_filesz", "%d is larger than p_memsz %d", ph.filesz, ph.memsz)
	}
	if _, ok := span(ph.off, ph.filesz, size); !ok {
		return malformed(where+" p_offset", "segment at %#x size %d runs past the end of the file (%d bytes)", ph.off, ph.filesz, size)
	}
	if ph.memsz > lim.MaxLoadSize {
		return tooLarge(where+" p_memsz", "%d bytes (limit %d)", ph.memsz, lim.MaxLoadSize)
	}
	if _, ok := span(ph.paddr, ph.memsz, f.addrLimit); !ok {
		return malformed(where+" p_paddr", "%#x + p_memsz %#x overflows the %s address space", ph.paddr, ph.memsz, f.class)
	}
	if _, ok := span(ph.vaddr, ph.memsz, f.addrLimit); !ok {
		return malformed(where+" p_vaddr", "%#x + p_memsz %#x overflows the %s address space", ph.vaddr, ph.memsz, f.class)
	}
	return nil
}

// placeSegments sorts the segments by physical address, refuses overlaps
// and sets the physical range, which must fit MaxLoadSize.
func (img *Image) placeSegments(lim Limits) error {
	if len(img.Segments) == 0 {
		return malformed("elf program headers", "no PT_LOAD segment with a non-zero size")
	}
	sort.Slice(img.Segments, func(a, b int) bool { return img.Segments[a].PAddr < img.Segments[b].PAddr })
	for i := 1; i < len(img.Segments); i++ {
		p, s := img.Segments[i-1], img.Segments[i]
		if s.PAddr < p.PAddr+p.MemSize {
			return malformed("elf program header "+strconv.Itoa(s.Index)+" p_paddr",
				"segment [%#x, %#x) overlaps program header %d's [%#x, %#x)",
				s.PAddr, s.PAddr+s.MemSize, p.Index, p.PAddr, p.PAddr+p.MemSize)
		}
	}
	img.PhysStart = img.Segments[0].PAddr
	last := img.Segments[len(img.Segments)-1]
	img.PhysEnd = last.PAddr + last.MemSize
	if img.PhysEnd-img.PhysStart > lim.MaxLoadSize {
		return tooLarge("elf program headers", "segments span [%#x, %#x), more than %d bytes", img.PhysStart, img.PhysEnd, lim.MaxLoadSize)
	}
	return nil
}

// sectionNotes reads Xen notes from SHT_NOTE sections, for images whose
// notes are not covered by a PT_NOTE segment.
func sectionNotes(data []byte, f *elfFormat, h fileHeader, lim Limits, n *XenNotes) error {
	size := uint64(len(data))
	shnum := int(h.shnum)
	if shnum > 4*lim.MaxSegments+64 {
		return tooLarge("elf header e_shnum", "%d section headers (limit %d)", shnum, 4*lim.MaxSegments+64)
	}
	if uint64(h.shentsize) != f.shdrSize {
		return malformed("elf header e_shentsize", "%d, want %d for %s", h.shentsize, f.shdrSize, f.class)
	}
	if _, ok := span(h.shoff, uint64(shnum)*f.shdrSize, size); !ok {
		return malformed("elf header e_shoff", "section header table at %#x (%d entries) runs past the end of the file (%d bytes)", h.shoff, shnum, size)
	}
	for i := 0; i < shnum; i++ {
		typ, off, sz := f.sectionHeader(data[h.shoff+uint64(i)*f.shdrSize:])
		if typ != shtNote {
			continue
		}
		where := "elf section header " + strconv.Itoa(i)
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
