package domain

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"syscall"
	"time"
)

// taskEntry is a task in memory. t and final are guarded by Manager.mu.
type taskEntry struct {
	t         Task
	final     bool // a final state has been claimed (written or being written)
	ctx       context.Context
	cancel    context.CancelFunc
	cancelled bool // CancelTask asked for it
	done      chan struct{}
	doneOnce  sync.Once
}

func newTaskEntry(parent context.Context, t Task) *taskEntry {
	ctx, cancel := context.WithCancel(parent)
	return &taskEntry{t: t, ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

func (te *taskEntry) closeDone() {
	te.doneOnce.Do(func() {
		close(te.done)
		te.cancel()
	})
}

// op is one queued operation on one VM. task is nil for internal
// operations (reacting to guest-initiated shutdowns).
type op struct {
	task *taskEntry
	name string
	// run does the work. It returns the change to the VM record to commit
	// with the task's final state (nil: none) and the task's outcome.
	run func(ctx context.Context, e *vmEntry, te *taskEntry) (func(*vmRecord), error)
}

// submit validates the transition against the VM's projected state,
// persists a Pending task and queues op on the VM. next is the power state
// the VM will be in once op has run (PowerUnspecified: depends on the guest;
// then any later operation is accepted and checked when it runs).
func (m *Manager) submit(ctx context.Context, ref, name string, allowed []PowerState, next PowerState, run func(context.Context, *vmEntry, *taskEntry) (func(*vmRecord), error)) (Task, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return Task{}, err
	}
	e.submitMu.Lock()
	defer e.submitMu.Unlock()
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return Task{}, errClosing()
	}
	if m.vms[e.id] != e || e.deleting {
		m.mu.Unlock()
		return Task{}, &Error{Code: CodeNotFound, Field: "id", Message: "no VM with id or name " + quote(ref)}
	}
	cur := e.rec.VM.Power
	if e.scheduled {
		cur = e.projected
	}
	ok := cur == PowerUnspecified // outcome of a queued operation unknown: checked when it runs
	for _, p := range allowed {
		ok = ok || p == cur
	}
	if !ok {
		m.mu.Unlock()
		what := "is"
		if e.scheduled {
			what = "will be (after its queued operations)"
		}
		return Task{}, &Error{Code: CodeFailedPrecondition, Message: fmt.Sprintf("VM %s %s %s; %s needs %s", e.id, what, cur, name, statesString(allowed))}
	}
	m.mu.Unlock()

	now := time.Now().UTC()
	t := Task{ID: newUUID(), VMID: e.id, Op: name, State: TaskPending, CreatedAt: now, UpdatedAt: now}
	te := newTaskEntry(m.baseCtx, t)
	if err := m.commit(ctx, txn{tasks: []taskPut{{te: te, t: t}}}); err != nil {
		te.cancel()
		return Task{}, err
	}
	m.mu.Lock()
	if m.closing {
		// Close ran while we persisted: record the task as interrupted.
		te.final = true
		m.mu.Unlock()
		tp := interrupted(te, time.Now().UTC(), "xenopsd-ng shut down before the task started")
		m.commit(context.Background(), txn{tasks: []taskPut{tp}})
		return tp.t, nil
	}
	e.projected = next
	m.enqueueLocked(e, &op{task: te, name: name, run: run})
	m.mu.Unlock()
	return t, nil
}

// enqueueLocked appends o to e's queue and makes e ready. m.mu held.
func (m *Manager) enqueueLocked(e *vmEntry, o *op) {
	e.queue = append(e.queue, o)
	if !e.scheduled {
		e.scheduled = true
		m.ready = append(m.ready, e)
		m.work.Signal()
	}
}

// worker runs one operation at a time: it takes the VM at the head of the
// ready list, runs that VM's first queued operation, and puts the VM back
// at the tail if more are queued. So one VM's operations run in order and
// one at a time, while different VMs share the pool.
func (m *Manager) worker() {
	defer m.workersWG.Done()
	for {
		m.mu.Lock()
		for len(m.ready) == 0 && !m.closing {
			m.work.Wait()
		}
		if m.closing {
			m.mu.Unlock()
			return
		}
		e := m.ready[0]
		m.ready[0] = nil
		m.ready = m.ready[1:]
		if len(e.queue) == 0 {
			e.scheduled = false
			e.projected = e.rec.VM.Power
			m.mu.Unlock()
			continue
		}
		o := e.queue[0]
		e.queue[0] = nil
		e.queue = e.queue[1:]
		e.running = o
		m.mu.Unlock()

		m.runOp(e, o)

		m.mu.Lock()
		e.running = nil
		if o.task == nil {
			e.checkQueue = false
		}
		if len(e.queue) > 0 && !m.closing {
			m.ready = append(m.ready, e)
			m.work.Signal()
		} else {
			e.scheduled = false
			e.projected = e.rec.VM.Power
		}
		m.mu.Unlock()
	}
}

