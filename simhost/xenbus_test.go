package simhost

import (
	"strconv"
	"testing"
)

func TestScanLikeC(t *testing.T) {
	for in, want := range map[string]int64{"4": 4, " 4\n": 4, "4abc": 4, "-1": -1, "+7": 7} {
		if got, ok := scanInt(in); !ok || got != want {
			t.Errorf("scanInt(%q) = %d, %v; want %d", in, got, ok, want)
		}
	}
	for _, bad := range []string{"", "abc", "-", " ", "99999999999999999999"} {
		if _, ok := scanInt(bad); ok {
			t.Errorf("scanInt(%q) accepted", bad)
		}
	}
	if _, ok := scanUint("-1"); ok {
		t.Error(`scanUint("-1") accepted`)
	}
	for in, want := range map[string][2]uint32{"7:0": {7, 0}, "fd:1f": {0xfd, 0x1f}, "7:3f\n": {7, 0x3f}} {
		if ma, mi, ok := scanMajorMinor(in); !ok || [2]uint32{ma, mi} != want {
			t.Errorf("scanMajorMinor(%q) = %x:%x, %v", in, ma, mi, ok)
		}
	}
	for _, bad := range []string{"7", ":1", "7:", "x:1", "7-1"} {
		if _, _, ok := scanMajorMinor(bad); ok {
			t.Errorf("scanMajorMinor(%q) accepted", bad)
		}
	}
	for mac, want := range map[string]bool{"00:16:3e:00:01:02": true, "0:16:3e:0:1:2": true, "00:16:3e:00:01": false,
		"00:16:3e:00:01:02:03": false, "00:16:3e:00:01:0g": false, "100:16:3e:00:01:02": false, "": false} {
		if got := validMAC(mac); got != want {
			t.Errorf("validMAC(%q) = %v", mac, got)
		}
	}
}

// FuzzXenbusScan feeds guest-written node values to the parsers the
// drivers use: none may panic, and a number they accept is the value of
// the digits they read.
func FuzzXenbusScan(f *testing.F) {
	for _, s := range []string{"4", "-1", "7:3f", "00:16:3e:00:01:02", "banana", "4294967295", " +12x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if n, ok := scanUint(s); ok {
			if _, err := strconv.ParseUint(strconv.FormatUint(n, 10), 10, 64); err != nil {
				t.Fatal(err)
			}
		}
		if n, ok := scanInt(s); ok && n < 0 && s == strconv.FormatInt(-n, 10) {
			t.Fatalf("scanInt(%q) = %d", s, n)
		}
		scanMajorMinor(s)
		validMAC(s)
	})
}
