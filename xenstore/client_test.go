package xenstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"syscall"
	"testing"
	"time"
)

// fakeDaemon reads requests from the server end of a pipe and lets the
// test answer them explicitly.
type fakeDaemon struct {
	t    *testing.T
	conn net.Conn
	reqs chan Msg
}

func newFake(t *testing.T) (*Client, *fakeDaemon) {
	a, b := net.Pipe()
	f := &fakeDaemon{t: t, conn: b, reqs: make(chan Msg, 64)}
	go func() {
		defer close(f.reqs)
		for {
			m, err := ReadMsg(b, nil)
			if err != nil {
				return
			}
			f.reqs <- m
		}
	}()
	c := NewClient(a)
	t.Cleanup(func() { c.Close(); b.Close() })
	return c, f
}

func (f *fakeDaemon) next() Msg {
	f.t.Helper()
	select {
	case m, ok := <-f.reqs:
		if !ok {
			f.t.Fatal("client connection closed")
		}
		return m
	case <-time.After(5 * time.Second):
		f.t.Fatal("no request from the client")
	}
	return Msg{}
}

func (f *fakeDaemon) reply(m Msg, t MsgType, payload string) {
	if _, err := f.conn.Write(AppendMsg(nil, t, m.ReqID, m.TxID, []byte(payload))); err != nil {
		f.t.Errorf("fake daemon write: %v", err)
	}
}

func tctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

type result struct {
	v   []byte
	err error
}

// TestOutOfOrderReplies: replies are matched by req_id, not arrival order.
func TestOutOfOrderReplies(t *testing.T) {
	c, f := newFake(t)
	paths := []string{"/a", "/b", "/c"}
	res := make([]chan result, len(paths))
	for i, p := range paths {
		res[i] = make(chan result, 1)
		go func() {
			v, err := c.Read(tctx(t), p)
			res[i] <- result{v, err}
		}()
	}
	var reqs []Msg
	for range paths {
		reqs = append(reqs, f.next())
	}
	ids := map[uint32]bool{}
	for i := len(reqs) - 1; i >= 0; i-- {
		m := reqs[i]
		if ids[m.ReqID] {
			t.Fatalf("req_id %d reused while in flight", m.ReqID)
		}
		ids[m.ReqID] = true
		if m.Type != TypeRead {
			t.Fatalf("request type %s", m.Type)
		}
		path := string(m.Payload[:len(m.Payload)-1])
		if path == "/b" {
			f.reply(m, TypeError, "ENOENT\x00")
		} else {
			f.reply(m, TypeRead, "value of "+path)
		}
	}
	for i, p := range paths {
		r := <-res[i]
		if p == "/b" {
			if !errors.Is(r.err, syscall.ENOENT) {
				t.Fatalf("read /b: %v", r.err)
			}
			continue
		}
		if r.err != nil || string(r.v) != "value of "+p {
			t.Fatalf("read %s = %q, %v", p, r.v, r.err)
		}
	}
}

// TestWatchEventsDoNotBlockReplies: a watch whose consumer never reads does
// not hold up replies to other requests.
func TestWatchEventsDoNotBlockReplies(t *testing.T) {
	c, f := newFake(t)
	wch := make(chan *Watch, 1)
	go func() {
		w, err := c.Watch(tctx(t), "/w", "tok")
		if err != nil {
			t.Error(err)
		}
		wch <- w
	}()
	m := f.next()
	if m.Type != TypeWatch || string(m.Payload) != "/w\x00tok\x00" {
		t.Fatalf("watch request %s %q", m.Type, m.Payload)
	}
	f.reply(m, TypeWatch, "OK\x00")
	w := <-wch
	for i := 0; i < 2000; i++ { // far more than any channel buffer
		f.conn.Write(AppendMsg(nil, TypeWatchEvent, 0, 0, JoinStrings("/w", "tok")))
	}
	done := make(chan result, 1)
	go func() {
		v, err := c.Read(tctx(t), "/x")
		done <- result{v, err}
	}()
	m = f.next()
	f.reply(m, TypeRead, "ok")
	if r := <-done; r.err != nil || string(r.v) != "ok" {
		t.Fatalf("read while events pile up: %q %v", r.v, r.err)
	}
	for i := 0; i < 2000; i++ {
		ev, ok, err := w.Next(tctx(t))
		if err != nil || !ok || ev.Path != "/w" || ev.Token != "tok" {
			t.Fatalf("event %d: %+v %v %v", i, ev, ok, err)
		}
	}
	go w.Close()
	m = f.next()
	if m.Type != TypeUnwatch {
		t.Fatalf("close sent %s", m.Type)
	}
	f.reply(m, TypeUnwatch, "OK\x00")
}

