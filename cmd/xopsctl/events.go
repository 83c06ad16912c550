package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

func (a *app) eventsCmd() *cobra.Command {
	events := &cobra.Command{Use: "events", Short: "Follow changes to VMs and tasks"}
	var after uint64
	var count int
	var progress bool
	watch := &cobra.Command{
		Use:   "watch",
		Short: "Print events as they happen",
		Long: `Print every change to VMs and tasks, in revision order.

Without --after, it starts from now; --after REV replays every event after
revision REV first (--after 0: all retained history). If the daemon restarts
the watch reconnects from the last revision it printed, so nothing is missed
or printed twice. If the events wanted were compacted away, it says so (a
resync) and continues from the daemon's head revision. --progress adds the
live progress of running tasks (task-progress lines, with the revision of the
event before them); progress is not kept, so it is never replayed.

-o json prints one JSON object (a WatchResponse) per line.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.clients()
			if err != nil {
				return err
			}
			timeout := time.Duration(0)
			if cmd.Flags().Changed("timeout") {
				timeout = a.timeout
			}
			ctx, cancel := a.ctxWith(cmd, timeout)
			defer cancel()
			if !cmd.Flags().Changed("after") {
				// Only the revision matters: one VM's page is enough.
				resp, err := c.vm.ListVMs(ctx, &apiv1.ListVMsRequest{PageSize: 1})
				if err != nil {
					return err
				}
				after = resp.GetRevision()
			}
			err = a.watch(ctx, c, after, progress, count)
			if errors.Is(err, context.DeadlineExceeded) || (ctx.Err() != nil && cmd.Context().Err() == nil) {
				return nil // --timeout ended the watch: not an error
			}
			if cmd.Context().Err() != nil {
				return nil // interrupted by the user
			}
			return err
		},
	}
	watch.Flags().Uint64Var(&after, "after", 0, "start after this revision (default: now)")
	watch.Flags().IntVar(&count, "count", 0, "stop after this many events (0 = never)")
	watch.Flags().BoolVar(&progress, "progress", false, "also print running tasks' progress (live only, never replayed)")
	events.AddCommand(watch)
	return events
}

// watch prints the events after rev (task progress too if asked), resuming
// from the last one printed when the stream breaks because the daemon went
// away.
func (a *app) watch(ctx context.Context, c *clients, rev uint64, progress bool, count int) error {
	printed := 0
	if a.output == "table" {
		fmt.Fprintf(a.stdout, "%-10s %-20s %-14s %-36s %s\n", "REVISION", "TIME", "KIND", "ID", "DETAIL")
	}
	return a.follow(ctx, c, rev, progress, eventHandler{
		event: func(r *apiv1.WatchResponse, prev uint64) (bool, error) {
			if rs := r.GetResync(); rs != nil {
				fmt.Fprintf(a.stderr, "xopsctl: resync: events after revision %d were compacted away; "+
					"re-read state (vm list, task list); continuing from revision %d\n", prev, rs.GetHeadRevision())
			}
			if err := a.printEvent(r); err != nil {
				return false, err
			}
			if r.GetEvent() != nil {
				printed++
			}
			return count > 0 && printed >= count, nil
		},
	})
}

// eventHandler is what follow does with a stream.
type eventHandler struct {
	// event handles one message; prev is the revision the stream was at
	// before it. Returning true ends follow.
	event func(r *apiv1.WatchResponse, prev uint64) (bool, error)
	// reconnected, if set, runs before each reconnection (a Watch after a
	// broken stream). Returning true ends follow.
	reconnected func() (bool, error)
}

// follow streams the events after rev (task progress too if asked) to h
// until h says stop, ctx ends, or the stream fails other than by the daemon
// going away. Then it reconnects from the last revision seen (see
// reconnect), running h.reconnected first.
func (a *app) follow(ctx context.Context, c *clients, rev uint64, progress bool, h eventHandler) error {
	first := true
	session := func() (bool, error) {
		if !first && h.reconnected != nil {
			if stop, err := h.reconnected(); stop || err != nil {
				return false, err
			}
		}
		first = false
		stop, received, err := a.followOnce(ctx, c, &rev, progress, h)
		if stop {
			return received, nil
		}
		return received, err
	}
	daemonGone := func(err error) bool { return err == io.EOF || status.Code(err) == codes.Unavailable }
	return a.reconnect(ctx, session, daemonGone, func(err error) string {
		return fmt.Sprintf("event stream ended (%v); reconnecting from revision %d", err, rev)
	})
}

// followOnce reads one stream after *rev until h says stop or the stream
// fails; *rev follows the stream. received says whether a message came.
func (a *app) followOnce(ctx context.Context, c *clients, rev *uint64, progress bool, h eventHandler) (stop, received bool, err error) {
	stream, err := c.event.Watch(ctx, &apiv1.WatchRequest{AfterRevision: *rev, TaskProgress: progress})
	if err != nil {
		return false, false, err
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			return false, received, err
		}
		received = true
		prev := *rev
		if rs := r.GetResync(); rs != nil {
			*rev = rs.GetHeadRevision()
		}
		if ev := r.GetEvent(); ev != nil {
			*rev = ev.GetRevision()
		}
		if stop, err := h.event(r, prev); stop || err != nil {
			return stop, true, err
		}
	}
}

func (a *app) printEvent(r *apiv1.WatchResponse) error {
	if a.output == "json" {
		return writeMessage(a.stdout, "json", r, false)
	}
	if a.output == "yaml" {
		fmt.Fprintln(a.stdout, "---")
		return writeMessage(a.stdout, "yaml", r, false)
	}
	if rs := r.GetResync(); rs != nil {
		_, err := fmt.Fprintf(a.stdout, "%-10d %-20s %-14s %-36s %s\n", rs.GetHeadRevision(), "-", "resync", "-",
			"events were compacted away; state must be re-read")
		return err
	}
	ev := r.GetEvent()
	kind, id, detail := "", "", ""
	switch ch := ev.GetChange().(type) {
	case *apiv1.Event_VmChanged:
		vm := ch.VmChanged
		kind, id = "vm-changed", vm.GetId()
		detail = fmt.Sprintf("name=%s power=%s domid=%s gen=%d", vm.GetSpec().GetName(), powerName(vm.GetPowerState()),
			domidString(vm), vm.GetGeneration())
	case *apiv1.Event_VmDeleted:
		kind, id = "vm-deleted", ch.VmDeleted.GetId()
	case *apiv1.Event_TaskProgress:
		p := ch.TaskProgress
		kind, id = "task-progress", p.GetTaskId()
		detail = fmt.Sprintf("vm=%s progress=%.0f%%", p.GetVmId(), p.GetProgress()*100)
	case *apiv1.Event_TaskChanged:
		t := ch.TaskChanged
		kind, id = "task-changed", t.GetId()
		detail = fmt.Sprintf("vm=%s op=%s state=%s progress=%.0f%%", t.GetVmId(), t.GetOp(), stateName(t.GetState()),
			t.GetProgress()*100)
		if e := t.GetError(); e != nil {
			detail += " error=" + e.GetCode() + ": " + e.GetMessage()
		}
	default:
		kind = "unknown"
	}
	_, err := fmt.Fprintf(a.stdout, "%-10d %-20s %-14s %-36s %s\n", ev.GetRevision(), fmtTime(ev.GetTime()), kind, id, detail)
	return err
}
