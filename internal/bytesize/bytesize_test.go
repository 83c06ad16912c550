package bytesize

import (
	"testing"
)

func TestParse(t *testing.T) {
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
		got, err := Parse(c.in)
		if err != nil {
			t.Errorf("Parse(%q): %v", c.in, err)
			continue
		}
		if got != c.want {
			t.Errorf("Parse(%q) = %d, want %d", c.in, got, c.want)
		}
	}
	bad := []string{"", "M", "abc", "-1M", "1.5", "0x10M", "16777216T", "99999999999999999999", "1e400", "NaNM", "12Q", "1_000"}
	for _, in := range bad {
		got, err := Parse(in)
		if err == nil {
			t.Errorf("Parse(%q) = %d, want an error", in, got)
		}
	}
}

func TestFormat(t *testing.T) {
	cases := map[uint64]string{0: "0", 1000: "1000", 1024: "1K", 256 << 20: "256M", 3 << 29: "1536M", 2 << 30: "2G", 1 << 40: "1T"}
	for in, want := range cases {
		if got := Format(in); got != want {
			t.Errorf("Format(%d) = %q, want %q", in, got, want)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"256M", "1.5G", "0", "", "1e3K", "18446744073709551615", "-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Parse(s)
		if err != nil {
			return
		}
		// Whatever parses must print and parse back to the same value.
		back, err := Parse(Format(n))
		if err != nil || back != n {
			t.Fatalf("round trip of %q: %d -> %q -> %d, %v", s, n, Format(n), back, err)
		}
	})
}
