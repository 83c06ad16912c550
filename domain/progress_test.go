package domain

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// persisted returns evs without the live progress events.
func persisted(evs []Event) []Event {
	var out []Event
	for _, ev := range evs {
		if ev.Kind != EventTaskProgress {
			out = append(out, ev)
		}
	}
	return out
}

// watchLive runs Watch(after), progress included, into c until the test
// ends it with the returned stop function.
func (e *env) watchLive(c *collector, after uint64) (stop func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.m.Watch(ctx, after, WatchOptions{TaskProgress: true}, c.send) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("watch: %v", err)
		}
	}
}

func (c *collector) events() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Event(nil), c.evs...)
}

// progressOf returns the progress values c received for task id.
func (c *collector) progressOf(id string) []float64 {
	var out []float64
	for _, ev := range c.events() {
		if ev.Kind == EventTaskProgress && ev.Progress.TaskID == id {
			out = append(out, ev.Progress.Progress)
		}
	}
	return out
}

// startBlocked submits a start whose build blocks until bb.release.
func (e *env) startBlocked(bb blockingBuilder, vmID string) Task {
	e.t.Helper()
	tk, err := e.m.Start(e.ctx, vmID, false)
	if err != nil {
		e.t.Fatal(err)
	}
	select {
	case <-bb.started:
	case <-time.After(30 * time.Second):
		e.t.Fatal("build never started")
	}
	return tk
}

// A watcher sees a running task's progress live, in order, each report after
// the persisted events that preceded it, and then the task's final state.
func TestWatchSeesTaskProgress(t *testing.T) {
	bb := blockingBuilder{started: make(chan struct{}, 1), release: make(chan struct{})}
	e := newEnv(t, envOpts{builder: bb.on})
	vm := e.create("p")
	c := &collector{}
	after := e.st.Head()
	stop := e.watchLive(c, after)
	tk := e.startBlocked(bb, vm.ID)
	// The build is blocked after the domain was created (progress 0.3):
	// nothing is persisted about it, yet the watcher hears of it.
	e.eventually("progress while building", func() bool { return len(c.progressOf(tk.ID)) > 0 })
	if p := c.progressOf(tk.ID); fmt.Sprint(p) != "[0.3]" {
		t.Fatalf("progress while the build blocks: %v, want [0.3]", p)
	}
	close(bb.release)
	done := e.wait(tk)
	head := e.st.Head()
	e.eventually("final state", func() bool { return c.lastRev() >= head })
	stop()

	pos := after // the stream's position: the last persisted revision sent
	var states []string
	var progress []float64
	for _, ev := range c.events() {
		switch {
		case ev.Kind == EventTaskProgress:
			if ev.Revision != pos {
				t.Errorf("progress %v carries revision %d, want %d (the last persisted one sent)", ev.Progress.Progress, ev.Revision, pos)
			}
			if ev.Progress.TaskID == tk.ID {
				if ev.Progress.VMID != vm.ID || len(states) == 0 || states[len(states)-1] != "Running" {
					t.Errorf("progress %+v after states %v", *ev.Progress, states)
				}
				progress = append(progress, ev.Progress.Progress)
			}
		default:
			if ev.Revision != pos+1 {
				t.Fatalf("persisted event %d after position %d", ev.Revision, pos)
			}
			pos = ev.Revision
			if ev.Kind == EventTaskChanged && ev.Task.ID == tk.ID {
				states = append(states, ev.Task.State.String())
			}
		}
	}
	if fmt.Sprint(states) != "[Pending Running Succeeded]" || done.State != TaskSucceeded {
		t.Errorf("persisted task states %v (final %v)", states, done.State)
	}
	// Reports may coalesce, never reorder: 0.3 first, then rising.
	for i := 1; i < len(progress); i++ {
		if progress[i] <= progress[i-1] {
			t.Errorf("progress out of order: %v", progress)
		}
	}
	if len(progress) == 0 || progress[0] != 0.3 || progress[len(progress)-1] >= 1 {
		t.Errorf("progress %v", progress)
	}
}

