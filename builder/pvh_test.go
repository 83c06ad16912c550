package builder

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

func writeFile(t *testing.T, name string, b []byte) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

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

// TestBuildPVHHighMemory: RAM past libxl's MMIO hole start continues at
// 4 GiB, in the memory map Xen keeps and in the one the guest reads.
func TestBuildPVHHighMemory(t *testing.T) {
	f := newFake()
	spec, _, _ := testSpec(t)
	spec.MemoryStaticMax, spec.MemoryDynamicMax = 4<<30+64<<20, 4<<30+64<<20
	if _, err := New(Config{}).Build(context.Background(), f, 7, spec); err != nil {
		t.Fatal(err)
	}
	const low, high = 0xF0000000, 1 << 32
	wantHigh := uint64(4<<30+64<<20) - low
	ramFrames := 0
	for pfn := range f.frames {
		switch a := pfn << pageShift; {
		case a < low || (a >= high && a < high+wantHigh):
			ramFrames++
		case a == acpiBase || pfn == storePFN || pfn == consolePFN:
		default:
			t.Fatalf("frame %#x populated in the MMIO hole or past the guest's RAM", pfn)
		}
	}
	if want := (4<<30 + 64<<20) >> pageShift; ramFrames != want {
		t.Errorf("%d RAM frames populated, want %d", ramFrames, want)
	}
	want := []xenctrl.E820Entry{
		{Addr: 0, Size: low, Type: xenctrl.E820RAM},
		{Addr: acpiBase, Size: pageSize, Type: xenctrl.E820NVS},
		{Addr: specialBase << pageShift, Size: (specialEnd - specialBase) << pageShift, Type: xenctrl.E820Reserved},
		{Addr: high, Size: wantHigh, Type: xenctrl.E820RAM},
	}
	if !slices.Equal(f.e820, want) {
		t.Errorf("e820 %+v, want %+v", f.e820, want)
	}
	le := binary.LittleEndian
	rbx := le.Uint64(findRecord(t, f.hvmSet, 2)[520:])
	si, err := f.read(rbx, 56)
	if err != nil {
		t.Fatal(err)
	}
	mm, _ := f.read(le.Uint64(si[40:]), 24*uint64(le.Uint32(si[48:])))
	if len(mm) != 4*24 || le.Uint64(mm[72:]) != high || le.Uint64(mm[80:]) != wantHigh || le.Uint32(mm[88:]) != xenctrl.E820RAM {
		t.Errorf("the guest's memory map % x", mm)
	}
}

