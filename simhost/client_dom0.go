package simhost

import (
	"context"
	"math"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/devices"
)

// The client side of Dom0Service: *Client is the simulator's devices.Host.
// Errors match the errno the kernel would give (errors.Is(err,
// fs.ErrNotExist), syscall.ENODEV, ...) and name the path or bridge.

var _ devices.Host = (*Client)(nil)

// AttachDisk implements devices.Host.
func (c *Client) AttachDisk(ctx context.Context, path string, readOnly bool) (a devices.DiskAttachment, err error) {
	err = c.call(ctx, "AttachDisk", func(ctx context.Context, cn *conn) error {
		r, err := cn.dom0.AttachDisk(ctx, &pb.AttachDiskRequest{Path: path, ReadOnly: readOnly})
		a = diskAttachmentFromRPC(r.GetAttachment())
		return err
	})
	return a, err
}

// FindDisk implements devices.Host.
func (c *Client) FindDisk(ctx context.Context, path string) (as []devices.DiskAttachment, err error) {
	err = c.call(ctx, "FindDisk", func(ctx context.Context, cn *conn) error {
		r, err := cn.dom0.FindDisk(ctx, &pb.FindDiskRequest{Path: path})
		for _, m := range r.GetAttachments() {
			as = append(as, diskAttachmentFromRPC(m))
		}
		return err
	})
	return as, err
}

// DetachDisk implements devices.Host.
func (c *Client) DetachDisk(ctx context.Context, a devices.DiskAttachment) error {
	return c.call(ctx, "DetachDisk", func(ctx context.Context, cn *conn) error {
		_, err := cn.dom0.DetachDisk(ctx, &pb.DetachDiskRequest{Attachment: diskAttachmentToRPC(a)})
		return err
	})
}

// CheckBridge implements devices.Host.
func (c *Client) CheckBridge(ctx context.Context, bridge string) error {
	return c.call(ctx, "CheckBridge", func(ctx context.Context, cn *conn) error {
		_, err := cn.dom0.CheckBridge(ctx, &pb.CheckBridgeRequest{Bridge: bridge})
		return err
	})
}

// ConnectVIF implements devices.Host.
func (c *Client) ConnectVIF(ctx context.Context, name, bridge string, mtu uint32) error {
	return c.call(ctx, "ConnectVIF", func(ctx context.Context, cn *conn) error {
		_, err := cn.dom0.ConnectVIF(ctx, &pb.ConnectVIFRequest{Name: name, Bridge: bridge, Mtu: mtu})
		return err
	})
}

// DisconnectVIF implements devices.Host.
func (c *Client) DisconnectVIF(ctx context.Context, name string) error {
	return c.call(ctx, "DisconnectVIF", func(ctx context.Context, cn *conn) error {
		_, err := cn.dom0.DisconnectVIF(ctx, &pb.DisconnectVIFRequest{Name: name})
		return err
	})
}

// Counters implements devices.Host.
func (c *Client) Counters(ctx context.Context, rec devices.Record) (cs devices.Counters, err error) {
	err = c.call(ctx, "DeviceCounters", func(ctx context.Context, cn *conn) error {
		r, err := cn.dom0.DeviceCounters(ctx, &pb.DeviceCountersRequest{
			Kind: string(rec.Kind), Domid: rec.Domid, Devid: uint32(rec.DevID), Vif: rec.VIF})
		cs = countersFromRPC(r)
		return err
	})
	return cs, err
}

// Dom0State reports the sim host's loop devices, network interfaces and
// bridges: what a test checks for leaks after unplug and destroy.
func (c *Client) Dom0State(ctx context.Context) (st Dom0State, err error) {
	err = c.call(ctx, "Dom0State", func(ctx context.Context, cn *conn) error {
		r, err := cn.dom0.Dom0State(ctx, &pb.Dom0StateRequest{})
		st = dom0StateFromRPC(r)
		return err
	})
	return st, err
}

// StartQEMU implements devices.Host.
func (c *Client) StartQEMU(ctx context.Context, domid uint32) (q devices.QEMUProc, err error) {
	err = c.call(ctx, "StartQEMU", func(ctx context.Context, cn *conn) error {
		r, err := cn.dom0.StartQEMU(ctx, &pb.StartQEMURequest{Domid: domid})
		q = devices.QEMUProc{Pid: int(r.GetQemu().GetPid()), Start: r.GetQemu().GetStart()}
		return err
	})
	return q, err
}

// QEMUAlive implements devices.Host.
func (c *Client) QEMUAlive(ctx context.Context, q devices.QEMUProc, domid uint32) (alive bool, err error) {
	if q.Pid <= 0 || q.Pid > math.MaxUint32 {
		return false, nil
	}
	err = c.call(ctx, "QEMUAlive", func(ctx context.Context, cn *conn) error {
		r, err := cn.dom0.QEMUAlive(ctx, &pb.QEMUAliveRequest{Qemu: qemuToRPC(q, domid)})
		alive = r.GetAlive()
		return err
	})
	return alive, err
}

// StopQEMU implements devices.Host.
func (c *Client) StopQEMU(ctx context.Context, q devices.QEMUProc, domid uint32) error {
	if q.Pid <= 0 || q.Pid > math.MaxUint32 {
		return nil
	}
	return c.call(ctx, "StopQEMU", func(ctx context.Context, cn *conn) error {
		_, err := cn.dom0.StopQEMU(ctx, &pb.StopQEMURequest{Qemu: qemuToRPC(q, domid)})
		return err
	})
}

func qemuToRPC(q devices.QEMUProc, domid uint32) *pb.QEMUProcess {
	return &pb.QEMUProcess{Pid: uint32(q.Pid), Start: q.Start, Domid: domid}
}
