package service

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// fakeManager is an in-memory Manager for the API tests. It records what it
// was called with; tasks it queues stay pending until WaitTask is called on
// them, then finish with finishState / finishErr.
type fakeManager struct {
	mu sync.Mutex

	host  domain.HostInfo
	vms   map[string]domain.VM
	tasks map[string]domain.Task
	calls []string

	lastSpec     domain.Spec
	lastShutdown domain.ShutdownOptions
	lastSuspend  domain.SuspendOptions
	lastPaused   bool

	// err, when set, is returned by every method (after recording the call).
	err error
	// finishState/finishErr: how a task ends when waited for.
	finishState domain.TaskState
	finishErr   *domain.Error
	// blockWait makes WaitTask block until ctx ends.
	blockWait bool

	// events: the retained log (revisions firstRetained..head) and a channel
	// of live events.
	events        []domain.Event
	firstRetained uint64
	live          chan domain.Event
	watching      chan struct{} // closed when Watch has sent the backlog
	watchOnce     sync.Once
}

func newFake() *fakeManager {
	return &fakeManager{
		vms:         map[string]domain.VM{},
		tasks:       map[string]domain.Task{},
		finishState: domain.TaskSucceeded,
		live:        make(chan domain.Event, 16),
		watching:    make(chan struct{}),
	}
}

func (f *fakeManager) record(call string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
	return f.err
}

func (f *fakeManager) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeManager) Host(ctx context.Context) (domain.HostInfo, error) {
	if err := f.record("Host"); err != nil {
		return domain.HostInfo{}, err
	}
	return f.host, nil
}

