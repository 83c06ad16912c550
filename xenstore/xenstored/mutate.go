package xenstored

import (
	"bytes"
	"strconv"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// event is a watch event waiting for its transaction to commit.
type event struct {
	name  string
	exact bool
	perms []xenstore.Perm
}

// emit fires a watch event now, or at commit when inside a transaction.
func (s *Server) emit(tx *txn, name string, exact bool, perms []xenstore.Perm) {
	if tx != nil {
		tx.v.events = append(tx.v.events, event{name, exact, perms})
		return
	}
	s.fire(name, exact, perms)
}

// txQuota refuses a change from an unprivileged domain whose transaction
// already changed TransactionNodes nodes.
func (s *Server) txQuota(c *conn, tx *txn) syscall.Errno {
	if tx != nil && !c.priv && tx.v.changed >= s.quota.TransactionNodes {
		return syscall.ENOSPC
	}
	return 0
}

// inheritPerms gives a new node its parent's permissions; an unprivileged
// creator becomes the owner. Permission slices are never modified in place,
// so nodes share them.
func inheritPerms(c *conn, parent []xenstore.Perm) []xenstore.Perm {
	if c.priv || parent[0].Domid == c.domid {
		return parent
	}
	p := append([]xenstore.Perm(nil), parent...)
	p[0].Domid = c.domid
	return p
}

// create makes path and its missing ancestors (the connection must be able
// to write the nearest existing ancestor) and gives the new node value.
func (s *Server) create(c *conn, v view, path string, value []byte) syscall.Errno {
	missing := []string{path}
	p := path
	var parent *node
	for {
		p = parentPath(p)
		if n := v.get(p); n != nil {
			parent = n
			break
		}
		missing = append(missing, p)
	}
	if s.access(c, parent.perms)&permWrite == 0 {
		return syscall.EACCES
	}
	if !c.priv {
		if v.nodesOwned(c.domid)+len(missing) > s.quota.Nodes {
			return syscall.ENOSPC
		}
		n := node{perms: inheritPerms(c, parent.perms), value: value}
		if n.size() >= s.quota.NodeSize {
			return syscall.ENOSPC
		}
	}
	cur, curPath := parent, p
	for i := len(missing) - 1; i >= 0; i-- {
		np := missing[i]
		cur = cur.withChild(baseName(np))
		v.put(curPath, cur)
		cur = &node{perms: inheritPerms(c, cur.perms)}
		curPath = np
	}
	cur.value = value
	v.put(curPath, cur)
	return 0
}

func (s *Server) doWrite(c *conn, v view, tx *txn, p []byte) syscall.Errno {
	z := bytes.IndexByte(p, 0)
	if z < 0 {
		return syscall.EINVAL
	}
	path, _, e := s.canon(c, string(p[:z]), false)
	if e != 0 {
		return e
	}
	if e := s.txQuota(c, tx); e != 0 {
		return e
	}
	value := p[z+1:]
	n, e := s.getNode(c, v, path, permWrite)
	switch {
	case e == syscall.ENOENT:
		if e := s.create(c, v, path, value); e != 0 {
			return e
		}
		n = v.get(path)
	case e != 0:
		return e
	default:
		nn := &node{value: value, perms: n.perms, children: n.children}
		if !c.priv && nn.size() >= s.quota.NodeSize {
			return syscall.ENOSPC
		}
		v.put(path, nn)
		n = nn
	}
	s.emit(tx, path, false, n.perms)
	return 0
}

func (s *Server) doMkdir(c *conn, v view, tx *txn, p []byte) syscall.Errno {
	path, _, e := s.pathArg(c, p, false)
	if e != 0 {
		return e
	}
	_, e = s.getNode(c, v, path, permWrite)
	if e == 0 {
		return 0 // exists already: fine, nothing changes
	}
	if e != syscall.ENOENT {
		return e
	}
	if e := s.txQuota(c, tx); e != 0 {
		return e
	}
	if e := s.create(c, v, path, nil); e != 0 {
		return e
	}
	s.emit(tx, path, false, v.get(path).perms)
	return 0
}

func (s *Server) doRm(c *conn, v view, tx *txn, p []byte) syscall.Errno {
	path, _, e := s.pathArg(c, p, false)
	if e != 0 {
		return e
	}
	if path == "/" {
		return syscall.EINVAL
	}
	n, e := s.getNode(c, v, path, permWrite)
	if e == syscall.ENOENT {
		// Not an error if the parent exists.
		if v.get(parentPath(path)) != nil {
			return 0
		}
		return syscall.ENOENT
	}
	if e != 0 {
		return e
	}
	if e := s.txQuota(c, tx); e != 0 {
		return e
	}
	s.removeSubtree(v, tx, path, n)
	return 0
}

// removeSubtree deletes path and everything below it, unlinks it from its
// parent and fires the events: the removed descendants fire watches set
// exactly on them, the removed node fires like a change.
func (s *Server) removeSubtree(v view, tx *txn, path string, n *node) {
	var walk func(p string, n *node)
	walk = func(p string, n *node) {
		for _, ch := range n.children {
			cp := childPath(p, ch)
			if cn := v.get(cp); cn != nil {
				walk(cp, cn)
				s.emit(tx, cp, true, cn.perms)
			}
			v.del(cp)
		}
	}
	walk(path, n)
	v.del(path)
	pp := parentPath(path)
	if parent := v.get(pp); parent != nil {
		v.put(pp, parent.withoutChild(baseName(path)))
	}
	s.emit(tx, path, false, n.perms)
}

func (s *Server) doSetPerms(c *conn, v view, tx *txn, p []byte) syscall.Errno {
	args := splitArgs(p)
	if len(args) < 2 {
		return syscall.EINVAL
	}
	path, _, e := s.canon(c, args[0], true)
	if e != 0 {
		return e
	}
	perms, err := xenstore.ParsePerms(args[1:])
	if err != nil {
		return syscall.EINVAL
	}
	if !c.priv && len(perms) > s.quota.Perms {
		return syscall.ENOSPC
	}
	if c.setPermsOwnerGone {
		// C xenstored 4.17 (do_set_perms: owner marked XS_PERM_IGNORE by
		// domain_alloc_permrefs): ENOENT when the owner domain does not
		// exist; observed on C xenstored in nested Xen.
		return syscall.ENOENT
	}
	if path[0] == '@' {
		if s.special[path] == nil {
			return syscall.ENOENT
		}
		if !c.priv {
			return syscall.EACCES
		}
		s.special[path] = perms
		return 0
	}
	n, e := s.getNode(c, v, path, permWrite|permOwner)
	if e != 0 {
		return e
	}
	if !c.priv && perms[0].Domid != n.owner() {
		return syscall.EPERM
	}
	nn := &node{value: n.value, perms: perms, children: n.children}
	if !c.priv && nn.size() >= s.quota.NodeSize {
		return syscall.ENOSPC
	}
	if e := s.txQuota(c, tx); e != 0 {
		return e
	}
	v.put(path, nn)
	s.emit(tx, path, false, n.perms)
	return 0
}

func (s *Server) doTransactionStart(c *conn, tx *txn) ([]byte, syscall.Errno) {
	if tx != nil {
		return nil, syscall.EBUSY
	}
	if !c.priv && len(c.txs) >= s.quota.Transactions {
		return nil, syscall.ENOSPC
	}
	id := s.nextTx
	for id == 0 || c.txs[id] != nil {
		id++
	}
	s.nextTx = id + 1
	c.txs[id] = &txn{id: id, v: newTxView(s.tree)}
	return []byte(strconv.FormatUint(uint64(id), 10) + "\x00"), 0
}

func (s *Server) doTransactionEnd(c *conn, tx *txn, p []byte) syscall.Errno {
	arg, ok := oneArg(p)
	if !ok || (arg != "T" && arg != "F") {
		return syscall.EINVAL
	}
	if tx == nil {
		return syscall.ENOENT
	}
	delete(c.txs, tx.id)
	if arg == "F" {
		return 0
	}
	if tx.v.conflict() {
		return syscall.EAGAIN
	}
	tx.v.apply()
	for _, ev := range tx.v.events {
		s.fire(ev.name, ev.exact, ev.perms)
	}
	return 0
}

// permsOwnerGone reports whether a SET_PERMS payload names as owner a domain
// that Config.DomainState says does not exist. Called without s.mu.
func (s *Server) permsOwnerGone(p []byte) bool {
	if s.state == nil {
		return false
	}
	args := splitArgs(p)
	if len(args) < 2 {
		return false
	}
	perms, err := xenstore.ParsePerms(args[1:2])
	if err != nil || len(perms) != 1 || perms[0].Domid == 0 {
		return false
	}
	exists, _ := s.state(perms[0].Domid)
	return !exists
}
