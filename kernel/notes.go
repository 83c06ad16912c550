package kernel

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Xen ELF note types (xen/include/public/elfnote.h).
const (
	NoteInfo              = 0
	NoteEntry             = 1
	NoteHypercallPage     = 2
	NoteVirtBase          = 3
	NotePaddrOffset       = 4
	NoteXenVersion        = 5
	NoteGuestOS           = 6
	NoteGuestVersion      = 7
	NoteLoader            = 8
	NotePAEMode           = 9
	NoteFeatures          = 10
	NoteBSDSymtab         = 11
	NoteHVStartLow        = 12
	NoteL1MFNValid        = 13
	NoteSuspendCancel     = 14
	NoteInitP2M           = 15
	NoteModStartPFN       = 16
	NoteSupportedFeatures = 17
	NotePhys32Entry       = 18
	NotePhys32Reloc       = 19
)

// maxStringNote bounds string notes; real ones are a few dozen bytes.
const maxStringNote = 4096

// XenNotes are the Xen ELF notes of a kernel, decoded. A Has* field says
// whether the corresponding numeric note was present.
type XenNotes struct {
	Count int // Xen notes seen

	Entry                         uint64
	HasEntry                      bool
	HypercallPage                 uint64
	HasHypercallPage              bool
	VirtBase                      uint64
	HasVirtBase                   bool
	PaddrOffset                   uint64
	HasPaddrOffset                bool
	HVStartLow                    uint64
	HasHVStartLow                 bool
	InitP2M                       uint64
	HasInitP2M                    bool
	ModStartPFN                   uint64
	HasModStartPFN                bool
	SuspendCancel                 uint64
	HasSuspendCancel              bool
	SupportedFeatures             uint32 // XENFEAT_* bitmap
	HasSupportedFeatures          bool
	Phys32Entry                   uint32
	HasPhys32Entry                bool
	Phys32Reloc                   []uint32 // align, min, max (0 to 3 values)
	HasPhys32Reloc                bool
	L1MFNValid                    []uint64
	XenVersion, GuestOS, GuestVer string
	Loader, PAEMode, BSDSymtab    string
	Features                      string // "a|b|!c": features, '!' = required
}

// Feature is one entry of the XEN_ELFNOTE_FEATURES string.
type Feature struct {
	Name     string
	Required bool
}

// FeatureList splits the FEATURES note into its entries.
func (n *XenNotes) FeatureList() []Feature {
	var out []Feature
	for _, f := range strings.Split(n.Features, "|") {
		if f == "" {
			continue
		}
		req := strings.HasPrefix(f, "!")
		out = append(out, Feature{Name: strings.TrimPrefix(f, "!"), Required: req})
	}
	return out
}

// ParseNotes decodes the ELF notes in buf (the contents of one PT_NOTE
// segment or SHT_NOTE section) into n, keeping only notes named "Xen".
// maxNotes bounds the number of notes (of any name) read.
func ParseNotes(buf []byte, n *XenNotes, maxNotes int, where string) error {
	size := uint64(len(buf))
	var off uint64
	for i := 0; off < size; i++ {
		if i >= maxNotes {
			return tooLarge(where, "more than %d notes", maxNotes)
		}
		nw := where + " note " + strconv.Itoa(i)
		if size-off < 12 {
			// Trailing padding (zeros) is tolerated; anything else is a
			// truncated header.
			if allZero(buf[off:]) {
				return nil
			}
			return malformed(nw, "truncated note header (%d bytes left, need 12)", size-off)
		}
		namesz := uint64(binary.LittleEndian.Uint32(buf[off:]))
		descsz := uint64(binary.LittleEndian.Uint32(buf[off+4:]))
		typ := binary.LittleEndian.Uint32(buf[off+8:])
		nameOff := off + 12
		nameEnd, ok := span(nameOff, namesz, size)
		if !ok {
			return malformed(nw, "n_namesz %d runs past the end of the notes (%d bytes)", namesz, size)
		}
		descOff := align4(nameEnd)
		if descOff > size {
			descOff = size
		}
		descEnd, ok := span(descOff, descsz, size)
		if !ok {
			return malformed(nw, "n_descsz %d runs past the end of the notes (%d bytes)", descsz, size)
		}
		name := buf[nameOff:nameEnd]
		desc := buf[descOff:descEnd]
		off = align4(descEnd)
		if !bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("Xen")) {
			continue
		}
		n.Count++
		if err := n.set(typ, desc, nw); err != nil {
			return err
		}
	}
	return nil
}

