package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

// TestEventsResume: a watcher reads some events, disconnects, changes happen,
// it resumes from its last revision; then the daemon restarts (SIGTERM),
// more changes happen, it resumes again. In the end it has seen every
// revision from the start to the head exactly once, and each event equals
// the one a fresh watcher replaying the whole range receives.
func TestEventsResume(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	ctx := testCtx(t, 3*time.Minute)
	c := newAPI(d.Conn())
	l, err := c.vm.ListVMs(ctx, &apiv1.ListVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rev0 := l.GetRevision()

	changes := func(c *api, prefix string) {
		t.Helper()
		for i := range 3 {
			name := fmt.Sprintf("%s%d", prefix, i)
			if _, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec(name, 32<<20)}); err != nil {
				t.Fatal(err)
			}
			r, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: name, Wait: true})
			mustSucceed(t, "start "+name, r.GetTask(), err)
		}
		p, err := c.vm.PauseVM(ctx, &apiv1.PauseVMRequest{Id: prefix + "0", Wait: true})
		mustSucceed(t, "pause", p.GetTask(), err)
		ds, err := c.vm.DestroyVM(ctx, &apiv1.DestroyVMRequest{Id: prefix + "1", Wait: true})
		mustSucceed(t, "destroy", ds.GetTask(), err)
		if _, err := c.vm.DeleteVM(ctx, &apiv1.DeleteVMRequest{Id: prefix + "1"}); err != nil {
			t.Fatal(err)
		}
	}

	var seen []*apiv1.Event
	last := rev0
	// read takes events from a new stream after `last` until head, or n
	// events if n > 0, then disconnects.
	read := func(c *api, head uint64, n int) {
		t.Helper()
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel() // disconnect
		s, err := c.event.Watch(sctx, &apiv1.WatchRequest{AfterRevision: last})
		if err != nil {
			t.Fatal(err)
		}
		for got := 0; (n > 0 && got < n) || (n == 0 && last < head); got++ {
			r, err := s.Recv()
			if err != nil {
				t.Fatalf("watch after %d: %v", last, err)
			}
			if r.GetResync() != nil {
				t.Fatalf("unexpected resync after revision %d", last)
			}
			seen = append(seen, r.GetEvent())
			last = r.GetEvent().GetRevision()
		}
	}

	changes(c, "a")
	read(c, 0, 5) // part of them, then disconnect
	changes(c, "b")
	read(c, 0, 7)

	d.Stop()
	d.Start()
	c = newAPI(d.Conn())
	changes(c, "c")
	l, err = c.vm.ListVMs(ctx, &apiv1.ListVMsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	head := l.GetRevision()
	read(c, head, 0)

	// Exactly once, no gaps.
	for i, ev := range seen {
		if want := rev0 + uint64(i) + 1; ev.GetRevision() != want {
			t.Fatalf("event %d has revision %d, want %d (gap or duplicate)", i, ev.GetRevision(), want)
		}
	}
	if uint64(len(seen)) != head-rev0 {
		t.Fatalf("saw %d events, want %d (revisions %d..%d)", len(seen), head-rev0, rev0+1, head)
	}
	// Identical to a fresh replay of the whole range.
	replay := func() []*apiv1.Event {
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		s, err := c.event.Watch(sctx, &apiv1.WatchRequest{AfterRevision: rev0})
		if err != nil {
			t.Fatal(err)
		}
		var out []*apiv1.Event
		for uint64(len(out)) < head-rev0 {
			r, err := s.Recv()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, r.GetEvent())
		}
		return out
	}()
	for i := range seen {
		if !proto.Equal(seen[i], replay[i]) {
			t.Errorf("event at revision %d differs between the resumed watcher and a replay:\n%v\n%v",
				seen[i].GetRevision(), seen[i], replay[i])
		}
	}
	// And the changes made are all there: 9 creations, 3 deletions.
	created, deleted := map[string]bool{}, 0
	for _, ev := range seen {
		if vm := ev.GetVmChanged(); vm != nil {
			created[vm.GetSpec().GetName()] = true
		}
		if ev.GetVmDeleted() != nil {
			deleted++
		}
	}
	if len(created) != 9 || deleted != 3 {
		t.Errorf("events name %d VMs and %d deletions, want 9 and 3", len(created), deleted)
	}

	// A live watcher sees a change made after it connected.
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	s, err := c.event.Watch(sctx, &apiv1.WatchRequest{AfterRevision: head})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec("live", 32<<20)}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.GetEvent().GetRevision() != head+1 || r.GetEvent().GetVmChanged().GetSpec().GetName() != "live" {
		t.Errorf("live event: %v, want revision %d creating live", r, head+1)
	}
}
