package domain

import (
	"sort"
	"sync"
	"time"
)

// progressHub carries task progress to event watchers live, without
// persisting it (a progress report is not worth an fsync'd batch, and a
// restart turns a running task into TaskInterrupted anyway).
//
// Every watcher has a mailbox holding, per task, the latest report it has
// not taken yet: a new report replaces the one waiting, so a slow watcher
// costs at most one entry per running task and never blocks the task that
// reports. A report records the revision of the last persisted event when it
// was made; the watcher sends it only after every persisted event up to that
// revision, so progress never overtakes the state change it follows.
//
// Ordering rules (the Manager keeps them): reports are published with m.mu
// held (so their revisions never decrease in publication order), and a task's
// waiting reports are dropped (forget) before any snapshot of that task is
// committed. A persisted task event therefore never follows a report made
// before it, and no report of a task follows its final state: a finished
// task publishes nothing more.
type progressHub struct {
	mu      sync.Mutex
	seq     uint64                    // publication order
	current map[string]progressReport // task id -> latest report of a running task
	boxes   map[*progressBox]struct{}
}

// progressReport is one report as the hub keeps it.
type progressReport struct {
	TaskProgress
	rev  uint64 // last persisted revision when reported
	seq  uint64
	time time.Time
}

// progressBox is one watcher's mailbox.
type progressBox struct {
	ready   chan struct{}             // holds a token while pending is not empty
	pending map[string]progressReport // task id -> latest report not taken; guarded by progressHub.mu
}

func newProgressHub() *progressHub {
	return &progressHub{current: map[string]progressReport{}, boxes: map[*progressBox]struct{}{}}
}

// publish records p, reported when rev was the last persisted revision, and
// offers it to every watcher. It never blocks on a watcher.
func (h *progressHub) publish(p TaskProgress, rev uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	r := progressReport{TaskProgress: p, rev: rev, seq: h.seq, time: time.Now().UTC()}
	h.current[p.TaskID] = r
	for b := range h.boxes {
		b.put(r)
	}
}

// forget drops the task's latest report and every report of it not yet taken
// by a watcher: called before a snapshot of the task is persisted, which
// supersedes them.
func (h *progressHub) forget(taskID string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.current, taskID)
	for b := range h.boxes {
		delete(b.pending, taskID)
	}
}

// subscribe returns a new mailbox holding the latest report of every
// running task that has one, so a new watcher learns where they stand.
func (h *progressHub) subscribe() *progressBox {
	h.mu.Lock()
	defer h.mu.Unlock()
	b := &progressBox{ready: make(chan struct{}, 1), pending: map[string]progressReport{}}
	for _, r := range h.current {
		b.put(r)
	}
	h.boxes[b] = struct{}{}
	return b
}

func (h *progressHub) unsubscribe(b *progressBox) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.boxes, b)
}

// take empties b and returns its reports in publication order.
func (h *progressHub) take(b *progressBox) []progressReport {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(b.pending) == 0 {
		return nil
	}
	out := make([]progressReport, 0, len(b.pending))
	for id, r := range b.pending {
		out = append(out, r)
		delete(b.pending, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].seq < out[j].seq })
	return out
}

// put stores r as its task's latest report and signals the watcher.
// progressHub.mu held.
func (b *progressBox) put(r progressReport) {
	b.pending[r.TaskID] = r
	select {
	case b.ready <- struct{}{}:
	default:
	}
}
