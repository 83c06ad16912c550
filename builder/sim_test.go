package builder

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/internal/elftest"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

var _ Hypervisor = (*sim.Hypervisor)(nil)

// simDomain boots a simulated host and creates on it a paused, empty
// domain of type typ with vcpus vCPUs, as the domain manager would.
func simDomain(t *testing.T, typ domain.Type, vcpus uint32, cfg sim.Config) (*sim.Hypervisor, xenctrl.Domid) {
	t.Helper()
	cfg.ReleaseDelay = -1
	h := sim.New(cfg)
	dc := xenctrl.DomainConfig{MaxVCPUs: vcpus, MaxEvtchnPort: 1023}
	if typ != domain.TypePV {
		dc.Flags = xenctrl.CreateHVM | xenctrl.CreateHAP
		dc.EmulationFlags = 1 // XEN_X86_EMU_LAPIC
	}
	d, err := h.CreateDomain(context.Background(), dc)
	if err != nil {
		t.Fatal(err)
	}
	return h, d
}

// readFrames reads whole frames (GFNs: PFNs of a PVH guest, MFNs of a PV
// one) the way a toolstack would, through a read-only foreign mapping.
func readFrames(t *testing.T, h *sim.Hypervisor, d xenctrl.Domid, frames ...uint64) []byte {
	t.Helper()
	m, err := h.MapForeign(context.Background(), d, frames, false)
	if err != nil {
		t.Fatalf("map frames %#x: %v", frames, err)
	}
	defer m.Unmap()
	return append([]byte(nil), m.Mem...)
}

// readPhys reads n bytes at guest physical address addr of a PVH guest.
func readPhys(t *testing.T, h *sim.Hypervisor, d xenctrl.Domid, addr, n uint64) []byte {
	t.Helper()
	var frames []uint64
	for f := addr >> pageShift; f<<pageShift < addr+n; f++ {
		frames = append(frames, f)
	}
	off := addr & (pageSize - 1)
	return readFrames(t, h, d, frames...)[off : off+n]
}

func writeFile(t *testing.T, name string, b []byte) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// testKernel writes a small PVH-capable ELF: one executable segment at
// 1 MiB physical (text then bss) and a PT_NOTE with XEN_ELFNOTE_PHYS32_ENTRY.
func testKernel(entry uint32, text []byte, bss uint64) []byte {
	return elftest.Image{
		Segments: []elftest.Segment{{Paddr: 0x100000, Vaddr: 0xffffffff80100000, Data: text, Memsz: uint64(len(text)) + bss, Flags: 5}},
		Notes:    []elftest.Note{elftest.XenNote(18, elftest.U32(entry))},
	}.Build()
}
