package xenstored

import (
	"bytes"
	"strconv"
	"strings"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

var okReply = []byte("OK\x00")

const (
	permRead  = 1
	permWrite = 2
	permOwner = 4
)

// txn is an open transaction of a connection.
type txn struct {
	id uint32
	v  *txView
}

// handle processes one request (s.mu held) and returns the reply type and
// payload, plus an optional message to queue after the reply.
func (s *Server) handle(c *conn, m xenstore.Msg) (xenstore.MsgType, []byte, []byte) {
	reply, after, e := s.dispatch(c, m)
	if e == 0 && len(reply) > xenstore.PayloadMax {
		e = syscall.E2BIG
	}
	if e != 0 {
		return xenstore.TypeError, xenstore.JoinStrings(xenstore.ErrnoName(e)), nil
	}
	return m.Type, reply, after
}

func (s *Server) dispatch(c *conn, m xenstore.Msg) ([]byte, []byte, syscall.Errno) {
	var tx *txn
	var v view = s.tree
	switch m.Type {
	case xenstore.TypeRead, xenstore.TypeWrite, xenstore.TypeMkdir, xenstore.TypeRm,
		xenstore.TypeDirectory, xenstore.TypeDirectoryPart, xenstore.TypeGetPerms,
		xenstore.TypeSetPerms, xenstore.TypeTransactionStart, xenstore.TypeTransactionEnd:
		if m.TxID != 0 {
			tx = c.txs[m.TxID]
			if tx == nil {
				return nil, nil, syscall.ENOENT
			}
			v = tx.v
		}
	}
	p := m.Payload
	switch m.Type {
	case xenstore.TypeRead:
		r, e := s.doRead(c, v, p)
		return r, nil, e
	case xenstore.TypeWrite:
		return ack(s.doWrite(c, v, tx, p))
	case xenstore.TypeMkdir:
		return ack(s.doMkdir(c, v, tx, p))
	case xenstore.TypeRm:
		return ack(s.doRm(c, v, tx, p))
	case xenstore.TypeDirectory:
		r, e := s.doDirectory(c, v, p)
		return r, nil, e
	case xenstore.TypeDirectoryPart:
		r, e := s.doDirectoryPart(c, v, p)
		return r, nil, e
	case xenstore.TypeGetPerms:
		r, e := s.doGetPerms(c, v, p)
		return r, nil, e
	case xenstore.TypeSetPerms:
		return ack(s.doSetPerms(c, v, tx, p))
	case xenstore.TypeWatch:
		return s.doWatch(c, p)
	case xenstore.TypeUnwatch:
		return ack(s.doUnwatch(c, p))
	case xenstore.TypeTransactionStart:
		r, e := s.doTransactionStart(c, tx)
		return r, nil, e
	case xenstore.TypeTransactionEnd:
		return ack(s.doTransactionEnd(c, tx, p))
	case xenstore.TypeIntroduce:
		return ack(s.doIntroduce(c, p))
	case xenstore.TypeRelease:
		return ack(s.doRelease(c, p))
	case xenstore.TypeGetDomainPath:
		d, e := domidArg(p, 1)
		if e != 0 {
			return nil, nil, e
		}
		return []byte("/local/domain/" + strconv.FormatUint(uint64(d[0]), 10) + "\x00"), nil, 0
	case xenstore.TypeIsDomainIntroduced:
		d, e := domidArg(p, 1)
		if e != 0 {
			return nil, nil, e
		}
		if dom := s.domains[d[0]]; dom != nil && dom.introduced {
			return []byte("T\x00"), nil, 0
		}
		return []byte("F\x00"), nil, 0
	case xenstore.TypeResume:
		return ack(s.doResume(c, p))
	case xenstore.TypeSetTarget:
		return ack(s.doSetTarget(c, p))
	case xenstore.TypeResetWatches:
		for _, w := range c.watches {
			s.unindexWatch(w)
		}
		c.watches = make(map[watchKey]*watch)
		c.txs = make(map[uint32]*txn)
		return okReply, nil, 0
	case xenstore.TypeControl:
		r, e := s.doControl(c, p)
		return r, nil, e
	}
	return nil, nil, syscall.ENOSYS
}

// ack turns an errno-only result into the "OK" reply.
func ack(e syscall.Errno) ([]byte, []byte, syscall.Errno) {
	if e != 0 {
		return nil, nil, e
	}
	return okReply, nil, 0
}

// splitArgs splits a payload into its NUL-separated strings the way the C
// daemon counts them: a final unterminated string counts, a final NUL does
// not start another.
func splitArgs(p []byte) []string {
	if len(p) == 0 {
		return nil
	}
	if p[len(p)-1] == 0 {
		p = p[:len(p)-1]
	}
	return strings.Split(string(p), "\x00")
}

// oneArg returns the single NUL-terminated string of a payload.
func oneArg(p []byte) (string, bool) {
	if len(p) == 0 || bytes.IndexByte(p, 0) != len(p)-1 {
		return "", false
	}
	return string(p[:len(p)-1]), true
}

// parseDomid parses a decimal domid (0..65535).
func parseDomid(s string) (uint32, bool) {
	if s == "" || len(s) > 5 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	d, err := strconv.ParseUint(s, 10, 32)
	if err != nil || d > 0xFFFF {
		return 0, false
	}
	return uint32(d), true
}

// domidArg parses at least n leading domid arguments.
func domidArg(p []byte, n int) ([]uint32, syscall.Errno) {
	args := splitArgs(p)
	if len(args) < n {
		return nil, syscall.EINVAL
	}
	out := make([]uint32, n)
	for i := 0; i < n; i++ {
		d, ok := parseDomid(args[i])
		if !ok {
			return nil, syscall.EINVAL
		}
		out[i] = d
	}
	return out, 0
}

// canon turns a request path into an absolute node name, checking it like
// the C daemon's is_valid_nodename. relative reports a path that was given
// relative to the connection's home.
func (s *Server) canon(c *conn, p string, allowSpecial bool) (abs string, relative bool, e syscall.Errno) {
	if p == "" {
		return "", false, syscall.EINVAL
	}
	if p[0] == '@' {
		if !allowSpecial || len(p) > xenstore.RelPathMax || strings.IndexByte(p, 0) >= 0 {
			return "", false, syscall.EINVAL
		}
		return p, false, 0
	}
	abs = p
	if p[0] != '/' {
		abs = c.home + p
		relative = true
	}
	if !xenstore.ValidNodeNameWithin(abs, s.quota.PathLen) {
		return "", false, syscall.EINVAL
	}
	return abs, relative, 0
}

// access returns the permission bits a connection has on a node.
func (s *Server) access(c *conn, perms []xenstore.Perm) int {
	if c.priv {
		return permRead | permWrite | permOwner
	}
	target, hasTarget := uint32(0), false
	if d := s.domains[c.domid]; d != nil && d.hasTarget {
		target, hasTarget = d.target, true
	}
	own := perms[0].Domid
	if own == c.domid || (hasTarget && own == target) {
		return permRead | permWrite | permOwner
	}
	bits := func(a xenstore.Access) int {
		b := 0
		if a.CanRead() {
			b |= permRead
		}
		if a.CanWrite() {
			b |= permWrite
		}
		return b
	}
	for _, p := range perms[1:] {
		if p.Domid == c.domid || (hasTarget && p.Domid == target) {
			return bits(p.Access)
		}
	}
	return bits(perms[0].Access)
}

// getNode fetches a node the connection must have perm on. A missing node
// gives ENOENT only if the nearest existing ancestor grants perm, EACCES
// otherwise (the C daemon's errno_from_parents).
func (s *Server) getNode(c *conn, v view, path string, perm int) (*node, syscall.Errno) {
	n := v.get(path)
	if n == nil {
		return nil, s.errnoFromParents(c, v, path, perm)
	}
	if s.access(c, n.perms)&perm != perm {
		return nil, syscall.EACCES
	}
	return n, 0
}

func (s *Server) errnoFromParents(c *conn, v view, path string, perm int) syscall.Errno {
	p := path
	for p != "/" {
		p = parentPath(p)
		if n := v.get(p); n != nil {
			if s.access(c, n.perms)&perm != 0 {
				return syscall.ENOENT
			}
			return syscall.EACCES
		}
	}
	return syscall.EACCES
}

func (s *Server) pathArg(c *conn, p []byte, special bool) (string, bool, syscall.Errno) {
	a, ok := oneArg(p)
	if !ok {
		return "", false, syscall.EINVAL
	}
	return s.canon(c, a, special)
}

func (s *Server) doRead(c *conn, v view, p []byte) ([]byte, syscall.Errno) {
	path, _, e := s.pathArg(c, p, false)
	if e != 0 {
		return nil, e
	}
	n, e := s.getNode(c, v, path, permRead)
	if e != 0 {
		return nil, e
	}
	return n.value, 0
}

func (s *Server) doDirectory(c *conn, v view, p []byte) ([]byte, syscall.Errno) {
	path, _, e := s.pathArg(c, p, false)
	if e != 0 {
		return nil, e
	}
	n, e := s.getNode(c, v, path, permRead)
	if e != 0 {
		return nil, e
	}
	return xenstore.JoinStrings(n.children...), 0
}

func (s *Server) doDirectoryPart(c *conn, v view, p []byte) ([]byte, syscall.Errno) {
	args := splitArgs(p)
	if len(args) != 2 {
		return nil, syscall.EINVAL
	}
	path, _, e := s.canon(c, args[0], false)
	if e != 0 {
		return nil, e
	}
	n, e := s.getNode(c, v, path, permRead)
	if e != 0 {
		return nil, e
	}
	children := xenstore.JoinStrings(n.children...)
	// As C xenstored 4.17 (send_directory_part): the generation in decimal,
	// the offset parsed with atoi (so garbage is 0), and an offset at or past
	// the end answered with the generation and an empty name, not an error
	// (observed on C xenstored in nested Xen: offset total+1 succeeds).
	gen := strconv.FormatUint(n.gen, 10)
	out := append([]byte(gen), 0)
	off, past := atoiOffset(args[1], len(children))
	if past || off >= len(children) {
		return append(out, 0), 0
	}
	rest := children[off:]
	maxLen := xenstore.PayloadMax - len(out) - 1
	l := 0
	for l < len(rest) {
		e := bytes.IndexByte(rest[l:], 0)
		if e < 0 || l+e+1 > maxLen {
			break
		}
		l += e + 1
	}
	out = append(out, rest[:l]...)
	if l == len(rest) {
		out = append(out, 0) // empty name: end of list
	}
	return out, 0
}

func (s *Server) doGetPerms(c *conn, v view, p []byte) ([]byte, syscall.Errno) {
	path, _, e := s.pathArg(c, p, true)
	if e != 0 {
		return nil, e
	}
	var perms []xenstore.Perm
	if path[0] == '@' {
		perms = s.special[path]
		if perms == nil {
			return nil, syscall.ENOENT
		}
		if s.access(c, perms)&permRead == 0 {
			return nil, syscall.EACCES
		}
	} else {
		n, e := s.getNode(c, v, path, permRead)
		if e != 0 {
			return nil, e
		}
		perms = n.perms
	}
	ss := make([]string, len(perms))
	for i, x := range perms {
		ss[i] = x.String()
	}
	return xenstore.JoinStrings(ss...), 0
}

// atoiOffset parses a DIRECTORY_PART offset the way C's atoi does (optional
// sign, leading digits, the rest ignored, no digits => 0). past reports a
// value that, as C's unsigned int, lies beyond limit (negative or huge).
func atoiOffset(s string, limit int) (off int, past bool) {
	i, neg := 0, false
	for i < len(s) && (s[i] == ' ' || (s[i] >= '\t' && s[i] <= '\r')) {
		i++
	}
	if i < len(s) && (s[i] == '+' || s[i] == '-') {
		neg = s[i] == '-'
		i++
	}
	for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
		off = off*10 + int(s[i]-'0')
		if off > limit {
			return limit, true
		}
	}
	if neg && off != 0 {
		return limit, true
	}
	return off, false
}
