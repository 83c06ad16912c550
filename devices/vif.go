package devices

import (
	"context"
	"fmt"
	"strconv"
)

// PlugNIC plugs a NIC into domain domid: it checks n and that its bridge
// exists, writes the backend and frontend directories as libxl does, waits
// (bounded by BackendWait) for netback to reach InitWait (it has then
// created vif<domid>.<devid>), has the Host put that interface into the
// bridge (what vif-bridge does) and writes hotplug-status=connected, which
// netback waits for before it connects. On any failure everything done is
// undone and the error names the step.
func (p *Plugger) PlugNIC(ctx context.Context, domid uint32, n NIC) (Record, error) {
	n, err := checkNIC(domid, n)
	if err != nil {
		return Record{}, err
	}
	if err := p.host.CheckBridge(ctx, n.Bridge); err != nil {
		return Record{}, &InvalidError{Field: "bridge", Reason: err.Error(), Err: err}
	}
	rec := Record{Kind: KindVIF, Domid: domid, DevID: n.DevID, VIF: VIFName(domid, n.DevID),
		Bridge: n.Bridge, MAC: n.MAC, MTU: n.MTU}
	if err := p.writeDirs(ctx, rec, nicLayout(rec)); err != nil {
		return Record{}, failed(rec, "writing its xenstore directories", err)
	}
	u := undo{dirs: true}
	if err := p.wait(ctx, rec, p.backendWait, "the backend's InitWait", true, p.initWaitCond(ctx, rec)); err != nil {
		return Record{}, p.failPlug(ctx, rec, u, "waiting for netback", err)
	}
	u.connected = true
	cctx, cancel := context.WithTimeout(ctx, p.backendWait)
	err = p.host.ConnectVIF(cctx, rec.VIF, n.Bridge, n.MTU)
	cancel()
	if err != nil {
		return Record{}, p.failPlug(ctx, rec, u, fmt.Sprintf("connecting %s to bridge %s", rec.VIF, n.Bridge), err)
	}
	if err := p.writeBackend(ctx, rec, node{"hotplug-status", "connected"}); err != nil {
		return Record{}, p.failPlug(ctx, rec, u, "writing hotplug-status", err)
	}
	p.log.Info("nic plugged", "device", rec.name(), "vif", rec.VIF, "bridge", n.Bridge, "mac", n.MAC)
	return rec, nil
}

// nicLayout is what libxl's libxl__set_xenstore_nic writes for a PV vif.
// Linux's netback fails a vif whose backend has no script node ("reading
// script") and hands it to udev; the daemon does the script's work itself
// (Host.ConnectVIF), so the node names a no-op. hotplug-status starts
// empty so that netback waits for ours.
// noScript is the vif backend's script node: nothing for udev to run.
const noScript = "/bin/true"

func nicLayout(rec Record) layout {
	state := strconv.Itoa(int(StateInitialising))
	handle := strconv.Itoa(rec.DevID)
	mtu := strconv.FormatUint(uint64(rec.MTU), 10)
	return layout{
		back: []node{
			{"frontend-id", strconv.FormatUint(uint64(rec.Domid), 10)},
			{"online", "1"},
			{"state", state},
			{"handle", handle},
			{"mac", rec.MAC},
			{"bridge", rec.Bridge},
			{"mtu", mtu},
			{"type", "vif"},
			{"script", noScript},
			{"hotplug-status", ""},
		},
		front: []node{
			{"backend-id", strconv.Itoa(backendDomid)},
			{"state", state},
			{"handle", handle},
			{"mac", rec.MAC},
			{"trusted", "1"},
		},
		frontReadOnly: []node{{"mtu", mtu}},
	}
}
