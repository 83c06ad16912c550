package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// SchemaVersion is the key schema this binary reads and writes.
const SchemaVersion = 2

// migrations[v] upgrades a database from schema v to v+1, adding to the
// batch that also records the new version (see Versioning in the package
// documentation).
var migrations = map[int]func(b *pebble.Batch) error{
	// 1 -> 2: VM records carry their domain claims. No key changes and no
	// rewrite: package domain reads a version-1 record (no claims) as
	// claiming the domain its domid names. The bump keeps binaries that
	// know nothing of claims (and would not keep them true) away.
	1: func(*pebble.Batch) error { return nil },
}

// DefaultRetainEvents is how many events the log keeps by default.
const DefaultRetainEvents = 100000

// DefaultRetainEventBytes is how many bytes of events the log keeps by
// default. A typical event (a VM record) is about a kilobyte, so this rarely
// cuts below DefaultRetainEvents; but an event can be as large as the largest
// VM (about 1.4 MiB), and without a byte bound 100,000 of those would be
// 140 GB of log.
const DefaultRetainEventBytes = 128 << 20

// Kind is a record keyspace.
type Kind string

// Record kinds (see the package documentation for their keys and values).
const (
	KindVM   Kind = "vm"
	KindTask Kind = "task"
	KindReq  Kind = "req"
)

func (k Kind) valid() bool { return k == KindVM || k == KindTask || k == KindReq }

const (
	keySchema   = "meta/schema"
	keyFloor    = "meta/floor"
	eventPrefix = "v1/event/"
	maxIDLen    = 512
	maxGroup    = 256 // changes merged into one batch at most
)

var (
	// ErrNotFound: no record under that kind and id.
	ErrNotFound = errors.New("store: record not found")
	// ErrCompacted: the events asked for were deleted by retention.
	ErrCompacted = errors.New("store: events compacted away")
	// ErrClosed: the store is closed.
	ErrClosed = errors.New("store: closed")
)

// Options tune Open.
type Options struct {
	Logger *slog.Logger
	// RetainEvents is how many recent events to keep (<= 0: DefaultRetainEvents).
	RetainEvents int
	// RetainEventBytes is how many bytes of recent events (their encoded
	// values) to keep (<= 0: DefaultRetainEventBytes). The newest event is
	// kept whatever its size.
	RetainEventBytes int64
	// OnCommit, if set, hears of every Commit when it returns: how long it
	// took (queueing, the synced batch and apply) and its error.
	OnCommit func(took time.Duration, err error)
}

// Op writes (Value set) or deletes (Delete) one record.
type Op struct {
	Kind   Kind
	ID     string
	Value  []byte
	Delete bool
}

// Change is one atomic state change: records and the events describing it.
type Change struct {
	Ops    []Op
	Events [][]byte
}

type commitReq struct {
	change Change
	apply  func(firstRev uint64)
	done   chan error
}

// Store is the Pebble database. Safe for concurrent use.
type Store struct {
	db          *pebble.DB
	log         *slog.Logger
	retain      uint64 // events
	retainBytes uint64
	onCommit    func(took time.Duration, err error) // Options.OnCommit

	head     atomic.Uint64 // last committed event revision
	floor    atomic.Uint64 // highest compacted revision
	logBytes atomic.Uint64 // bytes of the event values after floor

	reqs      chan *commitReq
	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once

	notifyMu sync.Mutex
	notify   chan struct{} // closed and replaced after every commit
}

// Open opens (creating if needed) the database in dir with default options.
func Open(dir string, logger *slog.Logger) (*Store, error) {
	return OpenWithOptions(dir, Options{Logger: logger})
}

