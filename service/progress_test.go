package service

import (
	"context"
	"testing"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// gatedBuilder builds like domain.EmptyBuilder once the test opens the gate.
type gatedBuilder struct {
	gate  chan struct{}
	empty domain.EmptyBuilder
}

func (b gatedBuilder) Build(ctx context.Context, d xenctrl.Domid, s domain.Spec) (domain.BuildResult, error) {
	select {
	case <-b.gate:
	case <-ctx.Done():
		return domain.BuildResult{}, ctx.Err()
	}
	return b.empty.Build(ctx, d, s)
}

// The real core's task progress through the API: a watcher that asks for it
// gets task_progress events of a running start (while its build waits), each
// with the revision of the persisted event before it, then the persisted
// final state.
func TestRealWatchTaskProgress(t *testing.T) {
	gate := make(chan struct{})
	m, _ := realManagerWith(t, func(hv xenctrl.Hypervisor) domain.Builder {
		return gatedBuilder{gate: gate, empty: domain.EmptyBuilder{Hypervisor: hv}}
	})
	c := serve(t, m, Options{})
	ctx := ctxT(t)
	if _, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: goodSpec("p", 128<<20)}); err != nil {
		t.Fatal(err)
	}
	l, err := c.vm.ListVMs(ctx, &pb.ListVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	s, err := c.event.Watch(ctx, &pb.WatchRequest{AfterRevision: l.GetRevision(), TaskProgress: true})
	if err != nil {
		t.Fatal(err)
	}
	start, err := c.vm.StartVM(ctx, &pb.StartVMRequest{Id: "p"})
	if err != nil {
		t.Fatal(err)
	}
	id := start.GetTask().GetId()
	last := l.GetRevision() // the last persisted revision received
	var progress []float64
	// next returns the next event, checking the revision rules.
	next := func() *pb.Event {
		t.Helper()
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		ev := r.GetEvent()
		if p := ev.GetTaskProgress(); p != nil {
			if ev.GetRevision() != last {
				t.Fatalf("progress %v has revision %d, want %d (the persisted event before it)", p, ev.GetRevision(), last)
			}
			if p.GetTaskId() == id {
				progress = append(progress, p.GetProgress())
			}
			return ev
		}
		if ev.GetRevision() != last+1 {
			t.Fatalf("persisted event %d after %d", ev.GetRevision(), last)
		}
		last = ev.GetRevision()
		return ev
	}
	for len(progress) == 0 {
		next() // the build waits for the gate: progress must come first
	}
	if progress[0] != 0.3 {
		t.Errorf("first progress %v, want 0.3 (domain created)", progress[0])
	}
	close(gate)
	for {
		if tk := next().GetTaskChanged(); tk.GetId() == id && tk.GetState() == pb.TaskState_TASK_STATE_SUCCEEDED {
			break
		}
	}
	for i := 1; i < len(progress); i++ {
		if progress[i] <= progress[i-1] || progress[i] >= 1 {
			t.Errorf("progress %v: not rising below 1", progress)
		}
	}
}
