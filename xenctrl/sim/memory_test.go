package sim

import (
	"bytes"
	"context"
	"encoding/binary"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

var (
	pvConfig  = xenctrl.DomainConfig{MaxVCPUs: 2}
	hvmConfig = xenctrl.DomainConfig{MaxVCPUs: 2, Flags: xenctrl.CreateHVM | xenctrl.CreateHAP, EmulationFlags: emuLAPIC}
)

// populated creates a domain and populates 4 KiB pages at pfns; it returns
// what populate wrote back (MFNs for PV).
func populated(t *testing.T, h *Hypervisor, cfg xenctrl.DomainConfig, pfns ...uint64) (xenctrl.Domid, []uint64) {
	t.Helper()
	ctx := context.Background()
	d := mustCreate(t, h, cfg)
	if err := h.SetMaxMem(ctx, d, 64<<10); err != nil {
		t.Fatal(err)
	}
	got := append([]uint64(nil), pfns...)
	if n, err := h.PopulatePhysmapAt(ctx, d, 0, got); err != nil || n != len(pfns) {
		t.Fatalf("populate: %d, %v", n, err)
	}
	return d, got
}

func TestPopulateAndMap(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{ReleaseDelay: -1})
	free := func() uint64 { pi, _ := h.PhysInfo(ctx); return pi.FreePages }
	before := free()
	d, mfns := populated(t, h, pvConfig, 0, 1, 2)
	if mfns[0] == 0 || mfns[0] == mfns[1] || mfns[0] < 3 {
		t.Errorf("PV populate gave machine frames %#x", mfns)
	}
	// Errnos as Xen's: a frame twice, a misaligned or an unknown order.
	_, err := h.PopulatePhysmapAt(ctx, d, 0, []uint64{1})
	wantErrno(t, err, syscall.EEXIST)
	_, err = h.PopulatePhysmapAt(ctx, d, 9, []uint64{3})
	wantErrno(t, err, syscall.ENOMEM)
	_, err = h.PopulatePhysmapAt(ctx, d, 4, []uint64{16})
	wantErrno(t, err, syscall.EINVAL)
	// A PV domain's frames are mapped by MFN; others are refused.
	_, err = h.MapForeign(ctx, d, []uint64{0}, true)
	wantErrno(t, err, syscall.EINVAL)
	m, err := h.MapForeign(ctx, d, mfns[1:2], true)
	if err != nil {
		t.Fatal(err)
	}
	copy(m.Mem, "hello")
	m.Unmap()
	if got := readFrame(t, h, d, mfns[1]); !bytes.HasPrefix(got, []byte("hello")) {
		t.Errorf("write did not reach the frame: %q", got[:8])
	}
	if err := h.DestroyDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	if free() != before {
		t.Errorf("free pages %d after destroy, %d before", free(), before)
	}
	// The frame comes back scrubbed to the next domain that gets it.
	d2, _ := populated(t, h, hvmConfig, 0, 1, 2)
	for pfn := uint64(0); pfn < 3; pfn++ {
		if !bytes.Equal(readFrame(t, h, d2, pfn), make([]byte, xenctrl.PageSize)) {
			t.Errorf("frame %d of a new domain not zero", pfn)
		}
	}
}

func readFrame(t *testing.T, h *Hypervisor, d xenctrl.Domid, f uint64) []byte {
	t.Helper()
	m, err := h.MapForeign(context.Background(), d, []uint64{f}, false)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Unmap()
	return append([]byte(nil), m.Mem...)
}

func writeFrame(t *testing.T, h *Hypervisor, d xenctrl.Domid, f uint64, b []byte) {
	t.Helper()
	m, err := h.MapForeign(context.Background(), d, []uint64{f}, true)
	if err != nil {
		t.Fatal(err)
	}
	copy(m.Mem, b)
	m.Unmap()
}

// pte is a present page-table entry for frame mfn.
func pte(mfn uint64, rw bool) []byte {
	e := mfn<<12 | ptePresent
	if rw {
		e |= pteRW
	}
	return binary.LittleEndian.AppendUint64(nil, e)
}

