package builder

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

func testSpec(t *testing.T) (domain.Spec, []byte, []byte) {
	text := bytes.Repeat([]byte("KERNEL!!"), 3000)
	k := testKernel(0x100010, text, 0x3000)
	initrd := bytes.Repeat([]byte{0x5a}, 10000)
	return domain.Spec{
		Name: "t", Type: domain.TypePVH,
		MemoryStaticMax: 16 << 20, MemoryDynamicMax: 8 << 20,
		VCPUsMax: 2,
		Kernel:   writeFile(t, "vmlinux", k), Ramdisk: writeFile(t, "initrd", initrd),
		Cmdline: "console=hvc0 nxmode=poweroff",
	}, text, initrd
}

// pvhVCPU0 returns vCPU 0's record from the domain's HVM context.
func pvhVCPU0(t *testing.T, h *sim.Hypervisor, d xenctrl.Domid) (cpu, mtrr []byte) {
	t.Helper()
	blob, err := h.GetHVMContext(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := xenctrl.ParseHVMContext(blob)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		switch {
		case r.Code == xenctrl.HVMSaveCodeCPU && r.Instance == 0:
			cpu = r.Body
		case r.Code == xenctrl.HVMSaveCodeMTRR && r.Instance == 0:
			mtrr = r.Body
		}
	}
	if cpu == nil || mtrr == nil {
		t.Fatalf("no CPU or MTRR record for vCPU 0 in the domain's context")
	}
	return cpu, mtrr
}

// TestBuildPVH builds a PVH guest on the simulator and reads back what the
// guest will find: its kernel, initrd, start info, ACPI tables, rings,
// grants and vCPU 0.
func TestBuildPVH(t *testing.T) {
	h, d := simDomain(t, domain.TypePVH, 2, sim.Config{})
	spec, text, initrd := testSpec(t)
	ctx := context.Background()
	res, err := New(h, Config{}).Build(ctx, d, spec)
	if err != nil {
		t.Fatal(err)
	}
	st, err := h.BuildState(d)
	if err != nil {
		t.Fatal(err)
	}
	di, _ := h.DomainInfo(ctx, d)
	if di.MaxVCPUID != 1 || di.MaxPages != (16<<10+1024)/4 || st.TSCMode != xenctrl.TSCModeNeverEmulate || st.PagingMempool == 0 {
		t.Errorf("limits: max vcpu id %d max pages %d tsc %d pool %d", di.MaxVCPUID, di.MaxPages, st.TSCMode, st.PagingMempool)
	}
	// 8 MiB of RAM plus the two ring pages and the ACPI page.
	if di.TotPages != 8<<8+3 {
		t.Errorf("%d pages populated, want %d", di.TotPages, 8<<8+3)
	}
	got := readPhys(t, h, d, 0x100000, uint64(len(text))+0x3000)
	if !bytes.Equal(got[:len(text)], text) || !bytes.Equal(got[len(text):], make([]byte, 0x3000)) {
		t.Error("kernel segment not loaded at its physical address with a zeroed bss")
	}
	// vCPU 0, and through %rbx the start info.
	cpu, mtrr := pvhVCPU0(t, h, d)
	rip, rbx, cr0 := le.Uint64(cpu[640:]), le.Uint64(cpu[520:]), le.Uint64(cpu[656:])
	if rip != 0x100010 || cr0&1 == 0 || le.Uint32(cpu[888:]) != 0xc9b {
		t.Errorf("vcpu: rip %#x cr0 %#x cs ar %#x", rip, cr0, le.Uint32(cpu[888:]))
	}
	if le.Uint64(mtrr[232:]) != 0x806 {
		t.Errorf("MTRR default type %#x", le.Uint64(mtrr[232:]))
	}
	si := readPhys(t, h, d, rbx, xenctrl.HVMStartInfoSize)
	if le.Uint32(si[0:]) != 0x336ec578 || le.Uint32(si[4:]) != 1 || le.Uint32(si[12:]) != 1 {
		t.Fatalf("start info header % x", si[:16])
	}
	mod := readPhys(t, h, d, le.Uint64(si[16:]), 32)
	if ird := readPhys(t, h, d, le.Uint64(mod[0:]), le.Uint64(mod[8:])); !bytes.Equal(ird, initrd) {
		t.Error("initrd not where the module list says")
	}
	if le.Uint64(mod[0:]) < 0x100000+uint64(len(text))+0x3000 || le.Uint64(mod[0:])%4096 != 0 {
		t.Errorf("initrd at %#x overlaps the kernel or is unaligned", le.Uint64(mod[0:]))
	}
	if cl := readPhys(t, h, d, le.Uint64(si[24:]), uint64(len(spec.Cmdline))+1); string(cl) != spec.Cmdline+"\x00" {
		t.Errorf("cmdline %q", cl)
	}
	mm := readPhys(t, h, d, le.Uint64(si[40:]), 24*uint64(le.Uint32(si[48:])))
	if len(mm) != 72 || le.Uint64(mm[8:]) != 8<<20 || le.Uint32(mm[16:]) != 1 ||
		le.Uint64(mm[24:]) != acpiBase || le.Uint32(mm[24+16:]) != xenctrl.E820NVS || le.Uint32(mm[48+16:]) != 2 {
		t.Errorf("memmap % x", mm)
	}
	if len(st.MemoryMap) != 3 || st.MemoryMap[0].Size != 8<<20 {
		t.Errorf("e820 %+v", st.MemoryMap)
	}
	// ACPI: the RSDP named in the start info leads to a MADT with both
	// vCPUs; the test kernel declares no features, so the RSDP is also
	// below 1 MiB.
	if rsdp := le.Uint64(si[32:]); rsdp != acpiBase {
		t.Errorf("rsdp_paddr %#x, want %#x", rsdp, acpiBase)
	}
	page := readPhys(t, h, d, acpiBase, pageSize)
	if m := parseACPI(t, page, acpiBase)["APIC"]; len(m) != 44+16 || m[44+4] != 1 || m[52+3] != 2 || m[52+4] != 1 {
		t.Errorf("MADT % x", m)
	}
	if legacy := readPhys(t, h, d, acpiLegacyPtr, rsdpLen); !bytes.Equal(legacy, page[:rsdpLen]) {
		t.Errorf("legacy RSDP copy % x", legacy)
	}
	checkPVHRings(t, h, d, res, st)
	checkPVHGrants(t, h, d)
}

