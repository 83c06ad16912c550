package domain

import (
	"sync"
	"testing"
	"time"
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