// TestPinL4 builds a 4-level table mapping one page and checks what Xen's
// validation refuses.
func TestPinL4(t *testing.T) {
	ctx := context.Background()
	build := func(t *testing.T, tableRW bool) (*Hypervisor, xenctrl.Domid, []uint64) {
		h := newSim(t, Config{ReleaseDelay: -1})
		d, m := populated(t, h, pvConfig, 0, 1, 2, 3, 4) // L4 L3 L2 L1, data
		writeFrame(t, h, d, m[0], pte(m[1], true))
		writeFrame(t, h, d, m[1], pte(m[2], true))
		writeFrame(t, h, d, m[2], pte(m[3], true))
		writeFrame(t, h, d, m[3], append(pte(m[4], true), pte(m[0], tableRW)...))
		return h, d, m
	}
	h, d, m := build(t, true)
	wantErrno(t, h.PinL4Table(ctx, d, m[0]), syscall.EINVAL) // the L4 is mapped writable by its own L1

	h, d, m = build(t, false)
	open, _ := h.MapForeign(ctx, d, m[2:3], true)
	wantErrno(t, h.PinL4Table(ctx, d, m[0]), syscall.EINVAL) // an L2 still mapped writable
	open.Unmap()
	if err := h.PinL4Table(ctx, d, m[0]); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, h.PinL4Table(ctx, d, m[0]), syscall.EINVAL) // pinned already
	_, err := h.MapForeign(ctx, d, m[1:2], true)
	wantErrno(t, err, syscall.EINVAL) // a pinned table cannot be mapped writable
	wantErrno(t, h.HypercallInit(ctx, d, m[3]), syscall.EPERM)
	if err := h.HypercallInit(ctx, d, m[4]); err != nil {
		t.Fatal(err)
	}
	// setvcpucontext: the vCPUs must exist, the context be whole.
	vgc, _ := xenctrl.EncodePVVCPUContext(xenctrl.PVBootVCPU{Entry: 0x1000, Stack: 0x2000, StartInfo: 0x3000, L4MFN: m[0]})
	wantErrno(t, h.SetVCPUContext(ctx, d, 0, vgc), syscall.EINVAL)
	if err := h.SetMaxVCPUs(ctx, d, 2); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, h.SetVCPUContext(ctx, d, 0, vgc[:100]), syscall.EINVAL)
	wantErrno(t, h.SetVCPUContext(ctx, d, 2, vgc), syscall.EINVAL)
	if err := h.SetVCPUContext(ctx, d, 0, vgc); err != nil {
		t.Fatal(err)
	}
	if st, _ := h.BuildState(d); st.PinnedL4 != m[0] || !bytes.Equal(st.VCPUContexts[0], vgc) || st.HypercallPage != m[4] {
		t.Errorf("build state %+v", st)
	}
	// Another L4 naming a frame that is not the domain's fails.
	writeFrame(t, h, d, m[4], pte(1, true))
	binary.LittleEndian.PutUint64(vgc[4984+24:], m[4]<<12)
	wantErrno(t, h.SetVCPUContext(ctx, d, 1, vgc), syscall.EINVAL)
}

func TestHVMContextAndParams(t *testing.T) {
	ctx := context.Background()
	h := newSim(t, Config{})
	d, _ := populated(t, h, hvmConfig, 0)
	if err := h.SetMaxVCPUs(ctx, d, 2); err != nil {
		t.Fatal(err)
	}
	blob, err := h.GetHVMContext(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := xenctrl.ParseHVMContext(blob)
	if err != nil || len(recs) != 5 || recs[0].Code != xenctrl.HVMSaveCodeHeader {
		t.Fatalf("context of a 2-vCPU domain: %d records, %v", len(recs), err)
	}
	boot, err := xenctrl.PVHBootContext(blob, 0x100000, 0x2000)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.SetHVMContext(ctx, d, boot); err != nil {
		t.Fatal(err)
	}
	after, _ := h.GetHVMContext(ctx, d)
	recs, _ = xenctrl.ParseHVMContext(after)
	if rip := binary.LittleEndian.Uint64(recs[1].Body[640:]); recs[1].Code != xenctrl.HVMSaveCodeCPU || rip != 0x100000 {
		t.Errorf("vCPU 0 after set: record %d rip %#x", recs[1].Code, rip)
	}
	bad := append([]byte(nil), boot...)
	bad[8] ^= 1 // the header's magic
	wantErrno(t, h.SetHVMContext(ctx, d, bad), syscall.EINVAL)
	wantErrno(t, h.SetHVMContext(ctx, d, xenctrl.EncodeHVMContext([]xenctrl.HVMRecord{recs[0],
		{Code: xenctrl.HVMSaveCodeCPU, Instance: 2, Body: make([]byte, xenctrl.HVMCPUSize)}})), syscall.EINVAL)
	wantErrno(t, h.SetHVMParam(ctx, d, hvmNrParams, 1), syscall.EINVAL)
	p1, _ := h.AllocUnboundEvtchn(ctx, d, 0)
	p2, _ := h.AllocUnboundEvtchn(ctx, d, 0)
	if p1 != 1 || p2 != 2 {
		t.Errorf("ports %d %d, want 1 2", p1, p2)
	}
	// PV domains have neither.
	pv, _ := populated(t, h, pvConfig, 0)
	_, err = h.GetHVMContext(ctx, pv)
	wantErrno(t, err, syscall.EINVAL)
	wantErrno(t, h.SetHVMParam(ctx, pv, 1, 1), syscall.EINVAL)
	wantErrno(t, h.MapGrantTableFrame(ctx, pv, 5), syscall.EINVAL)
}