// OpenWithOptions opens (creating if needed) the database in dir.
func OpenWithOptions(dir string, opts Options) (*Store, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	retain := opts.RetainEvents
	if retain <= 0 {
		retain = DefaultRetainEvents
	}
	retainBytes := opts.RetainEventBytes
	if retainBytes <= 0 {
		retainBytes = DefaultRetainEventBytes
	}
	db, err := pebble.Open(dir, &pebble.Options{
		Logger:             pebbleLogger{log},
		FormatMajorVersion: pebble.FormatNewest,
		// Pebble's default. A memtable's arena stays resident once written
		// (and two exist during a flush): at 32 MiB the daemon held 111 MB
		// with 10,000 running VMs, at 4 MiB 82 MB, and the larger one was
		// not faster (tests/bench, 1,000 cycles with 16 clients, twice
		// each: 298 and 299 cycles/s at 4 MiB, 325 and 265 at 32 MiB).
		MemTableSize: 4 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("open state database %s: %w", dir, err)
	}
	s := &Store{
		db: db, log: log, retain: uint64(retain), retainBytes: uint64(retainBytes), onCommit: opts.OnCommit,
		reqs: make(chan *commitReq, maxGroup), stop: make(chan struct{}),
		stopped: make(chan struct{}), notify: make(chan struct{}),
	}
	if err := s.checkSchema(dir); err != nil {
		db.Close()
		return nil, err
	}
	if err := s.loadRevisions(); err != nil {
		db.Close()
		return nil, err
	}
	go s.committer()
	return s, nil
}

func (s *Store) checkSchema(dir string) error {
	v, err := s.get([]byte(keySchema))
	if errors.Is(err, ErrNotFound) {
		it, err := s.db.NewIter(nil)
		if err != nil {
			return err
		}
		empty := !it.First()
		it.Close()
		if !empty {
			return fmt.Errorf("state database %s has data but no schema version (%s); refusing to use it", dir, keySchema)
		}
		b := s.db.NewBatch()
		b.Set([]byte(keySchema), []byte(strconv.Itoa(SchemaVersion)), nil)
		return b.Commit(pebble.Sync)
	}
	if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	ver, err := strconv.Atoi(string(v))
	if err != nil || ver < 1 {
		return fmt.Errorf("state database %s: unreadable schema version %q", dir, v)
	}
	if ver > SchemaVersion {
		return fmt.Errorf("database schema v%d is newer than this binary's v%d; upgrade xenopsd-ng", ver, SchemaVersion)
	}
	if ver < SchemaVersion {
		return s.migrate(dir, ver)
	}
	return nil
}

// migrate upgrades the database from schema version from to SchemaVersion
// in one synced batch.
func (s *Store) migrate(dir string, from int) error {
	b := s.db.NewBatch()
	defer b.Close()
	for v := from; v < SchemaVersion; v++ {
		m, ok := migrations[v]
		if !ok {
			return fmt.Errorf("database schema v%d has no migration to v%d", v, v+1)
		}
		if err := m(b); err != nil {
			return fmt.Errorf("migrate state database %s from schema v%d to v%d: %w", dir, v, v+1, err)
		}
	}
	b.Set([]byte(keySchema), []byte(strconv.Itoa(SchemaVersion)), nil)
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("migrate state database %s to schema v%d: %w", dir, SchemaVersion, err)
	}
	s.log.Info("state database migrated", "from", from, "to", SchemaVersion)
	return nil
}

func (s *Store) loadRevisions() error {
	if v, err := s.get([]byte(keyFloor)); err == nil {
		f, perr := strconv.ParseUint(string(v), 16, 64)
		if perr != nil {
			return fmt.Errorf("corrupt %s %q: %v", keyFloor, v, perr)
		}
		s.floor.Store(f)
		s.head.Store(f)
	} else if !errors.Is(err, ErrNotFound) {
		return err
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(eventPrefix), UpperBound: prefixEnd(eventPrefix)})
	if err != nil {
		return err
	}
	defer it.Close()
	if it.Last() {
		rev, err := parseEventKey(it.Key())
		if err != nil {
			return err
		}
		s.head.Store(rev)
	}
	// The log's size is not stored: it is summed once here (the log is
	// bounded, so this reads at most about RetainEventBytes).
	var bytes uint64
	for it.First(); it.Valid(); it.Next() {
		bytes += uint64(len(it.Value()))
	}
	s.logBytes.Store(bytes)
	return it.Error()
}

// Close stops the committer and closes the database. Commits still queued
// fail with ErrClosed.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.stop)
		<-s.stopped
		err = s.db.Close()
	})
	return err
}

// Head is the revision of the last committed event (0: none yet).
func (s *Store) Head() uint64 { return s.head.Load() }

// Floor is the highest revision compacted away: events <= Floor are gone.
func (s *Store) Floor() uint64 { return s.floor.Load() }

