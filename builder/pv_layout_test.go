package builder

import (
	"errors"
	"strings"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

func TestPlanPV(t *testing.T) {
	spec, _, _ := pvSpec(t, 0)
	img, release, err := kernel.OpenFile(t.Context(), spec.Kernel, kernel.Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	l, err := planPV(img, 120000, "", 64<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(l)
	if l.KernelPFN != 0x1000 || l.MapEnd%pvMapAlign != 0 || l.MapEnd < l.virt(l.StackPFN+1)+pvPadding {
		t.Errorf("layout %v", l)
	}
	if l.NrL3 != 1 || l.NrL2 != 1 || l.NrL1 != (l.MapEnd-l.VirtBase)>>21 {
		t.Errorf("tables L3 %d L2 %d L1 %d for %#x..%#x", l.NrL3, l.NrL2, l.NrL1, l.VirtBase, l.MapEnd)
	}
	// Too little memory for the initial mapping.
	if _, err := planPV(img, 120000, "", 16<<20); !isInvalid(err, "spec.memory_dynamic_max") {
		t.Errorf("16 MiB: %v", err)
	}
	if _, err := planPV(img, 0, strings.Repeat("x", 1024), 64<<20); !isInvalid(err, "spec.cmdline") {
		t.Errorf("long cmdline: %v", err)
	}
}

func TestTablesFor(t *testing.T) {
	for _, c := range []struct{ start, end, l3, l2, l1 uint64 }{
		{testVirtBase, testVirtBase + 4<<20, 1, 1, 2},
		{testVirtBase, testVirtBase + 1<<30 + 2<<20, 1, 2, 513},
		{0, 1 << 39, 1, 512, 512 * 512},
		{1<<39 - 2<<20, 1<<39 + 2<<20, 2, 2, 2},
	} {
		l3, l2, l1 := tablesFor(c.start, c.end)
		if l3 != c.l3 || l2 != c.l2 || l1 != c.l1 {
			t.Errorf("[%#x,%#x): %d %d %d, want %d %d %d", c.start, c.end, l3, l2, l1, c.l3, c.l2, c.l1)
		}
	}
	for _, c := range []struct {
		start, end uint64
		ok         bool
	}{
		{testVirtBase, testVirtBase + 64<<20, true},
		{0, 64 << 20, true},
		{canonLowEnd - 4096, canonLowEnd + 4096, false},
		{xenReservedLo, xenReservedLo + 4096, false},
		{xenReservedHi, xenReservedHi + 4096, true},
	} {
		if err := checkVirtRange(c.start, c.end); (err == nil) != c.ok {
			t.Errorf("checkVirtRange(%#x, %#x) = %v", c.start, c.end, err)
		}
	}
}

func isInvalid(err error, field string) bool {
	var de *domain.Error
	return errors.As(err, &de) && de.Code == domain.CodeInvalidArgument && strings.Contains(err.Error(), field)
}

func TestEncodeStartInfoAndVCPU(t *testing.T) {
	b := make([]byte, pageSize)
	if err := xenctrl.EncodeStartInfo(b, xenctrl.StartInfo{Cmdline: strings.Repeat("x", 1024)}); err == nil {
		t.Error("1024-byte command line accepted")
	}
	if _, err := xenctrl.EncodePVVCPUContext(xenctrl.PVBootVCPU{Entry: 0x0000900000000000, L4MFN: 1}); err == nil {
		t.Error("non-canonical entry accepted")
	}
	if _, err := xenctrl.EncodePVVCPUContext(xenctrl.PVBootVCPU{Entry: testVirtBase}); err == nil {
		t.Error("L4 frame 0 accepted")
	}
}

func TestP2MOutside(t *testing.T) {
	const pages = 128 // a 256 MiB guest's p2m
	for _, c := range []struct {
		name string
		at   uint64
		want bool
	}{
		{"linux", 0x8000000000, true},
		{"unaligned", 0x8000000800, false},
		{"above virt_base", testVirtBase + 0x40000000, false},
		{"in the kernel's L4 slot", testVirtBase - 0x40000000, false},
		{"in Xen's range", 0xffff800000000000, false},
		{"non-canonical", 0x0000800000000000 - 0x1000, false},
	} {
		got := p2mOutside(c.at, pages, testVirtBase)
		if (got != nil) != c.want {
			t.Errorf("%s (%#x): outside = %v, want %v", c.name, c.at, got != nil, c.want)
		}
		if got != nil && (got.NrL3 != 1 || got.NrL2 != 1 || got.NrL1 != 1 || got.To != c.at+pages*pageSize) {
			t.Errorf("%s: tables %+v", c.name, got)
		}
	}
}