func (f *fakeManager) CreateVM(ctx context.Context, spec domain.Spec, requestID string) (domain.VM, error) {
	if err := f.record("CreateVM " + requestID); err != nil {
		return domain.VM{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastSpec = spec
	vm := domain.VM{ID: spec.UUID, Spec: spec, Power: domain.Halted, CreatedAt: time.Unix(1700000000, 0), UpdatedAt: time.Unix(1700000001, 0), Generation: 1}
	f.vms[vm.ID] = vm
	return vm, nil
}

func (f *fakeManager) lookup(ref string) (domain.VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, vm := range f.vms {
		if vm.ID == ref || vm.Spec.Name == ref {
			return vm, nil
		}
	}
	return domain.VM{}, domain.Errorf(domain.CodeNotFound, "no VM %q", ref)
}

func (f *fakeManager) GetVM(ctx context.Context, ref string) (domain.VM, error) {
	if err := f.record("GetVM " + ref); err != nil {
		return domain.VM{}, err
	}
	return f.lookup(ref)
}

func (f *fakeManager) ListVMs(ctx context.Context) ([]domain.VM, uint64, error) {
	if err := f.record("ListVMs"); err != nil {
		return nil, 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []domain.VM
	for _, vm := range f.vms {
		out = append(out, vm)
	}
	return out, uint64(len(f.events)) + f.firstRetained, nil
}

func (f *fakeManager) UpdateVM(ctx context.Context, ref string, spec domain.Spec) (domain.VM, error) {
	if err := f.record("UpdateVM " + ref); err != nil {
		return domain.VM{}, err
	}
	vm, err := f.lookup(ref)
	if err != nil {
		return vm, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastSpec = spec
	vm.Spec = spec
	vm.Generation++
	f.vms[vm.ID] = vm
	return vm, nil
}

func (f *fakeManager) DeleteVM(ctx context.Context, ref string) error {
	if err := f.record("DeleteVM " + ref); err != nil {
		return err
	}
	vm, err := f.lookup(ref)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.vms, vm.ID)
	return nil
}

func (f *fakeManager) queue(op, ref string) (domain.Task, error) {
	if err := f.record(op + " " + ref); err != nil {
		return domain.Task{}, err
	}
	vm, err := f.lookup(ref)
	if err != nil {
		return domain.Task{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t := domain.Task{ID: fmt.Sprintf("task-%d", len(f.tasks)+1), VMID: vm.ID, Op: op, State: domain.TaskPending, CreatedAt: time.Unix(1700000002, 0)}
	f.tasks[t.ID] = t
	return t, nil
}

func (f *fakeManager) Start(ctx context.Context, ref string, paused bool) (domain.Task, error) {
	f.mu.Lock()
	f.lastPaused = paused
	f.mu.Unlock()
	return f.queue("start", ref)
}
func (f *fakeManager) Pause(ctx context.Context, ref string) (domain.Task, error) {
	return f.queue("pause", ref)
}
func (f *fakeManager) Unpause(ctx context.Context, ref string) (domain.Task, error) {
	return f.queue("unpause", ref)
}
func (f *fakeManager) Shutdown(ctx context.Context, ref string, opts domain.ShutdownOptions) (domain.Task, error) {
	f.mu.Lock()
	f.lastShutdown = opts
	f.mu.Unlock()
	return f.queue("shutdown", ref)
}
func (f *fakeManager) Reboot(ctx context.Context, ref string, opts domain.ShutdownOptions) (domain.Task, error) {
	f.mu.Lock()
	f.lastShutdown = opts
	f.mu.Unlock()
	return f.queue("reboot", ref)
}
func (f *fakeManager) Suspend(ctx context.Context, ref string, opts domain.SuspendOptions) (domain.Task, error) {
	f.mu.Lock()
	f.lastSuspend = opts
	f.mu.Unlock()
	return f.queue("suspend", ref)
}
func (f *fakeManager) Resume(ctx context.Context, ref string) (domain.Task, error) {
	return f.queue("resume", ref)
}
func (f *fakeManager) Destroy(ctx context.Context, ref string) (domain.Task, error) {
	return f.queue("destroy", ref)
}
func (f *fakeManager) AddDisk(ctx context.Context, ref string, _ domain.Disk) (domain.Task, error) {
	return f.queue("add-disk", ref)
}
func (f *fakeManager) RemoveDisk(ctx context.Context, ref, _ string, _ bool) (domain.Task, error) {
	return f.queue("remove-disk", ref)
}
func (f *fakeManager) AddNIC(ctx context.Context, ref string, _ domain.NIC) (domain.Task, error) {
	return f.queue("add-nic", ref)
}
func (f *fakeManager) DeviceStates(ctx context.Context, ref string) ([]domain.DeviceState, error) {
	return nil, nil
}
func (f *fakeManager) RemoveNIC(ctx context.Context, ref, _ string, _ bool) (domain.Task, error) {
	return f.queue("remove-nic", ref)
}

func (f *fakeManager) GetTask(ctx context.Context, id string) (domain.Task, error) {
	if err := f.record("GetTask " + id); err != nil {
		return domain.Task{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	if !ok {
		return t, domain.Errorf(domain.CodeNotFound, "no task %q", id)
	}
	return t, nil
}

func (f *fakeManager) ListTasks(ctx context.Context, vmID string) ([]domain.Task, error) {
	if err := f.record("ListTasks " + vmID); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []domain.Task
	for _, t := range f.tasks {
		if vmID == "" || t.VMID == vmID {
			out = append(out, t)
		}
	}
	return out, nil
}

func (f *fakeManager) CancelTask(ctx context.Context, id string) (domain.Task, error) {
	if err := f.record("CancelTask " + id); err != nil {
		return domain.Task{}, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	if !ok {
		return t, domain.Errorf(domain.CodeNotFound, "no task %q", id)
	}
	t.State = domain.TaskCancelled
	t.Err = domain.Errorf(domain.CodeCancelled, "cancelled by request")
	f.tasks[id] = t
	return t, nil
}

func (f *fakeManager) WaitTask(ctx context.Context, id string) (domain.Task, error) {
	if err := f.record("WaitTask " + id); err != nil {
		return domain.Task{}, err
	}
	f.mu.Lock()
	block := f.blockWait
	f.mu.Unlock()
	if block {
		<-ctx.Done()
		return domain.Task{}, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t, ok := f.tasks[id]
	if !ok {
		return t, domain.Errorf(domain.CodeNotFound, "no task %q", id)
	}
	t.State = f.finishState
	t.Err = f.finishErr
	if t.State == domain.TaskSucceeded {
		t.Progress = 1
	}
	f.tasks[id] = t
	return t, nil
}

// Watch follows the domain.Manager contract on the fake's event log.
func (f *fakeManager) Watch(ctx context.Context, after uint64, opts domain.WatchOptions, send func(domain.Event) error) error {
	if err := f.record(fmt.Sprintf("Watch %d progress=%v", after, opts.TaskProgress)); err != nil {
		return err
	}
	f.mu.Lock()
	backlog := append([]domain.Event(nil), f.events...)
	first := f.firstRetained
	f.mu.Unlock()
	head := first - 1 + uint64(len(backlog))
	if after > head {
		return domain.InvalidField("after_revision", "%d is above the head revision %d", after, head)
	}
	if after+1 < first {
		if err := send(domain.Event{Kind: domain.EventResync, Revision: head}); err != nil {
			return err
		}
		after = head
	}
	for _, e := range backlog {
		if e.Revision > after {
			if err := send(e); err != nil {
				return err
			}
		}
	}
	f.watchOnce.Do(func() { close(f.watching) })
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e := <-f.live:
			if err := send(e); err != nil {
				return err
			}
		}
	}
}
