package xenctrl

import (
	"encoding/binary"
	"strings"
	"testing"
)

func saveRecord(code, inst uint16, body []byte) []byte {
	b := make([]byte, 8, 8+len(body))
	binary.LittleEndian.PutUint16(b, code)
	binary.LittleEndian.PutUint16(b[2:], inst)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(body)))
	return append(b, body...)
}

func TestPVHBootContext(t *testing.T) {
	hdr := make([]byte, 24)
	binary.LittleEndian.PutUint32(hdr, 0x54381286)
	mtrr := make([]byte, 240)
	binary.LittleEndian.PutUint64(mtrr[224:], 0x508) // mtrr_cap, kept
	var full []byte
	full = append(full, saveRecord(1, 0, hdr)...)
	full = append(full, saveRecord(2, 0, make([]byte, 1032))...)
	full = append(full, saveRecord(5, 0, make([]byte, 16))...) // LAPIC, dropped
	full = append(full, saveRecord(14, 0, mtrr)...)
	full = append(full, saveRecord(0, 0, nil)...)
	out, err := PVHBootContext(full, 0x1000850, 0x4a01000)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	// header, CPU, MTRR, END in that order
	want := []uint16{1, 2, 14, 0}
	var got []uint16
	var cpu, m []byte
	for off := 0; off < len(out); {
		c, n := le.Uint16(out[off:]), int(le.Uint32(out[off+4:]))
		got = append(got, c)
		switch c {
		case 2:
			cpu = out[off+8 : off+8+n]
		case 14:
			m = out[off+8 : off+8+n]
		}
		off += 8 + n
	}
	if len(got) != 4 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Fatalf("records %v, want %v", got, want)
	}
	if len(cpu) != HVMCPUSize || le.Uint64(cpu[hvmCPURip:]) != 0x1000850 || le.Uint64(cpu[hvmCPURbx:]) != 0x4a01000 ||
		le.Uint64(cpu[hvmCPUCr0:]) != 0x11 || le.Uint32(cpu[hvmCPUCsArbytes:]) != 0xc9b ||
		le.Uint32(cpu[hvmCPUCsLimit+4*hvmSegSS:]) != 0xffffffff || le.Uint32(cpu[hvmCPUCsArbytes+4*hvmSegTR:]) != 0x8b {
		t.Errorf("cpu record wrong")
	}
	if le.Uint64(m[hvmMTRRDefTypeOff:]) != 0x806 || le.Uint64(m[224:]) != 0x508 {
		t.Errorf("mtrr def type %#x cap %#x", le.Uint64(m[hvmMTRRDefTypeOff:]), le.Uint64(m[224:]))
	}

	for name, bad := range map[string][]byte{
		"empty":        nil,
		"no header":    append(saveRecord(2, 0, make([]byte, 1032)), saveRecord(0, 0, nil)...),
		"lying length": append(saveRecord(1, 0, hdr)[:8:8], 0xff),
		"short header": append(saveRecord(1, 0, hdr[:20]), saveRecord(0, 0, nil)...),
	} {
		if _, err := PVHBootContext(bad, 1, 2); err == nil || !strings.Contains(err.Error(), "HVM context") {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestStartInfoEncoding(t *testing.T) {
	b := make([]byte, HVMStartInfoSize)
	EncodeHVMStartInfo(b, HVMStartInfo{NrModules: 1, ModlistPaddr: 0x1000, CmdlinePaddr: 0x2000, MemmapPaddr: 0x3000, MemmapCount: 2})
	le := binary.LittleEndian
	if le.Uint32(b[0:]) != 0x336ec578 || le.Uint32(b[4:]) != 1 || le.Uint32(b[12:]) != 1 || le.Uint64(b[16:]) != 0x1000 ||
		le.Uint64(b[24:]) != 0x2000 || le.Uint64(b[40:]) != 0x3000 || le.Uint32(b[48:]) != 2 {
		t.Errorf("start info % x", b)
	}
	g := make([]byte, 16)
	EncodeGrantEntryV1(g[8:], 0, 0xfeffc)
	if le.Uint16(g[8:]) != 1 || le.Uint16(g[10:]) != 0 || le.Uint32(g[12:]) != 0xfeffc {
		t.Errorf("grant entry % x", g)
	}
}