// checkPVHRings: the rings are PFNs, zeroed, named in the HVM params with
// their event channels, unbound for dom0.
func checkPVHRings(t *testing.T, h *sim.Hypervisor, d xenctrl.Domid, res domain.BuildResult, st sim.BuildState) {
	t.Helper()
	if res.StoreGFN != storePFN || res.ConsoleGFN != consolePFN || res.StorePort == res.ConsolePort {
		t.Errorf("result %+v", res)
	}
	if ring := readFrames(t, h, d, storePFN, consolePFN); !bytes.Equal(ring, make([]byte, 2*pageSize)) {
		t.Error("ring pages not zeroed")
	}
	p := st.HVMParams
	if p[xenctrl.HVMParamStorePFN] != storePFN || p[xenctrl.HVMParamConsoleEvtchn] != uint64(res.ConsolePort) ||
		p[xenctrl.HVMParamStoreEvtchn] != uint64(res.StorePort) || p[xenctrl.HVMParamConsolePFN] != consolePFN {
		t.Errorf("params %v", p)
	}
	if r1, r2 := st.UnboundEvtchns[res.StorePort], st.UnboundEvtchns[res.ConsolePort]; len(st.UnboundEvtchns) != 2 || r1 != 0 || r2 != 0 {
		t.Errorf("event channels %v", st.UnboundEvtchns)
	}
}