// A watcher that does not read must not hold up a task, and what waits for it
// is bounded: at most the latest report per running task.
func TestSlowWatcherDoesNotBlockTasks(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("slow")
	unblock := make(chan struct{})
	stuck := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() {
		done <- e.m.Watch(ctx, 0, WatchOptions{TaskProgress: true}, func(Event) error {
			select {
			case stuck <- struct{}{}:
			default:
			}
			<-unblock
			return nil
		})
	}()
	<-stuck // the watcher is inside its first send and stays there
	e.run(e.m.Start(e.ctx, vm.ID, false))
	e.run(e.m.Pause(e.ctx, vm.ID))
	e.run(e.m.Destroy(e.ctx, vm.ID))
	// Finished tasks leave nothing waiting in the watcher's mailbox.
	e.m.hub.mu.Lock()
	n := 0
	for b := range e.m.hub.boxes {
		n += len(b.pending)
	}
	e.m.hub.mu.Unlock()
	if n != 0 {
		t.Errorf("%d progress reports of finished tasks wait for the stuck watcher", n)
	}
	close(unblock)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// The hub keeps only the latest report per task for a watcher that does not
// take them, in publication order, and forgets a task's reports.
func TestProgressHubCoalesces(t *testing.T) {
	h := newProgressHub()
	b := h.subscribe()
	for i := 1; i <= 10000; i++ {
		h.publish(TaskProgress{TaskID: "a", Progress: float64(i) / 10000}, uint64(i))
		if i == 5000 {
			h.publish(TaskProgress{TaskID: "b", Progress: 0.5}, uint64(i))
		}
	}
	h.publish(TaskProgress{TaskID: "c", Progress: 0.1}, 10000)
	if len(b.pending) != 3 {
		t.Fatalf("%d reports waiting, want one per task (3)", len(b.pending))
	}
	h.forget("c")
	got := h.take(b)
	if len(got) != 2 || got[0].TaskID != "b" || got[1].TaskID != "a" || got[1].Progress != 1 || got[1].rev != 10000 {
		t.Fatalf("taken %+v; want b's report, then a's latest", got)
	}
	if got := h.take(b); got != nil {
		t.Fatalf("second take %+v", got)
	}
	// A new watcher starts with the latest report of every running task.
	if got := h.take(h.subscribe()); len(got) != 2 || got[1].Progress != 1 {
		t.Fatalf("new watcher starts with %+v", got)
	}
}

// Progress is never replayed: resuming from a revision gives the persisted
// events, then only the current progress of a task still running; once the
// task is done, no progress at all.
func TestResumeDoesNotReplayProgress(t *testing.T) {
	bb := blockingBuilder{started: make(chan struct{}, 1), release: make(chan struct{})}
	e := newEnv(t, envOpts{builder: bb.on})
	vm := e.create("r")
	from := e.st.Head()
	tk := e.startBlocked(bb, vm.ID)
	e.eventually("progress reported", func() bool {
		got, _ := e.m.GetTask(e.ctx, tk.ID)
		return got.Progress == 0.3
	})
	head := e.st.Head()
	c := &collector{}
	stop := e.watchLive(c, from)
	e.eventually("current progress after the persisted events", func() bool { return len(c.progressOf(tk.ID)) > 0 })
	stop()
	evs := c.events()
	last := evs[len(evs)-1]
	if len(persisted(evs)) != int(head-from) || last.Kind != EventTaskProgress || last.Revision != head || last.Progress.Progress != 0.3 {
		t.Fatalf("resume while running: %+v", evs)
	}

	close(bb.release)
	e.run(tk, nil)
	head = e.st.Head()
	c = &collector{}
	stop = e.watchLive(c, from)
	e.eventually("replay up to the head", func() bool { return c.lastRev() >= head })
	stop()
	if p := persisted(c.events()); len(p) != len(c.events()) || len(p) != int(head-from) {
		t.Fatalf("resume after the task: %d events, %d persisted, want %d persisted only", len(c.events()), len(p), head-from)
	}
}

// A watcher that did not ask for progress gets persisted events only.
func TestWatchWithoutProgress(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("q")
	c := &collector{}
	after := e.st.Head()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.m.Watch(ctx, after, WatchOptions{}, c.send) }()
	e.run(e.m.Start(e.ctx, vm.ID, false))
	e.run(e.m.Destroy(e.ctx, vm.ID))
	head := e.st.Head()
	e.eventually("persisted events", func() bool { return c.lastRev() >= head })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for i, ev := range c.events() {
		if ev.Kind == EventTaskProgress || ev.Revision != after+uint64(i)+1 {
			t.Fatalf("event %d: %+v", i, ev)
		}
	}
}
