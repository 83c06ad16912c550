package xenstored

import (
	"bytes"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// testConn builds a connection without goroutines for driving handle
// directly.
func testConn(s *Server, domid uint32, priv bool) *conn {
	c := &conn{s: s, domid: domid, priv: priv,
		watches: make(map[watchKey]*watch), txs: make(map[uint32]*txn),
		home: fmt.Sprintf("/local/domain/%d/", domid),
		wake: make(chan struct{}, 1), done: make(chan struct{})}
	c.space = sync.NewCond(&c.outMu)
	s.conns[c] = struct{}{}
	return c
}

func req(s *Server, c *conn, t xenstore.MsgType, tx uint32, args ...string) (xenstore.MsgType, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rt, p, _ := s.handle(c, xenstore.Msg{Header: xenstore.Header{Type: t, ReqID: 1, TxID: tx}, Payload: xenstore.JoinStrings(args...)})
	return rt, string(p)
}

// checkTree verifies the tree's structural invariants and indexes.
func checkTree(t *testing.T, tr *tree) {
	t.Helper()
	owned := map[uint32]int{}
	for p, n := range tr.nodes {
		if len(n.perms) == 0 {
			t.Fatalf("%s has no perms", p)
		}
		owned[n.owner()]++
		seen := map[string]bool{}
		for _, ch := range n.children {
			if seen[ch] || ch == "" || strings.Contains(ch, "/") {
				t.Fatalf("%s: bad or duplicate child %q", p, ch)
			}
			seen[ch] = true
			if tr.nodes[childPath(p, ch)] == nil {
				t.Fatalf("%s lists missing child %q", p, ch)
			}
		}
		if p == "/" {
			continue
		}
		if !xenstore.ValidNodeName(p) {
			t.Fatalf("invalid node name %q in tree", p)
		}
		parent := tr.nodes[parentPath(p)]
		if parent == nil {
			t.Fatalf("%s has no parent", p)
		}
		found := false
		for _, ch := range parent.children {
			found = found || ch == baseName(p)
		}
		if !found {
			t.Fatalf("%s not listed by its parent", p)
		}
	}
	for d, n := range owned {
		if tr.owned[d] != n {
			t.Fatalf("owner index for %d = %d, want %d", d, tr.owned[d], n)
		}
	}
	if tr.nodes["/"] == nil {
		t.Fatalf("root removed")
	}
}

func TestHandleBasics(t *testing.T) {
	s := New(Config{})
	defer s.Close()
	c := testConn(s, 0, true)
	if rt, p := req(s, c, xenstore.TypeWrite, 0, "/a/b"); rt != xenstore.TypeWrite || p != "OK\x00" {
		// WRITE "/a/b\0" with an empty value
		t.Fatalf("write: %s %q", rt, p)
	}
	if rt, p := req(s, c, xenstore.TypeDirectory, 0, "/a"); rt != xenstore.TypeDirectory || p != "b\x00" {
		t.Fatalf("directory: %s %q", rt, p)
	}
	if rt, p := req(s, c, xenstore.TypeRead, 0, "/a/c"); rt != xenstore.TypeError || p != "ENOENT\x00" {
		t.Fatalf("read missing: %s %q", rt, p)
	}
	if rt, p := req(s, c, xenstore.TypeRead, 0, "/a", "extra"); rt != xenstore.TypeError || p != "EINVAL\x00" {
		t.Fatalf("read with two args: %s %q", rt, p)
	}
	checkTree(t, s.tree)
}

func TestDomainException(t *testing.T) {
	var mu sync.Mutex
	state := map[uint32][2]bool{5: {true, false}}
	s := New(Config{DomainState: func(d uint32) (bool, bool) {
		mu.Lock()
		defer mu.Unlock()
		st := state[d]
		return st[0], st[1]
	}})
	defer s.Close()
	c := testConn(s, 0, true)
	req(s, c, xenstore.TypeWatch, 0, "@releaseDomain", "r")
	req(s, c, xenstore.TypeIntroduce, 0, "5", "100", "2")
	events := func() int {
		c.outMu.Lock()
		defer c.outMu.Unlock()
		return c.events
	}
	before := events()
	mu.Lock()
	state[5] = [2]bool{true, true} // shut down
	mu.Unlock()
	s.checkDomains(false, map[uint32]struct{}{6: {}}) // an exception naming another domain
	if events() != before {
		t.Fatalf("an exception of domain 6 fired @releaseDomain for domain 5")
	}
	s.checkDomains(true, nil)
	if events() != before+1 {
		t.Fatalf("shutdown did not fire @releaseDomain once (%d -> %d)", before, events())
	}
	s.checkDomains(true, nil) // no change, no event
	if events() != before+1 {
		t.Fatalf("@releaseDomain fired again without a change")
	}
	mu.Lock()
	delete(state, 5) // destroyed
	mu.Unlock()
	s.checkDomains(false, map[uint32]struct{}{5: {}}) // an exception naming it
	if events() != before+2 {
		t.Fatalf("destruction did not fire @releaseDomain")
	}
	if _, p := req(s, c, xenstore.TypeIsDomainIntroduced, 0, "5"); p != "F\x00" {
		t.Fatalf("destroyed domain still introduced: %q", p)
	}
}

// FuzzServerRequests drives the request handlers with arbitrary messages
// from a privileged and an unprivileged connection and checks the tree's
// invariants afterwards.
func FuzzServerRequests(f *testing.F) {
	seq := func(msgs ...[]byte) []byte { return bytes.Join(msgs, nil) }
	m := func(t xenstore.MsgType, tx uint32, args ...string) []byte {
		return xenstore.AppendMsg(nil, t, 1, tx, xenstore.JoinStrings(args...))
	}
	f.Add(seq(m(xenstore.TypeWrite, 0, "/a/b", "v"), m(xenstore.TypeRead, 0, "/a/b")), false)
	f.Add(seq(m(xenstore.TypeMkdir, 0, "/local/domain/7"), m(xenstore.TypeSetPerms, 0, "/local/domain/7", "b7"),
		m(xenstore.TypeWrite, 0, "x/y", "1")), true)
	f.Add(seq(m(xenstore.TypeTransactionStart, 0, ""), m(xenstore.TypeWrite, 1, "/t/x", "1"),
		m(xenstore.TypeRm, 1, "/t"), m(xenstore.TypeTransactionEnd, 1, "T")), false)
	f.Add(seq(m(xenstore.TypeWatch, 0, "/w", "t"), m(xenstore.TypeWrite, 0, "/w/x", ""), m(xenstore.TypeRm, 0, "/w"),
		m(xenstore.TypeUnwatch, 0, "/w", "t"), m(xenstore.TypeResetWatches, 0, "")), false)
	f.Add(seq(m(xenstore.TypeIntroduce, 0, "7", "1", "2"), m(xenstore.TypeSetTarget, 0, "7", "8"),
		m(xenstore.TypeResume, 0, "7"), m(xenstore.TypeRelease, 0, "7"), m(xenstore.TypeGetDomainPath, 0, "7")), false)
	f.Add(seq(m(xenstore.TypeWrite, 0, "/d/a", ""), m(xenstore.TypeDirectoryPart, 0, "/d", "0"),
		m(xenstore.TypeGetPerms, 0, "@introduceDomain"), m(xenstore.TypeControl, 0, "quota")), false)
	f.Add(seq(m(xenstore.TypeSetPerms, 0, "/", "x"), m(xenstore.TypeWrite, 0, "/a//b", ""),
		m(xenstore.MsgType(99), 0, "")), true)
	f.Fuzz(func(t *testing.T, data []byte, asGuest bool) {
		s := New(Config{})
		defer s.Close()
		priv := testConn(s, 0, true)
		guest := testConn(s, 7, false)
		s.mu.Lock()
		s.domain(7).conns = []*conn{guest}
		s.mu.Unlock()
		r := bytes.NewReader(data)
		for i := 0; i < 200; i++ {
			msg, err := xenstore.ReadMsg(r, nil)
			if err != nil {
				break
			}
			c := priv
			if asGuest && i%2 == 1 {
				c = guest
			}
			s.mu.Lock()
			rt, p, after := s.handle(c, msg)
			s.mu.Unlock()
			if len(p) > xenstore.PayloadMax {
				t.Fatalf("reply of %d bytes", len(p))
			}
			if rt != msg.Type && rt != xenstore.TypeError {
				t.Fatalf("reply type %s for %s", rt, msg.Type)
			}
			if rt == xenstore.TypeError {
				if _, ok := xenstore.ErrnoFromName(strings.TrimSuffix(string(p), "\x00")); !ok {
					t.Fatalf("unknown error name %q", p)
				}
			}
			if after != nil && msg.Type != xenstore.TypeWatch {
				t.Fatalf("post-reply message for %s", msg.Type)
			}
		}
		checkTree(t, s.tree)
		// Every node a guest owns is indexed.
		var paths []string
		for p := range s.tree.paths[7] {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		for _, p := range paths {
			if n := s.tree.nodes[p]; n == nil || n.owner() != 7 {
				t.Fatalf("stale owner index entry %s", p)
			}
		}
	})
}

func FuzzCanon(f *testing.F) {
	for _, p := range []string{"/", "/a/b", "a/b", "@introduceDomain", "/a/", "//", "/a b", "", "/local/domain/7/x"} {
		f.Add(p)
	}
	f.Fuzz(func(t *testing.T, p string) {
		s := New(Config{})
		defer s.Close()
		for _, c := range []*conn{testConn(s, 0, true), testConn(s, 9, false)} {
			abs, rel, e := s.canon(c, p, true)
			if e != 0 {
				continue
			}
			if abs[0] != '@' && !xenstore.ValidNodeName(abs) {
				t.Fatalf("canon(%q) = %q, invalid", p, abs)
			}
			if rel && !strings.HasPrefix(abs, c.home) {
				t.Fatalf("relative %q -> %q outside home", p, abs)
			}
		}
	})
}

// BenchmarkHandleLayout measures the server alone (no sockets): one
// domain's ~30-node layout in a transaction per iteration, with
// /local/domain growing to b.N children.
func BenchmarkHandleLayout(b *testing.B) {
	s := New(Config{})
	defer s.Close()
	c := testConn(s, 0, true)
	req(s, c, xenstore.TypeMkdir, 0, "/local/domain")
	names := []string{"name", "domid", "vm", "memory/static-max", "memory/target", "memory/videoram",
		"cpu/0/availability", "cpu/1/availability", "control/shutdown", "control/feature-poweroff",
		"control/feature-reboot", "control/sysrq", "data", "drivers", "feature", "attr", "error",
		"device/suspend/event-channel", "store/port", "store/ring-ref", "console/port",
		"console/ring-ref", "console/limit", "console/type", "image/os_type"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := fmt.Sprintf("/local/domain/%d", i+1)
		req(s, c, xenstore.TypeMkdir, 0, d)
		_, id := req(s, c, xenstore.TypeTransactionStart, 0, "")
		tx64, _ := strconv.ParseUint(strings.TrimSuffix(id, "\x00"), 10, 32)
		tx := uint32(tx64)
		for _, n := range names {
			s.mu.Lock()
			s.handle(c, xenstore.Msg{Header: xenstore.Header{Type: xenstore.TypeWrite, TxID: tx}, Payload: []byte(d + "/" + n + "\x00v")})
			s.mu.Unlock()
		}
		req(s, c, xenstore.TypeSetPerms, tx, d+"/data", fmt.Sprintf("n%d", i+1))
		if rt, p := req(s, c, xenstore.TypeTransactionEnd, tx, "T"); rt != xenstore.TypeTransactionEnd {
			b.Fatalf("commit: %q", p)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "domains/s")
}

// TestCanonPathLength: C's is_valid_nodename limit, 2048 bytes below
// /local/domain/<id>/ (the whole path elsewhere), binds dom0 as well.
func TestCanonPathLength(t *testing.T) {
	s := New(Config{Quota: Quota{PathLen: 4000}}) // capped at 2048 as C caps -M
	defer s.Close()
	rel := func(n int) string { return strings.Repeat("a", n) }
	cases := []struct {
		path string
		ok   bool
	}{
		{"/" + rel(2047), true},
		{"/" + rel(2048), false},
		{"/local/domain/0/" + rel(2048), true},
		{"/local/domain/0/" + rel(2049), false},
		{"/local/domain/65535/" + rel(2048), true},
		{"/local/domain/-1/" + rel(2048), true},      // %5u takes a sign
		{"/local/domain/123456/" + rel(2048), false}, // six digits: no prefix
		{"/local/domain/" + rel(2048-len("/local/domain/")), true},
		{"/local/domain/" + rel(2049-len("/local/domain/")), false},
	}
	for _, priv := range []bool{true, false} {
		c := testConn(s, 9, priv)
		for _, tc := range cases {
			if _, _, e := s.canon(c, tc.path, false); (e == 0) != tc.ok {
				t.Errorf("priv=%v canon(%.30q... %d bytes) = %v, want ok=%v", priv, tc.path, len(tc.path), e, tc.ok)
			}
		}
		if _, _, e := s.canon(c, rel(2048), false); e != 0 {
			t.Errorf("priv=%v: relative path of 2048 bytes refused: %v", priv, e)
		}
		if _, _, e := s.canon(c, rel(2049), false); e != syscall.EINVAL {
			t.Errorf("priv=%v: relative path of 2049 bytes = %v, want EINVAL", priv, e)
		}
	}
}
