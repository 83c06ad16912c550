package kernel

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A kernel file truncated after OpenFile mapped it makes reads of the
// image fault; under ReadGuard that is an error, not a dead process.
func TestReadGuardTruncatedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "vmlinux")
	k := linuxLike()
	k.Segments = k.Segments[:1]
	k.Segments[0].Data = make([]byte, 256<<10) // pages well past the ELF headers
	if err := os.WriteFile(path, k.Build(), 0o644); err != nil {
		t.Fatal(err)
	}
	img, release, err := OpenFile(t.Context(), path, Limits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	read := func() (sum byte, err error) {
		defer ReadGuard()(&err)
		for _, s := range img.Segments {
			for _, c := range s.Data {
				sum += c
			}
		}
		return sum, nil
	}
	if _, err := read(); err == nil || !strings.Contains(err.Error(), "changed while it was being loaded") {
		t.Fatalf("reading a truncated mapping: err %v, want the guard's error", err)
	}
	// The guard passes other panics on and restores the setting.
	defer func() {
		if r := recover(); r != "boom" {
			t.Fatalf("recovered %v, want boom", r)
		}
	}()
	func() (err error) {
		defer ReadGuard()(&err)
		panic("boom")
	}()
}
