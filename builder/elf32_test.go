package builder

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// grubLikeKernel is an ELF32 i386 PVH image shaped like GRUB's
// i386-xen_pvh: text and bss at 1 MiB, a second segment starting
// unaligned where the bss ends, and only a PHYS32_ENTRY note.
func grubLikeKernel(text, mods []byte) elftest.Image {
	return elftest.Image{
		ELF32: true,
		Entry: 0x100000,
		Segments: []elftest.Segment{
			{Paddr: 0x100000, Vaddr: 0x100000, Data: text, Memsz: 0x5858, Flags: 7},
			{Paddr: 0x105858, Vaddr: 0x105858, Data: mods, Flags: 7},
		},
		Notes: []elftest.Note{elftest.XenNote(18, elftest.U32(0x100000))},
	}
}

// TestBuildPVHELF32 builds a PVH guest from a 32-bit kernel on the
// simulator: its segments at their physical addresses with the bss zeroed,
// vCPU 0 at the PHYS32_ENTRY with %ebx at the start info.
func TestBuildPVHELF32(t *testing.T) {
	h, d := simDomain(t, domain.TypePVH, 1, sim.Config{})
	text := bytes.Repeat([]byte("GRUBTEXT"), 0x300)
	mods := bytes.Repeat([]byte{0xA5}, 0x1234)
	spec := domain.Spec{
		Name: "grub", Type: domain.TypePVH, MemoryStaticMax: 32 << 20, MemoryDynamicMax: 32 << 20, VCPUsMax: 1,
		Kernel: writeFile(t, "grub-i386-xen_pvh.bin", grubLikeKernel(text, mods).Build()),
	}
	res, err := New(h, Config{}).Build(context.Background(), d, spec)
	if err != nil {
		t.Fatal(err)
	}
	got := readPhys(t, h, d, 0x100000, 0x5858+uint64(len(mods)))
	if !bytes.Equal(got[:len(text)], text) || !bytes.Equal(got[len(text):0x5858], make([]byte, 0x5858-len(text))) || !bytes.Equal(got[0x5858:], mods) {
		t.Error("segments not loaded at their physical addresses with the bss zeroed")
	}
	cpu, _ := pvhVCPU0(t, h, d)
	if rip := le.Uint64(cpu[640:]); rip != 0x100000 {
		t.Errorf("vCPU 0 starts at %#x, want the PHYS32_ENTRY 0x100000", rip)
	}
	si := readPhys(t, h, d, le.Uint64(cpu[520:]), 16)
	if le.Uint32(si[0:]) != 0x336ec578 || le.Uint32(si[12:]) != 0 {
		t.Errorf("start info header % x (no modules expected)", si)
	}
	st, _ := h.BuildState(d)
	checkPVHRings(t, h, d, res, st)
}

// TestBuildELF32Rejects: bad 32-bit images, and a good one asked to boot
// as PV, are refused naming the kernel, before anything reaches the domain.
func TestBuildELF32Rejects(t *testing.T) {
	text, mods := bytes.Repeat([]byte{0x90}, 0x100), bytes.Repeat([]byte{0xA5}, 64)
	image := func(edit func(*elftest.Image)) []byte {
		e := grubLikeKernel(text, mods)
		edit(&e)
		return e.Build()
	}
	cases := []struct {
		name   string
		typ    domain.Type
		kernel []byte
		want   string
	}{
		{"overlapping segments", domain.TypePVH, image(func(e *elftest.Image) { e.Segments[1].Paddr = 0x104000 }), "overlaps"},
		{"oversized segment", domain.TypePVH, image(func(e *elftest.Image) { e.Segments[1].Memsz = 0xe0000000 }), "p_memsz"},
		{"segment past 4 GiB", domain.TypePVH, image(func(e *elftest.Image) { e.Segments[1].Paddr = 0xffffffe0 }), "address space"},
		{"entry outside the image", domain.TypePVH, image(func(e *elftest.Image) { e.Notes[0].Desc = elftest.U32(0x800000) }), "not inside any loaded segment"},
		{"missing note", domain.TypePVH, image(func(e *elftest.Image) { e.Notes = nil }), "no XEN_ELFNOTE_PHYS32_ENTRY"},
		{"32-bit PV", domain.TypePV, image(func(*elftest.Image) {}), "EI_CLASS] is ELF32"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, d := simDomain(t, c.typ, 1, sim.Config{})
			spec := domain.Spec{
				Name: "bad", Type: c.typ, MemoryStaticMax: 64 << 20, MemoryDynamicMax: 64 << 20, VCPUsMax: 1,
				Kernel: writeFile(t, "k", c.kernel),
			}
			_, err := New(h, Config{}).Build(context.Background(), d, spec)
			if !isInvalid(err, "spec.kernel") || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want InvalidArgument on spec.kernel mentioning %q", err, c.want)
			}
			di, _ := h.DomainInfo(context.Background(), d)
			if st, _ := h.BuildState(d); di.TotPages != 0 || di.MaxPages != 0 || st.MemoryMap != nil {
				t.Errorf("the domain was changed before the kernel was found bad")
			}
		})
	}
}

// TestBuildGRUBImages builds Debian's GRUB for Xen images on the simulator
// when they are at hand ($XENOPSD_TEST_GRUB_DIR, or where grub-xen-host
// installs them): the ELF32 PVH one as PVH, the ELF64 one as PV. The
// nested tests boot them on real Xen.
func TestBuildGRUBImages(t *testing.T) {
	dir := os.Getenv("XENOPSD_TEST_GRUB_DIR")
	if dir == "" {
		dir = "/usr/lib/grub-xen"
	}
	for _, c := range []struct {
		file string
		typ  domain.Type
	}{{"grub-i386-xen_pvh.bin", domain.TypePVH}, {"grub-x86_64-xen.bin", domain.TypePV}} {
		path := filepath.Join(dir, c.file)
		if _, err := os.Stat(path); err != nil {
			t.Skipf("no GRUB for Xen image: %v (set XENOPSD_TEST_GRUB_DIR)", err)
		}
		h, d := simDomain(t, c.typ, 1, sim.Config{})
		spec := domain.Spec{Name: "grub", Type: c.typ, MemoryStaticMax: 64 << 20, MemoryDynamicMax: 64 << 20, VCPUsMax: 1, Kernel: path}
		if _, err := New(h, Config{}).Build(context.Background(), d, spec); err != nil {
			t.Errorf("%s as %s: %v", c.file, c.typ, err)
		}
	}
}
