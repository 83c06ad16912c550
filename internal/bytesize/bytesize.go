// Package bytesize reads and prints memory sizes the way operators write
// them ("256M", "1.5G", "4096").
package bytesize

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"strconv"
	"strings"
)

// Parse parses a size such as "256M", "1G", "512MiB", "4096" or "1.5G".
// Suffixes are binary (K = 1024 bytes, M = 1024 K, ...; case, a trailing
// "B" and "iB" do not matter); a number without a suffix is bytes. The
// result must be a whole number of bytes that fits in 64 bits.
func Parse(s string) (uint64, error) {
	orig := s
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("empty size (want e.g. 256M or 1G)")
	}
	// Accept "256M", "256MB", "256MiB", "256m".
	upper := strings.ToUpper(s)
	upper = strings.TrimSuffix(upper, "IB")
	upper = strings.TrimSuffix(upper, "B")
	shift := uint(0)
	if n := len(upper); n > 0 {
		switch upper[n-1] {
		case 'K':
			shift = 10
		case 'M':
			shift = 20
		case 'G':
			shift = 30
		case 'T':
			shift = 40
		}
		if shift != 0 {
			upper = upper[:n-1]
		}
	}
	if upper == "" {
		return 0, fmt.Errorf("%q has no number (want e.g. 256M or 1G)", orig)
	}
	if n, err := strconv.ParseUint(upper, 10, 64); err == nil {
		if shift != 0 && bits.LeadingZeros64(n) < int(shift) {
			return 0, fmt.Errorf("%q is too large", orig)
		}
		return n << shift, nil
	}
	f, err := strconv.ParseFloat(upper, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || strings.ContainsAny(upper, "xXpP_") {
		return 0, fmt.Errorf("%q is not a size (want a number with an optional K, M, G or T suffix, e.g. 256M)", orig)
	}
	if f < 0 {
		return 0, fmt.Errorf("%q is negative", orig)
	}
	v := f * float64(uint64(1)<<shift)
	if v >= math.MaxUint64 {
		return 0, fmt.Errorf("%q is too large", orig)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("%q is not a whole number of bytes", orig)
	}
	return uint64(v), nil
}

// Format prints a byte count with the largest binary suffix that keeps it a
// whole number, e.g. 268435456 -> "256M". Parse reads it back.
func Format(n uint64) string {
	if n == 0 {
		return "0"
	}
	for _, u := range []struct {
		suffix string
		shift  uint
	}{{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10}} {
		if n%(1<<u.shift) == 0 {
			return strconv.FormatUint(n>>u.shift, 10) + u.suffix
		}
	}
	return strconv.FormatUint(n, 10)
}
