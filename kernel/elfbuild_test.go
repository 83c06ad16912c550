package kernel

import (
	"bytes"

	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
)

// linuxLike is a small image shaped like a Linux x86_64 vmlinux with its Xen
// Notes: text at 16 MiB physical, PVH entry inside it.
func linuxLike() elftest.Image {
	text := bytes.Repeat([]byte{0x90}, 8192)
	data := bytes.Repeat([]byte{0xAB}, 4096)
	return elftest.Image{
		Entry: 0xffffffff81000000,
		Segments: []elftest.Segment{
			{Paddr: 0x1000000, Vaddr: 0xffffffff81000000, Data: text, Flags: 5},
			{Paddr: 0x1004000, Vaddr: 0xffffffff81004000, Data: data, Memsz: 0x10000, Flags: 6},
		},
		Notes: []elftest.Note{
			elftest.XenNote(NoteGuestOS, elftest.CString("linux")),
			elftest.XenNote(NoteGuestVersion, elftest.CString("2.6")),
			elftest.XenNote(NoteXenVersion, elftest.CString("xen-3.0")),
			elftest.XenNote(NoteVirtBase, elftest.U64(0xffffffff80000000)),
			elftest.XenNote(NoteEntry, elftest.U64(0xffffffff81001000)),
			elftest.XenNote(NoteHypercallPage, elftest.U64(0xffffffff81002000)),
			elftest.XenNote(NoteFeatures, elftest.CString("!writable_page_tables|pae_pgdir_above_4gb")),
			elftest.XenNote(NoteSupportedFeatures, elftest.U32(0x801)),
			elftest.XenNote(NotePAEMode, elftest.CString("yes")),
			elftest.XenNote(NoteLoader, elftest.CString("generic")),
			elftest.XenNote(NoteSuspendCancel, elftest.U32(1)),
			elftest.XenNote(NoteInitP2M, elftest.U64(0x8000000000)),
			elftest.XenNote(NoteModStartPFN, elftest.U32(1)),
			elftest.XenNote(NotePhys32Entry, elftest.U32(0x1000400)),
			{Name: "GNU", Type: 3, Desc: []byte{1, 2, 3, 4}},
		},
	}
}

// grubLikePVH is a small ELF32 i386 image shaped like GRUB's i386-xen_pvh
// image: text and bss at 1 MiB, a second segment starting unaligned right
// after the bss, and one Xen note, PHYS32_ENTRY at the start of the text.
func grubLikePVH() elftest.Image {
	return elftest.Image{
		ELF32: true,
		Entry: 0x100000,
		Segments: []elftest.Segment{
			{Paddr: 0x100000, Vaddr: 0x100000, Data: bytes.Repeat([]byte{0x90}, 0x1ccb), Memsz: 0x5858, Flags: 7},
			{Paddr: 0x105858, Vaddr: 0x105858, Data: bytes.Repeat([]byte{0xAB}, 0x800), Flags: 7},
		},
		Notes: []elftest.Note{elftest.XenNote(NotePhys32Entry, elftest.U32(0x100000))},
	}
}
