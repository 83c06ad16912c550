package dom0

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DiskStats are blkback's counters for one vbd since it connected.
type DiskStats struct {
	ReadRequests  uint64 // rd_req
	WriteRequests uint64 // wr_req
	ReadSectors   uint64 // rd_sect: 512-byte sectors read
	WriteSectors  uint64 // wr_sect
	// OutOfRequests (oo_req) counts the times the guest's ring held more
	// requests than blkback had free request slots for.
	OutOfRequests uint64
}

// NetStats are a vif's counters as dom0 sees the interface: what dom0
// receives (Rx) is what the guest sends.
type NetStats struct {
	RxBytes, TxBytes     uint64
	RxPackets, TxPackets uint64
}

// DiskStats reads blkback's statistics of the vbd devid of domain domid
// (sysfs /sys/bus/xen-backend/devices/vbd-<domid>-<devid>/statistics). The
// error wraps fs.ErrNotExist when there is no such backend device.
func (h *Host) DiskStats(domid uint32, devid int) (DiskStats, error) {
	dir := filepath.Join(h.sysfs, "bus", "xen-backend", "devices",
		fmt.Sprintf("vbd-%d-%d", domid, devid), "statistics")
	var s DiskStats
	for _, c := range []struct {
		file string
		into *uint64
	}{
		{"rd_req", &s.ReadRequests},
		{"wr_req", &s.WriteRequests},
		{"rd_sect", &s.ReadSectors},
		{"wr_sect", &s.WriteSectors},
		{"oo_req", &s.OutOfRequests},
	} {
		b, err := os.ReadFile(filepath.Join(dir, c.file))
		if err != nil {
			return DiskStats{}, fmt.Errorf("vbd %d/%d statistics: %w", domid, devid, err)
		}
		v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if err != nil {
			return DiskStats{}, fmt.Errorf("vbd %d/%d statistics: %s: %w", domid, devid, c.file, err)
		}
		*c.into = v
	}
	return s, nil
}

// VIFStats reads the counters of the interface name. The error wraps
// fs.ErrNotExist when there is no such interface.
func (h *Host) VIFStats(name string) (NetStats, error) {
	if err := checkLinkName(name); err != nil {
		return NetStats{}, fmt.Errorf("vif %q: %w", name, err)
	}
	link, err := h.nl.LinkByName(name)
	if isLinkGone(err) {
		return NetStats{}, fmt.Errorf("vif %s: %w", name, fs.ErrNotExist)
	}
	if err != nil {
		return NetStats{}, fmt.Errorf("vif %s: %w", name, err)
	}
	st := link.Attrs().Statistics
	if st == nil {
		return NetStats{}, fmt.Errorf("vif %s: the kernel sent no statistics", name)
	}
	return NetStats{
		RxBytes: st.RxBytes, TxBytes: st.TxBytes,
		RxPackets: st.RxPackets, TxPackets: st.TxPackets,
	}, nil
}
