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
