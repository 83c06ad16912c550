package domain

import (
	"sync"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// TestOnOperation: Config.OnOperation hears of every operation that ran,
// by name, with its error (tasks and the daemon's own
// reactions to guests alike).
func TestOnOperation(t *testing.T) {
	type seen struct {
		op     string
		failed bool
	}
	var mu sync.Mutex
	var got []seen
	e := newEnv(t, envOpts{onOp: func(op string, err error, took time.Duration) {
		if took < 0 {
			t.Errorf("%s took %v", op, took)
		}
		if op == "guest-event" {
			return // the reaction to a domain exception may run too
		}
		mu.Lock()
		got = append(got, seen{op, err != nil})
		mu.Unlock()
	}})
	vm := e.create("ops")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	e.run(e.m.Pause(e.ctx, vm.ID))
	e.run(e.m.Destroy(e.ctx, vm.ID))
	mu.Lock()
	defer mu.Unlock()
	want := []seen{{"start", false}, {"pause", false}, {"destroy", false}}
	if len(got) != len(want) {
		t.Fatalf("observed %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("observed %v, want %v", got, want)
		}
	}
}

// TestQueueDepth: with the only worker held by a shutdown that waits for
// its guest, a destroy of that VM and a start of another queue behind it;
// once they ran, nothing is queued.
func TestQueueDepth(t *testing.T) {
	e := newEnv(t, envOpts{workers: 1})
	busy, other := e.create("busy"), e.create("other")
	e.run(e.m.Start(e.ctx, busy.ID, false))
	e.hv.SetGuestBehaviour(e.ctx, xenctrl.Domid(e.vm(busy.ID).Domid), simIgnore())
	sd, err := e.m.Shutdown(e.ctx, busy.ID, ShutdownOptions{Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e.eventually("shutdown task running", func() bool {
		tk, _ := e.m.GetTask(e.ctx, sd.ID)
		return tk.State == TaskRunning
	})
	check := func(wantVMs, wantOps int) {
		t.Helper()
		if vms, ops := e.m.QueueDepth(); vms != wantVMs || ops != wantOps {
			t.Errorf("QueueDepth = %d VMs, %d operations; want %d, %d", vms, ops, wantVMs, wantOps)
		}
	}
	check(0, 0)
	ds, err := e.m.Destroy(e.ctx, busy.ID)
	if err != nil {
		t.Fatal(err)
	}
	check(1, 1)
	st, err := e.m.Start(e.ctx, other.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	check(2, 2)
	if _, err := e.m.CancelTask(e.ctx, sd.ID); err != nil {
		t.Fatal(err)
	}
	e.wait(ds)
	e.wait(st)
	check(0, 0)
}
