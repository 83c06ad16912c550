package builder

import (
	"encoding/binary"
	"fmt"
)

// ACPI tables for PVH guests.
//
// A PVH guest has no firmware, so the toolstack hands it the ACPI tables a
// firmware would: without a MADT Linux finds no local APIC, runs in
// "virtual wire mode with no configuration", disables SMP and never sets
// up a per-CPU clock event device, so the guest's first timer sleep never
// ends. libxl builds its PVH tables with libacpi (a FADT pointing at PM
// ports nobody emulates, a DSDT with processor objects); these are the
// minimum that is true for a PVH container instead:
//
//   - RSDP (ACPI 2.0) and an XSDT listing the FADT and the MADT;
//   - FADT revision 5 with HW_REDUCED_ACPI: no PM1 event/control blocks,
//     no PM timer, no GPEs, no SCI, no FACS (a PVH domain has none of that
//     hardware); no VGA, no 8042, no CMOS RTC; power and sleep buttons
//     absent;
//   - an empty DSDT (header only), which the FADT must point at;
//   - a MADT with one enabled local APIC per vCPU online at boot and a
//     disabled (hot-pluggable) entry for each further vCPU up to the
//     maximum. Xen gives vCPU n the local APIC ID 2n.
//
// The whole set fits in one page, placed where libxl places the ACPI
// information (0xfc000000) and marked ACPI NVS in the memory map; the RSDP
// address goes into hvm_start_info.rsdp_paddr. Kernels that do not declare
// XENFEAT_linux_rsdp_unrestricted also get a copy of the RSDP in the last
// 64 bytes below 1 MiB, where the legacy ACPI search finds it.
//
// Table layouts: ACPI 6.4 specification, sections 5.2.5 (RSDP), 5.2.6
// (header), 5.2.8 (XSDT), 5.2.9 (FADT), 5.2.12 (MADT).

const (
	acpiBase      = 0xfc000000 // guest physical address of the ACPI page
	acpiLegacyPtr = 0x100000 - 64

	// MaxACPIVCPUs is the most vCPUs the MADT describes: HVM_MAX_VCPUS, and
	// 2n must fit the 8-bit local APIC ID of a Processor Local APIC entry.
	MaxACPIVCPUs = 128

	lapicBase = 0xfee00000

	// offsets inside the ACPI page
	rsdpOff = 0x000
	xsdtOff = 0x040
	fadtOff = 0x080
	dsdtOff = 0x200
	madtOff = 0x240

	acpiHeaderLen = 36
	rsdpLen       = 36
	fadtLen       = 268 // revision 5
	madtLapicLen  = 8

	// FADT flags and IA-PC boot architecture flags.
	fadtPowerButton   = 1 << 4 // set: no fixed power button
	fadtSleepButton   = 1 << 5 // set: no fixed sleep button
	fadtHWReduced     = 1 << 20
	bootArchNoVGA     = 1 << 2
	bootArchNoCMOSRTC = 1 << 5

	madtLapicEnabled = 1
)

var le = binary.LittleEndian

// acpiTables renders the ACPI page for a guest with vcpusMax vCPUs of which
// the first vcpusOnline are online at boot. The RSDP is at acpiBase.
func acpiTables(vcpusMax, vcpusOnline uint32) ([]byte, error) {
	if vcpusMax == 0 || vcpusMax > MaxACPIVCPUs {
		return nil, fmt.Errorf("acpi: %d vCPUs: want 1..%d", vcpusMax, MaxACPIVCPUs)
	}
	if vcpusOnline == 0 || vcpusOnline > vcpusMax {
		vcpusOnline = vcpusMax
	}
	page := make([]byte, pageSize)

	// DSDT: a definition block with no terms.
	dsdt := page[dsdtOff : dsdtOff+acpiHeaderLen]
	acpiHeader(dsdt, "DSDT", 2)

	// MADT: local APIC address, flags (no PC-AT 8259s), one entry per vCPU.
	madtLen := acpiHeaderLen + 8 + madtLapicLen*int(vcpusMax)
	madt := page[madtOff : madtOff+madtLen]
	le.PutUint32(madt[36:], lapicBase)
	le.PutUint32(madt[40:], 0)
	for i := uint32(0); i < vcpusMax; i++ {
		e := madt[44+madtLapicLen*i:]
		e[0] = 0 // Processor Local APIC
		e[1] = madtLapicLen
		e[2] = byte(i)     // ACPI processor UID
		e[3] = byte(2 * i) // local APIC ID
		flags := uint32(0)
		if i < vcpusOnline {
			flags = madtLapicEnabled
		}
		le.PutUint32(e[4:], flags)
	}
	acpiHeader(madt, "APIC", 4)

	// FADT, hardware-reduced.
	fadt := page[fadtOff : fadtOff+fadtLen]
	le.PutUint32(fadt[40:], acpiBase+dsdtOff) // DSDT (32-bit)
	le.PutUint16(fadt[109:], bootArchNoVGA|bootArchNoCMOSRTC)
	le.PutUint32(fadt[112:], fadtPowerButton|fadtSleepButton|fadtHWReduced)
	le.PutUint64(fadt[140:], acpiBase+dsdtOff) // X_DSDT
	acpiHeader(fadt, "FACP", 5)

	// XSDT: FADT first, as operating systems expect.
	xsdt := page[xsdtOff : xsdtOff+acpiHeaderLen+16]
	le.PutUint64(xsdt[36:], acpiBase+fadtOff)
	le.PutUint64(xsdt[44:], acpiBase+madtOff)
	acpiHeader(xsdt, "XSDT", 1)

	rsdp := page[rsdpOff : rsdpOff+rsdpLen]
	copy(rsdp, "RSD PTR ")
	copy(rsdp[9:15], acpiOEMID)
	rsdp[15] = 2                              // ACPI 2.0+
	le.PutUint32(rsdp[16:], 0)                // no RSDT
	le.PutUint32(rsdp[20:], rsdpLen)          // length
	le.PutUint64(rsdp[24:], acpiBase+xsdtOff) // XSDT
	rsdp[8] = acpiChecksum(rsdp[:20])
	rsdp[32] = acpiChecksum(rsdp)
	return page, nil
}

const (
	acpiOEMID      = "XENOPS"   // 6 bytes
	acpiOEMTableID = "XENOPSNG" // 8 bytes
	acpiCreatorID  = "XNPS"
)

// acpiHeader fills the standard header of table t (whose length is
// len(t)) and its checksum; the body must already be written.
func acpiHeader(t []byte, sig string, revision byte) {
	copy(t[0:4], sig)
	le.PutUint32(t[4:], uint32(len(t)))
	t[8] = revision
	t[9] = 0
	copy(t[10:16], acpiOEMID)
	copy(t[16:24], acpiOEMTableID)
	le.PutUint32(t[24:], 1) // OEM revision
	copy(t[28:32], acpiCreatorID)
	le.PutUint32(t[32:], 1) // creator revision
	t[9] = acpiChecksum(t)
}

// acpiChecksum is the byte that makes b (with that byte zero) sum to 0.
func acpiChecksum(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return -s
}
