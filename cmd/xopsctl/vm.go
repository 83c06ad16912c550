package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
	"sigs.k8s.io/yaml"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

func (a *app) vmCmd() *cobra.Command {
	vm := &cobra.Command{Use: "vm", Short: "Create, inspect and run VMs (by id or name)"}
	vm.AddCommand(a.vmCreateCmd(), a.vmListCmd(), a.vmGetCmd(), a.vmDeleteCmd(), a.vmStatsCmd())
	vm.AddCommand(a.lifecycleCmds()...)
	vm.AddCommand(a.vmConsoleCmd(), a.vmDiskCmd(), a.vmNICCmd())
	return vm
}

// createFlags are vm create's spec flags.
type createFlags struct {
	file, name, memory, typ  string
	kernel, ramdisk, cmdline string
	vcpus                    uint32
	requestID                string
	disks, nics              []string
}

func (a *app) vmCreateCmd() *cobra.Command {
	var f createFlags
	cmd := &cobra.Command{
		Use:   "create (--name N --memory SIZE [--vcpus N] [--type pv|pvh|hvm] | -f spec.yaml)",
		Short: "Record a new VM (Halted) and print its id",
		Long: `Record a new VM and print its id.

Either give the spec with flags, or in a file (-f, "-" for stdin) holding a
VMSpec in YAML or JSON (the API's field names, e.g. memory_static_max in
bytes). Flags given together with -f override the file's values. Sizes take
binary K, M, G, T suffixes (256M = 256 MiB).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec, err := buildSpec(cmd, &f)
			if err != nil {
				return err
			}
			return a.call(cmd, func(ctx context.Context, c *clients) error {
				resp, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec, RequestId: f.requestID})
				if err != nil {
					return err
				}
				if a.output != "table" {
					return a.printMessage(resp.GetVm())
				}
				_, err = fmt.Fprintln(a.stdout, resp.GetVm().GetId())
				return err
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.file, "file", "f", "", "VMSpec in YAML or JSON (- for stdin)")
	fl.StringVar(&f.name, "name", "", "VM name")
	fl.StringVar(&f.memory, "memory", "", "memory size, e.g. 256M (static max = dynamic min = dynamic max)")
	fl.Uint32Var(&f.vcpus, "vcpus", 1, "number of vCPUs (max and at startup)")
	fl.StringVar(&f.typ, "type", "pvh", "domain type: pv, pvh or hvm")
	fl.StringVar(&f.kernel, "kernel", "", "direct boot: dom0 path of the kernel")
	fl.StringVar(&f.ramdisk, "ramdisk", "", "direct boot: dom0 path of the initrd")
	fl.StringVar(&f.cmdline, "cmdline", "", "direct boot: kernel command line")
	fl.StringVar(&f.requestID, "request-id", "", "idempotency key: a retry with the same id returns the same VM")
	fl.StringArrayVar(&f.disks, "disk", nil, diskFlagHelp+" (added to -f's)")
	fl.StringArrayVar(&f.nics, "nic", nil, nicFlagHelp+" (added to -f's)")
	return cmd
}

// buildSpec makes the VMSpec from -f and the flags.
func buildSpec(cmd *cobra.Command, f *createFlags) (*apiv1.VMSpec, error) {
	spec := &apiv1.VMSpec{}
	changed := cmd.Flags().Changed
	if f.file != "" {
		var err error
		if spec, err = readSpecFile(f.file, os.Stdin); err != nil {
			return nil, err
		}
	} else {
		if !changed("name") {
			return nil, usagef("--name is required (or give a spec with -f)")
		}
		if !changed("memory") {
			return nil, usagef("--memory is required (or give a spec with -f)")
		}
	}
	if f.file == "" || changed("name") {
		spec.Name = f.name
	}
	if f.file == "" || changed("type") {
		t, err := parseType(f.typ)
		if err != nil {
			return nil, err
		}
		spec.Type = t
	}
	if changed("memory") {
		n, err := parseSize("memory", f.memory)
		if err != nil {
			return nil, usagef("%v", err)
		}
		spec.MemoryStaticMax, spec.MemoryDynamicMin, spec.MemoryDynamicMax = n, n, n
	}
	if f.file == "" || changed("vcpus") {
		spec.VcpusMax, spec.VcpusAtStartup = f.vcpus, f.vcpus
	}
	if changed("kernel") {
		spec.Kernel = f.kernel
	}
	if changed("ramdisk") {
		spec.Ramdisk = f.ramdisk
	}
	if changed("cmdline") {
		spec.Cmdline = f.cmdline
	}
	if err := addDeviceFlags(spec, f.disks, f.nics); err != nil {
		return nil, err
	}
	return spec, nil
}

func parseType(s string) (apiv1.DomainType, error) {
	switch strings.ToLower(s) {
	case "pv":
		return apiv1.DomainType_DOMAIN_TYPE_PV, nil
	case "pvh":
		return apiv1.DomainType_DOMAIN_TYPE_PVH, nil
	case "hvm":
		return apiv1.DomainType_DOMAIN_TYPE_HVM, nil
	}
	return 0, usagef("--type: %q is not one of pv, pvh, hvm", s)
}

// readSpecFile reads a VMSpec in YAML or JSON (the API's protobuf JSON
// mapping; YAML is converted to JSON first).
func readSpecFile(path string, stdin io.Reader) (*apiv1.VMSpec, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(stdin, 16<<20))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, usagef("-f: %v", err)
	}
	return parseSpec(path, b)
}

func parseSpec(name string, b []byte) (*apiv1.VMSpec, error) {
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, usagef("-f %s: not YAML or JSON: %v", name, err)
	}
	spec := &apiv1.VMSpec{}
	if err := protojson.Unmarshal(j, spec); err != nil {
		return nil, usagef("-f %s: not a VMSpec: %v", name, err)
	}
	return spec, nil
}

func (a *app) vmListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *clients) error {
				resp, err := listVMs(ctx, c)
				if err != nil {
					return err
				}
				if a.output != "table" {
					return a.printMessage(resp)
				}
				rows := make([][]string, 0, len(resp.GetVms()))
				for _, vm := range resp.GetVms() {
					rows = append(rows, vmRow(vm))
				}
				return a.table(vmHeader, rows)
			})
		},
	}
}

func (a *app) vmGetCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "get VM",
		Short: "Show one VM",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *clients) error {
				resp, err := c.vm.GetVM(ctx, &apiv1.GetVMRequest{Id: args[0]})
				if err != nil {
					return err
				}
				if a.output != "table" {
					return a.printMessage(resp.GetVm())
				}
				return a.printVMDetail(resp.GetVm())
			})
		},
	}
}

func (a *app) vmDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "delete VM",
		Aliases: []string{"rm"},
		Short:   "Remove a Halted VM's record",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *clients) error {
				if _, err := c.vm.DeleteVM(ctx, &apiv1.DeleteVMRequest{Id: args[0]}); err != nil {
					return err
				}
				if a.output == "table" {
					fmt.Fprintf(a.stderr, "deleted %s\n", args[0])
				}
				return nil
			})
		},
	}
}

// lifecycleCmds are start, pause, unpause, shutdown, reboot, suspend, resume
// and destroy: each
// queues a task and, unless --no-wait, waits for it.
func (a *app) lifecycleCmds() []*cobra.Command {
	type call func(ctx context.Context, c *clients, id string) (*apiv1.Task, error)
	mk := func(use, short string, extra func(*cobra.Command), deadline func() time.Duration, do call) *cobra.Command {
		cmd := a.vmTaskCmd(use+" VM", short, cobra.ExactArgs(1), deadline,
			func(ctx context.Context, c *clients, args []string) (*apiv1.Task, error) { return do(ctx, c, args[0]) })
		if extra != nil {
			extra(cmd)
		}
		return cmd
	}

	var paused bool
	start := mk("start", "Build the VM's domain and run it", func(cmd *cobra.Command) {
		cmd.Flags().BoolVar(&paused, "paused", false, "leave the new domain paused")
	}, nil, func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
		r, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: id, Paused: paused})
		return r.GetTask(), err
	})
	pause := mk("pause", "Pause the VM's domain", nil, nil, func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
		r, err := c.vm.PauseVM(ctx, &apiv1.PauseVMRequest{Id: id})
		return r.GetTask(), err
	})
	unpause := mk("unpause", "Unpause the VM's domain", nil, nil, func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
		r, err := c.vm.UnpauseVM(ctx, &apiv1.UnpauseVMRequest{Id: id})
		return r.GetTask(), err
	})

	// shutdown and reboot have their own --timeout (the guest's time to
	// comply), which shadows the global one; the command then waits that
	// long plus a minute.
	type cleanFlags struct {
		timeout time.Duration
		force   bool
	}
	var sd, rb cleanFlags
	cleanExtra := func(cf *cleanFlags, what string) func(*cobra.Command) {
		return func(cmd *cobra.Command) {
			cmd.Flags().DurationVar(&cf.timeout, "timeout", 0,
				"how long the guest has to "+what+" cleanly (0 = the daemon's default); the command waits that plus 1m (10m when 0)")
			cmd.Flags().BoolVar(&cf.force, "force", false, "hard "+what+" (destroy) once --timeout has passed")
		}
	}
	cleanDeadline := func(cf *cleanFlags) func() time.Duration {
		return func() time.Duration {
			if cf.timeout > 0 {
				return cf.timeout + time.Minute
			}
			return 10 * time.Minute
		}
	}
	durationOrNil := func(d time.Duration) *durationpb.Duration {
		if d == 0 {
			return nil
		}
		return durationpb.New(d)
	}
	shutdown := mk("shutdown", "Ask the guest to power off (clean shutdown)", cleanExtra(&sd, "shut down"), cleanDeadline(&sd),
		func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
			if sd.timeout < 0 {
				return nil, usagef("--timeout: must not be negative")
			}
			r, err := c.vm.ShutdownVM(ctx, &apiv1.ShutdownVMRequest{Id: id, Timeout: durationOrNil(sd.timeout), Force: sd.force})
			return r.GetTask(), err
		})
	reboot := mk("reboot", "Ask the guest to reboot (clean reboot)", cleanExtra(&rb, "reboot"), cleanDeadline(&rb),
		func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
			if rb.timeout < 0 {
				return nil, usagef("--timeout: must not be negative")
			}
			r, err := c.vm.RebootVM(ctx, &apiv1.RebootVMRequest{Id: id, Timeout: durationOrNil(rb.timeout), Force: rb.force})
			return r.GetTask(), err
		})
	// suspend has its own --timeout too (the guest's time to suspend).
	var susTimeout time.Duration
	suspend := mk("suspend", "Ask the guest to suspend itself in place (its domain is kept; resume lets it carry on)",
		func(cmd *cobra.Command) {
			cmd.Flags().DurationVar(&susTimeout, "timeout", 0,
				"how long the guest has to suspend itself (0 = the daemon's default, 60s); the command waits that plus 1m (2m when 0)")
		},
		func() time.Duration {
			if susTimeout > 0 {
				return susTimeout + time.Minute
			}
			return 2 * time.Minute
		},
		func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
			if susTimeout < 0 {
				return nil, usagef("--timeout: must not be negative")
			}
			r, err := c.vm.SuspendVM(ctx, &apiv1.SuspendVMRequest{Id: id, Timeout: durationOrNil(susTimeout)})
			return r.GetTask(), err
		})
	resume := mk("resume", "Let a VM whose guest suspended itself carry on in its domain (a cancelled suspend)", nil, nil,
		func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
			r, err := c.vm.ResumeVM(ctx, &apiv1.ResumeVMRequest{Id: id})
			return r.GetTask(), err
		})
	destroy := mk("destroy", "Tear the domain down at once (hard power off)", nil, nil,
		func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
			r, err := c.vm.DestroyVM(ctx, &apiv1.DestroyVMRequest{Id: id})
			return r.GetTask(), err
		})
	return []*cobra.Command{start, pause, unpause, shutdown, reboot, suspend, resume, destroy}
}