func TestBuildPVH(t *testing.T) {
	f := newFake()
	spec, text, initrd := testSpec(t)
	res, err := New(Config{}).Build(context.Background(), f, 7, spec)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if f.maxVCPUs != 2 || f.maxKiB != 16<<10+1024 || f.tsc != xenctrl.TSCModeNeverEmulate || f.pool == 0 {
		t.Errorf("limits: vcpus %d maxkib %d tsc %d pool %d", f.maxVCPUs, f.maxKiB, f.tsc, f.pool)
	}
	// 8 MiB of RAM plus the two ring pages and the ACPI page.
	if len(f.frames) != 8<<8+3 {
		t.Errorf("%d frames populated, want %d", len(f.frames), 8<<8+3)
	}
	got, err := f.read(0x100000, uint64(len(text))+0x3000)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(text)], text) || !bytes.Equal(got[len(text):], make([]byte, 0x3000)) {
		t.Error("kernel segment not loaded at its physical address with a zeroed bss")
	}
	// start info: find it through %rbx of the vCPU context.
	cpu := findRecord(t, f.hvmSet, 2)
	rip, rbx, cr0 := le.Uint64(cpu[640:]), le.Uint64(cpu[520:]), le.Uint64(cpu[656:])
	if rip != 0x100010 || cr0&1 == 0 || le.Uint32(cpu[888:]) != 0xc9b {
		t.Errorf("vcpu: rip %#x cr0 %#x cs ar %#x", rip, cr0, le.Uint32(cpu[888:]))
	}
	si, err := f.read(rbx, 56)
	if err != nil {
		t.Fatal(err)
	}
	if le.Uint32(si[0:]) != 0x336ec578 || le.Uint32(si[4:]) != 1 || le.Uint32(si[12:]) != 1 {
		t.Fatalf("start info header % x", si[:16])
	}
	mod, _ := f.read(le.Uint64(si[16:]), 32)
	ird, err := f.read(le.Uint64(mod[0:]), le.Uint64(mod[8:]))
	if err != nil || !bytes.Equal(ird, initrd) {
		t.Errorf("initrd not where the module list says (%v)", err)
	}
	if le.Uint64(mod[0:]) < 0x100000+uint64(len(text))+0x3000 || le.Uint64(mod[0:])%4096 != 0 {
		t.Errorf("initrd at %#x overlaps the kernel or is unaligned", le.Uint64(mod[0:]))
	}
	cl, _ := f.read(le.Uint64(si[24:]), uint64(len(spec.Cmdline))+1)
	if string(cl) != spec.Cmdline+"\x00" {
		t.Errorf("cmdline %q", cl)
	}
	mm, _ := f.read(le.Uint64(si[40:]), 24*uint64(le.Uint32(si[48:])))
	if len(mm) != 72 || le.Uint64(mm[8:]) != 8<<20 || le.Uint32(mm[16:]) != 1 ||
		le.Uint64(mm[24:]) != acpiBase || le.Uint32(mm[24+16:]) != xenctrl.E820NVS || le.Uint32(mm[48+16:]) != 2 {
		t.Errorf("memmap % x", mm)
	}
	if len(f.e820) != 3 || f.e820[0].Size != 8<<20 {
		t.Errorf("e820 %+v", f.e820)
	}
	// ACPI: the RSDP named in the start info leads to a MADT with both
	// vCPUs; the test kernel declares no features, so the RSDP is also
	// below 1 MiB.
	if rsdp := le.Uint64(si[32:]); rsdp != acpiBase {
		t.Errorf("rsdp_paddr %#x, want %#x", rsdp, acpiBase)
	}
	page, err := f.read(acpiBase, pageSize)
	if err != nil {
		t.Fatal(err)
	}
	tables := parseACPI(t, page, acpiBase)
	if m := tables["APIC"]; len(m) != 44+16 || m[44+4] != 1 || m[52+3] != 2 || m[52+4] != 1 {
		t.Errorf("MADT % x", m)
	}
	if legacy, _ := f.read(acpiLegacyPtr, rsdpLen); !bytes.Equal(legacy, page[:rsdpLen]) {
		t.Errorf("legacy RSDP copy % x", legacy)
	}
	// Rings, params, grants.
	if res.StoreMFN != storePFN || res.ConsoleMFN != consolePFN || res.StorePort == res.ConsolePort {
		t.Errorf("result %+v", res)
	}
	if f.params[xenctrl.HVMParamStorePFN] != storePFN || f.params[xenctrl.HVMParamConsoleEvtchn] != uint64(res.ConsolePort) ||
		f.params[xenctrl.HVMParamStoreEvtchn] != uint64(res.StorePort) || f.params[xenctrl.HVMParamConsolePFN] != consolePFN {
		t.Errorf("params %v", f.params)
	}
	if le.Uint16(f.gntFrame[0:]) != 1 || le.Uint32(f.gntFrame[4:]) != consolePFN || le.Uint32(f.gntFrame[12:]) != storePFN || f.gntAt != 0 {
		t.Errorf("grant entries % x (scratch still mapped: %v)", f.gntFrame[:16], f.gntAt != 0)
	}
	mtrr := findRecord(t, f.hvmSet, 14)
	if le.Uint64(mtrr[232:]) != 0x806 {
		t.Errorf("MTRR default type %#x", le.Uint64(mtrr[232:]))
	}
}

