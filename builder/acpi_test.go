package builder

import (
	"bytes"
	"encoding/binary"
	"testing"
)

// parseACPI walks the tables in page (mapped at base) from the RSDP at its
// start the way an operating system does, checking every signature,
// length and checksum, and returns the tables by signature.
func parseACPI(t *testing.T, page []byte, base uint64) map[string][]byte {
	t.Helper()
	le := binary.LittleEndian
	at := func(addr uint64, n int) []byte {
		if addr < base || addr-base+uint64(n) > uint64(len(page)) {
			t.Fatalf("ACPI pointer %#x+%d outside the ACPI page", addr, n)
		}
		return page[addr-base : addr-base+uint64(n)]
	}
	sum := func(b []byte) byte {
		var s byte
		for _, c := range b {
			s += c
		}
		return s
	}
	rsdp := page[:36]
	if string(rsdp[:8]) != "RSD PTR " || rsdp[15] != 2 || sum(rsdp[:20]) != 0 || sum(rsdp) != 0 || le.Uint32(rsdp[20:]) != 36 {
		t.Fatalf("RSDP % x", rsdp)
	}
	table := func(addr uint64) []byte {
		h := at(addr, 36)
		tb := at(addr, int(le.Uint32(h[4:])))
		if sum(tb) != 0 {
			t.Fatalf("table %q at %#x: bad checksum", h[:4], addr)
		}
		return tb
	}
	got := map[string][]byte{}
	xsdt := table(le.Uint64(rsdp[24:]))
	if string(xsdt[:4]) != "XSDT" {
		t.Fatalf("XSDT signature %q", xsdt[:4])
	}
	for off := 36; off < len(xsdt); off += 8 {
		tb := table(le.Uint64(xsdt[off:]))
		got[string(tb[:4])] = tb
	}
	fadt := got["FACP"]
	if fadt == nil || len(fadt) != 268 || fadt[8] != 5 {
		t.Fatalf("FADT missing or not revision 5 (len %d)", len(fadt))
	}
	dsdt := table(le.Uint64(fadt[140:]))
	if string(dsdt[:4]) != "DSDT" || uint64(le.Uint32(fadt[40:])) != le.Uint64(fadt[140:]) {
		t.Fatalf("DSDT % x", dsdt)
	}
	got["DSDT"] = dsdt
	return got
}

func TestACPITables(t *testing.T) {
	le := binary.LittleEndian
	for _, c := range []struct{ max, online, enabled uint32 }{
		{1, 1, 1}, {4, 2, 2}, {4, 0, 4}, {MaxACPIVCPUs, MaxACPIVCPUs, MaxACPIVCPUs},
	} {
		page, err := acpiTables(c.max, c.online)
		if err != nil {
			t.Fatal(err)
		}
		tables := parseACPI(t, page, acpiBase)
		fadt := tables["FACP"]
		if flags := le.Uint32(fadt[112:]); flags&fadtHWReduced == 0 {
			t.Errorf("FADT flags %#x: not hardware-reduced", flags)
		}
		if le.Uint32(fadt[56:]) != 0 || le.Uint32(fadt[64:]) != 0 || le.Uint32(fadt[76:]) != 0 || le.Uint16(fadt[46:]) != 0 {
			t.Error("FADT names PM blocks or an SCI a PVH domain does not have")
		}
		madt := tables["APIC"]
		if le.Uint32(madt[36:]) != 0xfee00000 || len(madt) != 44+8*int(c.max) {
			t.Fatalf("%d vCPUs: MADT length %d, LAPIC at %#x", c.max, len(madt), le.Uint32(madt[36:]))
		}
		var enabled uint32
		for i := uint32(0); i < c.max; i++ {
			e := madt[44+8*i:]
			if e[0] != 0 || e[1] != 8 || e[2] != byte(i) || e[3] != byte(2*i) {
				t.Errorf("MADT entry %d: % x", i, e[:8])
			}
			if le.Uint32(e[4:])&1 != 0 {
				if i >= c.enabled {
					t.Errorf("MADT entry %d enabled, want only the first %d", i, c.enabled)
				}
				enabled++
			}
		}
		if enabled != c.enabled {
			t.Errorf("%d of %d MADT entries enabled, want %d", enabled, c.max, c.enabled)
		}
		if !bytes.Equal(page[2048:], make([]byte, 2048)) {
			t.Error("tables spill into the second half of the page")
		}
	}
	for _, bad := range []uint32{0, MaxACPIVCPUs + 1} {
		if _, err := acpiTables(bad, 1); err == nil {
			t.Errorf("%d vCPUs accepted", bad)
		}
	}
}
