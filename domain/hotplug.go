package domain

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// Hot-plug: disks and NICs added to and removed from a running or paused
// VM. Each is a task on the VM's queue like any lifecycle operation; the
// spec and the plugged devices change together, in the batch that ends it.

// AddDisk plugs disk into the VM's domain and adds it to the spec. The
// task ends when the guest's frontend has connected (at once when the VM
// is paused: its frontend connects when it runs).
func (m *Manager) AddDisk(ctx context.Context, ref string, disk Disk) (Task, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return Task{}, err
	}
	spec := m.vmSnapshot(e).VM.Spec
	if err := m.checkAddition(ctx, e.id, spec, func(s *Spec) { s.Disks = append(s.Disks, disk) }, fmt.Sprintf("spec.disks[%d]", len(spec.Disks)), "disk"); err != nil {
		return Task{}, err
	}
	return m.hotplug(ctx, ref, "add-disk", func(ctx context.Context, e *vmEntry, r vmRecord) (func(*vmRecord), error) {
		spec := cloneSpec(r.VM.Spec)
		spec.Disks = append(spec.Disks, disk)
		if err := renameField(validateDevices(spec), fmt.Sprintf("spec.disks[%d]", len(spec.Disks)-1), "disk"); err != nil {
			return nil, err
		}
		if err := renameField(m.checkDevices(ctx, e.id, spec, true), fmt.Sprintf("spec.disks[%d]", len(spec.Disks)-1), "disk"); err != nil {
			return nil, err
		}
		rec, err := m.devs.PlugDisk(ctx, r.VM.Domid, deviceDisk(disk))
		if err != nil {
			m.reserveSpec(ctx, e.id, r.VM.Spec)
			return nil, plugError(err, "disk", fmt.Sprintf("plug disk %s into domain %d", disk.Device, r.VM.Domid))
		}
		if err := m.waitPlugged(ctx, e.id, r, rec); err != nil {
			m.reserveSpec(ctx, e.id, r.VM.Spec)
			return nil, err
		}
		return func(r *vmRecord) {
			r.VM.Spec.Disks = append(r.VM.Spec.Disks, disk)
			r.VM.Devices = append(r.VM.Devices, rec)
		}, nil
	})
}

// AddNIC plugs nic into the VM's domain and adds it to the spec (a NIC
// without a MAC gets one, as at create).
func (m *Manager) AddNIC(ctx context.Context, ref string, nic NIC) (Task, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return Task{}, err
	}
	nic.MAC = strings.ToLower(nic.MAC)
	spec := m.vmSnapshot(e).VM.Spec
	if err := m.checkAddition(ctx, e.id, spec, func(s *Spec) { s.NICs = append(s.NICs, nic) }, fmt.Sprintf("spec.nics[%d]", len(spec.NICs)), "nic"); err != nil {
		return Task{}, err
	}
	return m.hotplug(ctx, ref, "add-nic", func(ctx context.Context, e *vmEntry, r vmRecord) (func(*vmRecord), error) {
		spec := cloneSpec(r.VM.Spec)
		spec.NICs = append(spec.NICs, nic)
		m.mu.Lock()
		m.fillMACsLocked(&spec, nil)
		m.mu.Unlock()
		i := len(spec.NICs) - 1
		field := fmt.Sprintf("spec.nics[%d]", i)
		if err := renameField(validateDevices(spec), field, "nic"); err != nil {
			return nil, err
		}
		if err := renameField(m.checkDevices(ctx, e.id, spec, true), field, "nic"); err != nil {
			return nil, err
		}
		n := spec.NICs[i]
		rec, err := m.devs.PlugNIC(ctx, r.VM.Domid, devices.NIC{DevID: nextNICDevID(r.VM.Devices), MAC: n.MAC, Bridge: bridgeOf(n), MTU: n.MTU})
		if err != nil {
			m.reserveSpec(ctx, e.id, r.VM.Spec)
			return nil, plugError(err, "nic", fmt.Sprintf("plug NIC %s into domain %d", n.MAC, r.VM.Domid))
		}
		if err := m.waitPlugged(ctx, e.id, r, rec); err != nil {
			m.reserveSpec(ctx, e.id, r.VM.Spec)
			return nil, err
		}
		return func(r *vmRecord) {
			r.VM.Spec.NICs = append(r.VM.Spec.NICs, n)
			r.VM.Devices = append(r.VM.Devices, rec)
		}, nil
	})
}

// RemoveDisk unplugs the disk the guest calls device and removes it from
// the spec. The guest must release it within the unplug bound; force tears
// it down when it does not.
func (m *Manager) RemoveDisk(ctx context.Context, ref, device string, force bool) (Task, error) {
	return m.removeDevice(ctx, ref, "remove-disk", "device", force, func(rec devices.Record) bool {
		return rec.Kind == devices.KindVBD && rec.Device == device
	}, func(s *Spec) bool {
		n := len(s.Disks)
		s.Disks = slices.DeleteFunc(s.Disks, func(d Disk) bool { return d.Device == device })
		return len(s.Disks) != n
	}, "disk "+quote(device))
}