// checkPVHGrants maps the guest's grant table frame as the builder did and
// checks entries 0 and 1 grant dom0 the console and xenstore PFNs, and
// that the builder's scratch frame is gone from the physmap.
func checkPVHGrants(t *testing.T, h *sim.Hypervisor, d xenctrl.Domid) {
	t.Helper()
	ctx := context.Background()
	if _, err := h.MapForeign(ctx, d, []uint64{grantScratchPF}, false); err == nil {
		t.Error("the grant table frame is still in the guest's physmap")
	}
	if err := h.MapGrantTableFrame(ctx, d, grantScratchPF); err != nil {
		t.Fatal(err)
	}
	g := readFrames(t, h, d, grantScratchPF)
	if err := h.RemoveFromPhysmap(ctx, d, grantScratchPF); err != nil {
		t.Fatal(err)
	}
	if le.Uint16(g[0:]) != 1 || le.Uint16(g[2:]) != 0 || le.Uint32(g[4:]) != consolePFN || le.Uint16(g[8:]) != 1 || le.Uint32(g[12:]) != storePFN {
		t.Errorf("grant entries % x", g[:16])
	}
}

// TestBuildPVHHighMemory: RAM past libxl's MMIO hole start continues at
// 4 GiB, in the memory map Xen keeps and in the one the guest reads.
func TestBuildPVHHighMemory(t *testing.T) {
	h, d := simDomain(t, domain.TypePVH, 2, sim.Config{})
	spec, _, _ := testSpec(t)
	spec.MemoryStaticMax, spec.MemoryDynamicMax = 4<<30+64<<20, 4<<30+64<<20
	ctx := context.Background()
	if _, err := New(h, Config{}).Build(ctx, d, spec); err != nil {
		t.Fatal(err)
	}
	const low, high = 0xF0000000, 1 << 32
	wantHigh := uint64(4<<30+64<<20) - low
	if di, _ := h.DomainInfo(ctx, d); di.TotPages != (4<<30+64<<20)>>pageShift+3 {
		t.Errorf("%d pages populated, want %d", di.TotPages, (4<<30+64<<20)>>pageShift+3)
	}
	for _, c := range []struct {
		pfn uint64
		ram bool
	}{{low>>pageShift - 1, true}, {low >> pageShift, false}, {high>>pageShift - 1, false},
		{high >> pageShift, true}, {(high+wantHigh)>>pageShift - 1, true}, {(high + wantHigh) >> pageShift, false}} {
		m, err := h.MapForeign(ctx, d, []uint64{c.pfn}, false)
		if (err == nil) != c.ram {
			t.Errorf("frame %#x: populated %v, want %v", c.pfn, err == nil, c.ram)
		}
		if err == nil {
			m.Unmap()
		}
	}
	want := []xenctrl.E820Entry{
		{Addr: 0, Size: low, Type: xenctrl.E820RAM},
		{Addr: acpiBase, Size: pageSize, Type: xenctrl.E820NVS},
		{Addr: specialBase << pageShift, Size: (specialEnd - specialBase) << pageShift, Type: xenctrl.E820Reserved},
		{Addr: high, Size: wantHigh, Type: xenctrl.E820RAM},
	}
	if st, _ := h.BuildState(d); !slices.Equal(st.MemoryMap, want) {
		t.Errorf("e820 %+v, want %+v", st.MemoryMap, want)
	}
	cpu, _ := pvhVCPU0(t, h, d)
	si := readPhys(t, h, d, le.Uint64(cpu[520:]), xenctrl.HVMStartInfoSize)
	mm := readPhys(t, h, d, le.Uint64(si[40:]), 24*uint64(le.Uint32(si[48:])))
	if len(mm) != 4*24 || le.Uint64(mm[72:]) != high || le.Uint64(mm[80:]) != wantHigh || le.Uint32(mm[88:]) != xenctrl.E820RAM {
		t.Errorf("the guest's memory map % x", mm)
	}
}

