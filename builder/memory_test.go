package builder

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// TestBuildOverBudget: a compressed kernel whose decompression could need
// more than the whole memory budget is refused with ResourceExhausted on
// spec.kernel, naming the file and the budget, before anything reaches
// the domain; the same kernel builds under a budget it fits.
func TestBuildOverBudget(t *testing.T) {
	spec, _, _ := testSpec(t)
	text := make([]byte, 24000) // expands less than 64:1 (kernel.DefaultLimits.MaxRatio)
	for i, x := 0, uint32(1); i < len(text); i++ {
		x = x*1664525 + 1013904223
		text[i] = byte(x >> 24)
	}
	var gz bytes.Buffer
	w := gzip.NewWriter(&gz)
	w.Write(testKernel(0x100010, text, 0x3000))
	w.Close()
	spec.Kernel = writeFile(t, "vmlinux.gz", gz.Bytes())

	h, d := simDomain(t, domain.TypePVH, 2, sim.Config{})
	before, _ := h.DomainInfo(context.Background(), d)
	_, err := New(h, Config{Memory: kernel.NewBudget(65536)}).Build(context.Background(), d, spec)
	var de *domain.Error
	if !errors.As(err, &de) || de.Code != domain.CodeResourceExhausted || de.Field != "spec.kernel" ||
		!strings.Contains(de.Message, spec.Kernel) || !strings.Contains(de.Message, "budget of 65536 bytes") {
		t.Fatalf("over budget: %v (%#v)", err, de)
	}
	t.Logf("refused: %v", err)
	if after, _ := h.DomainInfo(context.Background(), d); after != before {
		t.Errorf("the refused build changed the domain: %+v, before %+v", after, before)
	}

	h, d = simDomain(t, domain.TypePVH, 2, sim.Config{})
	if _, err := New(h, Config{Memory: kernel.NewBudget(64 << 20)}).Build(context.Background(), d, spec); err != nil {
		t.Fatalf("within the budget: %v", err)
	}
}

// TestBuildStreamsInitrd: an initrd of several read chunks, not a whole
// number of pages, arrives whole, with the rest of its last page zero.
func TestBuildStreamsInitrd(t *testing.T) {
	spec, _, _ := testSpec(t)
	initrd := make([]byte, 2<<20+12345)
	for i := range initrd {
		initrd[i] = byte(i*31 + i>>12)
	}
	spec.Ramdisk = writeFile(t, "initrd-big", initrd)
	h, d := simDomain(t, domain.TypePVH, 2, sim.Config{})
	if _, err := New(h, Config{}).Build(context.Background(), d, spec); err != nil {
		t.Fatal(err)
	}
	cpu, _ := pvhVCPU0(t, h, d)
	si := readPhys(t, h, d, binary.LittleEndian.Uint64(cpu[520:]), 64)
	mod := readPhys(t, h, d, binary.LittleEndian.Uint64(si[16:]), 32)
	addr, size := binary.LittleEndian.Uint64(mod[0:]), binary.LittleEndian.Uint64(mod[8:])
	if size != uint64(len(initrd)) {
		t.Fatalf("module size %d, want %d", size, len(initrd))
	}
	got := readPhys(t, h, d, addr, alignUp(size))
	if !bytes.Equal(got[:size], initrd) || !bytes.Equal(got[size:], make([]byte, alignUp(size)-size)) {
		t.Error("initrd not copied whole, or its last page not zero-filled")
	}
}