func (n *XenNotes) set(typ uint32, desc []byte, where string) error {
	num := func(v *uint64, has *bool) error {
		x, err := numeric(desc, where, typ)
		if err != nil {
			return err
		}
		*v, *has = x, true
		return nil
	}
	str := func(v *string) error {
		s, err := stringNote(desc, where, typ)
		if err != nil {
			return err
		}
		*v = s
		return nil
	}
	switch typ {
	case NoteEntry:
		return num(&n.Entry, &n.HasEntry)
	case NoteHypercallPage:
		return num(&n.HypercallPage, &n.HasHypercallPage)
	case NoteVirtBase:
		return num(&n.VirtBase, &n.HasVirtBase)
	case NotePaddrOffset:
		return num(&n.PaddrOffset, &n.HasPaddrOffset)
	case NoteHVStartLow:
		return num(&n.HVStartLow, &n.HasHVStartLow)
	case NoteInitP2M:
		return num(&n.InitP2M, &n.HasInitP2M)
	case NoteModStartPFN:
		return num(&n.ModStartPFN, &n.HasModStartPFN)
	case NoteSuspendCancel:
		return num(&n.SuspendCancel, &n.HasSuspendCancel)
	case NoteSupportedFeatures:
		var v uint64
		if err := num(&v, &n.HasSupportedFeatures); err != nil {
			return err
		}
		if v > 0xffffffff {
			return malformed(where, "XEN_ELFNOTE_SUPPORTED_FEATURES %#x does not fit 32 bits", v)
		}
		n.SupportedFeatures = uint32(v)
	case NotePhys32Entry:
		// A 32-bit physical address; Linux emits 4 bytes, 8 are tolerated
		// when the value fits.
		var v uint64
		if err := num(&v, &n.HasPhys32Entry); err != nil {
			return err
		}
		if v > 0xffffffff {
			return malformed(where, "XEN_ELFNOTE_PHYS32_ENTRY %#x is above 4 GiB", v)
		}
		n.Phys32Entry = uint32(v)
	case NotePhys32Reloc:
		if len(desc) > 12 || len(desc)%4 != 0 {
			return malformed(where, "XEN_ELFNOTE_PHYS32_RELOC n_descsz %d (want 0, 4, 8 or 12)", len(desc))
		}
		n.Phys32Reloc = n.Phys32Reloc[:0]
		for i := 0; i < len(desc); i += 4 {
			n.Phys32Reloc = append(n.Phys32Reloc, binary.LittleEndian.Uint32(desc[i:]))
		}
		n.HasPhys32Reloc = true
	case NoteL1MFNValid:
		if len(desc)%8 != 0 || len(desc) > 64 {
			return malformed(where, "XEN_ELFNOTE_L1_MFN_VALID n_descsz %d (want a multiple of 8, at most 64)", len(desc))
		}
		n.L1MFNValid = n.L1MFNValid[:0]
		for i := 0; i < len(desc); i += 8 {
			n.L1MFNValid = append(n.L1MFNValid, binary.LittleEndian.Uint64(desc[i:]))
		}
	case NoteXenVersion:
		return str(&n.XenVersion)
	case NoteGuestOS:
		return str(&n.GuestOS)
	case NoteGuestVersion:
		return str(&n.GuestVer)
	case NoteLoader:
		return str(&n.Loader)
	case NotePAEMode:
		return str(&n.PAEMode)
	case NoteBSDSymtab:
		return str(&n.BSDSymtab)
	case NoteFeatures:
		return str(&n.Features)
	default:
		// NoteInfo and unknown types are ignored, as libelf does.
	}
	return nil
}

func numeric(desc []byte, where string, typ uint32) (uint64, error) {
	switch len(desc) {
	case 4:
		return uint64(binary.LittleEndian.Uint32(desc)), nil
	case 8:
		return binary.LittleEndian.Uint64(desc), nil
	}
	return 0, malformed(where, "numeric note type %d has n_descsz %d (want 4 or 8)", typ, len(desc))
}

func stringNote(desc []byte, where string, typ uint32) (string, error) {
	if len(desc) > maxStringNote {
		return "", tooLarge(where, "string note type %d is %d bytes (limit %d)", typ, len(desc), maxStringNote)
	}
	if i := bytes.IndexByte(desc, 0); i >= 0 {
		desc = desc[:i]
	}
	if !utf8.Valid(desc) {
		return "", malformed(where, "string note type %d is not valid UTF-8", typ)
	}
	for _, c := range desc {
		if c < 0x20 || c == 0x7f {
			return "", malformed(where, "string note type %d contains control byte %#x", typ, c)
		}
	}
	return string(desc), nil
}

func align4(x uint64) uint64 {
	if x > ^uint64(0)-3 {
		return ^uint64(0)
	}
	return (x + 3) &^ 3
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