// EventBytes is the size of the retained events' values.
func (s *Store) EventBytes() uint64 { return s.logBytes.Load() }

// Changed returns a channel closed at the next commit.
func (s *Store) Changed() <-chan struct{} {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	return s.notify
}

// Commit makes c durable as one atomic batch. apply, if not nil, runs after
// the batch is synced and before Commit returns, in revision order with every
// other commit's apply, with the revision of c's first event (or the head if
// c has none). It must not call Commit. ctx bounds only the wait to enqueue:
// once queued, the change is committed or fails as a whole.
func (s *Store) Commit(ctx context.Context, c Change, apply func(firstRev uint64)) error {
	if s.onCommit == nil {
		return s.commit(ctx, c, apply)
	}
	start := time.Now()
	err := s.commit(ctx, c, apply)
	s.onCommit(time.Since(start), err)
	return err
}

func (s *Store) commit(ctx context.Context, c Change, apply func(firstRev uint64)) error {
	for _, op := range c.Ops {
		if !op.Kind.valid() {
			return fmt.Errorf("store: unknown record kind %q", op.Kind)
		}
		if op.ID == "" || len(op.ID) > maxIDLen || strings.ContainsRune(op.ID, 0) {
			return fmt.Errorf("store: bad record id %q", op.ID)
		}
	}
	r := &commitReq{change: c, apply: apply, done: make(chan error, 1)}
	select {
	case <-s.stop:
		return ErrClosed
	default:
	}
	select {
	case s.reqs <- r:
	case <-s.stop:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.done:
		return err
	case <-s.stopped:
		// The committer exited; it either answered r or never saw it.
		select {
		case err := <-r.done:
			return err
		default:
			return ErrClosed
		}
	}
}

func (s *Store) committer() {
	defer close(s.stopped)
	for {
		var group []*commitReq
		select {
		case r := <-s.reqs:
			group = append(group, r)
		case <-s.stop:
			s.failPending()
			return
		}
	drain:
		for len(group) < maxGroup {
			select {
			case r := <-s.reqs:
				group = append(group, r)
			default:
				break drain
			}
		}
		s.commitGroup(group)
	}
}

func (s *Store) failPending() {
	for {
		select {
		case r := <-s.reqs:
			r.done <- ErrClosed
		default:
			return
		}
	}
}

func (s *Store) commitGroup(group []*commitReq) {
	b := s.db.NewBatch()
	rev := s.head.Load()
	var added uint64
	firsts := make([]uint64, len(group))
	for i, r := range group {
		firsts[i] = rev + 1
		if len(r.change.Events) == 0 {
			firsts[i] = rev
		}
		for _, op := range r.change.Ops {
			k := recordKey(op.Kind, op.ID)
			if op.Delete {
				b.Delete(k, nil)
			} else {
				b.Set(k, op.Value, nil)
			}
		}
		for _, ev := range r.change.Events {
			rev++
			b.Set(eventKey(rev), ev, nil)
			added += uint64(len(ev))
		}
	}
	err := b.Commit(pebble.Sync)
	b.Close()
	if err != nil {
		err = fmt.Errorf("commit state change: %w", err)
		s.log.Error("store commit failed", "err", err)
		for _, r := range group {
			r.done <- err
		}
		return
	}
	s.head.Store(rev)
	s.logBytes.Add(added)
	for i, r := range group {
		if r.apply != nil {
			r.apply(firsts[i])
		}
		r.done <- nil
	}
	s.notifyMu.Lock()
	close(s.notify)
	s.notify = make(chan struct{})
	s.notifyMu.Unlock()
	s.maybeCompact(rev)
}

