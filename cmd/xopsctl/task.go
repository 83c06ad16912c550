package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

// progressInterval is how often a waiting command polls the task for
// progress to show on stderr.
const progressInterval = 250 * time.Millisecond

func done(s apiv1.TaskState) bool {
	switch s {
	case apiv1.TaskState_TASK_STATE_SUCCEEDED, apiv1.TaskState_TASK_STATE_FAILED,
		apiv1.TaskState_TASK_STATE_CANCELLED, apiv1.TaskState_TASK_STATE_INTERRUPTED:
		return true
	}
	return false
}

// waitTask waits until the task has finished or ctx ends, printing its state
// and progress on stderr whenever they change. WaitTask does the waiting; a
// ticker polls GetTask only to show progress.
func (a *app) waitTask(ctx context.Context, c *clients, task *apiv1.Task) (*apiv1.Task, error) {
	last := ""
	show := func(t *apiv1.Task) {
		line := fmt.Sprintf("task %s: %s %s %.0f%%", t.GetId(), t.GetOp(), stateName(t.GetState()), t.GetProgress()*100)
		if line != last {
			fmt.Fprintln(a.stderr, line)
			last = line
		}
	}
	show(task)
	if done(task.GetState()) {
		return task, nil
	}
	type result struct {
		t   *apiv1.Task
		err error
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan result, 1)
	go func() {
		r, err := c.task.WaitTask(wctx, &apiv1.WaitTaskRequest{Id: task.GetId()})
		ch <- result{r.GetTask(), err}
	}()
	tick := time.NewTicker(progressInterval)
	defer tick.Stop()
	for {
		select {
		case r := <-ch:
			if r.err != nil {
				if ctx.Err() != nil || status.Code(r.err) == codes.DeadlineExceeded {
					return nil, fmt.Errorf("task %s still running after the command's time limit; follow it with: xopsctl task wait %s",
						task.GetId(), task.GetId())
				}
				return nil, r.err
			}
			show(r.t)
			return r.t, nil
		case <-tick.C:
			g, err := c.task.GetTask(wctx, &apiv1.GetTaskRequest{Id: task.GetId()})
			if err == nil {
				show(g.GetTask())
			}
		}
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
