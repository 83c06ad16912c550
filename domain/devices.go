package domain

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// Devices plugs a domain's virtual disks and NICs (package devices): the
// split-driver protocol over xenstore and dom0's side (loop devices,
// bridges).
type Devices interface {
	// CheckBridge fails unless the dom0 bridge exists.
	CheckBridge(ctx context.Context, bridge string) error
	PlugDisk(ctx context.Context, domid uint32, d devices.Disk) (devices.Record, error)
	PlugNIC(ctx context.Context, domid uint32, n devices.NIC) (devices.Record, error)
	// WaitConnected waits until both ends of a plugged device are Connected.
	WaitConnected(ctx context.Context, rec devices.Record) error
	// Unplug removes a device from a running domain with the guest's
	// consent; force tears it down when the guest does not let go.
	Unplug(ctx context.Context, rec devices.Record, force bool) error
	// Status reads a plugged device's state from xenstore.
	Status(ctx context.Context, rec devices.Record) (devices.Status, error)
	// Counters reads a plugged device's I/O counters from dom0; the error
	// wraps fs.ErrNotExist while dom0 has none for it.
	Counters(ctx context.Context, rec devices.Record) (devices.Counters, error)
	// RemoveDomainDevices removes every device of a destroyed domain, from
	// what xenstore's dom0-owned backend directories say (no record needed).
	RemoveDomainDevices(ctx context.Context, domid uint32) error
}

// noDevices refuses to start a VM with disks or NICs: a manager made
// without Devices cannot plug them, and a VM started without the devices
// its spec names would be a VM other than the one asked for.
func noDevices(spec Spec) error {
	for _, f := range []struct {
		field, what string
		n           int
	}{{"spec.disks", "virtual disks", len(spec.Disks)}, {"spec.nics", "virtual NICs", len(spec.NICs)}} {
		if f.n > 0 {
			return &Error{Code: CodeFailedPrecondition, Field: f.field, Message: fmt.Sprintf(
				"VM %s has %s (%d), and this daemon was started without a device backend; remove them to start the VM", spec.UUID, f.what, f.n)}
		}
	}
	return nil
}

// fileID names the file or block device behind a disk path, whatever path
// reaches it (symlinks, bind mounts, hard links).
type fileID struct {
	dev, ino uint64
}

// deviceUse is one VM's hold on a backing file or a MAC.
type deviceUse struct {
	vm string
	rw bool
}

// diskFile checks that disk i's backing path can back a disk and returns
// its identity.
func diskFile(i int, d Disk) (fileID, error) {
	field := fmt.Sprintf("spec.disks[%d].path", i)
	fi, err := os.Stat(d.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fileID{}, &Error{Code: CodeFailedPrecondition, Field: field, Message: fmt.Sprintf("backing path %q of disk %s does not exist", d.Path, d.Device)}
		}
		return fileID{}, &Error{Code: CodeFailedPrecondition, Field: field, Message: fmt.Sprintf("backing path of disk %s: %v", d.Device, err)}
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.IsDir():
		return fileID{}, InvalidField(field, "backing path %q of disk %s is a directory, not a raw image file or block device", d.Path, d.Device)
	case fi.Mode().IsRegular():
		return fileID{dev: uint64(st.Dev), ino: st.Ino}, nil
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		return fileID{dev: ^uint64(0), ino: uint64(st.Rdev)}, nil
	}
	return fileID{}, InvalidField(field, "backing path %q of disk %s is neither a regular file nor a block device", d.Path, d.Device)
}

// checkFormat checks, before a start or a plug (never for a disk plugged
// already, whose first bytes are the guest's), that disk i's backing file
// starts as its format says (a qcow2 image given as raw would show the
// guest QEMU's metadata).
func checkFormat(i int, d Disk) error {
	err := devices.CheckFormat(d.Path, deviceFormat(d.Format))
	var inv *devices.InvalidError
	if errors.As(err, &inv) {
		return InvalidField(fmt.Sprintf("spec.disks[%d].%s", i, inv.Field), "disk %s: %s", d.Device, inv.Reason)
	}
	return err
}

// deviceFormat is the devices package's name of a format.
func deviceFormat(f DiskFormat) devices.Format {
	if f == DiskQCOW2 {
		return devices.FormatQCOW2
	}
	return devices.FormatRaw
}

