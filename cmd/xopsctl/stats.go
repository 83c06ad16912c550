package main

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/internal/bytesize"
)

func (a *app) hostStatsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stats",
		Short: "Show the host's memory, physical CPUs' idle time and domains now (what --metrics-listen exports)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *clients) error {
				resp, err := c.stats.GetHostStats(ctx, &apiv1.GetHostStatsRequest{})
				if err != nil {
					return err
				}
				h := resp.GetStats()
				if a.output != "table" {
					return a.printMessage(h)
				}
				idle := make([]string, len(h.GetCpuIdle()))
				for i, d := range h.GetCpuIdle() {
					idle[i] = fmt.Sprintf("%d:%s", i, d.AsDuration().Round(time.Millisecond))
				}
				vms := make([]string, len(h.GetVms()))
				for i, v := range h.GetVms() {
					vms[i] = fmt.Sprintf("%s %d", powerName(v.GetPowerState()), v.GetCount())
				}
				return a.fields([][2]string{
					{"xen_version", dash(h.GetHypervisorVersion())},
					{"total_memory", bytesize.Format(h.GetTotalMemoryBytes())},
					{"free_memory", bytesize.Format(h.GetFreeMemoryBytes())},
					{"scrub_pending", bytesize.Format(h.GetScrubPendingBytes())},
					{"cpus", fmt.Sprint(h.GetCpus())},
					{"cpu_idle", dash(strings.Join(idle, " "))},
					{"domains", dash(counts(h.GetDomains()))},
					{"vms", dash(strings.Join(vms, ", "))},
				})
			})
		},
	}
}

// counts prints a by-state map as "state n, ...", sorted by state.
func counts(m map[string]uint32) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(out, ", ")
}

func (a *app) vmStatsCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "stats VM",
		Short: "Show one VM's CPU time and memory now (what --metrics-listen exports)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *clients) error {
				resp, err := c.stats.GetVMStats(ctx, &apiv1.GetVMStatsRequest{Id: args[0]})
				if err != nil {
					return err
				}
				s := resp.GetStats()
				if a.output != "table" {
					return a.printMessage(s)
				}
				kv := [][2]string{
					{"id", s.GetId()},
					{"name", s.GetName()},
					{"power", powerName(s.GetPowerState())},
					{"restarts", fmt.Sprintf("reboot %d, crash %d, poweroff %d",
						s.GetRestarts().GetReboot(), s.GetRestarts().GetCrash(), s.GetRestarts().GetPoweroff())},
				}
				if !s.GetHasDomain() {
					return a.fields(append(kv, [2]string{"domain", "none"}))
				}
				kv = append(kv,
					[2]string{"domid", fmt.Sprint(s.GetDomid())},
					[2]string{"domain_state", s.GetDomainState()},
					[2]string{"uptime", s.GetUptime().AsDuration().Round(time.Second).String()},
					[2]string{"cpu_time", s.GetCpuTime().AsDuration().Round(time.Millisecond).String()},
					[2]string{"vcpus_online", fmt.Sprint(s.GetVcpusOnline())},
					[2]string{"memory", fmt.Sprintf("%s held, limit %s, static-max %s, target %s",
						bytesize.Format(s.GetMemoryBytes()), bytesize.Format(s.GetMemoryLimitBytes()),
						bytesize.Format(s.GetMemoryStaticMaxBytes()), bytesize.Format(s.GetMemoryTargetBytes()))},
				)
				for _, v := range s.GetVcpus() {
					kv = append(kv, [2]string{fmt.Sprintf("vcpu%d", v.GetVcpu()), fmt.Sprintf("%s on pcpu %d, %s",
						v.GetCpuTime().AsDuration().Round(time.Millisecond), v.GetCpu(), vcpuState(v))})
				}
				return a.fields(kv)
			})
		},
	}
}

// vcpuState is running, blocked, runnable or offline.
func vcpuState(v *apiv1.VCPUStats) string {
	switch {
	case !v.GetOnline():
		return "offline"
	case v.GetRunning():
		return "running"
	case v.GetBlocked():
		return "blocked"
	}
	return "runnable"
}
