package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

func done(s apiv1.TaskState) bool {
	switch s {
	case apiv1.TaskState_TASK_STATE_SUCCEEDED, apiv1.TaskState_TASK_STATE_FAILED,
		apiv1.TaskState_TASK_STATE_CANCELLED, apiv1.TaskState_TASK_STATE_INTERRUPTED:
		return true
	}
	return false
}

// waitTask waits until the task has finished or ctx ends, printing its state
// and progress on stderr whenever they change. It follows the event stream
// (progress included) from the current revision: the task's own events and
// progress, and a re-read of the task at the start, after a resync and
// after a reconnection, so that a completion is never missed.
func (a *app) waitTask(ctx context.Context, c *clients, task *apiv1.Task) (*apiv1.Task, error) {
	w := &taskWaiter{a: a, c: c, ctx: ctx, cur: task}
	w.show(task)
	if done(task.GetState()) {
		return task, nil
	}
	err := w.wait()
	switch {
	case w.final != nil:
		return w.final, nil
	case ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded:
		return nil, fmt.Errorf("task %s still running after the command's time limit; follow it with: xopsctl task wait %s",
			task.GetId(), task.GetId())
	}
	return nil, err
}

// taskWaiter follows one task through the event stream.
type taskWaiter struct {
	a     *app
	c     *clients
	ctx   context.Context
	cur   *apiv1.Task // the task as last seen
	final *apiv1.Task // set once it has finished
	last  string      // the progress line last printed
}

func (w *taskWaiter) wait() error {
	// The task exists before this revision, so its end is either visible to
	// the re-read below or an event after the revision. Only the revision is
	// wanted: one VM's page carries it.
	l, err := w.c.vm.ListVMs(w.ctx, &apiv1.ListVMsRequest{PageSize: 1})
	if err != nil {
		return err
	}
	if finished, err := w.reread(); finished || err != nil {
		return err
	}
	return w.a.follow(w.ctx, w.c, l.GetRevision(), true, eventHandler{
		event: func(r *apiv1.WatchResponse, _ uint64) (bool, error) {
			if r.GetResync() != nil {
				return w.reread()
			}
			return w.event(r.GetEvent()), nil
		},
		reconnected: w.reread,
	})
}

// event takes in one event and reports whether the task has finished.
func (w *taskWaiter) event(ev *apiv1.Event) bool {
	id := w.cur.GetId()
	if p := ev.GetTaskProgress(); p != nil && p.GetTaskId() == id {
		t := proto.Clone(w.cur).(*apiv1.Task)
		t.State, t.Progress = apiv1.TaskState_TASK_STATE_RUNNING, p.GetProgress()
		w.see(t)
	}
	if t := ev.GetTaskChanged(); t != nil && t.GetId() == id {
		w.see(t)
	}
	return w.final != nil
}

// reread reads the task once and reports whether it has finished.
func (w *taskWaiter) reread() (bool, error) {
	g, err := w.c.task.GetTask(w.ctx, &apiv1.GetTaskRequest{Id: w.cur.GetId()})
	if err != nil {
		return false, err
	}
	w.see(g.GetTask())
	return w.final != nil, nil
}

func (w *taskWaiter) see(t *apiv1.Task) {
	w.cur = t
	w.show(t)
	if done(t.GetState()) {
		w.final = t
	}
}

func (w *taskWaiter) show(t *apiv1.Task) {
	line := fmt.Sprintf("task %s: %s %s %.0f%%", t.GetId(), t.GetOp(), stateName(t.GetState()), t.GetProgress()*100)
	if line != w.last {
		fmt.Fprintln(w.a.stderr, line)
		w.last = line
	}
}

