package domain

import (
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// Limits on a VM spec.
const (
	MaxNameLen     = 64
	MaxVCPUs       = 128 // HVM_MAX_VCPUS; also our limit for PV and PVH
	MaxDisks       = 64
	MaxNICs        = 64
	MaxMapEntries  = 256
	maxValueLen    = 2048 // a guest's xenstore node-size quota (C xenstored's default); below the 4096-byte payload
	maxPathLen     = 4096
	maxCmdlineLen  = 2048 // x86 COMMAND_LINE_SIZE
	maxRequestID   = 128
	maxXenstoreKey = 256
)

var (
	nameRE      = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	uuidRE      = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	deviceRE    = regexp.MustCompile(`^(xvd|hd|sd)[a-z]{1,3}$`)
	macRE       = regexp.MustCompile(`^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$`)
	requestIDRE = regexp.MustCompile(`^[A-Za-z0-9._:-]+$`)
	bridgeRE    = regexp.MustCompile(`^[A-Za-z0-9._-]{1,15}$`)
)

// ValidUUID reports whether s is a canonical lower-case UUID other than the
// nil UUID.
func ValidUUID(s string) bool {
	return uuidRE.MatchString(s) && s != "00000000-0000-0000-0000-000000000000"
}

// looksLikeUUID reports whether s has a UUID's shape in any letter case:
// such a name could be taken for (another) VM's id.
func looksLikeUUID(s string) bool { return uuidRE.MatchString(strings.ToLower(s)) }

// normalize fills defaults: dynamic_max = static_max and dynamic_min =
// dynamic_max when zero, vcpus_at_startup = vcpus_max when zero, type PVH
// when unspecified. It does not validate.
func normalize(s Spec) Spec {
	if s.MemoryDynamicMax == 0 {
		s.MemoryDynamicMax = s.MemoryStaticMax
	}
	if s.MemoryDynamicMin == 0 {
		s.MemoryDynamicMin = s.MemoryDynamicMax
	}
	if s.VCPUsAtStartup == 0 {
		s.VCPUsAtStartup = s.VCPUsMax
	}
	if s.Type == TypeUnspecified {
		s.Type = TypePVH
	}
	s.Name = strings.TrimSpace(s.Name)
	for i := range s.NICs {
		s.NICs[i].MAC = strings.ToLower(s.NICs[i].MAC)
	}
	return s
}

// validateSpec checks a normalized spec. hostBytes is the host's total
// memory (0: unknown, not checked). It returns the first problem found as
// a CodeInvalidArgument error naming the field.
func validateSpec(s Spec, hostBytes uint64) error {
	if s.UUID != "" && !ValidUUID(s.UUID) {
		return InvalidField("spec.uuid", "%q is not a canonical lower-case UUID (8-4-4-4-12 hex digits, not all zero)", s.UUID)
	}
	if s.Name == "" {
		return InvalidField("spec.name", "must not be empty")
	}
	if len(s.Name) > MaxNameLen {
		return InvalidField("spec.name", "is %d characters long, at most %d allowed", len(s.Name), MaxNameLen)
	}
	if !nameRE.MatchString(s.Name) {
		return InvalidField("spec.name", "%q may contain only letters, digits, '.', '_' and '-', starting with a letter or digit", s.Name)
	}
	if looksLikeUUID(s.Name) {
		return InvalidField("spec.name", "%q is a UUID: a VM is named by id or name, so a name must not look like an id", s.Name)
	}
	switch s.Type {
	case TypePV, TypePVH, TypeHVM:
	default:
		return InvalidField("spec.type", "unknown domain type %d (want PV, PVH or HVM)", s.Type)
	}
	if err := validateMemory(s, hostBytes); err != nil {
		return err
	}
	if s.VCPUsMax < 1 || s.VCPUsMax > MaxVCPUs {
		return InvalidField("spec.vcpus_max", "%d is out of range 1..%d", s.VCPUsMax, MaxVCPUs)
	}
	if s.VCPUsAtStartup < 1 || s.VCPUsAtStartup > s.VCPUsMax {
		return InvalidField("spec.vcpus_at_startup", "%d is out of range 1..vcpus_max (%d)", s.VCPUsAtStartup, s.VCPUsMax)
	}
	for _, f := range []struct{ field, v string }{{"spec.kernel", s.Kernel}, {"spec.ramdisk", s.Ramdisk}} {
		if f.v != "" && (!strings.HasPrefix(f.v, "/") || len(f.v) > maxPathLen || strings.ContainsRune(f.v, 0)) {
			return InvalidField(f.field, "%q must be an absolute dom0 path", f.v)
		}
	}
	if s.Ramdisk != "" && s.Kernel == "" {
		return InvalidField("spec.ramdisk", "set without spec.kernel")
	}
	if len(s.Cmdline) > maxCmdlineLen || !printable(s.Cmdline) {
		return InvalidField("spec.cmdline", "must be printable text of at most %d bytes", maxCmdlineLen)
	}
	if err := validatePlatform(s.Platform); err != nil {
		return err
	}
	if err := validateXenstoreData(s.XenstoreData); err != nil {
		return err
	}
	for _, a := range []struct {
		field string
		v     Action
	}{{"spec.on_poweroff", s.OnPoweroff}, {"spec.on_reboot", s.OnReboot}, {"spec.on_crash", s.OnCrash}} {
		if a.v < ActionUnspecified || a.v > ActionPreserve {
			return InvalidField(a.field, "unknown action %d (want destroy, restart or preserve)", a.v)
		}
	}
	return validateDevices(s)
}

func validateMemory(s Spec, hostBytes uint64) error {
	if s.MemoryStaticMax == 0 {
		return InvalidField("spec.memory_static_max", "must be greater than 0")
	}
	for _, f := range []struct {
		field string
		v     uint64
	}{{"spec.memory_static_max", s.MemoryStaticMax}, {"spec.memory_dynamic_max", s.MemoryDynamicMax}, {"spec.memory_dynamic_min", s.MemoryDynamicMin}} {
		if f.v%xenctrl.PageSize != 0 {
			return InvalidField(f.field, "%d bytes is not a multiple of the %d-byte page size", f.v, xenctrl.PageSize)
		}
	}
	if s.MemoryDynamicMax > s.MemoryStaticMax {
		return InvalidField("spec.memory_dynamic_max", "%d exceeds memory_static_max %d", s.MemoryDynamicMax, s.MemoryStaticMax)
	}
	if s.MemoryDynamicMin > s.MemoryDynamicMax {
		return InvalidField("spec.memory_dynamic_min", "%d exceeds memory_dynamic_max %d", s.MemoryDynamicMin, s.MemoryDynamicMax)
	}
	if hostBytes != 0 && s.MemoryStaticMax > hostBytes {
		return InvalidField("spec.memory_static_max", "%d bytes exceeds the host's total memory %d bytes", s.MemoryStaticMax, hostBytes)
	}
	return nil
}

func validateDevices(s Spec) error {
	if len(s.Disks) > MaxDisks {
		return InvalidField("spec.disks", "%d disks, at most %d allowed", len(s.Disks), MaxDisks)
	}
	seen := map[string]int{}
	for i, d := range s.Disks {
		f := fmt.Sprintf("spec.disks[%d]", i)
		if !deviceRE.MatchString(d.Device) {
			return InvalidField(f+".device", "%q is not a guest disk name like xvda, hda or sda", d.Device)
		}
		if j, dup := seen[d.Device]; dup {
			return InvalidField(f+".device", "%q is also used by spec.disks[%d]", d.Device, j)
		}
		seen[d.Device] = i
		if d.Path == "" && !d.CDROM {
			return InvalidField(f+".path", "must not be empty (only an empty CD-ROM drive has no path)")
		}
		if d.Path != "" && (!strings.HasPrefix(d.Path, "/") || len(d.Path) > maxPathLen || strings.ContainsRune(d.Path, 0)) {
			return InvalidField(f+".path", "%q must be an absolute dom0 path", d.Path)
		}
		if d.Mode < DiskModeUnspecified || d.Mode > DiskRW {
			return InvalidField(f+".mode", "unknown mode %d (want ro or rw)", d.Mode)
		}
		if d.Format < DiskFormatUnspecified || d.Format > DiskQCOW2 {
			return InvalidField(f+".format", "unknown format %d (want raw or qcow2)", d.Format)
		}
		if d.Format == DiskQCOW2 && s.Type != TypePV && s.Type != TypePVH {
			return InvalidField(f+".format", "qcow2 disks are served by QEMU's qdisk backend, which this daemon starts for PV and PVH guests only; a %s guest needs a raw disk", s.Type)
		}
		if d.Format == DiskQCOW2 && (d.Mode == DiskRO || d.CDROM) {
			return InvalidField(f+".mode", "%s", devices.ReadOnlyQCOW2)
		}
		if d.Format == DiskQCOW2 && d.Path == "" {
			return InvalidField(f+".path", "a qcow2 disk needs its image file")
		}
	}
	if len(s.NICs) > MaxNICs {
		return InvalidField("spec.nics", "%d NICs, at most %d allowed", len(s.NICs), MaxNICs)
	}
	macs := map[string]int{}
	for i, n := range s.NICs {
		f := fmt.Sprintf("spec.nics[%d]", i)
		if n.MAC != "" { // empty: generated at create (fillMACsLocked)
			if err := validateMAC(f+".mac", n.MAC, i, macs); err != nil {
				return err
			}
		}
		if n.Bridge != "" && !bridgeRE.MatchString(n.Bridge) {
			return InvalidField(f+".bridge", "%q is not an interface name (1-15 of letters, digits, '.', '_', '-')", n.Bridge)
		}
		if n.MTU != 0 && (n.MTU < 68 || n.MTU > 65535) {
			return InvalidField(f+".mtu", "%d is out of range 68..65535", n.MTU)
		}
	}
	return nil
}

// validateMAC checks the MAC of NIC i and records it in seen (MAC => NIC).
func validateMAC(field, mac string, i int, seen map[string]int) error {
	if !macRE.MatchString(mac) {
		return InvalidField(field, "%q is not a MAC address like 00:16:3e:12:34:56", mac)
	}
	lower := strings.ToLower(mac)
	var first byte
	fmt.Sscanf(lower[:2], "%02x", &first)
	if first&1 != 0 || lower == "00:00:00:00:00:00" {
		return InvalidField(field, "%q is a multicast or zero address", mac)
	}
	if j, dup := seen[lower]; dup {
		return InvalidField(field, "%q is also used by spec.nics[%d]", mac, j)
	}
	seen[lower] = i
	return nil
}

func validateRequestID(id string) error {
	if id == "" {
		return nil
	}
	if len(id) > maxRequestID || !requestIDRE.MatchString(id) {
		return InvalidField("request_id", "%q must be 1-%d of letters, digits, '.', '_', ':', '-'", id, maxRequestID)
	}
	return nil
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}
