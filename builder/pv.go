package builder

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/guestmem"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// pvGuest builds a 64-bit paravirtualised guest (x86_64, 4-level paging)
// in a domain created without XEN_DOMCTL_CDF_hvm and with no emulation
// flags, following libxenguest (xg_dom_core.c, xg_dom_x86.c,
// xg_dom_boot.c): all RAM is populated and the machine frames Xen hands
// back form the p2m; the kernel, initrd, p2m array, start_info, xenstore
// and console pages, page tables and a boot stack are placed in one
// initial virtual mapping at XEN_ELFNOTE_VIRT_BASE (planPV); the shared
// info page is initialised, the L4 table pinned on the guest's behalf, and
// vCPU 0 set to enter the kernel in kernel mode with %rsi = start_info.
// Every frame the guest or Xen is told about is an MFN.
type pvGuest struct {
	l        *pvLayout
	maxBytes uint64
	hcPage   uint64 // virtual address of the hypercall page, 0 if none
	shinfo   uint64 // MFN of the shared info page
}

func (g *pvGuest) String() string { return g.l.String() }

func (g *pvGuest) plan(s *job) (err error) {
	if g.l, err = planPV(s.img, s.initrdSize(), s.spec.Cmdline, s.memBytes()); err != nil {
		return err
	}
	g.maxBytes = s.maxBytes()
	if n := s.img.Notes; n.HasHypercallPage {
		if n.HypercallPage < g.l.virt(g.l.KernelPFN) || n.HypercallPage >= g.l.virt(g.l.KernelEnd) {
			return domain.InvalidField("spec.kernel", "XEN_ELFNOTE_HYPERCALL_PAGE %#x is outside the kernel", n.HypercallPage)
		}
		g.hcPage = n.HypercallPage
	}
	return nil
}

// memoryMap is libxl's xc_domain_set_memmap_limit: one RAM entry up to the
// maximum.
func (g *pvGuest) memoryMap() []xenctrl.E820Entry {
	return []xenctrl.E820Entry{{Addr: 0, Size: g.maxBytes, Type: xenctrl.E820RAM}}
}

func (g *pvGuest) limits(context.Context, *job) error { return nil }

func (g *pvGuest) populate(ctx context.Context, s *job) (*guestmem.Memory, error) {
	mem := guestmem.PV(s.hv, s.d, g.l.NrPages)
	return mem, mem.Populate(ctx, 0, g.l.NrPages)
}

func (g *pvGuest) segmentAddr(seg kernel.Segment) uint64 { return seg.PAddr - g.l.PaddrOffset }
func (g *pvGuest) initrdAddr() uint64                    { return g.l.InitrdPFN << pageShift }

// writeBoot writes the p2m array, the page tables and a clear boot stack,
// has Xen fill the hypercall page and initialises the shared info page.
// The page tables are written (and unmapped) last: no writable mapping of
// a table may remain when the L4 is pinned.
func (g *pvGuest) writeBoot(ctx context.Context, s *job) error {
	l, p2m := g.l, s.mem.P2M()
	p2mBytes := make([]byte, l.P2MPages<<pageShift)
	for i, m := range p2m {
		binary.LittleEndian.PutUint64(p2mBytes[i*8:], m)
	}
	if err := s.mem.Write(ctx, l.P2MPFN<<pageShift, p2mBytes, uint64(len(p2mBytes))); err != nil {
		return fmt.Errorf("builder: p2m: %w", err)
	}
	if err := s.mem.Write(ctx, l.StackPFN<<pageShift, nil, pageSize); err != nil {
		return fmt.Errorf("builder: boot stack: %w", err)
	}
	pt, p2mTables, err := l.pageTables(p2m)
	if err != nil {
		return err
	}
	if err := s.mem.Write(ctx, l.PTPFN<<pageShift, pt, uint64(len(pt))); err != nil {
		return fmt.Errorf("builder: page tables: %w", err)
	}
	if l.P2M != nil {
		if err := s.mem.Write(ctx, l.P2M.TablePFN<<pageShift, p2mTables, uint64(len(p2mTables))); err != nil {
			return fmt.Errorf("builder: p2m page tables: %w", err)
		}
	}
	if g.hcPage != 0 {
		if err := s.hv.HypercallInit(ctx, s.d, p2m[(g.hcPage-l.VirtBase)>>pageShift]); err != nil {
			return fmt.Errorf("builder: %w", err)
		}
	}
	if g.shinfo, err = s.hv.SharedInfoFrame(ctx, s.d); err != nil {
		return fmt.Errorf("builder: %w", err)
	}
	if err := s.mem.EditFrame(ctx, g.shinfo, xenctrl.InitPVSharedInfo); err != nil {
		return fmt.Errorf("builder: shared info: %w", err)
	}
	return nil
}