func TestContextCancel(t *testing.T) {
	c, f := newFake(t)
	cx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(cx, "/slow")
		errc <- err
	}()
	m := f.next()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled read: %v", err)
	}
	f.reply(m, TypeRead, "late") // dropped, must not confuse the next request
	go func() {
		v, err := c.Read(tctx(t), "/next")
		if err != nil || string(v) != "fresh" {
			t.Errorf("next read %q %v", v, err)
		}
		errc <- nil
	}()
	m2 := f.next()
	if m2.ReqID == m.ReqID {
		t.Fatalf("req_id %d reused", m.ReqID)
	}
	f.reply(m2, TypeRead, "fresh")
	<-errc
}

func TestConnectionLoss(t *testing.T) {
	c, f := newFake(t)
	wch := make(chan *Watch, 1)
	go func() {
		w, _ := c.Watch(tctx(t), "/w", "t")
		wch <- w
	}()
	f.reply(f.next(), TypeWatch, "OK\x00")
	w := <-wch
	errc := make(chan error, 1)
	go func() {
		_, err := c.Read(tctx(t), "/pending")
		errc <- err
	}()
	f.next()
	f.conn.Close()
	if err := <-errc; err == nil {
		t.Fatalf("pending read survived connection loss")
	}
	select {
	case _, ok := <-w.Events():
		if ok {
			t.Fatalf("event after connection loss")
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("watch channel not closed after connection loss")
	}
	if _, err := c.Read(tctx(t), "/after"); err == nil {
		t.Fatalf("read after connection loss succeeded")
	}
}

func TestTransactionRetries(t *testing.T) {
	c, f := newFake(t)
	runs := 0
	errc := make(chan error, 1)
	go func() {
		errc <- c.Transaction(tctx(t), func(tx *Tx) error {
			runs++
			return tx.Write(tctx(t), "/k", []byte("v"))
		})
	}()
	for attempt := 0; attempt < 3; attempt++ {
		m := f.next()
		if m.Type != TypeTransactionStart || m.TxID != 0 {
			t.Fatalf("attempt %d: %s tx %d", attempt, m.Type, m.TxID)
		}
		f.reply(m, TypeTransactionStart, "42\x00")
		m = f.next()
		if m.Type != TypeWrite || m.TxID != 42 {
			t.Fatalf("write in tx: %s tx %d", m.Type, m.TxID)
		}
		f.reply(m, TypeWrite, "OK\x00")
		m = f.next()
		if m.Type != TypeTransactionEnd || string(m.Payload) != "T\x00" {
			t.Fatalf("end: %s %q", m.Type, m.Payload)
		}
		if attempt < 2 {
			f.reply(m, TypeError, "EAGAIN\x00")
		} else {
			f.reply(m, TypeTransactionEnd, "OK\x00")
		}
	}
	if err := <-errc; err != nil || runs != 3 {
		t.Fatalf("transaction: %v after %d runs", err, runs)
	}
	// A non-EAGAIN error from fn aborts and is returned.
	boom := errors.New("boom")
	go func() { errc <- c.Transaction(tctx(t), func(tx *Tx) error { return boom }) }()
	f.reply(f.next(), TypeTransactionStart, "43\x00")
	m := f.next()
	if m.Type != TypeTransactionEnd || string(m.Payload) != "F\x00" {
		t.Fatalf("abort: %s %q", m.Type, m.Payload)
	}
	f.reply(m, TypeTransactionEnd, "OK\x00")
	if err := <-errc; err != boom {
		t.Fatalf("fn error: %v", err)
	}
}

// TestListDirectoryPart: E2BIG makes List walk DIRECTORY_PART, restarting
// when the generation count changes between parts.
func TestListDirectoryPart(t *testing.T) {
	c, f := newFake(t)
	type res struct {
		names []string
		err   error
	}
	done := make(chan res, 1)
	go func() {
		n, err := c.List(tctx(t), "/big")
		done <- res{n, err}
	}()
	m := f.next()
	if m.Type != TypeDirectory {
		t.Fatalf("first request %s", m.Type)
	}
	f.reply(m, TypeError, "E2BIG\x00")
	expectPart := func(off string) Msg {
		m := f.next()
		if m.Type != TypeDirectoryPart || string(m.Payload) != "/big\x00"+off+"\x00" {
			t.Fatalf("want DIRECTORY_PART at %s, got %s %q", off, m.Type, m.Payload)
		}
		return m
	}
	f.reply(expectPart("0"), TypeDirectoryPart, "a\x00x\x00yy\x00")
	f.reply(expectPart("5"), TypeDirectoryPart, "b\x00zzz\x00\x00") // changed: restart
	f.reply(expectPart("0"), TypeDirectoryPart, "b\x00x\x00yy\x00")
	f.reply(expectPart("5"), TypeDirectoryPart, "b\x00zzz\x00\x00")
	r := <-done
	if r.err != nil || len(r.names) != 3 || r.names[0] != "x" || r.names[1] != "yy" || r.names[2] != "zzz" {
		t.Fatalf("List = %q, %v", r.names, r.err)
	}
}

// recordConn records each Write call and never answers.
type recordConn struct {
	mu     chan struct{}
	writes [][]byte
	closed chan struct{}
}

func (r *recordConn) Read(p []byte) (int, error) { <-r.closed; return 0, net.ErrClosed }
func (r *recordConn) Write(p []byte) (int, error) {
	r.mu <- struct{}{}
	r.writes = append(r.writes, append([]byte(nil), p...))
	<-r.mu
	return len(p), nil
}
func (r *recordConn) Close() error {
	select {
	case <-r.closed:
	default:
		close(r.closed)
	}
	return nil
}

// TestXenbusOneMessagePerWrite: the xenbus device transport never gets two
// messages in one write, even from a Batch.
func TestXenbusOneMessagePerWrite(t *testing.T) {
	rc := &recordConn{mu: make(chan struct{}, 1), closed: make(chan struct{})}
	c := newClient(rc, true)
	defer c.Close()
	cx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	c.Batch(cx, WriteOp("/a", []byte("1")), MkdirOp("/b"), RemoveOp("/c")) // no replies: ends by timeout
	rc.mu <- struct{}{}
	defer func() { <-rc.mu }()
	if len(rc.writes) != 3 {
		t.Fatalf("%d writes for 3 messages", len(rc.writes))
	}
	for i, w := range rc.writes {
		h, err := DecodeHeader(w)
		if err != nil || int(h.Len)+HeaderSize != len(w) {
			t.Fatalf("write %d is not exactly one message (%d bytes, header %+v)", i, len(w), h)
		}
	}
}

func TestBatchLocalErrors(t *testing.T) {
	c, _ := newFake(t)
	err := c.Batch(tctx(t), WriteOp("/ok", nil), WriteOp("", nil))
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("bad path in batch: %v", err)
	}
	err = c.Batch(tctx(t), SetPermsOp("/x", nil))
	if !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("empty perms in batch: %v", err)
	}
	if err := c.Batch(tctx(t), Op{}); err == nil {
		t.Fatalf("zero Op accepted")
	}
}

