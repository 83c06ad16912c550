package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

// Disk and NIC flags, shared by vm create and the hot-plug commands:
//
//	--disk DEVICE:PATH[:ro|rw]            e.g. xvda:/srv/vm1.img:rw (default rw)
//	--nic [bridge=BR][,mac=MAC][,mtu=N]   e.g. bridge=xenbr0,mtu=9000

const (
	diskFlagHelp = "disk DEVICE:PATH[:ro|rw], e.g. xvda:/srv/a.img:rw (rw when no mode); repeatable"
	nicFlagHelp  = "NIC [bridge=BR][,mac=MAC][,mtu=N] (bridge xenbr0 when none); repeatable"
)

func parseDiskFlag(s string) (*apiv1.Disk, error) {
	dev, rest, ok := strings.Cut(s, ":")
	if !ok || dev == "" || rest == "" {
		return nil, usagef("--disk %q: want DEVICE:PATH[:ro|rw]", s)
	}
	d := &apiv1.Disk{Device: dev, Path: rest, Mode: apiv1.DiskMode_DISK_MODE_RW}
	if i := strings.LastIndex(rest, ":"); i >= 0 {
		switch rest[i+1:] {
		case "rw":
			d.Path = rest[:i]
		case "ro":
			d.Path, d.Mode = rest[:i], apiv1.DiskMode_DISK_MODE_RO
		default:
			return nil, usagef("--disk %q: mode %q is not ro or rw", s, rest[i+1:])
		}
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
	add := a.vmTaskCmd("add VM DEVICE:PATH[:ro|rw]", "Plug a disk into the running VM (waits for the guest to connect it)", 2,
		func(ctx context.Context, c *clients, args []string) (*apiv1.Task, error) {
			d, err := parseDiskFlag(args[1])
			if err != nil {
				return nil, err
			}
			r, err := c.vm.AddDisk(ctx, &apiv1.AddDiskRequest{Id: args[0], Disk: d})
			return r.GetTask(), err
		})
	remove := a.vmTaskCmd("remove VM DEVICE", "Unplug a disk (the guest must release it; --force tears it down)", 2,
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
	add := a.vmTaskCmd("add VM [bridge=BR][,mac=MAC][,mtu=N]", "Plug a NIC into the running VM (waits for the guest to connect it)", -1,
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
	add.Args = cobra.RangeArgs(1, 2)
	remove := a.vmTaskCmd("remove VM MAC", "Unplug the NIC with this MAC (--force tears it down)", 2,
		func(ctx context.Context, c *clients, args []string) (*apiv1.Task, error) {
			r, err := c.vm.RemoveNIC(ctx, &apiv1.RemoveNICRequest{Id: args[0], Mac: args[1], Force: force})
			return r.GetTask(), err
		})
	remove.Aliases = []string{"rm"}
	remove.Flags().BoolVar(&force, "force", false, "tear the NIC down even if the guest does not release it")
	cmd.AddCommand(add, remove)
	return cmd
}

// vmTaskCmd is a command that queues a task on the VM named by its first
// argument and, unless --no-wait, waits for it. nargs < 0: Args set by
// the caller.
func (a *app) vmTaskCmd(use, short string, nargs int, do func(ctx context.Context, c *clients, args []string) (*apiv1.Task, error)) *cobra.Command {
	var noWait bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.clients()
			if err != nil {
				return err
			}
			ctx, cancel := a.ctxWith(cmd, a.timeout)
			defer cancel()
			task, err := do(ctx, c, args)
			if err != nil {
				return err
			}
			if noWait {
				if a.output != "table" {
					return a.printMessage(task)
				}
				_, err := fmt.Fprintln(a.stdout, task.GetId())
				return err
			}
			return a.waitAndReport(ctx, c, task, args[0])
		},
	}
	if nargs >= 0 {
		cmd.Args = cobra.ExactArgs(nargs)
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "print the task id and return at once")
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
			kv = append(kv, [2]string{"plugged disk " + d.GetDevice(), fmt.Sprintf("%s %s via %s (vbd %d)%s",
				d.GetPath(), mode, dash(d.GetLoopDevice()), d.GetDevid(), deviceState(d))})
		case apiv1.DeviceKind_DEVICE_KIND_NIC:
			kv = append(kv, [2]string{fmt.Sprintf("plugged nic %d", d.GetDevid()), fmt.Sprintf("%s %s on %s%s",
				d.GetMac(), d.GetVif(), d.GetBridge(), deviceState(d))})
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
