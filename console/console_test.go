package console

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

func testLogs(t *testing.T) *Logs {
	t.Helper()
	return &Logs{Dir: t.TempDir(), PollInterval: 5 * time.Millisecond, GoneGrace: 20 * time.Millisecond}
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func writeLog(t *testing.T, l *Logs, name, data string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(l.Dir, FileName(name)), []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func appendLog(t *testing.T, l *Logs, name, data string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(l.Dir, FileName(name)), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
}

// collect runs Stream and returns what it sent (concatenated) and the chunks.
func collect(ctx context.Context, l *Logs, name string, o Options) (string, []Chunk, error) {
	var b bytes.Buffer
	var cs []Chunk
	err := l.Stream(ctx, name, o, func(c Chunk) error {
		b.Write(c.Data)
		cs = append(cs, Chunk{Data: append([]byte(nil), c.Data...), Offset: c.Offset, Restarted: c.Restarted})
		return nil
	})
	return b.String(), cs, err
}

func wantField(t *testing.T, err error, code domain.Code, field string) {
	t.Helper()
	var de *domain.Error
	if !errors.As(err, &de) {
		t.Fatalf("err = %v (%T), want *domain.Error", err, err)
	}
	if de.Code != code || de.Field != field {
		t.Fatalf("err = %v (code %d field %q), want code %d field %q", err, de.Code, de.Field, code, field)
	}
}

func TestReadWholeTailOffset(t *testing.T) {
	l := testLogs(t)
	ctx := testCtx(t)
	const text = "Linux version 6.1\nbooting\nSIM-GUEST-BOOTED domid=3\n"
	writeLog(t, l, "vm1", text)

	got, cs, err := collect(ctx, l, "vm1", Options{})
	if err != nil || got != text {
		t.Fatalf("whole log = %q, %v; want %q", got, err, text)
	}
	if cs[0].Offset != 0 {
		t.Errorf("first chunk offset %d, want 0", cs[0].Offset)
	}
	got, cs, err = collect(ctx, l, "vm1", Options{TailBytes: 10})
	if err != nil || got != text[len(text)-10:] || cs[0].Offset != uint64(len(text)-10) {
		t.Fatalf("tail 10 = %q at %v, %v", got, cs, err)
	}
	got, _, err = collect(ctx, l, "vm1", Options{TailBytes: 1 << 20})
	if err != nil || got != text {
		t.Fatalf("tail beyond size = %q, %v", got, err)
	}
	got, _, err = collect(ctx, l, "vm1", Options{Offset: 6})
	if err != nil || got != text[6:] {
		t.Fatalf("offset 6 = %q, %v", got, err)
	}
	got, _, err = collect(ctx, l, "vm1", Options{Offset: uint64(len(text))})
	if err != nil || got != "" {
		t.Fatalf("offset at end = %q, %v", got, err)
	}
}

func TestLargeLogIsChunked(t *testing.T) {
	l := testLogs(t)
	big := strings.Repeat("0123456789abcdef", 10000) // 160000 bytes
	writeLog(t, l, "big", big)
	got, cs, err := collect(testCtx(t), l, "big", Options{})
	if err != nil || got != big {
		t.Fatalf("big log: %d bytes, %v", len(got), err)
	}
	var off uint64
	for _, c := range cs {
		if len(c.Data) > chunkSize || c.Offset != off {
			t.Fatalf("chunk of %d bytes at %d, want <= %d at %d", len(c.Data), c.Offset, chunkSize, off)
		}
		off += uint64(len(c.Data))
	}
}

func TestBadOptionsAndNames(t *testing.T) {
	l := testLogs(t)
	ctx := testCtx(t)
	writeLog(t, l, "vm1", "abc")
	_, _, err := collect(ctx, l, "vm1", Options{Offset: 4})
	wantField(t, err, domain.CodeInvalidArgument, "offset")
	_, _, err = collect(ctx, l, "vm1", Options{Offset: 1, TailBytes: 1})
	wantField(t, err, domain.CodeInvalidArgument, "tail_bytes")
	for _, name := range []string{"", "..", "a/b", "x\x00"} {
		_, _, err = collect(ctx, l, name, Options{})
		wantField(t, err, domain.CodeInvalidArgument, "id")
	}
}

func TestMissingLogIsNotFound(t *testing.T) {
	l := testLogs(t)
	ctx := testCtx(t)
	_, _, err := collect(ctx, l, "nosuch", Options{})
	wantField(t, err, domain.CodeNotFound, "id")
	if !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("error %q does not name the VM", err)
	}
	// Following a VM without a domain: nothing will ever write the log.
	_, _, err = collect(ctx, l, "nosuch", Options{Follow: true, Alive: func(context.Context) (bool, error) { return false, nil }})
	wantField(t, err, domain.CodeNotFound, "id")
}

// streamer runs a follow in the background and exposes what it received.
type streamer struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	cs   []Chunk
	done chan error
}

