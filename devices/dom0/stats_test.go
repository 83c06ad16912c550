package dom0

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// blkbackStats writes a vbd's statistics as blkback shows them in sysfs.
func blkbackStats(t *testing.T, sysfs, vbd string, counters map[string]string) {
	t.Helper()
	dir := filepath.Join(sysfs, "bus", "xen-backend", "devices", vbd, "statistics")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, v := range counters {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDiskStats(t *testing.T) {
	h := New(quietLog())
	h.sysfs = t.TempDir()
	blkbackStats(t, h.sysfs, "vbd-7-51712", map[string]string{
		"rd_req": "12\n", "wr_req": "34\n", "rd_sect": "5600\n", "wr_sect": "7800\n",
		"oo_req": "9\n", "f_req": "1\n", "ds_req": "0\n",
	})
	got, err := h.DiskStats(7, 51712)
	if err != nil {
		t.Fatal(err)
	}
	want := DiskStats{ReadRequests: 12, WriteRequests: 34, ReadSectors: 5600, WriteSectors: 7800, OutOfRequests: 9}
	if got != want {
		t.Errorf("DiskStats = %+v, want %+v", got, want)
	}

	if _, err := h.DiskStats(7, 51728); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("DiskStats of a missing vbd: %v, want fs.ErrNotExist", err)
	}
	blkbackStats(t, h.sysfs, "vbd-8-51712", map[string]string{
		"rd_req": "1\n", "wr_req": "-2\n", "rd_sect": "3\n", "wr_sect": "4\n", "oo_req": "5\n",
	})
	if _, err := h.DiskStats(8, 51712); err == nil || !strings.Contains(err.Error(), "wr_req") {
		t.Errorf("DiskStats with a bad counter: %v, want an error naming wr_req", err)
	}
}
