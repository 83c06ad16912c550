package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

func openT(t *testing.T, dir string, retain int) *Store {
	t.Helper()
	s, err := OpenWithOptions(dir, Options{RetainEvents: retain})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCommitGetListEvents(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, 0)
	ctx := context.Background()
	var applied []uint64
	err := s.Commit(ctx, Change{
		Ops:    []Op{{Kind: KindVM, ID: "a", Value: []byte("A")}, {Kind: KindReq, ID: "r1", Value: []byte("a")}},
		Events: [][]byte{[]byte("e1"), []byte("e2")},
	}, func(rev uint64) { applied = append(applied, rev) })
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, Change{Ops: []Op{{Kind: KindVM, ID: "b", Value: []byte("B")}}, Events: [][]byte{[]byte("e3")}},
		func(rev uint64) { applied = append(applied, rev) }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(applied) != "[1 3]" || s.Head() != 3 {
		t.Fatalf("applied %v head %d, want [1 3] and 3", applied, s.Head())
	}
	if v, err := s.Get(KindVM, "a"); err != nil || string(v) != "A" {
		t.Fatalf("get a = %q, %v", v, err)
	}
	if _, err := s.Get(KindTask, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("get missing: %v", err)
	}
	var ids []string
	s.List(KindVM, func(id string, v []byte) error { ids = append(ids, id+"="+string(v)); return nil })
	if strings.Join(ids, ",") != "a=A,b=B" {
		t.Fatalf("list = %v", ids)
	}
	var evs []string
	if err := s.Events(1, 0, func(rev uint64, v []byte) error { evs = append(evs, fmt.Sprint(rev, string(v))); return nil }); err != nil {
		t.Fatal(err)
	}
	if strings.Join(evs, ",") != "2e2,3e3" {
		t.Fatalf("events = %v", evs)
	}
	// Delete, then reopen: everything persisted, head restored.
	if err := s.Commit(ctx, Change{Ops: []Op{{Kind: KindVM, ID: "a", Delete: true}}, Events: [][]byte{[]byte("e4")}}, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openT(t, dir, 0)
	defer s.Close()
	if s.Head() != 4 {
		t.Fatalf("head after reopen = %d", s.Head())
	}
	if _, err := s.Get(KindVM, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted record still there: %v", err)
	}
	if err := s.Commit(ctx, Change{Events: [][]byte{[]byte("e5")}}, nil); err != nil || s.Head() != 5 {
		t.Fatalf("commit after reopen: %v head %d", err, s.Head())
	}
}

func TestBadOpsRejected(t *testing.T) {
	s := openT(t, t.TempDir(), 0)
	defer s.Close()
	for _, op := range []Op{{Kind: "nope", ID: "x"}, {Kind: KindVM, ID: ""}, {Kind: KindVM, ID: "a\x00b"}} {
		if err := s.Commit(context.Background(), Change{Ops: []Op{op}, Events: [][]byte{nil}}, nil); err == nil {
			t.Errorf("op %+v accepted", op)
		}
	}
	if s.Head() != 0 {
		t.Fatalf("rejected change produced events: head %d", s.Head())
	}
}

func TestConcurrentCommitsAreOrderedAndGapless(t *testing.T) {
	s := openT(t, t.TempDir(), 0)
	defer s.Close()
	var mu sync.Mutex
	seen := map[uint64]bool{}
	var last uint64
	var wg sync.WaitGroup
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				err := s.Commit(context.Background(), Change{Events: [][]byte{[]byte("x"), []byte("y")}}, func(rev uint64) {
					mu.Lock()
					defer mu.Unlock()
					if rev != last+1 || seen[rev] {
						t.Errorf("apply out of order: rev %d after %d", rev, last)
					}
					seen[rev] = true
					last = rev + 1
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if s.Head() != 1600 {
		t.Fatalf("head %d, want 1600", s.Head())
	}
	n := uint64(0)
	if err := s.Events(0, 0, func(rev uint64, v []byte) error { n++; return nil }); err != nil || n != 1600 {
		t.Fatalf("events %d, %v", n, err)
	}
}

func TestRetentionCompacts(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, 10)
	for i := 0; i < 50; i++ {
		if err := s.Commit(context.Background(), Change{Events: [][]byte{[]byte(fmt.Sprint(i))}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if f := s.Floor(); f < 50-11 || f > 40 {
		t.Fatalf("floor %d, want 39..40", f)
	}
	if err := s.Events(0, 0, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrCompacted) {
		t.Fatalf("events from 0: %v, want ErrCompacted", err)
	}
	var got []uint64
	if err := s.Events(45, 0, func(rev uint64, _ []byte) error { got = append(got, rev); return nil }); err != nil || len(got) != 5 || got[0] != 46 {
		t.Fatalf("events after 45: %v %v", got, err)
	}
	// An empty commit waits for the compaction that followed the last one.
	if err := s.Commit(context.Background(), Change{}, nil); err != nil {
		t.Fatal(err)
	}
	floor := s.Floor()
	s.Close()
	s = openT(t, dir, 10)
	defer s.Close()
	if s.Floor() != floor || s.Head() != 50 {
		t.Fatalf("after reopen floor %d head %d, want %d 50", s.Floor(), s.Head(), floor)
	}
}

// TestRetentionBoundsBytes: large events are compacted by the byte bound
// long before the count bound; a reader from before the floor must resync;
// the size is recounted on reopen.
func TestRetentionBoundsBytes(t *testing.T) {
	const (
		eventSize = 1 << 10
		maxBytes  = 10 << 10 // ten events' worth
	)
	dir := t.TempDir()
	open := func() *Store {
		s, err := OpenWithOptions(dir, Options{RetainEvents: 1000, RetainEventBytes: maxBytes})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	s := open()
	ev := func(i int) []byte { return []byte(fmt.Sprintf("%0*d", eventSize, i)) }
	// settle waits for the compaction that follows the last commit: the
	// committer compacts after answering a commit, before the next one.
	settle := func() {
		t.Helper()
		if err := s.Commit(context.Background(), Change{}, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i := 1; i <= 100; i++ {
		if err := s.Commit(context.Background(), Change{Events: [][]byte{ev(i)}}, nil); err != nil {
			t.Fatal(err)
		}
		settle()
		if b := s.EventBytes(); b > maxBytes+maxBytes/8 {
			t.Fatalf("after %d events of %d bytes: %d bytes retained, bound %d (+1/8 slack)", i, eventSize, b, maxBytes)
		}
	}
	floor := s.Floor()
	if floor < 100-11 || floor > 100-10 {
		t.Fatalf("floor %d, want 89..90: 10 events of 1 KiB fit in 10 KiB (the count bound, 1000, is far)", floor)
	}
	if want := (100 - floor) * eventSize; s.EventBytes() != want {
		t.Errorf("EventBytes %d, want %d (%d events)", s.EventBytes(), want, 100-floor)
	}
	if err := s.Events(floor-1, 0, func(uint64, []byte) error { return nil }); !errors.Is(err, ErrCompacted) {
		t.Fatalf("events after %d (below the floor %d): %v, want ErrCompacted", floor-1, floor, err)
	}
	next := floor + 1
	if err := s.Events(floor, 0, func(rev uint64, v []byte) error {
		if rev != next || string(v) != string(ev(int(rev))) {
			return fmt.Errorf("event %d %.8q..., want %d", rev, v, next)
		}
		next++
		return nil
	}); err != nil || next != 101 {
		t.Fatalf("events after the floor: %v, up to %d", err, next-1)
	}
	// One event larger than the bound is kept while it is the newest.
	if err := s.Commit(context.Background(), Change{Events: [][]byte{make([]byte, 3*maxBytes)}}, nil); err != nil {
		t.Fatal(err)
	}
	settle()
	if s.Floor() != 100 || s.EventBytes() != 3*maxBytes {
		t.Errorf("after a %d-byte event: floor %d, %d bytes; want 100 and only that event", 3*maxBytes, s.Floor(), s.EventBytes())
	}
	bytes := s.EventBytes()
	s.Close()
	s = open()
	defer s.Close()
	if s.EventBytes() != bytes || s.Floor() != 100 || s.Head() != 101 {
		t.Errorf("after reopen: %d bytes, floor %d, head %d; want %d, 100, 101", s.EventBytes(), s.Floor(), s.Head(), bytes)
	}
}

func TestSchemaVersionRefusal(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, 0)
	s.Close()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte(keySchema), []byte("3"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()
	_, err = Open(dir, nil)
	want := "database schema v3 is newer than this binary's v2; upgrade xenopsd-ng"
	if err == nil || err.Error() != want {
		t.Fatalf("open newer db: %v, want %q", err, want)
	}
}

func TestMigrateFromV1(t *testing.T) {
	dir := t.TempDir()
	s := openT(t, dir, 0)
	if err := s.Commit(context.Background(), Change{Ops: []Op{{Kind: KindVM, ID: "a", Value: []byte(`{"vm":{}}`)}}, Events: [][]byte{[]byte("e")}}, nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Set([]byte(keySchema), []byte("1"), pebble.Sync); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s = openT(t, dir, 0)
	defer s.Close()
	if v, err := s.get([]byte(keySchema)); err != nil || string(v) != "2" {
		t.Fatalf("schema after migration: %q %v, want 2", v, err)
	}
	if v, err := s.Get(KindVM, "a"); err != nil || string(v) != `{"vm":{}}` {
		t.Fatalf("record after migration: %q %v", v, err)
	}
	if s.Head() != 1 {
		t.Fatalf("head after migration %d, want 1", s.Head())
	}
}

func TestRefusesUnversionedNonEmpty(t *testing.T) {
	dir := t.TempDir()
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	db.Set([]byte("something"), []byte("x"), pebble.Sync)
	db.Close()
	if _, err := Open(dir, nil); err == nil || !strings.Contains(err.Error(), "no schema version") {
		t.Fatalf("open unversioned db: %v", err)
	}
}

func TestClosedStore(t *testing.T) {
	s := openT(t, t.TempDir(), 0)
	s.Close()
	if err := s.Commit(context.Background(), Change{Events: [][]byte{nil}}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("commit on closed store: %v", err)
	}
}

func BenchmarkCommit(b *testing.B) {
	s, err := Open(b.TempDir(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	val := make([]byte, 512)
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			i++
			s.Commit(context.Background(), Change{Ops: []Op{{Kind: KindVM, ID: fmt.Sprint(i), Value: val}}, Events: [][]byte{val}}, nil)
		}
	})
}

// TestOnCommit: Options.OnCommit hears of every Commit, with its error.
func TestOnCommit(t *testing.T) {
	var errs []error
	s, err := OpenWithOptions(t.TempDir(), Options{OnCommit: func(took time.Duration, err error) {
		if took < 0 {
			t.Errorf("commit took %v", took)
		}
		errs = append(errs, err)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Commit(ctx, Change{Ops: []Op{{Kind: KindVM, ID: "a", Value: []byte("A")}}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Commit(ctx, Change{Ops: []Op{{Kind: "bad", ID: "a"}}}, nil); err == nil {
		t.Fatal("a commit of an unknown kind succeeded")
	}
	if len(errs) != 2 || errs[0] != nil || errs[1] == nil {
		t.Errorf("OnCommit heard %v, want [nil, an error]", errs)
	}
}
