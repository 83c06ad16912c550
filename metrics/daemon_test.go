package metrics

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestDaemon: the xenstore counters and the commit histogram export what
// was counted, and pass the client's linter.
func TestDaemon(t *testing.T) {
	d := NewDaemon()
	d.XenstoreRoundTrips().Add(2)
	d.XenstoreRequests().Add(5)
	d.ObserveCommit(3*time.Millisecond, nil)
	d.ObserveCommit(time.Millisecond, errors.New("disk full"))
	want := `
# HELP xenopsd_xenstore_round_trips_total round trips to xenstored: a request and its reply, or a batch of requests sent in one write and their replies
# TYPE xenopsd_xenstore_round_trips_total counter
xenopsd_xenstore_round_trips_total 2
# HELP xenopsd_xenstore_requests_total requests sent to xenstored (a batch's count one each)
# TYPE xenopsd_xenstore_requests_total counter
xenopsd_xenstore_requests_total 5
`
	if err := testutil.CollectAndCompare(d, strings.NewReader(want), "xenopsd_xenstore_round_trips_total", "xenopsd_xenstore_requests_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(d, "xenopsd_store_commit_duration_seconds"); n != 2 {
		t.Errorf("commit histograms: %d series, want 2 (succeeded, failed)", n)
	}
	if problems, err := testutil.CollectAndLint(d); err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

type queues struct{ vms, ops int }

func (q queues) QueueDepth() (int, int) { return q.vms, q.ops }

// TestQueueDepth: the gauges are what the manager reports at the scrape.
func TestQueueDepth(t *testing.T) {
	c := NewQueueDepth(queues{vms: 2, ops: 5})
	want := `
# HELP xenopsd_queued_operations operations queued on every VM (running ones not counted)
# TYPE xenopsd_queued_operations gauge
xenopsd_queued_operations 5
# HELP xenopsd_queued_vms VMs with operations queued: waiting for a worker or behind the operation running on the VM
# TYPE xenopsd_queued_vms gauge
xenopsd_queued_vms 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}
