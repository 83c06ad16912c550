package e2e

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// TestConcurrency: 32 clients (each its own gRPC connection) create 200 VMs
// and queue start, pause, unpause, pause on each without waiting in between.
// Afterwards: every VM is paused in exactly one domain of its own (no lost,
// no duplicate domain on the sim host), and the event log shows each VM's
// operations ran one at a time in the order they were submitted.
func TestConcurrency(t *testing.T) {
	const (
		nVMs     = 200
		nClients = 32
		mem      = 32 << 20
	)
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	ctx := testCtx(t, 5*time.Minute)
	main := newAPI(d.Conn())
	l0, err := main.vm.ListVMs(ctx, &apiv1.ListVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rev0 := l0.GetRevision()

	ops := []string{"start", "pause", "unpause", "pause"}
	submitted := make([][]string, nVMs) // task ids per VM, in submission order
	vmIDs := make([]string, nVMs)
	work := make(chan int)
	errs := make(chan error, nVMs)
	var wg sync.WaitGroup
	for range nClients {
		c := newAPI(d.Conn())
		wg.Go(func() {
			for i := range work {
				if err := runOne(ctx, c, i, ops, &vmIDs[i], &submitted[i]); err != nil {
					errs <- err
				}
			}
		})
	}
	for i := range nVMs {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}

	// State: every VM paused, each in its own domain.
	list, err := main.vm.ListVMs(ctx, &apiv1.ListVMsRequest{PageSize: nVMs}) // one page: 200 small VMs
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetVms()) != nVMs {
		t.Fatalf("%d VMs listed, want %d", len(list.GetVms()), nVMs)
	}
	doms := guestDomains(t, simc)
	if len(doms) != nVMs {
		t.Errorf("%d guest domains on the host, want %d", len(doms), nVMs)
	}
	seenDomid := map[uint32]string{}
	for _, vm := range list.GetVms() {
		if vm.GetPowerState() != apiv1.PowerState_POWER_STATE_PAUSED {
			t.Errorf("%s, want paused (the last operation queued)", describeVM(vm))
		}
		if other, dup := seenDomid[vm.GetDomid()]; dup {
			t.Errorf("domid %d given to %s and %s", vm.GetDomid(), other, vm.GetId())
		}
		seenDomid[vm.GetDomid()] = vm.GetId()
		di, ok := doms[handleOf(t, vm.GetId())]
		if !ok || uint32(di.Domid) != vm.GetDomid() || !di.Paused {
			t.Errorf("%s: host domain %d present=%t paused=%t", describeVM(vm), di.Domid, ok, di.Paused)
		}
	}

	// Order: replay the event log since rev0.
	checkOrder(t, main, rev0, list.GetRevision(), vmIDs, submitted)

	// Tear down concurrently; nothing may be left on the host.
	work = make(chan int)
	errs = make(chan error, nVMs)
	for range nClients {
		c := newAPI(d.Conn())
		wg.Go(func() {
			for i := range work {
				r, err := c.vm.DestroyVM(ctx, &apiv1.DestroyVMRequest{Id: vmIDs[i], Wait: true})
				if err == nil && r.GetTask().GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
					err = fmt.Errorf("task %v: %v", r.GetTask().GetState(), r.GetTask().GetError())
				}
				if err == nil {
					_, err = c.vm.DeleteVM(ctx, &apiv1.DeleteVMRequest{Id: vmIDs[i]})
				}
				if err != nil {
					errs <- fmt.Errorf("destroy/delete %s: %w", vmIDs[i], err)
				}
			}
		})
	}
	for i := range nVMs {
		work <- i
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	eventually(t, 30*time.Second, func() string {
		if n := len(guestDomains(t, simc)); n != 0 {
			return fmt.Sprintf("%d domains left on the host", n)
		}
		return ""
	})
}

