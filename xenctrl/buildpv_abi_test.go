package xenctrl

import (
	"bytes"
	"testing"
)

// Offsets printed from the Xen 4.17 public headers (start_info_t,
// vcpu_guest_context_t, struct cpu_user_regs on x86_64).
func TestStartInfoLayout(t *testing.T) {
	b := bytes.Repeat([]byte{0xee}, PageSize)
	si := StartInfo{
		NrPages: 0x10000, SharedInfoMFN: 0x1234, Flags: 0x5, StoreMFN: 0x2222, StoreEvtchn: 3,
		ConsoleMFN: 0x3333, ConsoleEvtchn: 4, PTBase: 0xffffffff84b7f000, NrPTFrames: 43,
		MFNList: 0xffffffff84afc000, ModStart: 0xffffffff84a00000, ModLen: 0xfb44f,
		Cmdline: "console=hvc0", FirstP2MPFN: 7, NrP2MFrames: 8,
	}
	if err := EncodeStartInfo(b, si); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		off  int
		want uint64
		size int
	}{
		{32, 0x10000, 8}, {40, 0x1234000, 8}, {48, 5, 4}, {56, 0x2222, 8}, {64, 3, 4},
		{72, 0x3333, 8}, {80, 4, 4}, {88, 0xffffffff84b7f000, 8}, {96, 43, 8},
		{104, 0xffffffff84afc000, 8}, {112, 0xffffffff84a00000, 8}, {120, 0xfb44f, 8},
		{1152, 7, 8}, {1160, 8, 8},
	} {
		var got uint64
		if c.size == 4 {
			got = uint64(le.Uint32(b[c.off:]))
		} else {
			got = le.Uint64(b[c.off:])
		}
		if got != c.want {
			t.Errorf("offset %d: %#x, want %#x", c.off, got, c.want)
		}
	}
	if string(b[:15]) != "xen-3.0-x86_64\x00" || string(b[128:141]) != "console=hvc0\x00" {
		t.Errorf("magic %q cmdline %q", b[:15], b[128:141])
	}
	if b[StartInfoSize] != 0xee {
		t.Error("wrote past start_info")
	}
}

func TestPVVCPUContextLayout(t *testing.T) {
	v, err := EncodePVVCPUContext(PVBootVCPU{Entry: 0xffffffff830791c0, Stack: 0xffffffff84bab000, StartInfo: 0xffffffff84b7c000, L4MFN: 0x4321})
	if err != nil {
		t.Fatal(err)
	}
	if len(v) != 5168 {
		t.Fatalf("size %d", len(v))
	}
	for _, c := range []struct {
		off  int
		want uint64
	}{
		{512, 4 | 32}, {520 + 128, 0xffffffff830791c0}, {520 + 152, 0xffffffff84bab000},
		{520 + 104, 0xffffffff84b7c000}, {520 + 144, 0x200}, {4968, 0xe02b}, {4976, 0xffffffff84bab000},
		{4984 + 24, 0x4321000},
	} {
		if got := le.Uint64(v[c.off:]); got != c.want {
			t.Errorf("offset %d: %#x, want %#x", c.off, got, c.want)
		}
	}
	if cs, ss, ds := le.Uint16(v[520+136:]), le.Uint16(v[520+160:]), le.Uint16(v[520+176:]); cs != 0xe033 || ss != 0xe02b || ds != 0 {
		t.Errorf("cs %#x ss %#x ds %#x", cs, ss, ds)
	}
	want := PVBootVCPU{Entry: 0xffffffff830791c0, Stack: 0xffffffff84bab000, StartInfo: 0xffffffff84b7c000, L4MFN: 0x4321}
	if got, err := DecodePVVCPUContext(v); err != nil || got != want {
		t.Errorf("decoded %+v, %v; want %+v", got, err, want)
	}
	if _, err := DecodePVVCPUContext(v[:100]); err == nil {
		t.Error("a short context decoded")
	}
}

func TestInitPVSharedInfo(t *testing.T) {
	p := bytes.Repeat([]byte{0xff}, PageSize)
	InitPVSharedInfo(p)
	for i, c := range p {
		want := byte(0)
		if i < 32*64 && i%64 == 1 {
			want = 1
		}
		if c != want {
			t.Fatalf("byte %d = %d, want %d", i, c, want)
		}
	}
}
