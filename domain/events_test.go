package domain

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// collector is a watcher that records what it receives.
type collector struct {
	mu   sync.Mutex
	evs  []Event
	last uint64
}

func (c *collector) send(ev Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.evs = append(c.evs, ev)
	c.last = ev.Revision
	return nil
}

func (c *collector) lastRev() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// watchUntil runs Watch from after until the collector reached rev.
func (e *env) watchUntil(c *collector, after, rev uint64) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.m.Watch(ctx, after, WatchOptions{}, c.send) }()
	e.eventually(fmt.Sprintf("watcher reaches revision %d", rev), func() bool { return c.lastRev() >= rev })
	cancel()
	if err := <-done; err != nil {
		e.t.Fatalf("watch: %v", err)
	}
}

func TestWatchResumeSeesEverythingOnce(t *testing.T) {
	e := newEnv(t, envOpts{})
	c := &collector{}
	// Phase 1: a watcher follows live changes.
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.m.Watch(ctx, 0, WatchOptions{}, c.send) }()
	vm := e.create("w")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	head1 := e.st.Head()
	e.eventually("live events", func() bool { return c.lastRev() >= head1 })
	cancel()
	<-done
	// Phase 2: changes while disconnected.
	resumeFrom := c.lastRev()
	e.run(e.m.Pause(e.ctx, vm.ID))
	e.run(e.m.Destroy(e.ctx, vm.ID))
	if err := e.m.DeleteVM(e.ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	// Phase 3: resume, including across a daemon restart.
	e.close()
	e.open(0)
	head := e.st.Head()
	e.watchUntil(c, resumeFrom, head)
	seen := map[uint64]int{}
	for i, ev := range c.evs {
		seen[ev.Revision]++
		if ev.Revision != uint64(i+1) {
			t.Fatalf("event %d has revision %d: gap or reorder", i, ev.Revision)
		}
	}
	for r := uint64(1); r <= head; r++ {
		if seen[r] != 1 {
			t.Fatalf("revision %d seen %d times", r, seen[r])
		}
	}
	last := c.evs[len(c.evs)-1]
	if last.Kind != EventVMDeleted || last.VMID != vm.ID {
		t.Fatalf("last event %+v, want the deletion", last)
	}
	var powers []PowerState
	for _, ev := range c.evs {
		if ev.Kind == EventVMChanged {
			powers = append(powers, ev.VM.Power)
		}
	}
	if fmt.Sprint(powers) != "[Halted Halted Running Paused Halted]" {
		t.Fatalf("VM power sequence %v", powers)
	}
	// ListVMs' revision is a valid resume point.
	_, rev, _ := e.m.ListVMs(e.ctx)
	if rev != head {
		t.Fatalf("ListVMs revision %d, head %d", rev, head)
	}
}

func TestWatchCompactedGetsResync(t *testing.T) {
	e := newEnv(t, envOpts{retain: 10})
	for i := 0; i < 30; i++ {
		e.create("vm-" + itoa(i))
	}
	head := e.st.Head()
	c := &collector{}
	e.watchUntil(c, 0, head)
	if len(c.evs) != 1 || c.evs[0].Kind != EventResync || c.evs[0].Revision != head {
		t.Fatalf("watch from 0 after compaction: %+v", c.evs)
	}
	// A recent revision still replays normally.
	c2 := &collector{}
	e.watchUntil(c2, head-3, head)
	if len(c2.evs) != 3 || c2.evs[0].Kind != EventVMChanged || c2.evs[0].Revision != head-2 {
		t.Fatalf("recent replay: %+v", c2.evs)
	}
	// And the stream continues live after a resync.
	c3 := &collector{}
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- e.m.Watch(ctx, 1, WatchOptions{}, c3.send) }()
	e.eventually("resync", func() bool { return c3.lastRev() == head })
	e.create("late")
	e.eventually("live after resync", func() bool { return c3.lastRev() == head+1 })
	cancel()
	<-done
}

func TestWatchSendErrorStops(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.create("x")
	boom := errors.New("client gone")
	if err := e.m.Watch(e.ctx, 0, WatchOptions{}, func(Event) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("watch returned %v", err)
	}
}

// TestConcurrentVMs: 200 VMs created, started and driven by 32 concurrent
// clients; per-VM operations are submitted back to back without waiting,
// so a reordering would make a later one fail its state check.
func TestConcurrentVMs(t *testing.T) {
	e := newEnv(t, envOpts{})
	const nVM, clients = 200, 32
	ids := make([]string, nVM)
	var wg sync.WaitGroup
	errs := make(chan error, nVM)
	work := make(chan int)
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				vm, err := e.m.CreateVM(e.ctx, spec("c-"+itoa(i)), "req-"+itoa(i))
				if err != nil {
					errs <- err
					continue
				}
				ids[i] = vm.ID
				var tasks []Task
				for _, f := range []func() (Task, error){
					func() (Task, error) { return e.m.Start(e.ctx, vm.ID, false) },
					func() (Task, error) { return e.m.Pause(e.ctx, vm.ID) },
					func() (Task, error) { return e.m.Unpause(e.ctx, vm.ID) },
					func() (Task, error) { return e.m.Pause(e.ctx, vm.ID) },
				} {
					tk, err := f()
					if err != nil {
						errs <- fmt.Errorf("vm %d: %w", i, err)
						break
					}
					tasks = append(tasks, tk)
				}
				for _, tk := range tasks {
					ctx, cancel := context.WithTimeout(e.ctx, time.Minute)
					done, err := e.m.WaitTask(ctx, tk.ID)
					cancel()
					if err != nil || done.State != TaskSucceeded {
						errs <- fmt.Errorf("vm %d task %s: %v %v", i, tk.Op, done.Err, err)
					}
				}
			}
		}()
	}
	for i := 0; i < nVM; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	doms := e.guestDomains()
	if len(doms) != nVM {
		t.Fatalf("%d domains for %d VMs", len(doms), nVM)
	}
	byHandle := map[xenctrl.Handle]xenctrl.DomainInfo{}
	for _, d := range doms {
		if _, dup := byHandle[d.Handle]; dup {
			t.Fatalf("two domains with handle %s", handleUUID(d.Handle))
		}
		byHandle[d.Handle] = d
	}
	for i, id := range ids {
		vm := e.vm(id)
		d, ok := byHandle[uuidHandle(id)]
		if !ok || uint32(d.Domid) != vm.Domid || vm.Power != Paused || !d.Paused {
			t.Fatalf("vm %d: %v domid %d, domain %+v found %v", i, vm.Power, vm.Domid, d, ok)
		}
		tasks, _ := e.m.ListTasks(e.ctx, id)
		var order []string
		for _, tk := range tasks {
			order = append(order, tk.Op)
		}
		if fmt.Sprint(order) != "[start pause unpause pause]" {
			t.Fatalf("vm %d task order %v", i, order)
		}
	}
	// Tear everything down concurrently.
	var tasks []Task
	for _, id := range ids {
		tk, err := e.m.Destroy(e.ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		tasks = append(tasks, tk)
	}
	for _, tk := range tasks {
		e.run(tk, nil)
	}
	if n := len(e.guestDomains()); n != 0 {
		t.Fatalf("%d domains left", n)
	}
}
