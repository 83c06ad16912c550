package domain

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// The caller's keys in a domain's xenstore tree. The daemon writes the rest
// of /local/domain/<domid> itself (name, domid, vm, cpu/, memory/, control/,
// device/, store/ and console/ rings and ports, ...; see writeLayout), and
// guests, backends and xenconsoled act on those nodes: a caller who could
// write them could power the guest off (control/shutdown) or re-point the
// domain at another VM (vm). So:
//
//   - spec.xenstore_data keys must lie below data/ or vm-data/: the subtrees
//     that carry caller data to the guest and nothing else (xenopsd keeps
//     only the vm-data/ and FIST/ keys of XAPI's xenstore_data and drops the
//     rest silently; we refuse them);
//   - spec.platform keys are the names the daemon knows, each with the values
//     it acts on (platformKeys): an unknown key is refused, not written and
//     ignored.
//
// Every accepted key is a path xenstored accepts (xenstore.ValidNodeName:
// letters, digits, '-', '_', '@' and single '/' separators), and every value
// is at most the node size C xenstored allows a guest (2048 bytes), well
// within a request's 4096-byte payload.

// xenstoreDataRoots are the subtrees spec.xenstore_data may write.
var xenstoreDataRoots = []string{"data/", "vm-data/"}

// platformKeys are the spec.platform keys the daemon knows, with the values
// each accepts. tsc_mode is read by the builder (native is the PVH default;
// never_emulate is its libxl name).
var platformKeys = map[string][]string{
	"tsc_mode": {"default", "always_emulate", "native", "never_emulate"},
}

// validXenstoreKey reports whether k, relative to a domain's path, is a
// node name xenstored accepts and within our length limit.
func validXenstoreKey(k string) bool {
	return k != "" && len(k) <= maxXenstoreKey && k[0] != '/' && xenstore.ValidNodeName("/"+k)
}

// validateXenstoreData checks spec.xenstore_data (see above).
func validateXenstoreData(m map[string]string) error {
	const field = "spec.xenstore_data"
	if len(m) > MaxMapEntries {
		return InvalidField(field, "has %d entries, at most %d allowed", len(m), MaxMapEntries)
	}
	for _, k := range sortedKeys(m) {
		if !validXenstoreKey(k) {
			return InvalidField(field, "key %q is not a xenstore path: at most %d of letters, digits, '-', '_', '@', with single '/' between names", k, maxXenstoreKey)
		}
		if !underDataRoot(k) {
			return InvalidField(field, "key %q must lie below %s: the rest of the domain's tree is the daemon's and the guest's", k, strings.Join(xenstoreDataRoots, " or "))
		}
		if err := validateValue(field, k, m[k]); err != nil {
			return err
		}
	}
	return nil
}

func underDataRoot(k string) bool {
	for _, r := range xenstoreDataRoots {
		if strings.HasPrefix(k, r) && len(k) > len(r) {
			return true
		}
	}
	return false
}

// validatePlatform checks spec.platform against platformKeys.
func validatePlatform(m map[string]string) error {
	const field = "spec.platform"
	for _, k := range sortedKeys(m) {
		values, known := platformKeys[k]
		if !known {
			return InvalidField(field, "unknown key %q (known: %s)", k, strings.Join(sortedKeys(platformKeys), ", "))
		}
		if !slices.Contains(values, m[k]) {
			return InvalidField(fmt.Sprintf("%s[%s]", field, k), "%q is not one of %s", m[k], strings.Join(values, ", "))
		}
	}
	return nil
}

// validateValue checks a value written to xenstore for the caller: text
// without NUL of at most maxValueLen bytes.
func validateValue(field, k, v string) error {
	if len(v) > maxValueLen || strings.ContainsRune(v, 0) || !utf8.ValidString(v) {
		return InvalidField(fmt.Sprintf("%s[%s]", field, k), "value must be UTF-8 text without NUL of at most %d bytes", maxValueLen)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