// runOne creates VM i and queues ops on it back to back, then waits for all.
func runOne(ctx context.Context, c *api, i int, ops []string, id *string, tasks *[]string) error {
	name := fmt.Sprintf("cc%03d", i)
	r, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec(name, 32<<20), RequestId: "create-" + name})
	if err != nil {
		return fmt.Errorf("create %s: %w", name, err)
	}
	*id = r.GetVm().GetId()
	for _, op := range ops {
		var tk *apiv1.Task
		switch op {
		case "start":
			var x *apiv1.StartVMResponse
			x, err = c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: *id})
			tk = x.GetTask()
		case "pause":
			var x *apiv1.PauseVMResponse
			x, err = c.vm.PauseVM(ctx, &apiv1.PauseVMRequest{Id: *id})
			tk = x.GetTask()
		case "unpause":
			var x *apiv1.UnpauseVMResponse
			x, err = c.vm.UnpauseVM(ctx, &apiv1.UnpauseVMRequest{Id: *id})
			tk = x.GetTask()
		}
		if err != nil {
			return fmt.Errorf("%s %s: %w", op, name, err)
		}
		if tk.GetOp() != op || tk.GetVmId() != *id {
			return fmt.Errorf("%s %s: got task %v", op, name, tk)
		}
		*tasks = append(*tasks, tk.GetId())
	}
	for k, tid := range *tasks {
		w, err := c.task.WaitTask(ctx, &apiv1.WaitTaskRequest{Id: tid})
		if err != nil {
			return fmt.Errorf("wait %s of %s: %w", ops[k], name, err)
		}
		if w.GetTask().GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
			return fmt.Errorf("%s of %s: %v %v", ops[k], name, w.GetTask().GetState(), w.GetTask().GetError())
		}
	}
	return nil
}

// checkOrder reads every event after rev0 up to head and checks, per VM,
// that each task started only after the previous one had finished and that
// they finished in submission order, and that the VM's power states went
// halted → running → paused → running → paused.
func checkOrder(t *testing.T, c *api, rev0, head uint64, vmIDs []string, submitted [][]string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := c.event.Watch(ctx, &apiv1.WatchRequest{AfterRevision: rev0})
	if err != nil {
		t.Fatal(err)
	}
	type vmLog struct {
		taskSeq []string // "start:<id>", "end:<id>" in event order
		powers  []apiv1.PowerState
	}
	logs := map[string]*vmLog{}
	get := func(id string) *vmLog {
		if logs[id] == nil {
			logs[id] = &vmLog{}
		}
		return logs[id]
	}
	startedSeen, endedSeen := map[string]bool{}, map[string]bool{}
	last := rev0
	for last < head {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("watch after %d: %v (at revision %d of %d)", rev0, err, last, head)
		}
		if r.GetResync() != nil {
			t.Fatalf("resync while replaying %d..%d: the daemon compacted recent events", rev0, head)
		}
		ev := r.GetEvent()
		if ev.GetRevision() != last+1 {
			t.Fatalf("event revision %d after %d: gap or duplicate", ev.GetRevision(), last)
		}
		last = ev.GetRevision()
		switch ch := ev.GetChange().(type) {
		case *apiv1.Event_TaskChanged:
			tk := ch.TaskChanged
			l := get(tk.GetVmId())
			if tk.GetState() != apiv1.TaskState_TASK_STATE_PENDING && !startedSeen[tk.GetId()] {
				startedSeen[tk.GetId()] = true
				l.taskSeq = append(l.taskSeq, "start:"+tk.GetId())
			}
			if isDone(tk.GetState()) && !endedSeen[tk.GetId()] {
				endedSeen[tk.GetId()] = true
				l.taskSeq = append(l.taskSeq, "end:"+tk.GetId())
			}
		case *apiv1.Event_VmChanged:
			l := get(ch.VmChanged.GetId())
			p := ch.VmChanged.GetPowerState()
			if n := len(l.powers); n == 0 || l.powers[n-1] != p {
				l.powers = append(l.powers, p)
			}
		}
	}
	wantPowers := []apiv1.PowerState{
		apiv1.PowerState_POWER_STATE_HALTED, apiv1.PowerState_POWER_STATE_RUNNING, apiv1.PowerState_POWER_STATE_PAUSED,
		apiv1.PowerState_POWER_STATE_RUNNING, apiv1.PowerState_POWER_STATE_PAUSED,
	}
	for i, id := range vmIDs {
		l := get(id)
		var want []string
		for _, tid := range submitted[i] {
			want = append(want, "start:"+tid, "end:"+tid)
		}
		if !slices.Equal(l.taskSeq, want) {
			t.Errorf("VM %s: task events %v, want %v (one at a time, in submission order)", id, l.taskSeq, want)
		}
		if !slices.Equal(l.powers, wantPowers) {
			t.Errorf("VM %s: power states %v, want %v", id, l.powers, wantPowers)
		}
	}
}

func isDone(s apiv1.TaskState) bool {
	switch s {
	case apiv1.TaskState_TASK_STATE_SUCCEEDED, apiv1.TaskState_TASK_STATE_FAILED,
		apiv1.TaskState_TASK_STATE_CANCELLED, apiv1.TaskState_TASK_STATE_INTERRUPTED:
		return true
	}
	return false
}
