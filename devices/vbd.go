package devices

import (
	"context"
	"strconv"
)

// PlugDisk plugs a disk into domain domid: it checks d (the path must be a
// regular file or a block device, whose first bytes match d.Format; a qcow2
// disk goes to plugQdisk), writes the backend and frontend
// directories as libxl does, has the Host attach the path (a loop device
// for a file), publishes the result in the backend (node, physical-device,
// hotplug-status, as the block hotplug script does) and waits, bounded by
// BackendWait, for blkback to reach InitWait. The guest's frontend connects
// later (WaitConnected). On any failure everything done is undone and the
// error names the step.
func (p *Plugger) PlugDisk(ctx context.Context, domid uint32, d Disk) (Record, error) {
	devid, err := checkDisk(domid, d)
	if err != nil {
		return Record{}, err
	}
	rec := Record{Kind: KindVBD, Domid: domid, DevID: devid, Device: d.Device, Path: d.Path, ReadOnly: d.ReadOnly}
	if d.Format == FormatQCOW2 {
		return p.plugQdisk(ctx, rec, d)
	}
	if err := p.writeDirs(ctx, rec, diskLayout(rec, d)); err != nil {
		return Record{}, failed(rec, "writing its xenstore directories", err)
	}
	u := undo{dirs: true}
	a, err := p.host.AttachDisk(ctx, d.Path, d.ReadOnly)
	if err != nil {
		return Record{}, p.failPlug(ctx, rec, u, "attaching "+d.Path, err)
	}
	rec.Disk, u.attached = a, true
	nodes := []node{{"physical-device", a.PhysicalDevice}, {"hotplug-status", "connected"}}
	if a.Loop != "" {
		nodes = append([]node{{"node", a.Loop}}, nodes...)
	}
	if err := p.writeBackend(ctx, rec, nodes...); err != nil {
		return Record{}, p.failPlug(ctx, rec, u, "writing physical-device", err)
	}
	if err := p.wait(ctx, rec, p.backendWait, "the backend's InitWait", true, p.initWaitCond(ctx, rec)); err != nil {
		return Record{}, p.failPlug(ctx, rec, u, "waiting for blkback", err)
	}
	p.log.Info("disk plugged", "device", rec.name(), "path", d.Path, "loop", a.Loop, "physical_device", a.PhysicalDevice)
	return rec, nil
}

// diskLayout is what libxl's device_disk_add writes for a "phy" disk.
func diskLayout(rec Record, d Disk) layout {
	mode, devType, removable, discard := "w", "disk", "0", "1"
	if d.ReadOnly {
		mode, discard = "r", "0"
	}
	if d.CDROM {
		devType, removable = "cdrom", "1"
	}
	state := strconv.Itoa(int(StateInitialising))
	return layout{
		back: []node{
			{"frontend-id", strconv.FormatUint(uint64(rec.Domid), 10)},
			{"online", "1"},
			{"removable", removable},
			{"bootable", "1"},
			{"state", state},
			{"dev", d.Device},
			{"type", "phy"},
			{"mode", mode},
			{"device-type", devType},
			{"discard-enable", discard},
			{"params", d.Path},
		},
		front: []node{
			{"backend-id", strconv.Itoa(backendDomid)},
			{"state", state},
			{"virtual-device", strconv.Itoa(rec.DevID)},
			{"device-type", devType},
		},
	}
}
