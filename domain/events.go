package domain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/store"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// scanInterval bounds how long a missed @releaseDomain can go unnoticed.
const scanInterval = 5 * time.Second

// minScanGap is the shortest time between two event-triggered scans of all
// domains (each costs O(domains + VMs)).
const minScanGap = 50 * time.Millisecond

// The gap grows with the cost of a scan (scanGapFactor times the last
// scan's duration, at most maxScanGap), so that with thousands of domains,
// where every destroy fires @releaseDomain, scans take a bounded share of
// the time instead of competing with the operations that caused them.
const (
	scanGapFactor = 20
	maxScanGap    = time.Second
)

func scanGap(lastCost time.Duration) time.Duration {
	return min(max(minScanGap, scanGapFactor*lastCost), maxScanGap)
}

// WatchOptions choose what Watch sends besides the persisted events.
type WatchOptions struct {
	// TaskProgress: also send the live progress of running tasks
	// (EventTaskProgress).
	TaskProgress bool
}

// Watch delivers every event with Revision > after, in order, then live
// ones as they are committed, until ctx ends (nil is returned) or send
// fails (its error is returned). If events after `after` were compacted
// away it first sends Event{Kind: EventResync, Revision: head} and goes on
// from head. after > head is CodeInvalidArgument (field "after_revision").
//
// With opts.TaskProgress it also sends, between the persisted events, the
// progress of running tasks: first the latest report of every task running
// when Watch starts, then new reports as they are made, each after the
// persisted events that preceded it and with the revision of the last one
// sent. Only the latest report per task waits for a slow watcher; reports
// are never replayed on a later Watch.
func (m *Manager) Watch(ctx context.Context, after uint64, opts WatchOptions, send func(Event) error) error {
	head := m.st.Head()
	if after > head {
		return InvalidField("after_revision", "revision %d is beyond the newest revision %d", after, head)
	}
	var box *progressBox
	var progressReady <-chan struct{} // nil (never ready) without progress
	if opts.TaskProgress {
		box = m.hub.subscribe()
		defer m.hub.unsubscribe(box)
		progressReady = box.ready
	}
	w := &watcher{m: m, last: after, send: send}
	for {
		changed := m.st.Changed()
		if err := w.sendPersisted(0); err != nil {
			return err
		}
		if box != nil {
			for _, r := range m.hub.take(box) {
				if err := w.sendProgress(r); err != nil {
					return err
				}
			}
		}
		select {
		case <-changed:
		case <-progressReady:
		case <-ctx.Done():
			return nil
		case <-m.baseCtx.Done():
			return errClosing()
		}
	}
}

// watcher is one Watch call's position in the event log.
type watcher struct {
	m    *Manager
	last uint64 // revision of the last persisted event sent (or resynced to)
	send func(Event) error
}

// sendPersisted sends the persisted events after w.last up to upTo (0: up
// to the head), or a resync if they were compacted away.
func (w *watcher) sendPersisted(upTo uint64) error {
	for {
		err := w.m.st.Events(w.last, upTo, func(rev uint64, v []byte) error {
			var er eventRecord
			if err := json.Unmarshal(v, &er); err != nil {
				return fmt.Errorf("decode event %d: %w", rev, err)
			}
			ev := Event{Revision: rev, Kind: er.Kind, VMID: er.VMID, VM: er.VM, Task: er.Task, Time: er.Time}
			if err := w.send(ev); err != nil {
				return sendError{err}
			}
			w.last = rev
			return nil
		})
		var se sendError
		switch {
		case errors.As(err, &se):
			return se.err
		case errors.Is(err, store.ErrCompacted):
			head := w.m.st.Head()
			if err := w.send(Event{Kind: EventResync, Revision: head, Time: time.Now().UTC()}); err != nil {
				return err
			}
			w.last = head
			continue
		case err != nil:
			return &Error{Code: CodeInternal, Message: fmt.Sprintf("read events after %d: %v", w.last, err)}
		}
		return nil
	}
}

// sendProgress sends a progress report after the persisted events that
// preceded it (reports are taken in publication order, so catching up only
// to the report's revision sends nothing that came after it).
func (w *watcher) sendProgress(r progressReport) error {
	if r.rev > w.last {
		if err := w.sendPersisted(r.rev); err != nil {
			return err
		}
	}
	p := r.TaskProgress
	return w.send(Event{Revision: w.last, Kind: EventTaskProgress, VMID: p.VMID, Progress: &p, Time: r.time})
}

