package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/internal/bytesize"
)

// Disk and NIC flags, shared by vm create and the hot-plug commands:
//
//	--disk DEVICE:PATH[:ro|rw][:raw|qcow2] e.g. xvda:/srv/vm1.qcow2:rw:qcow2 (default rw, raw)
//	--nic [bridge=BR][,mac=MAC][,mtu=N]   e.g. bridge=xenbr0,mtu=9000

const (
	diskFlagHelp = "disk DEVICE:PATH[:ro|rw][:raw|qcow2], e.g. xvda:/srv/a.img:rw or xvdb:/srv/b.qcow2:ro:qcow2 (rw and raw when not given; qcow2: PV and PVH guests, rw only, served by QEMU); repeatable"
	nicFlagHelp  = "NIC [bridge=BR][,mac=MAC][,mtu=N] (bridge xenbr0 when none); repeatable"
)

func parseDiskFlag(s string) (*apiv1.Disk, error) {
	dev, rest, ok := strings.Cut(s, ":")
	if !ok || dev == "" || rest == "" {
		return nil, usagef("--disk %q: want DEVICE:PATH[:ro|rw][:raw|qcow2]", s)
	}
	d := &apiv1.Disk{Device: dev, Path: rest, Mode: apiv1.DiskMode_DISK_MODE_RW, Format: apiv1.DiskFormat_DISK_FORMAT_RAW}
	// The optional suffixes, last first: a format, then a mode.
	suffix := func() string {
		if i := strings.LastIndex(d.Path, ":"); i >= 0 {
			return d.Path[i+1:]
		}
		return ""
	}
	cut := func() { d.Path = d.Path[:strings.LastIndex(d.Path, ":")] }
	switch suffix() {
	case "raw":
		cut()
	case "qcow2":
		d.Format = apiv1.DiskFormat_DISK_FORMAT_QCOW2
		cut()
	}
	switch m := suffix(); {
	case m == "rw":
		cut()
	case m == "ro":
		d.Mode = apiv1.DiskMode_DISK_MODE_RO
		cut()
	case strings.Contains(d.Path, ":"):
		return nil, usagef("--disk %q: mode %q is not ro or rw", s, m)
	}
	if d.Path == "" {
		return nil, usagef("--disk %q: want DEVICE:PATH[:ro|rw][:raw|qcow2]", s)
	}
	return d, nil
}

func parseNICFlag(s string) (*apiv1.NIC, error) {
	n := &apiv1.NIC{}
	if s == "" {
		return n, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, usagef("--nic %q: %q is not KEY=VALUE (bridge, mac, mtu)", s, kv)
		}
		switch k {
		case "bridge":
			n.Bridge = v
		case "mac":
			n.Mac = v
		case "mtu":
			m, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, usagef("--nic %q: mtu %q is not a number", s, v)
			}
			n.Mtu = uint32(m)
		default:
			return nil, usagef("--nic %q: unknown key %q (bridge, mac, mtu)", s, k)
		}
	}
	return n, nil
}

// addDeviceFlags appends the --disk and --nic values to spec.
func addDeviceFlags(spec *apiv1.VMSpec, disks, nics []string) error {
	for _, s := range disks {
		d, err := parseDiskFlag(s)
		if err != nil {
			return err
		}
		spec.Disks = append(spec.Disks, d)
	}
	for _, s := range nics {
		n, err := parseNICFlag(s)
		if err != nil {
			return err
		}
		spec.Nics = append(spec.Nics, n)
	}
	return nil
}

func (a *app) vmDiskCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "disk", Short: "Hot-plug disks into a running VM, or unplug them"}
	var force bool
	add := a.vmTaskCmd("add VM DEVICE:PATH[:ro|rw]", "Plug a disk into the running VM (waits for the guest to connect it)", cobra.ExactArgs(2), nil,
		func(ctx context.Context, c *clients, args []string) (*apiv1.Task, error) {
			d, err := parseDiskFlag(args[1])
			if err != nil {
				return nil, err
			}
			r, err := c.vm.AddDisk(ctx, &apiv1.AddDiskRequest{Id: args[0], Disk: d})
			return r.GetTask(), err
		})
	remove := a.vmTaskCmd("remove VM DEVICE", "Unplug a disk (the guest must release it; --force tears it down)", cobra.ExactArgs(2), nil,
		func(ctx context.Context, c *clients, args []string) (*apiv1.Task, error) {
			r, err := c.vm.RemoveDisk(ctx, &apiv1.RemoveDiskRequest{Id: args[0], Device: args[1], Force: force})
			return r.GetTask(), err
		})
	remove.Aliases = []string{"rm"}
	remove.Flags().BoolVar(&force, "force", false, "tear the disk down even if the guest does not release it")
	cmd.AddCommand(add, remove)
	return cmd
}

