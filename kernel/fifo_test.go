//go:build unix

package kernel

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// A FIFO is refused as not a regular file; opening it must not wait for a
// writer (the test would hang).
func TestFIFORefused(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Skip("mkfifo:", err)
	}
	if _, _, err := OpenFile(p, Limits{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("OpenFile of a FIFO: %v, want not a regular file", err)
	}
	if _, err := LoadInitrd(p, Limits{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("LoadInitrd of a FIFO: %v, want not a regular file", err)
	}
}