// waitAndReport waits for a lifecycle task and reports how it ended: the
// task in -o json/yaml, a line in table mode; a task that did not succeed is
// an error (exit status 1).
func (a *app) waitAndReport(ctx context.Context, c *clients, task *apiv1.Task, ref string) error {
	t, err := a.waitTask(ctx, c, task)
	if err != nil {
		return err
	}
	if a.output != "table" {
		if err := a.printMessage(t); err != nil {
			return err
		}
	} else if t.GetState() == apiv1.TaskState_TASK_STATE_SUCCEEDED {
		fmt.Fprintf(a.stdout, "%s %s: %s\n", t.GetOp(), ref, stateName(t.GetState()))
	}
	if t.GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
		return &taskError{t}
	}
	return nil
}

func (a *app) taskCmd() *cobra.Command {
	task := &cobra.Command{Use: "task", Short: "Follow lifecycle tasks"}

	var vmRef string
	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List tasks (all, or one VM's with --vm)",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *clients) error {
				vmID := vmRef
				if vmID != "" {
					// Resolve a name to the VM's id (and fail clearly for an
					// unknown VM rather than list nothing).
					g, err := c.vm.GetVM(ctx, &apiv1.GetVMRequest{Id: vmRef})
					if err != nil {
						return err
					}
					vmID = g.GetVm().GetId()
				}
				resp, err := listTasks(ctx, c, vmID)
				if err != nil {
					return err
				}
				if a.output != "table" {
					return a.printMessage(resp)
				}
				rows := make([][]string, 0, len(resp.GetTasks()))
				for _, t := range resp.GetTasks() {
					rows = append(rows, taskRow(t))
				}
				return a.table(taskHeader, rows)
			})
		},
	}
	list.Flags().StringVar(&vmRef, "vm", "", "only this VM's tasks (id or name)")

	one := func(use, short string, do func(ctx context.Context, c *clients, id string) (*apiv1.Task, error)) *cobra.Command {
		return &cobra.Command{
			Use:   use + " TASK",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return a.call(cmd, func(ctx context.Context, c *clients) error {
					t, err := do(ctx, c, args[0])
					if err != nil {
						return err
					}
					return a.printTask(t)
				})
			},
		}
	}
	get := one("get", "Show one task", func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
		r, err := c.task.GetTask(ctx, &apiv1.GetTaskRequest{Id: id})
		return r.GetTask(), err
	})
	cancelCmd := one("cancel", "Ask a pending or running task to stop", func(ctx context.Context, c *clients, id string) (*apiv1.Task, error) {
		r, err := c.task.CancelTask(ctx, &apiv1.CancelTaskRequest{Id: id})
		return r.GetTask(), err
	})
	wait := &cobra.Command{
		Use:   "wait TASK",
		Short: "Wait until a task has finished (exit status 1 unless it succeeded)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *clients) error {
				g, err := c.task.GetTask(ctx, &apiv1.GetTaskRequest{Id: args[0]})
				if err != nil {
					return err
				}
				t, err := a.waitTask(ctx, c, g.GetTask())
				if err != nil {
					return err
				}
				if err := a.printTask(t); err != nil {
					return err
				}
				if t.GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
					return &taskError{t}
				}
				return nil
			})
		},
	}
	task.AddCommand(list, get, cancelCmd, wait)
	return task
}

func (a *app) printTask(t *apiv1.Task) error {
	if a.output != "table" {
		return a.printMessage(t)
	}
	return a.table(taskHeader, [][]string{taskRow(t)})
}

// vmTaskCmd is a command that queues a task on the VM named by its first
// argument and, unless --no-wait, waits for it: the command's deadline is
// the global --timeout, or deadline() when given.
func (a *app) vmTaskCmd(use, short string, args cobra.PositionalArgs, deadline func() time.Duration,
	do func(ctx context.Context, c *clients, args []string) (*apiv1.Task, error)) *cobra.Command {
	var noWait bool
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.clients()
			if err != nil {
				return err
			}
			d := a.timeout
			if deadline != nil {
				d = deadline()
			}
			ctx, cancel := a.ctxWith(cmd, d)
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
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "print the task id and return at once")
	return cmd
}