func follow(ctx context.Context, l *Logs, name string, o Options) *streamer {
	s := &streamer{done: make(chan error, 1)}
	o.Follow = true
	go func() {
		s.done <- l.Stream(ctx, name, o, func(c Chunk) error {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.buf.Write(c.Data)
			s.cs = append(s.cs, Chunk{Data: append([]byte(nil), c.Data...), Offset: c.Offset, Restarted: c.Restarted})
			return nil
		})
	}()
	return s
}

func (s *streamer) text() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

// waitFor waits (bounded by ctx) until the received text contains want.
func (s *streamer) waitFor(t *testing.T, ctx context.Context, want string) {
	t.Helper()
	for !strings.Contains(s.text(), want) {
		select {
		case err := <-s.done:
			t.Fatalf("stream ended (%v) before %q; got %q", err, want, s.text())
		case <-ctx.Done():
			t.Fatalf("no %q: got %q", want, s.text())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func TestFollowUntilGone(t *testing.T) {
	l := testLogs(t)
	ctx := testCtx(t)
	var alive atomic.Bool
	alive.Store(true)
	// The log does not exist yet: a follow of a live VM waits for it.
	s := follow(ctx, l, "vm1", Options{Alive: func(context.Context) (bool, error) { return alive.Load(), nil }})
	appendLog(t, l, "vm1", "line 1\n")
	s.waitFor(t, ctx, "line 1\n")
	appendLog(t, l, "vm1", "line 2\n")
	s.waitFor(t, ctx, "line 2\n")
	// The guest's last words land just as the domain goes: still delivered.
	appendLog(t, l, "vm1", "reboot: Power down\n")
	alive.Store(false)
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("follow did not end after the domain went")
	}
	if got, want := s.text(), "line 1\nline 2\nreboot: Power down\n"; got != want {
		t.Fatalf("followed %q, want %q", got, want)
	}
}

func TestFollowTruncationAndRotation(t *testing.T) {
	l := testLogs(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	writeLog(t, l, "vm1", "old boot output, long enough\n")
	s := follow(ctx, l, "vm1", Options{})
	s.waitFor(t, ctx, "long enough\n")

	// Truncated (e.g. logrotate copytruncate): read again from 0.
	if err := os.Truncate(filepath.Join(l.Dir, FileName("vm1")), 0); err != nil {
		t.Fatal(err)
	}
	appendLog(t, l, "vm1", "new\n")
	s.waitFor(t, ctx, "long enough\nnew\n")

	// Replaced (rotated by rename): the new file is read from 0.
	p := filepath.Join(l.Dir, FileName("vm1"))
	if err := os.Rename(p, p+".1"); err != nil {
		t.Fatal(err)
	}
	writeLog(t, l, "vm1", "rotated\n")
	s.waitFor(t, ctx, "new\nrotated\n")

	cancel()
	if err := <-s.done; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled follow returned %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var restarts []string
	for _, c := range s.cs {
		if c.Restarted {
			if c.Offset != 0 {
				t.Errorf("restarted chunk at offset %d", c.Offset)
			}
			restarts = append(restarts, string(c.Data))
		}
	}
	if len(restarts) != 2 || restarts[0] != "new\n" || restarts[1] != "rotated\n" {
		t.Fatalf("restarted chunks %q, want [new rotated]", restarts)
	}
}

func TestSendAndAliveErrorsStop(t *testing.T) {
	l := testLogs(t)
	ctx := testCtx(t)
	writeLog(t, l, "vm1", "x")
	boom := errors.New("client went away")
	err := l.Stream(ctx, "vm1", Options{}, func(Chunk) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("send error: got %v", err)
	}
	err = l.Stream(ctx, "vm1", Options{Follow: true, Alive: func(context.Context) (bool, error) { return false, boom }},
		func(Chunk) error { return nil })
	if !errors.Is(err, boom) {
		t.Fatalf("alive error: got %v", err)
	}
}

// TestLogOfAnEarlierVM: a log last written before the VM was created is an
// earlier VM's of the same name: not found, and a follow waits for the new
// VM's own output. Remove deletes a log; a missing one is fine.
func TestLogOfAnEarlierVM(t *testing.T) {
	l := testLogs(t)
	ctx := testCtx(t)
	writeLog(t, l, "web", "old VM's secrets\n")
	path := filepath.Join(l.Dir, FileName("web"))
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	created := time.Now()
	_, _, err := collect(ctx, l, "web", Options{NotBefore: created})
	wantField(t, err, domain.CodeNotFound, "id")
	if got, _, err := collect(ctx, l, "web", Options{}); err != nil || got != "old VM's secrets\n" {
		t.Fatalf("without NotBefore: %q, %v", got, err)
	}

	if err := l.Remove("web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("log still there after Remove: %v", err)
	}
	if err := l.Remove("web"); err != nil {
		t.Fatalf("Remove of a missing log: %v", err)
	}
	if err := l.Remove("../x"); err == nil {
		t.Fatal("Remove accepted a path")
	}

	// RemoveStale removes only a log nothing wrote since the VM's creation.
	writeLog(t, l, "s", "earlier\n")
	if err := os.Chtimes(filepath.Join(l.Dir, FileName("s")), old, old); err != nil {
		t.Fatal(err)
	}
	writeLog(t, l, "fresh", "mine\n")
	for _, name := range []string{"s", "fresh", "none"} {
		if err := l.RemoveStale(name, created); err != nil {
			t.Fatalf("RemoveStale %s: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(l.Dir, FileName("s"))); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale log kept: %v", err)
	}
	if _, err := os.Stat(filepath.Join(l.Dir, FileName("fresh"))); err != nil {
		t.Errorf("fresh log removed: %v", err)
	}

	// Rename moves a log, replacing one under the new name.
	writeLog(t, l, "a", "a's\n")
	writeLog(t, l, "b", "stale b\n")
	if err := l.Rename("a", "b"); err != nil {
		t.Fatal(err)
	}
	if got, _, err := collect(ctx, l, "b", Options{}); err != nil || got != "a's\n" {
		t.Fatalf("after Rename: %q, %v", got, err)
	}
	if err := l.Rename("a", "c"); err != nil {
		t.Fatalf("Rename of a missing log: %v", err)
	}

	// Following: the stale log is skipped until the VM writes its own.
	writeLog(t, l, "web", "stale\n")
	if err := os.Chtimes(path, old, old); err != nil {
		t.Fatal(err)
	}
	s := follow(ctx, l, "web", Options{NotBefore: created, Alive: func(context.Context) (bool, error) { return true, nil }})
	os.Remove(path)
	writeLog(t, l, "web", "new VM\n")
	s.waitFor(t, ctx, "new VM")
	if strings.Contains(s.text(), "stale") {
		t.Fatalf("followed the earlier VM's log: %q", s.text())
	}
}

// TestLogWrittenJustAfterCreation: Linux stamps a file's mtime from a
// coarse clock that can lag time.Now by a tick, so a log the guest wrote
// just after its VM was created may carry a time a few milliseconds before
// the creation time. It is the VM's own log, not an earlier VM's.
func TestLogWrittenJustAfterCreation(t *testing.T) {
	l := testLogs(t)
	ctx := testCtx(t)
	created := time.Now()
	writeLog(t, l, "web", "booted\n")
	path := filepath.Join(l.Dir, FileName("web"))
	stamped := created.Add(-4 * time.Millisecond) // one 250 Hz tick behind
	if err := os.Chtimes(path, stamped, stamped); err != nil {
		t.Fatal(err)
	}
	if got, _, err := collect(ctx, l, "web", Options{NotBefore: created}); err != nil || got != "booted\n" {
		t.Fatalf("log stamped one tick before creation: %q, %v", got, err)
	}
	if err := l.RemoveStale("web", created); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("RemoveStale removed the VM's own log: %v", err)
	}
}
