package xenstored

import (
	"strings"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

type watchKey struct{ path, token string }

// watch is a registered watch; path is absolute (or special).
type watch struct {
	c        *conn
	path     string
	token    string
	relative bool
}

func (s *Server) unindexWatch(w *watch) {
	l := s.watchIdx[w.path]
	for i, x := range l {
		if x == w {
			l = append(l[:i:i], l[i+1:]...)
			break
		}
	}
	if len(l) == 0 {
		delete(s.watchIdx, w.path)
	} else {
		s.watchIdx[w.path] = l
	}
}

func (s *Server) doWatch(c *conn, p []byte) ([]byte, []byte, syscall.Errno) {
	args := splitArgs(p)
	if len(args) != 2 { // 4.17 has no depth argument
		return nil, nil, syscall.EINVAL
	}
	path, rel, e := s.canon(c, args[0], true)
	if e != 0 {
		return nil, nil, e
	}
	k := watchKey{path, args[1]}
	if c.watches[k] != nil {
		return nil, nil, syscall.EEXIST
	}
	if !c.priv && len(c.watches) >= s.quota.Watches {
		return nil, nil, syscall.E2BIG
	}
	w := &watch{c: c, path: path, token: args[1], relative: rel}
	c.watches[k] = w
	s.watchIdx[path] = append(s.watchIdx[path], w)
	// Fire once straight away, after the reply, with the path as given.
	ev := xenstore.AppendMsg(nil, xenstore.TypeWatchEvent, 0, 0, xenstore.JoinStrings(args[0], args[1]))
	return okReply, ev, 0
}

func (s *Server) doUnwatch(c *conn, p []byte) syscall.Errno {
	args := splitArgs(p)
	if len(args) != 2 {
		return syscall.EINVAL
	}
	path, _, e := s.canon(c, args[0], true)
	if e != 0 {
		return e
	}
	k := watchKey{path, args[1]}
	w := c.watches[k]
	if w == nil {
		return syscall.ENOENT
	}
	delete(c.watches, k)
	s.unindexWatch(w)
	return 0
}

// fire sends the event for a change of name to every matching watch: those
// on name or an ancestor of it, or, with exact, only those on name itself.
// Unprivileged watchers only see nodes they may read (perms as they were at
// the change).
func (s *Server) fire(name string, exact bool, perms []xenstore.Perm) {
	if name[0] == '@' {
		s.fireList(s.watchIdx[name], name, s.special[name])
		return
	}
	if exact {
		s.fireList(s.watchIdx[name], name, perms)
		return
	}
	p := name
	for {
		s.fireList(s.watchIdx[p], name, perms)
		if p == "/" {
			return
		}
		p = parentPath(p)
	}
}

func (s *Server) fireList(ws []*watch, name string, perms []xenstore.Perm) {
	for _, w := range ws {
		if !w.c.priv && perms != nil && s.access(w.c, perms)&permRead == 0 {
			continue
		}
		ev := name
		if w.relative && strings.HasPrefix(name, w.c.home) {
			ev = name[len(w.c.home):]
		}
		if len(ev)+1+len(w.token)+1 > xenstore.PayloadMax {
			continue // C xenstored drops an event it could not frame; so do we
		}
		w.c.enqueue(xenstore.AppendMsg(make([]byte, 0, xenstore.HeaderSize+len(ev)+len(w.token)+3),
			xenstore.TypeWatchEvent, 0, 0, xenstore.JoinStrings(ev, w.token)), false)
	}
}
