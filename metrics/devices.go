package metrics

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strconv"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// DeviceCounters reads a plugged device's I/O counters from dom0; a
// devices.Plugger is one. The error wraps fs.ErrNotExist while dom0 has
// none for the device.
type DeviceCounters interface {
	Counters(ctx context.Context, rec devices.Record) (devices.Counters, error)
}

// deviceReading is one plugged device's counters in a snapshot.
type deviceReading struct {
	rec      devices.Record
	counters devices.Counters
}

// readDevices reads the counters of every device plugged into a VM that
// has a domain: one read per device (sysfs files for a disk, one netlink
// request for a NIC on a real dom0; no hypercall, no xenstore). A device
// dom0 has no counters for is left out; the others' failures are counted
// and the first is returned, so one bad device costs one error, not the
// scrape.
func readDevices(ctx context.Context, dc DeviceCounters, vms []domain.VM) (map[string][]deviceReading, error) {
	out := map[string][]deviceReading{}
	var failed int
	var first error
	for _, vm := range vms {
		if vm.Domid == 0 {
			continue
		}
		for _, rec := range vm.Devices {
			c, err := dc.Counters(ctx, rec)
			switch {
			case errors.Is(err, fs.ErrNotExist):
			case err != nil:
				if failed++; first == nil {
					first = fmt.Errorf("VM %s device %s: %w", vm.ID, deviceLabel(rec), err)
				}
			default:
				out[vm.ID] = append(out[vm.ID], deviceReading{rec: rec, counters: c})
			}
		}
	}
	if failed > 0 {
		return out, fmt.Errorf("reading %d device counters failed, the first: %w", failed, first)
	}
	return out, nil
}

// deviceLabel is a device's device label: a disk's guest name (xvda), a
// NIC's index in the guest (0, 1...).
func deviceLabel(rec devices.Record) string {
	if rec.Kind == devices.KindVBD {
		return rec.Device
	}
	return strconv.Itoa(rec.DevID)
}
