package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

func (a *app) hostCmd() *cobra.Command {
	host := &cobra.Command{Use: "host", Short: "The host the daemon runs on"}
	host.AddCommand(&cobra.Command{
		Use:   "info",
		Short: "Show versions, memory and CPUs (like xl info)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *clients) error {
				resp, err := c.host.GetHost(ctx, &apiv1.GetHostRequest{})
				if err != nil {
					return err
				}
				h := resp.GetHost()
				if a.output != "table" {
					return a.printMessage(h)
				}
				return a.fields([][2]string{
					{"backend", enumName(h.GetBackend().String(), "BACKEND_")},
					{"daemon_version", dash(h.GetDaemonVersion())},
					{"xen_version", dash(h.GetHypervisorVersion())},
					{"xen_major", fmt.Sprint(h.GetHypervisorVersionMajor())},
					{"xen_minor", fmt.Sprint(h.GetHypervisorVersionMinor())},
					{"nr_cpus", fmt.Sprint(h.GetNrCpus())},
					{"nr_nodes", fmt.Sprint(h.GetNrNodes())},
					{"cores_per_socket", fmt.Sprint(h.GetCoresPerSocket())},
					{"threads_per_core", fmt.Sprint(h.GetThreadsPerCore())},
					{"cpu_mhz", fmt.Sprintf("%.3f", float64(h.GetCpuKhz())/1000)},
					{"virt_caps", dash(strings.Join(h.GetCapabilities(), " "))},
					// total_memory and free_memory in MiB, as xl info prints them.
					{"total_memory", fmt.Sprint(h.GetTotalMemoryBytes() >> 20)},
					{"free_memory", fmt.Sprint(h.GetFreeMemoryBytes() >> 20)},
				})
			})
		},
	})
	host.AddCommand(a.hostStatsCmd())
	return host
}