// TestOversizedDirectoryReply: oxenstored answers DIRECTORY with more than
// 4096 bytes (observed in nested Xen); the client takes the reply instead of
// dropping the connection, and still refuses replies beyond MaxReplyPayload.
func TestOversizedDirectoryReply(t *testing.T) {
	c, f := newFake(t)
	var want []string
	for i := 0; i < 300; i++ {
		want = append(want, fmt.Sprintf("child-with-a-long-name-%04d", i))
	}
	done := make(chan []string, 1)
	go func() {
		n, err := c.List(tctx(t), "/big")
		if err != nil {
			t.Errorf("List: %v", err)
		}
		done <- n
	}()
	m := f.next()
	f.reply(m, TypeDirectory, string(JoinStrings(want...)))
	if got := <-done; !slices.Equal(got, want) {
		t.Fatalf("List returned %d names, want %d", len(got), len(want))
	}
	// The connection still works.
	go func() {
		m := f.next()
		f.reply(m, TypeRead, "v")
	}()
	if v, err := c.Read(tctx(t), "/x"); err != nil || string(v) != "v" {
		t.Fatalf("read after an oversized reply: %q %v", v, err)
	}
	// A header announcing more than MaxReplyPayload ends the connection.
	hdr := AppendMsg(nil, TypeRead, 99, 0, nil)
	binary.LittleEndian.PutUint32(hdr[12:], MaxReplyPayload+1)
	go f.conn.Write(hdr)
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		t.Fatal("client kept a connection whose reply exceeds MaxReplyPayload")
	}
	if _, err := c.Read(tctx(t), "/x"); err == nil {
		t.Fatal("read succeeded on a connection that was lost")
	}
}

// count is a Counter for the tests.
type count float64

func (c *count) Add(v float64) { *c += count(v) }

// TestCountRequests: a request is one round trip of one request, a Batch one
// round trip of all its requests; nothing is counted before CountRequests.
func TestCountRequests(t *testing.T) {
	c, f := newFake(t)
	answer := func(n int, typ MsgType) {
		for range n {
			f.reply(f.next(), typ, "")
		}
	}
	go answer(1, TypeWrite)
	if err := c.Write(tctx(t), "/before", nil); err != nil {
		t.Fatal(err)
	}
	var trips, reqs count
	c.CountRequests(&trips, &reqs)
	go answer(1, TypeRead)
	if _, err := c.Read(tctx(t), "/a"); err != nil {
		t.Fatal(err)
	}
	go answer(3, TypeWrite)
	if err := c.Batch(tctx(t), WriteOp("/a", nil), WriteOp("/b", nil), WriteOp("/c", nil)); err != nil {
		t.Fatal(err)
	}
	if trips != 2 || reqs != 4 {
		t.Errorf("round trips %v, requests %v; want 2 and 4", trips, reqs)
	}
}