func (a *app) vmNICCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "nic", Short: "Hot-plug NICs into a running VM, or unplug them"}
	var force bool
	add := a.vmTaskCmd("add VM [bridge=BR][,mac=MAC][,mtu=N]", "Plug a NIC into the running VM (waits for the guest to connect it)", cobra.RangeArgs(1, 2), nil,
		func(ctx context.Context, c *clients, args []string) (*apiv1.Task, error) {
			spec := ""
			if len(args) > 1 {
				spec = args[1]
			}
			n, err := parseNICFlag(spec)
			if err != nil {
				return nil, err
			}
			r, err := c.vm.AddNIC(ctx, &apiv1.AddNICRequest{Id: args[0], Nic: n})
			return r.GetTask(), err
		})
	remove := a.vmTaskCmd("remove VM MAC", "Unplug the NIC with this MAC (--force tears it down)", cobra.ExactArgs(2), nil,
		func(ctx context.Context, c *clients, args []string) (*apiv1.Task, error) {
			r, err := c.vm.RemoveNIC(ctx, &apiv1.RemoveNICRequest{Id: args[0], Mac: args[1], Force: force})
			return r.GetTask(), err
		})
	remove.Aliases = []string{"rm"}
	remove.Flags().BoolVar(&force, "force", false, "tear the NIC down even if the guest does not release it")
	cmd.AddCommand(add, remove)
	return cmd
}

// pluggedRows are vm get's lines for the devices plugged into the domain.
func pluggedRows(vm *apiv1.VM) [][2]string {
	var kv [][2]string
	for _, d := range vm.GetDevices() {
		switch d.GetKind() {
		case apiv1.DeviceKind_DEVICE_KIND_DISK:
			mode := "rw"
			if d.GetReadOnly() {
				mode = "ro"
			}
			via := dash(d.GetLoopDevice())
			if d.GetFormat() == apiv1.DiskFormat_DISK_FORMAT_QCOW2 {
				via = fmt.Sprintf("qcow2 QEMU pid %d", d.GetQemuPid())
			}
			kv = append(kv, [2]string{"plugged disk " + d.GetDevice(), fmt.Sprintf("%s %s via %s (vbd %d)%s",
				d.GetPath(), mode, via, d.GetDevid(), deviceState(d)+deviceCounters(d))})
		case apiv1.DeviceKind_DEVICE_KIND_NIC:
			kv = append(kv, [2]string{fmt.Sprintf("plugged nic %d", d.GetDevid()), fmt.Sprintf("%s %s on %s%s",
				d.GetMac(), d.GetVif(), d.GetBridge(), deviceState(d)+deviceCounters(d))})
		}
	}
	return kv
}

// deviceState is ", backend B, frontend F[, error: E]" when GetVM read them.
func deviceState(d *apiv1.PluggedDevice) string {
	if d.GetBackendState() == "" && d.GetError() == "" {
		return ""
	}
	s := fmt.Sprintf(", backend %s, frontend %s", dash(d.GetBackendState()), dash(d.GetFrontendState()))
	if d.GetError() != "" {
		s += ", error: " + d.GetError()
	}
	return s
}

// deviceCounters is the I/O counters GetVM read (bytes as "48K"): a disk's
// ", read R req B, written W req B, out-of-requests N", a NIC's
// ", rx P pkt B (E err, D drop), tx ..." (the guest's side), or why they
// could not be read.
func deviceCounters(d *apiv1.PluggedDevice) string {
	if e := d.GetCountersError(); e != "" {
		return ", counters: " + e
	}
	c := d.GetCounters()
	if c == nil {
		return ""
	}
	if d.GetKind() == apiv1.DeviceKind_DEVICE_KIND_DISK {
		return fmt.Sprintf(", read %d req %s, written %d req %s, out-of-requests %d",
			c.GetReadRequests(), bytesize.Format(c.GetReadBytes()),
			c.GetWriteRequests(), bytesize.Format(c.GetWriteBytes()), c.GetOutOfRequests())
	}
	return fmt.Sprintf(", rx %d pkt %s (%d err, %d drop), tx %d pkt %s (%d err, %d drop)",
		c.GetRxPackets(), bytesize.Format(c.GetRxBytes()), c.GetRxErrors(), c.GetRxDrops(),
		c.GetTxPackets(), bytesize.Format(c.GetTxBytes()), c.GetTxErrors(), c.GetTxDrops())
}
