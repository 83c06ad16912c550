package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

func (a *app) vmConsoleCmd() *cobra.Command {
	var follow bool
	var tail, offset uint64
	cmd := &cobra.Command{
		Use:   "console VM [--follow] [--tail BYTES | --offset BYTES]",
		Short: "Print a VM's guest console output (-f: follow it)",
		Long: `Print the guest console output of a VM (by id or name), as xenconsoled (or
the simulator) logs it on the host: the whole log, its last --tail bytes, or
from byte --offset on. The log outlives the domain, so a halted or crashed
VM's last output can still be read.

With --follow, new output is printed as the guest writes it, until Ctrl-C
or until the VM has no domain any more (shut down, halted); a rebooting VM
is followed through its reboot. If the daemon restarts, following resumes
where it stopped. --timeout does not apply to --follow unless given.

Output is the raw console bytes; -o json prints one StreamConsoleResponse
per line instead (with offsets, to resume with --offset).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if a.output == "yaml" {
				return usagef("vm console: -o yaml is not supported (raw output, or -o json)")
			}
			if tail > 0 && offset > 0 {
				return usagef("vm console: --tail and --offset cannot be combined")
			}
			c, err := a.clients()
			if err != nil {
				return err
			}
			timeout := a.timeout
			if follow && !cmd.Flags().Changed("timeout") {
				timeout = 0
			}
			ctx, cancel := a.ctxWith(cmd, timeout)
			defer cancel()
			req := &apiv1.StreamConsoleRequest{Id: args[0], Follow: follow, TailBytes: tail, Offset: offset}
			err = a.streamConsole(ctx, c, req)
			switch {
			case err == nil:
				if follow {
					fmt.Fprintf(a.stderr, "xopsctl: VM %s has no domain any more; console closed\n", args[0])
				}
				return nil
			case cmd.Context().Err() != nil:
				return nil // interrupted by the user
			case follow && (errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded):
				return nil // --timeout ended the follow: not an error
			}
			return err
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep printing new output until the VM's domain is gone or Ctrl-C")
	f.Uint64Var(&tail, "tail", 0, "start this many bytes before the end of the log (0 = whole log)")
	f.Uint64Var(&offset, "offset", 0, "start at this byte offset of the log")
	return cmd
}

// streamConsole prints the console stream. When following, a stream broken
// because the daemon went away is resumed from the next unprinted byte (see
// reconnect).
func (a *app) streamConsole(ctx context.Context, c *clients, req *apiv1.StreamConsoleRequest) error {
	session := func() (received bool, err error) {
		stream, err := c.vm.StreamConsole(ctx, req)
		if err != nil {
			return false, err
		}
		for {
			r, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return received, nil
			}
			if err != nil {
				return received, err
			}
			received = true
			if err := a.printConsole(r); err != nil {
				return true, err
			}
			// Resume after what was printed, from an offset.
			req.TailBytes, req.Offset = 0, r.GetNextOffset()
		}
	}
	daemonGone := func(err error) bool { return req.GetFollow() && status.Code(err) == codes.Unavailable }
	return a.reconnect(ctx, session, daemonGone, func(err error) string {
		return fmt.Sprintf("console stream broke (%v); reconnecting", err)
	})
}

func (a *app) printConsole(r *apiv1.StreamConsoleResponse) error {
	if a.output == "json" {
		return writeMessage(a.stdout, "json", r, false)
	}
	_, err := a.stdout.Write(r.GetData())
	return err
}