func findRecord(t *testing.T, blob []byte, code uint16) []byte {
	le := binary.LittleEndian
	for off := 0; off+8 <= len(blob); {
		c, n := le.Uint16(blob[off:]), int(le.Uint32(blob[off+4:]))
		if c == code {
			return blob[off+8 : off+8+n]
		}
		if c == 0 {
			break
		}
		off += 8 + n
	}
	t.Fatalf("no record %d in the context set", code)
	return nil
}

func TestBuildSuperpagesAndFallback(t *testing.T) {
	for _, noSuper := range []bool{false, true} {
		f := newFake()
		f.noSuper = noSuper
		spec, _, _ := testSpec(t)
		spec.MemoryDynamicMax = 16 << 20
		if _, err := New(Config{}).Build(context.Background(), f, 1, spec); err != nil {
			t.Fatalf("noSuper=%v: %v", noSuper, err)
		}
		if len(f.frames) != 16<<8+3 {
			t.Errorf("noSuper=%v: %d frames", noSuper, len(f.frames))
		}
		if !noSuper && f.populateOps > 3 {
			t.Errorf("%d populate calls for 8 superpages + rings", f.populateOps)
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
			binary.LittleEndian.PutUint32(b[64+112+8:], 17) // note type 18 -> 17
			s.Kernel = writeFile(t, "k", b)
		}, "spec.kernel", "PHYS32_ENTRY"},
		{"bad tsc", func(t *testing.T, s *domain.Spec) { s.Platform = map[string]string{"tsc_mode": "fast"} }, "spec.platform", "tsc_mode"},
		{"long cmdline", func(t *testing.T, s *domain.Spec) { s.Cmdline = strings.Repeat("a", 3000) }, "spec.cmdline", "at most"},
		{"empty initrd", func(t *testing.T, s *domain.Spec) { s.Ramdisk = writeFile(t, "i", nil) }, "spec.ramdisk", "empty"},
		{"PV", func(t *testing.T, s *domain.Spec) { s.Type = domain.TypePV }, "spec.type", "PVH"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := newFake()
			spec, _, _ := testSpec(t)
			c.edit(t, &spec)
			_, err := New(Config{}).Build(context.Background(), f, 1, spec)
			var de *domain.Error
			if !errors.As(err, &de) || de.Field != c.field || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want field %s mentioning %q", err, c.field, c.want)
			}
			if len(f.frames) != 0 || f.maxKiB != 0 {
				t.Errorf("the domain was changed before the spec was found bad")
			}
		})
	}
}

func TestBuildNeedsRealXen(t *testing.T) {
	spec, _, _ := testSpec(t)
	_, err := New(Config{}).Build(context.Background(), notXen{}, 1, spec)
	if err == nil || !strings.Contains(err.Error(), "need real Xen") {
		t.Fatalf("err = %v", err)
	}
}

type notXen struct{ xenctrl.Hypervisor }

func (notXen) Kind() string { return "sim" }

// More vCPUs than a MADT can describe is the spec's fault, named, and
// nothing is asked of the hypervisor.
func TestBuildPVHTooManyVCPUs(t *testing.T) {
	f := newFake()
	spec, _, _ := testSpec(t)
	spec.VCPUsMax = MaxACPIVCPUs + 1
	_, err := New(Config{}).Build(context.Background(), f, 7, spec)
	var de *domain.Error
	if !errors.As(err, &de) || de.Code != domain.CodeInvalidArgument || de.Field != "spec.vcpus_max" {
		t.Fatalf("got %v, want InvalidArgument on spec.vcpus_max", err)
	}
	if len(f.frames) != 0 || f.maxVCPUs != 0 {
		t.Errorf("the hypervisor was touched: %d frames, max_vcpus %d", len(f.frames), f.maxVCPUs)
	}
}