// deviceDisk is what package devices plugs for d.
func deviceDisk(d Disk) devices.Disk {
	return devices.Disk{Device: d.Device, Path: d.Path, Format: deviceFormat(d.Format),
		ReadOnly: d.Mode == DiskRO || d.CDROM, CDROM: d.CDROM}
}

// checkDevices checks, before anything is built, that spec's disks and NICs
// can be plugged for VM id: backing files exist and are not in use by
// another VM in a conflicting mode (a file read-write in one running VM is
// in no other), bridges exist, MACs are not in use by another running VM.
// With reserve, the VM's uses are recorded (replacing earlier ones) until
// it is Halted again.
func (m *Manager) checkDevices(ctx context.Context, id string, spec Spec, reserve bool) error {
	if len(spec.Disks) == 0 && len(spec.NICs) == 0 {
		return nil
	}
	if m.devs == nil {
		return noDevices(spec)
	}
	files := make([]fileID, len(spec.Disks))
	for i, d := range spec.Disks {
		if d.Path == "" { // an empty CD-ROM drive
			continue
		}
		f, err := diskFile(i, d)
		if err != nil {
			return err
		}
		if err := checkFormat(i, d); err != nil {
			return err
		}
		files[i] = f
	}
	for i, n := range spec.NICs {
		if err := m.devs.CheckBridge(ctx, bridgeOf(n)); err != nil {
			return &Error{Code: CodeFailedPrecondition, Field: fmt.Sprintf("spec.nics[%d].bridge", i), Message: err.Error()}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, d := range spec.Disks {
		if d.Path == "" {
			continue
		}
		rw := d.Mode != DiskRO && !d.CDROM
		for _, u := range m.diskUse[files[i]] {
			if u.vm != id && (u.rw || rw) {
				mode := "read-only"
				if u.rw {
					mode = "read-write"
				}
				return &Error{Code: CodeFailedPrecondition, Field: fmt.Sprintf("spec.disks[%d].path", i), Message: fmt.Sprintf(
					"%q is %s in running VM %s; a file read-write in one VM can be in no other", d.Path, mode, u.vm)}
			}
		}
	}
	for i, n := range spec.NICs {
		if u, ok := m.macUse[n.MAC]; ok && u.vm != id {
			return &Error{Code: CodeFailedPrecondition, Field: fmt.Sprintf("spec.nics[%d].mac", i), Message: fmt.Sprintf(
				"MAC %s is in use by running VM %s", n.MAC, u.vm)}
		}
	}
	if !reserve {
		return nil
	}
	m.releaseDevicesLocked(id)
	for i, d := range spec.Disks {
		if d.Path != "" {
			m.diskUse[files[i]] = append(m.diskUse[files[i]], deviceUse{vm: id, rw: d.Mode != DiskRO && !d.CDROM})
		}
	}
	for _, n := range spec.NICs {
		m.macUse[n.MAC] = deviceUse{vm: id}
	}
	return nil
}

// releaseDevicesLocked forgets VM id's disk and MAC uses. m.mu must be held.
func (m *Manager) releaseDevicesLocked(id string) {
	for f, uses := range m.diskUse {
		kept := uses[:0]
		for _, u := range uses {
			if u.vm != id {
				kept = append(kept, u)
			}
		}
		if len(kept) == 0 {
			delete(m.diskUse, f)
		} else {
			m.diskUse[f] = kept
		}
	}
	for mac, u := range m.macUse {
		if u.vm == id {
			delete(m.macUse, mac)
		}
	}
}

// indexDevicesLocked keeps the use index in step with a VM record being
// applied: a Halted VM holds nothing. m.mu must be held.
func (m *Manager) indexDevicesLocked(r vmRecord) {
	if r.VM.Power == Halted && !r.Building {
		m.releaseDevicesLocked(r.VM.ID)
	}
}

// adoptDeviceUses records, at load, the disk and MAC uses of a VM that has
// plugged devices (a VM left running by a previous daemon).
func (m *Manager) adoptDeviceUses(vm VM) {
	for _, rec := range vm.Devices {
		switch rec.Kind {
		case devices.KindVBD:
			if rec.Path == "" {
				continue
			}
			f, err := diskFile(0, Disk{Device: rec.Device, Path: rec.Path})
			if err != nil {
				m.log.Warn("backing file of a plugged disk", "vm", vm.ID, "device", rec.Device, "err", err)
				continue
			}
			m.diskUse[f] = append(m.diskUse[f], deviceUse{vm: vm.ID, rw: !rec.ReadOnly})
		case devices.KindVIF:
			m.macUse[rec.MAC] = deviceUse{vm: vm.ID}
		}
	}
}

// plugDevices plugs spec's disks, then its NICs, into the paused domain d.
// On failure it returns what it plugged so far with the error; the caller
// tears the domain down, which removes them.
func (m *Manager) plugDevices(ctx context.Context, spec Spec, d xenctrl.Domid) ([]devices.Record, error) {
	var recs []devices.Record
	for i, disk := range spec.Disks {
		rec, err := m.devs.PlugDisk(ctx, uint32(d), deviceDisk(disk))
		if err != nil {
			return recs, plugError(err, fmt.Sprintf("spec.disks[%d]", i), fmt.Sprintf("plug disk %s of domain %d", disk.Device, d))
		}
		recs = append(recs, rec)
	}
	for i, n := range spec.NICs {
		rec, err := m.devs.PlugNIC(ctx, uint32(d), devices.NIC{DevID: i, MAC: n.MAC, Bridge: bridgeOf(n), MTU: n.MTU})
		if err != nil {
			return recs, plugError(err, fmt.Sprintf("spec.nics[%d]", i), fmt.Sprintf("plug NIC %d of domain %d", i, d))
		}
		recs = append(recs, rec)
	}
	return recs, nil
}

// DefaultBridge is the bridge of a NIC whose spec names none, as in libxl.
const DefaultBridge = "xenbr0"

func bridgeOf(n NIC) string {
	if n.Bridge == "" {
		return DefaultBridge
	}
	return n.Bridge
}

// plugError is the error of a failed plug of the device at field: bad
// input (devices.InvalidError) names the device's field; a device that
// is already plugged is AlreadyExists; a bound that passed is
// DeadlineExceeded; anything else is Internal.
func plugError(err error, field, what string) error {
	var inv *devices.InvalidError
	code := CodeInternal
	switch {
	case errors.As(err, &inv):
		return &Error{Code: CodeInvalidArgument, Field: field + "." + inv.Field, Message: fmt.Sprintf("%s: %v", what, err)}
	case errors.Is(err, devices.ErrInUse):
		code = CodeAlreadyExists
	case errors.Is(err, context.DeadlineExceeded):
		code = CodeDeadlineExceeded
	}
	return &Error{Code: code, Field: field, Message: fmt.Sprintf("%s: %v", what, err)}
}

// DeviceState is a plugged device, its state as xenstore shows it now and
// its I/O counters as dom0 shows them.
type DeviceState struct {
	devices.Record
	devices.Status
	// Counters is nil while dom0 has none for the device (a disk blkback
	// has not probed, a vif netback has not created) or they could not be
	// read; CountersError says why in the second case.
	Counters      *devices.Counters
	CountersError string
}

// DeviceStates reads the live state and counters of the devices plugged
// into the VM's domain (VM.Devices), in their order. A device whose state
// cannot be read has the reason in Status.Error, one whose counters cannot
// in CountersError.
func (m *Manager) DeviceStates(ctx context.Context, ref string) ([]DeviceState, error) {
	vm, err := m.GetVM(ctx, ref)
	if err != nil || len(vm.Devices) == 0 || m.devs == nil {
		return nil, err
	}
	out := make([]DeviceState, len(vm.Devices))
	for i, rec := range vm.Devices {
		st, err := m.devs.Status(ctx, rec)
		if err != nil {
			st.Error = err.Error()
		}
		out[i] = DeviceState{Record: rec, Status: st}
		out[i].Counters, out[i].CountersError = m.deviceCounters(ctx, rec)
	}
	return out, nil
}

// deviceCounters reads rec's counters: nil and no error when dom0 has none.
func (m *Manager) deviceCounters(ctx context.Context, rec devices.Record) (*devices.Counters, string) {
	c, err := m.devs.Counters(ctx, rec)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, ""
	case err != nil:
		return nil, err.Error()
	}
	return &c, ""
}