func (m *Manager) runOp(e *vmEntry, o *op) {
	te := o.task
	ctx := m.baseCtx
	if te != nil {
		ctx = te.ctx
		m.mu.Lock()
		claimed := te.final
		m.mu.Unlock()
		if claimed {
			return // cancelled or interrupted while queued
		}
	}
	began := time.Now()
	mut, err := o.run(ctx, e, te)
	if m.onOp != nil {
		m.onOp(o.name, err, time.Since(began))
	}
	if err != nil {
		m.log.Warn("operation failed", "vm", e.id, "op", o.name, "err", err)
	}
	var tasks []taskPut
	if te != nil {
		if tp, ok := m.finishTask(te, err); ok {
			tasks = append(tasks, tp)
		}
	}
	// Persist even if the task was cancelled: the VM record must match
	// what the hypervisor now holds.
	if cerr := m.updateVM(context.Background(), e, wrapMut(mut), tasks...); cerr != nil {
		m.log.Error("persist operation result", "vm", e.id, "op", o.name, "err", cerr)
	}
}

func wrapMut(mut func(*vmRecord)) func(*vmRecord) error {
	if mut == nil {
		return nil
	}
	return func(r *vmRecord) error { mut(r); return nil }
}

// finishTask claims te's final state for err. ok is false if something
// else (CancelTask of a queued task, Close) already did.
func (m *Manager) finishTask(te *taskEntry, err error) (taskPut, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if te.final {
		return taskPut{}, false
	}
	te.final = true
	t := te.t
	t.UpdatedAt = time.Now().UTC()
	switch {
	case err == nil:
		t.State, t.Progress = TaskSucceeded, 1
	case te.cancelled && (errors.Is(err, context.Canceled) || CodeOf(err) == CodeCancelled):
		t.State = TaskCancelled
		t.Err = &Error{Code: CodeCancelled, Message: "cancelled by request; " + err.Error()}
	default:
		t.State = TaskFailed
		t.Err = toError(err)
	}
	return taskPut{te: te, t: t}, true
}

// setRunning persists te as Running (with progress), together with an
// optional change to the VM record.
func (m *Manager) setRunning(ctx context.Context, e *vmEntry, te *taskEntry, mut func(*vmRecord)) error {
	if te == nil {
		if mut == nil {
			return nil
		}
		return m.updateVM(ctx, e, wrapMut(mut))
	}
	m.mu.Lock()
	if te.final {
		m.mu.Unlock()
		return &Error{Code: CodeAborted, Message: "task already finished"}
	}
	t := te.t
	m.mu.Unlock()
	t.State = TaskRunning
	t.Progress = 0.1
	t.UpdatedAt = time.Now().UTC()
	return m.updateVM(ctx, e, wrapMut(mut), taskPut{te: te, t: t})
}

// markRunning records te as Running in memory only, like progress: for an
// operation that changes no VM record before its work (destroy), a synced
// Running write would cost an fsync and tell a restart nothing (Pending and
// Running tasks both become TaskInterrupted). Watchers see the task go from
// Pending to a live progress report to its final state.
func (m *Manager) markRunning(te *taskEntry) error {
	if te == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if te.final {
		return &Error{Code: CodeAborted, Message: "task already finished"}
	}
	te.t.State = TaskRunning
	te.t.UpdatedAt = time.Now().UTC()
	m.setProgressLocked(te, 0.1)
	return nil
}

// progress updates a running task's progress in memory and reports it to
// event watchers live (EventTaskProgress), without persisting it: a restart
// turns the task into TaskInterrupted anyway.
func (m *Manager) progress(te *taskEntry, p float64) {
	if te == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !te.final {
		m.setProgressLocked(te, p)
	}
}

// setProgressLocked sets and publishes te's progress. m.mu held (so that
// reports carry non-decreasing revisions, and none follows te's final state:
// see progressHub).
func (m *Manager) setProgressLocked(te *taskEntry, p float64) {
	te.t.Progress = p
	m.hub.publish(TaskProgress{TaskID: te.t.ID, VMID: te.t.VMID, Progress: p}, m.rev)
}

// GetTask returns a task by id.
func (m *Manager) GetTask(ctx context.Context, id string) (Task, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	te := m.tasks[id]
	if te == nil {
		return Task{}, &Error{Code: CodeNotFound, Field: "id", Message: "no task with id " + quote(id)}
	}
	return te.t, nil
}