// RemoveNIC unplugs the NIC with the given MAC and removes it from the spec.
func (m *Manager) RemoveNIC(ctx context.Context, ref, mac string, force bool) (Task, error) {
	mac = strings.ToLower(mac)
	return m.removeDevice(ctx, ref, "remove-nic", "mac", force, func(rec devices.Record) bool {
		return rec.Kind == devices.KindVIF && strings.EqualFold(rec.MAC, mac)
	}, func(s *Spec) bool {
		n := len(s.NICs)
		s.NICs = slices.DeleteFunc(s.NICs, func(x NIC) bool { return x.MAC == mac })
		return len(s.NICs) != n
	}, "NIC "+quote(mac))
}

func (m *Manager) removeDevice(ctx context.Context, ref, op, field string, force bool, plugged func(devices.Record) bool, drop func(*Spec) bool, what string) (Task, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return Task{}, err
	}
	if r := m.vmSnapshot(e); r.VM.Power == Running || r.VM.Power == Paused {
		if !slices.ContainsFunc(r.VM.Devices, plugged) {
			return Task{}, &Error{Code: CodeNotFound, Field: field, Message: fmt.Sprintf("VM %s has no %s plugged", e.id, what)}
		}
	}
	return m.hotplug(ctx, ref, op, func(ctx context.Context, e *vmEntry, r vmRecord) (func(*vmRecord), error) {
		i := slices.IndexFunc(r.VM.Devices, plugged)
		if i < 0 {
			return nil, &Error{Code: CodeNotFound, Field: field, Message: fmt.Sprintf("VM %s has no %s plugged", e.id, what)}
		}
		rec := r.VM.Devices[i]
		if err := m.devs.Unplug(ctx, rec, force); err != nil {
			return nil, &Error{Code: CodeDeadlineExceeded, Field: field, Message: fmt.Sprintf("unplug %s of VM %s: %v (force tears it down)", what, e.id, err)}
		}
		spec := cloneSpec(r.VM.Spec)
		drop(&spec)
		m.reserveSpec(ctx, e.id, spec)
		return func(r *vmRecord) {
			drop(&r.VM.Spec)
			r.VM.Devices = slices.DeleteFunc(r.VM.Devices, func(d devices.Record) bool { return d == rec })
		}, nil
	})
}

// hotplug queues a device operation on a running or paused VM.
func (m *Manager) hotplug(ctx context.Context, ref, op string, run func(context.Context, *vmEntry, vmRecord) (func(*vmRecord), error)) (Task, error) {
	if m.devs == nil {
		return Task{}, &Error{Code: CodeFailedPrecondition, Message: "this daemon was started without a device backend"}
	}
	return m.submit(ctx, ref, op, live, PowerUnspecified, func(ctx context.Context, e *vmEntry, te *taskEntry) (func(*vmRecord), error) {
		r := m.vmSnapshot(e)
		if err := checkState(r, op, live...); err != nil {
			return nil, err
		}
		if r.Preserved {
			return nil, &Error{Code: CodeFailedPrecondition, Message: fmt.Sprintf("VM %s's domain has shut down; %s needs a running guest", e.id, op)}
		}
		if err := m.markRunning(te); err != nil {
			return nil, err
		}
		return run(ctx, e, r)
	})
}

// waitPlugged waits for a hot-plugged device to connect (not when the VM
// is paused: its frontend connects once it runs). On failure the device
// is torn down again.
func (m *Manager) waitPlugged(ctx context.Context, id string, r vmRecord, rec devices.Record) error {
	if r.VM.Power == Paused {
		return nil
	}
	err := m.devs.WaitConnected(ctx, rec)
	if err == nil {
		return nil
	}
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if uerr := m.devs.Unplug(cctx, rec, true); uerr != nil {
		m.log.Error("undo a hot-plug", "vm", id, "domid", r.VM.Domid, "err", uerr)
	}
	return &Error{Code: CodeDeadlineExceeded, Message: fmt.Sprintf("the guest of VM %s (domain %d) did not connect the device: %v", id, r.VM.Domid, err)}
}

// reserveSpec re-records the VM's device uses after a hot-plug changed or
// failed to change them.
func (m *Manager) reserveSpec(ctx context.Context, id string, spec Spec) {
	if err := m.checkDevices(ctx, id, spec, true); err != nil {
		m.log.Warn("re-record device uses", "vm", id, "err", err)
	}
}

// checkAddition checks, before a hot-plug is queued, spec with one device
// added (by add) as Start checks a spec (checkDevices), naming the new
// device's fields after the request's (field) rather than the spec's. A
// NIC without a MAC gets its MAC when the plug runs.
func (m *Manager) checkAddition(ctx context.Context, id string, spec Spec, add func(*Spec), specField, field string) error {
	s := cloneSpec(spec)
	add(&s)
	if err := renameField(validateDevices(s), specField, field); err != nil {
		return err
	}
	if m.devs == nil {
		return nil // hotplug says so
	}
	return renameField(m.checkDevices(ctx, id, s, false), specField, field)
}

// renameField rewrites err's field from the spec's name for a device to
// the request's.
func renameField(err error, specField, field string) error {
	if e, ok := err.(*Error); ok && strings.HasPrefix(e.Field, specField) {
		c := *e
		c.Field = field + strings.TrimPrefix(e.Field, specField)
		return &c
	}
	return err
}

// nextNICDevID is the lowest vif handle no plugged NIC uses.
func nextNICDevID(recs []devices.Record) int {
	for id := 0; ; id++ {
		if !slices.ContainsFunc(recs, func(r devices.Record) bool { return r.Kind == devices.KindVIF && r.DevID == id }) {
			return id
		}
	}
}
