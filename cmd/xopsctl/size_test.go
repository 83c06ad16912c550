package main

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	good := []struct {
		in   string
		want uint64
	}{
		{"0", 0},
		{"4096", 4096},
		{"1K", 1 << 10},
		{"1k", 1 << 10},
		{"256M", 256 << 20},
		{"256MB", 256 << 20},
		{"256MiB", 256 << 20},
		{"2G", 2 << 30},
		{"1.5G", 3 << 29},
		{"1T", 1 << 40},
		{" 64M ", 64 << 20},
		{"16777215T", 16777215 << 40},
	}
	for _, c := range good {
		got, err := parseSize("memory", c.in)
		if err != nil {
			t.Errorf("parseSize(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("parseSize(%q) = %d, want %d", c.in, got, c.want)
		}
	}
	bad := []string{"", "M", "abc", "-1M", "1.5", "0x10M", "16777216T", "99999999999999999999", "1e400", "NaNM", "12Q", "1_000"}
	for _, in := range bad {
		got, err := parseSize("memory", in)
		if err == nil {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
			continue
		}
		if !strings.Contains(err.Error(), "--memory") {
			t.Errorf("parseSize(%q) error %q does not name the flag", in, err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	cases := map[uint64]string{0: "0", 1000: "1000", 1024: "1K", 256 << 20: "256M", 3 << 29: "1536M", 2 << 30: "2G", 1 << 40: "1T"}
	for in, want := range cases {
		if got := formatSize(in); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"256M", "1.5G", "0", "", "1e3K", "18446744073709551615", "-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize("memory", s)
		if err != nil {
			return
		}
		// Whatever parses must print and parse back to the same value.
		back, err := parseSize("memory", formatSize(n))
		if err != nil || back != n {
			t.Fatalf("round trip of %q: %d -> %q -> %d, %v", s, n, formatSize(n), back, err)
		}
	})
}
