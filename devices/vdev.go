package devices

import (
	"fmt"
	"strconv"
)

// VirtualDevice returns the virtual-device number a guest disk name stands
// for, as libxl computes it (libxl__device_disk_dev_number) and
// docs/misc/vbd-interface.txt specifies:
//
//	xvd<disk>[<part>], d<disk>[p<part>]  disk and part ≤ 15: 202<<8 | disk<<4 | part
//	                                     else (disk < 2^20, part ≤ 255): 1<<28 | disk<<8 | part
//	sd<disk>[<part>]   disk ≤ 15, part ≤ 15: 8<<8 | disk<<4 | part
//	hd<disk>[<part>]   disk ≤ 3, part ≤ 63: (3 or 22 for disks 2..3)<<8 | (disk&1)<<6 | part
//
// Disk letters count in bijective base 26 (a=0, z=25, aa=26; xvdtq is disk
// 536); a partition is a decimal number without leading zeros, 0 or absent
// meaning the whole disk. libxl's bare-number form (a raw xenstore value) is
// refused: a name says which disk the guest sees, a number hides it.
func VirtualDevice(name string) (int, error) {
	if disk, part, ok := parseDP(name); ok {
		return xvdNumber(disk, part), nil
	}
	for _, f := range diskFamilies {
		rest, found := cutPrefix(name, f.prefix)
		if !found {
			continue
		}
		disk, part, err := parseLettersPart(rest, f.maxDisk, f.maxPart)
		if err != nil {
			return 0, fmt.Errorf("disk name %q: %v", name, err)
		}
		return f.number(disk, part), nil
	}
	return 0, fmt.Errorf("disk name %q: want xvd<letters>[<partition>], sd…, hd… or d<disk>[p<partition>]", name)
}

type diskFamily struct {
	prefix           string
	maxDisk, maxPart int
	number           func(disk, part int) int
}

var diskFamilies = []diskFamily{
	{"xvd", 1<<20 - 1, 255, xvdNumber},
	{"sd", 15, 15, func(d, p int) int { return 8<<8 | d<<4 | p }},
	{"hd", 3, 63, func(d, p int) int {
		major := 3
		if d >= 2 {
			major = 22
		}
		return major<<8 | (d&1)<<6 | p
	}},
}

func xvdNumber(disk, part int) int {
	if disk <= 15 && part <= 15 {
		return 202<<8 | disk<<4 | part
	}
	return 1<<28 | disk<<8 | part
}

func cutPrefix(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || s[:len(prefix)] != prefix {
		return s, false
	}
	return s[len(prefix):], true
}

// parseLettersPart decodes "<letters>[<partition>]".
func parseLettersPart(s string, maxDisk, maxPart int) (disk, part int, err error) {
	disk = -1
	i := 0
	for ; i < len(s) && s[i] >= 'a' && s[i] <= 'z'; i++ {
		disk = (disk+1)*26 + int(s[i]-'a')
		if disk > maxDisk {
			return 0, 0, fmt.Errorf("disk number above %d", maxDisk)
		}
	}
	if disk < 0 {
		return 0, 0, fmt.Errorf("no disk letter")
	}
	if i == len(s) {
		return disk, 0, nil
	}
	part, ok := parseNumber(s[i:], maxPart)
	if !ok || part == 0 {
		return 0, 0, fmt.Errorf("partition %q: want a decimal number 1..%d without leading zeros", s[i:], maxPart)
	}
	return disk, part, nil
}

// parseDP decodes libxl's "d<disk>[p<partition>]" form.
func parseDP(s string) (disk, part int, ok bool) {
	rest, found := cutPrefix(s, "d")
	if !found {
		return 0, 0, false
	}
	ds, ps := rest, ""
	for i := 0; i < len(rest); i++ {
		if rest[i] == 'p' {
			ds, ps = rest[:i], rest[i+1:]
			break
		}
	}
	if disk, ok = parseNumber(ds, 1<<20-1); !ok {
		return 0, 0, false
	}
	if len(ds) < len(rest) {
		if part, ok = parseNumber(ps, 255); !ok {
			return 0, 0, false
		}
	}
	return disk, part, true
}

// parseNumber accepts canonical decimal (no sign, no leading zeros) ≤ max.
func parseNumber(s string, max int) (int, bool) {
	if s == "" || len(s) > 10 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n > max {
		return 0, false
	}
	return n, true
}