// ListTasks returns the tasks of one VM ("" => all), oldest first. vmID
// may also be a VM's name (tasks of deleted VMs are found by id only).
func (m *Manager) ListTasks(ctx context.Context, vmID string) ([]Task, error) {
	m.mu.Lock()
	if id, ok := m.names[vmID]; ok && m.vms[vmID] == nil {
		vmID = id
	}
	var out []Task
	for _, te := range m.tasks {
		if vmID == "" || te.t.VMID == vmID {
			out = append(out, te.t)
		}
	}
	m.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// WaitTask blocks until the task is done or ctx ends, and returns it.
func (m *Manager) WaitTask(ctx context.Context, id string) (Task, error) {
	m.mu.Lock()
	te := m.tasks[id]
	m.mu.Unlock()
	if te == nil {
		return Task{}, &Error{Code: CodeNotFound, Field: "id", Message: "no task with id " + quote(id)}
	}
	select {
	case <-te.done:
	case <-ctx.Done():
		return Task{}, ctxError(ctx.Err())
	}
	return m.GetTask(ctx, id)
}

// CancelTask cancels a task: a queued task is removed from its VM's queue
// and marked Cancelled at once; a running one is asked to stop (it undoes
// its partial work and ends Cancelled, or finishes if it was past the
// point of no return). Cancelling a finished task is FailedPrecondition.
func (m *Manager) CancelTask(ctx context.Context, id string) (Task, error) {
	m.mu.Lock()
	te := m.tasks[id]
	if te == nil {
		m.mu.Unlock()
		return Task{}, &Error{Code: CodeNotFound, Field: "id", Message: "no task with id " + quote(id)}
	}
	if te.final {
		t := te.t
		m.mu.Unlock()
		return t, &Error{Code: CodeFailedPrecondition, Message: fmt.Sprintf("task %s is already %s", id, t.State)}
	}
	te.cancelled = true
	var tp *taskPut
	if e := m.vms[te.t.VMID]; e != nil {
		for i, o := range e.queue {
			if o.task == te {
				e.queue = append(e.queue[:i:i], e.queue[i+1:]...)
				te.final = true
				t := te.t
				t.State = TaskCancelled
				t.Err = &Error{Code: CodeCancelled, Message: "cancelled by request before it started"}
				t.UpdatedAt = time.Now().UTC()
				tp = &taskPut{te: te, t: t}
				break
			}
		}
	}
	m.mu.Unlock()
	if tp != nil {
		if err := m.commit(ctx, txn{tasks: []taskPut{*tp}}); err != nil {
			return Task{}, err
		}
		return tp.t, nil
	}
	te.cancel()
	return m.GetTask(ctx, id)
}

// toError turns any error into an *Error with the right code.
func toError(err error) *Error {
	var e *Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &e):
		return e
	case errors.Is(err, syscall.ENOMEM): // the one place ENOMEM becomes ResourceExhausted
		return &Error{Code: CodeResourceExhausted, Message: "host out of memory: " + err.Error()}
	}
	if e := ctxError(err); e != nil {
		return e
	}
	return &Error{Code: CodeInternal, Message: err.Error()}
}

func hvError(what string, err error) error {
	// A builder's own verdict (a bad kernel is InvalidArgument on
	// spec.kernel) keeps its code and field.
	var de *Error
	if errors.As(err, &de) {
		return &Error{Code: de.Code, Field: de.Field, Message: fmt.Sprintf("%s: %s", what, de.Message)}
	}
	e := toError(err)
	if e.Code == CodeCancelled || e.Code == CodeDeadlineExceeded {
		return e
	}
	return &Error{Code: e.Code, Message: fmt.Sprintf("%s: %s", what, e.Message)}
}

func ctxError(err error) *Error {
	switch {
	case errors.Is(err, context.Canceled):
		return &Error{Code: CodeCancelled, Message: err.Error()}
	case errors.Is(err, context.DeadlineExceeded):
		return &Error{Code: CodeDeadlineExceeded, Message: err.Error()}
	}
	return nil
}

func errClosing() *Error {
	return &Error{Code: CodeUnavailable, Message: "xenopsd-ng is shutting down"}
}

func statesString(ps []PowerState) string {
	s := ""
	for i, p := range ps {
		if i > 0 {
			s += " or "
		}
		s += p.String()
	}
	return s
}

// QueueDepth is how many VMs have operations queued and how many operations
// are queued in all: waiting for a worker or behind the operation running on
// their VM (a running operation is not counted).
func (m *Manager) QueueDepth() (vms, ops int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.vms {
		if n := len(e.queue); n > 0 {
			vms++
			ops += n
		}
	}
	return vms, ops
}
