package xenstore

import (
	"bytes"
	"io"
	"testing"
	"time"
)

func seedStream() [][]byte {
	var seeds [][]byte
	seeds = append(seeds, AppendMsg(nil, TypeRead, 1, 0, []byte("value")))
	seeds = append(seeds, AppendMsg(nil, TypeWatchEvent, 0, 0, JoinStrings("/a/b", "tok")))
	seeds = append(seeds, AppendMsg(nil, TypeError, 1, 0, JoinStrings("ENOENT")))
	seeds = append(seeds, AppendMsg(nil, TypeDirectoryPart, 1, 0, []byte("3f\x00a\x00b\x00\x00")))
	seeds = append(seeds, AppendMsg(nil, TypeGetPerms, 1, 0, JoinStrings("n0", "r5", "b7")))
	seeds = append(seeds, AppendMsg(AppendMsg(nil, TypeWatchEvent, 0, 0, []byte("/x\x00")), TypeDirectory, 1, 0, JoinStrings("a", "b")))
	seeds = append(seeds, []byte{1, 2, 3})
	seeds = append(seeds, AppendMsg(nil, TypeRead, 1, 0, make([]byte, 10))[:20])
	hdr := AppendMsg(nil, TypeRead, 1, 0, nil)
	hdr[12] = 0xff // length over the limit
	seeds = append(seeds, hdr)
	return seeds
}

// FuzzDecodeReplies runs every client-side decoder over arbitrary streams.
func FuzzDecodeReplies(f *testing.F) {
	for _, s := range seedStream() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for i := 0; i < 1000; i++ {
			m, err := ReadMsg(r, nil)
			if err != nil {
				return
			}
			if int(m.Len) != len(m.Payload) || m.Len > PayloadMax {
				t.Fatalf("length %d vs payload %d", m.Len, len(m.Payload))
			}
			DecodeWatchEvent(m.Payload)
			e := DecodeError(m.Type, "", m.Payload)
			_ = e.Error()
			ParseDirectoryPart(m.Payload)
			if perms, err := ParsePerms(SplitStrings(m.Payload)); err == nil {
				for _, p := range perms {
					q, err := ParsePerm(p.String())
					if err != nil || q != p {
						t.Fatalf("perm %v does not round-trip: %v %v", p, q, err)
					}
				}
			}
			ss := SplitStrings(m.Payload)
			if j := JoinStrings(ss...); len(ss) > 0 && !bytes.HasPrefix(j, bytes.TrimSuffix(m.Payload, []byte{0})) {
				t.Fatalf("split/join mismatch %q -> %q", m.Payload, j)
			}
		}
	})
}

// streamConn serves fixed bytes to a Client and swallows its writes.
type streamConn struct{ r io.Reader }

func (s *streamConn) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *streamConn) Write(p []byte) (int, error) { return len(p), nil }
func (s *streamConn) Close() error                { return nil }

// FuzzClientStream feeds arbitrary daemon output to a Client with a pending
// request and a registered watch: it must dispatch or drop everything and
// shut down cleanly at the end of the stream.
func FuzzClientStream(f *testing.F) {
	for _, s := range seedStream() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pr, pw := io.Pipe()
		c := NewClient(&streamConn{r: pr})
		w := &Watch{c: c, path: "/a", token: "tok", ch: make(chan WatchEvent, 16),
			wake: make(chan struct{}, 1), done: make(chan struct{})}
		go w.pump()
		ch := make(chan Msg, 1)
		c.mu.Lock()
		c.watches["tok"] = []*Watch{w}
		c.pending[1] = ch
		c.mu.Unlock()
		go func() {
			pw.Write(data)
			pw.Close()
		}()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			t.Fatal("client did not notice the end of the stream")
		}
		pr.Close()             // unblock the writer if the client stopped reading early
		for range w.Events() { // closed by the shutdown
		}
	})
}

func FuzzParsePerm(f *testing.F) {
	for _, s := range []string{"n0", "r1", "w65535", "b7", "x1", "r", "r-1", "r99999", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePerm(s)
		if err != nil {
			return
		}
		if p.String() != s && "0"+p.String()[1:] != s {
			// Leading zeros are the only non-canonical accepted form.
			q, err := ParsePerm(p.String())
			if err != nil || q != p {
				t.Fatalf("%q -> %v does not round-trip", s, p)
			}
		}
		if validPerms([]Perm{p}) != nil {
			t.Fatalf("parsed perm %v not valid", p)
		}
	})
}