// TestBuildSuperpagesAndFallback builds on a host with 2 MiB extents for
// all, some and none of the RAM.
func TestBuildSuperpagesAndFallback(t *testing.T) {
	for _, super := range []uint64{1 << 20, 3, 0} {
		h, d := simDomain(t, domain.TypePVH, 2, sim.Config{})
		h.LimitSuperpages(super)
		spec, text, _ := testSpec(t)
		spec.MemoryDynamicMax = 16 << 20
		if _, err := New(h, Config{}).Build(context.Background(), d, spec); err != nil {
			t.Fatalf("%d superpages: %v", super, err)
		}
		if di, _ := h.DomainInfo(context.Background(), d); di.TotPages != 16<<8+3 {
			t.Errorf("%d superpages: %d pages", super, di.TotPages)
		}
		if got := readPhys(t, h, d, 0x100000, uint64(len(text))); !bytes.Equal(got, text) {
			t.Errorf("%d superpages: kernel not loaded", super)
		}
	}
}

func TestBuildRejects(t *testing.T) {
	cases := []struct {
		name  string
		edit  func(t *testing.T, s *domain.Spec)
		field string
		want  string
	}{
		{"too little memory", func(t *testing.T, s *domain.Spec) { s.MemoryDynamicMax, s.MemoryStaticMax = 1<<20, 1<<20 }, "spec.memory_dynamic_max", "too small"},
		{"too much memory", func(t *testing.T, s *domain.Spec) { s.MemoryDynamicMax, s.MemoryStaticMax = 32<<40, 32<<40 }, "spec.memory_dynamic_max", "at most"},
		{"no kernel", func(t *testing.T, s *domain.Spec) { s.Kernel = "" }, "spec.kernel", "needs a kernel"},
		{"missing kernel", func(t *testing.T, s *domain.Spec) { s.Kernel = "/nonexistent/vmlinux" }, "spec.kernel", "no such file"},
		{"not a kernel", func(t *testing.T, s *domain.Spec) { s.Kernel = writeFile(t, "k", []byte("hello world, not a kernel")) }, "spec.kernel", "neither ELF"},
		{"truncated kernel", func(t *testing.T, s *domain.Spec) {
			b, _ := os.ReadFile(s.Kernel)
			s.Kernel = writeFile(t, "k", b[:len(b)-100])
		}, "spec.kernel", "runs past the end"},
		{"no PVH entry", func(t *testing.T, s *domain.Spec) {
			b, _ := os.ReadFile(s.Kernel)
			le.PutUint32(b[64+112+8:], 17) // note type 18 -> 17
			s.Kernel = writeFile(t, "k", b)
		}, "spec.kernel", "PHYS32_ENTRY"},
		{"bad tsc", func(t *testing.T, s *domain.Spec) { s.Platform = map[string]string{"tsc_mode": "fast"} }, "spec.platform", "tsc_mode"},
		{"long cmdline", func(t *testing.T, s *domain.Spec) { s.Cmdline = strings.Repeat("a", 3000) }, "spec.cmdline", "at most"},
		{"empty initrd", func(t *testing.T, s *domain.Spec) { s.Ramdisk = writeFile(t, "i", nil) }, "spec.ramdisk", "empty"},
		{"HVM", func(t *testing.T, s *domain.Spec) { s.Type = domain.TypeHVM }, "spec.type", "PV and PVH"},
		{"too many vCPUs for the MADT", func(t *testing.T, s *domain.Spec) { s.VCPUsMax = MaxACPIVCPUs + 1 }, "spec.vcpus_max", "vCPUs"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h, d := simDomain(t, domain.TypePVH, 2, sim.Config{})
			spec, _, _ := testSpec(t)
			c.edit(t, &spec)
			_, err := New(h, Config{}).Build(context.Background(), d, spec)
			var de *domain.Error
			if !errors.As(err, &de) || de.Code != domain.CodeInvalidArgument || de.Field != c.field || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want InvalidArgument on %s mentioning %q", err, c.field, c.want)
			}
			di, _ := h.DomainInfo(context.Background(), d)
			if st, _ := h.BuildState(d); di.TotPages != 0 || di.MaxPages != 0 || st.MemoryMap != nil {
				t.Errorf("the domain was changed before the spec was found bad")
			}
		})
	}
}