func (g *pvGuest) ringPFNs() (store, console uint64) { return g.l.StorePFN, g.l.ConsolePFN }

// publishRings writes start_info, which names the rings by MFN.
func (g *pvGuest) publishRings(ctx context.Context, s *job) error {
	si := make([]byte, pageSize)
	if err := xenctrl.EncodeStartInfo(si, startInfo(g.l, s.spec.Cmdline, g.shinfo, s.res)); err != nil {
		return domain.InvalidField("spec.cmdline", "%v", err)
	}
	if err := s.mem.Write(ctx, g.l.StartInfoPFN<<pageShift, si, pageSize); err != nil {
		return fmt.Errorf("builder: start info: %w", err)
	}
	return nil
}

// grantTable is the MFN of grant table frame 0, which a PV toolstack maps
// directly.
func (g *pvGuest) grantTable(ctx context.Context, s *job) (uint64, func() error, error) {
	gt, err := s.hv.GrantTableFrame(ctx, s.d)
	return gt, func() error { return nil }, err
}

// bootVCPU pins the L4 (Xen validates the tables) and sets vCPU 0.
func (g *pvGuest) bootVCPU(ctx context.Context, s *job) error {
	l := g.l
	l4 := s.mem.P2M()[l.PTPFN]
	if err := s.hv.PinL4Table(ctx, s.d, l4); err != nil {
		return fmt.Errorf("builder: %w", err)
	}
	vgc, err := xenctrl.EncodePVVCPUContext(xenctrl.PVBootVCPU{
		Entry: l.Entry, Stack: l.virt(l.StackPFN + 1), StartInfo: l.virt(l.StartInfoPFN), L4MFN: l4,
	})
	if err != nil {
		return fmt.Errorf("builder: %w", err)
	}
	if err := s.hv.SetVCPUContext(ctx, s.d, 0, vgc); err != nil {
		return fmt.Errorf("builder: vCPU 0 state: %w", err)
	}
	return nil
}

// startInfo is what the guest finds in its start_info page.
func startInfo(l *pvLayout, cmdline string, shinfo uint64, res domain.BuildResult) xenctrl.StartInfo {
	si := xenctrl.StartInfo{
		NrPages: l.NrPages, SharedInfoMFN: shinfo,
		StoreMFN: res.StoreGFN, StoreEvtchn: res.StorePort,
		ConsoleMFN: res.ConsoleGFN, ConsoleEvtchn: res.ConsolePort,
		PTBase: l.virt(l.PTPFN), NrPTFrames: l.PTPages(),
		MFNList: l.P2MVirt, ModLen: l.InitrdLen,
		Cmdline: cmdline,
	}
	switch {
	case l.InitrdLen == 0:
	case l.InitrdUnmapped:
		si.ModStart = l.InitrdPFN
		si.Flags |= xenctrl.SIFModStartPFN
	default:
		si.ModStart = l.virt(l.InitrdPFN)
	}
	if l.P2M != nil {
		si.FirstP2MPFN, si.NrP2MFrames = l.P2MPFN, l.P2MFrames()
	}
	return si
}