// maybeCompact deletes the oldest events once the log is over either bound
// (RetainEvents, RetainEventBytes) by a slack of an eighth, so that range
// deletions stay infrequent: it keeps the newest events that fit both
// bounds, and always the newest one.
func (s *Store) maybeCompact(head uint64) {
	floor, bytes := s.floor.Load(), s.logBytes.Load()
	overCount := head > s.retain && head-floor > s.retain+max(s.retain/8, 1)-1
	overBytes := bytes > s.retainBytes+s.retainBytes/8
	if !overCount && !overBytes {
		return
	}
	countFloor := floor
	if head > s.retain {
		countFloor = max(floor, head-s.retain)
	}
	newFloor, freed, err := s.compactionPoint(floor, countFloor, head, bytes)
	if err != nil {
		s.log.Warn("event log compaction: reading the oldest events failed", "err", err)
		return
	}
	if newFloor == floor {
		return
	}
	b := s.db.NewBatch()
	defer b.Close()
	b.DeleteRange(eventKey(floor+1), eventKey(newFloor+1), nil)
	b.Set([]byte(keyFloor), []byte(fmt.Sprintf("%016x", newFloor)), nil)
	// Not synced: losing it after a crash only means compacting again.
	if err := b.Commit(pebble.NoSync); err != nil {
		s.log.Warn("event log compaction failed", "err", err)
		return
	}
	s.floor.Store(newFloor)
	s.logBytes.Add(-freed)
}

// compactionPoint walks the events from the oldest and returns the new
// floor: past countFloor, and past as many more events as must go for the
// rest to fit in RetainEventBytes, never past the newest event (head). freed
// is the size of the events it passes.
func (s *Store) compactionPoint(floor, countFloor, head, bytes uint64) (newFloor, freed uint64, err error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: eventKey(floor + 1), UpperBound: eventKey(head)})
	if err != nil {
		return floor, 0, err
	}
	defer it.Close()
	newFloor = floor
	for it.First(); it.Valid(); it.Next() {
		rev, err := parseEventKey(it.Key())
		if err != nil {
			return floor, 0, err
		}
		if rev > countFloor && bytes-freed <= s.retainBytes {
			break
		}
		newFloor = rev
		freed += uint64(len(it.Value()))
	}
	return newFloor, freed, it.Error()
}

// Get returns a copy of the record's value, or ErrNotFound.
func (s *Store) Get(kind Kind, id string) ([]byte, error) {
	return s.get(recordKey(kind, id))
}

func (s *Store) get(key []byte) ([]byte, error) {
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	defer closer.Close()
	return bytes.Clone(v), nil
}

// List calls fn for every record of kind in id order. fn must not keep value.
func (s *Store) List(kind Kind, fn func(id string, value []byte) error) error {
	prefix := "v1/" + string(kind) + "/"
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte(prefix), UpperBound: prefixEnd(prefix)})
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		if err := fn(string(it.Key()[len(prefix):]), it.Value()); err != nil {
			return err
		}
	}
	return it.Error()
}

// Events calls fn for each event with after < revision <= upTo in order
// (upTo 0: up to the head). It returns ErrCompacted if events after `after`
// were deleted. fn must not keep value.
func (s *Store) Events(after, upTo uint64, fn func(rev uint64, value []byte) error) error {
	if after < s.floor.Load() {
		return ErrCompacted
	}
	if upTo == 0 {
		upTo = s.head.Load()
	}
	if upTo <= after {
		return nil
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: eventKey(after + 1), UpperBound: eventKey(upTo + 1)})
	if err != nil {
		return err
	}
	defer it.Close()
	next := after + 1
	for it.First(); it.Valid(); it.Next() {
		rev, err := parseEventKey(it.Key())
		if err != nil {
			return err
		}
		if rev != next {
			// A gap at the start means compaction raced this read.
			if next == after+1 && after < s.floor.Load() {
				return ErrCompacted
			}
			return fmt.Errorf("store: event log gap: want revision %d, found %d", next, rev)
		}
		if err := fn(rev, it.Value()); err != nil {
			return err
		}
		next++
	}
	if err := it.Error(); err != nil {
		return err
	}
	if next <= upTo && after < s.floor.Load() {
		return ErrCompacted
	}
	return nil
}

func recordKey(kind Kind, id string) []byte { return []byte("v1/" + string(kind) + "/" + id) }

func eventKey(rev uint64) []byte { return []byte(fmt.Sprintf("%s%016x", eventPrefix, rev)) }

func parseEventKey(k []byte) (uint64, error) {
	rev, err := strconv.ParseUint(string(k[len(eventPrefix):]), 16, 64)
	if err != nil {
		return 0, fmt.Errorf("store: corrupt event key %q", k)
	}
	return rev, nil
}

func prefixEnd(p string) []byte {
	b := []byte(p)
	b[len(b)-1]++
	return b
}

type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
}
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...), "component", "pebble")
	panic(fmt.Sprintf(format, args...))
}