type sendError struct{ err error }

func (e sendError) Error() string { return e.err.Error() }

// watchDomains follows @releaseDomain (fired by xenstored when a domain
// shuts down, dies or goes away) and rescans every scanInterval in case a
// watch event was lost. It reports on ready whether the watch was set up.
func (m *Manager) watchDomains(ctx context.Context, ready chan<- error) {
	defer close(m.bgDone)
	w, err := m.xs.Watch(ctx, "@releaseDomain", "xenopsd-ng/release")
	ready <- err
	var events <-chan struct{}
	if err == nil {
		defer w.Close()
		ch := make(chan struct{}, 1)
		events = ch
		go func() {
			for range w.Events() {
				select {
				case ch <- struct{}{}:
				default:
				}
			}
			close(ch)
		}()
	}
	t := time.NewTicker(scanInterval)
	defer t.Stop()
	var lastScan time.Time
	var lastCost time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-events:
			if !ok {
				events = nil
				m.log.Warn("@releaseDomain watch ended; polling only")
				continue
			}
			m.notifyException()
			// Coalesce bursts: one full scan per scanGap at most.
			if wait := scanGap(lastCost) - time.Since(lastScan); wait > 0 {
				select {
				case <-time.After(wait):
				case <-ctx.Done():
					return
				}
			}
			lastScan = time.Now()
			m.scanDomains(ctx)
			lastCost = time.Since(lastScan)
		case <-t.C:
			m.notifyException()
			m.scanDomains(ctx)
			m.pruneTasks(ctx, time.Now().Add(-TaskRetention))
		}
	}
}

// scanDomains queues a guest check on every VM whose domain shut down,
// is dying or is gone.
func (m *Manager) scanDomains(ctx context.Context) {
	doms, err := m.hv.ListDomains(ctx)
	if err != nil {
		if ctx.Err() == nil {
			m.log.Warn("list domains", "err", err)
		}
		return
	}
	// Domids are dense and bounded: index by domid (no map to build).
	byID := make([]int32, xenctrl.DomidFirstReserved)
	for i := range doms {
		if doms[i].Domid < xenctrl.DomidFirstReserved {
			byID[doms[i].Domid] = int32(i) + 1
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closing {
		return
	}
	for _, e := range m.vms {
		r := e.rec
		// A running lifecycle operation deals with its own domain; anything
		// it leaves is caught by the next scan.
		busy := e.running != nil && e.running.task != nil
		if busy || r.Building || r.Preserved || e.checkQueue || e.deleting || (r.VM.Power != Running && r.VM.Power != Paused) {
			continue
		}
		if r.VM.Domid < uint32(xenctrl.DomidFirstReserved) {
			if i := byID[r.VM.Domid]; i > 0 {
				d := &doms[i-1]
				if d.Handle == e.handle && !d.Shutdown && !d.Dying {
					continue
				}
			}
		}
		e.checkQueue = true
		m.enqueueLocked(e, &op{name: "guest-event", run: m.guestCheck})
	}
}

// TaskRetention is how long finished tasks are kept (then deleted from
// memory and the store, without an event).
const TaskRetention = 24 * time.Hour

// pruneTasks deletes tasks that finished before cutoff.
func (m *Manager) pruneTasks(ctx context.Context, cutoff time.Time) {
	m.mu.Lock()
	var ids []string
	for id, te := range m.tasks {
		if te.final && te.t.State.Done() && te.t.UpdatedAt.Before(cutoff) {
			ids = append(ids, id)
		}
	}
	m.mu.Unlock()
	for len(ids) > 0 {
		n := min(len(ids), 1024)
		var c store.Change
		for _, id := range ids[:n] {
			c.Ops = append(c.Ops, store.Op{Kind: store.KindTask, ID: id, Delete: true})
		}
		batch := ids[:n]
		ids = ids[n:]
		err := m.st.Commit(ctx, c, func(uint64) {
			m.mu.Lock()
			for _, id := range batch {
				delete(m.tasks, id)
			}
			m.mu.Unlock()
		})
		if err != nil {
			m.log.Warn("prune finished tasks", "err", err)
			return
		}
	}
}
