package xenstored

import (
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// domain is what the server knows about a guest domain.
type domain struct {
	id         uint32
	introduced bool
	mfn        uint64
	port       uint32
	shutdown   bool // @releaseDomain already fired for its shutdown
	hasTarget  bool
	target     uint32
	conns      []*conn
}

func (s *Server) domain(id uint32) *domain {
	d := s.domains[id]
	if d == nil {
		d = &domain{id: id}
		s.domains[id] = d
	}
	return d
}

func (s *Server) doIntroduce(c *conn, p []byte) syscall.Errno {
	if !c.priv {
		return syscall.EACCES
	}
	args := splitArgs(p)
	if len(args) < 3 {
		return syscall.EINVAL
	}
	id, ok := parseDomid(args[0])
	if !ok || id >= xenstore.DomidFirstRes {
		return syscall.EINVAL
	}
	mfn, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil {
		u, err2 := strconv.ParseUint(args[1], 10, 64)
		if err2 != nil {
			return syscall.EINVAL
		}
		mfn = int64(u)
	}
	port, err := strconv.ParseUint(args[2], 10, 32)
	if err != nil {
		return syscall.EINVAL
	}
	if id == 0 {
		return 0 // dom0 is the master domain, introduced from the start
	}
	d := s.domain(id)
	d.mfn, d.port = uint64(mfn), uint32(port)
	if !d.introduced {
		d.introduced = true
		d.shutdown = false
		s.fire("@introduceDomain", false, nil)
	}
	return 0
}

func (s *Server) connectedDomain(c *conn, p []byte) (*domain, syscall.Errno) {
	if !c.priv {
		return nil, syscall.EACCES
	}
	ids, e := domidArg(p, 1)
	if e != 0 {
		return nil, e
	}
	if ids[0] == 0 {
		return nil, syscall.EINVAL
	}
	d := s.domains[ids[0]]
	if d == nil || !d.introduced {
		return nil, syscall.ENOENT
	}
	return d, 0
}

func (s *Server) doRelease(c *conn, p []byte) syscall.Errno {
	d, e := s.connectedDomain(c, p)
	if e != 0 {
		return e
	}
	s.destroyDomain(d)
	return 0
}

func (s *Server) doResume(c *conn, p []byte) syscall.Errno {
	d, e := s.connectedDomain(c, p)
	if e != 0 {
		return e
	}
	d.shutdown = false
	return 0
}

func (s *Server) doSetTarget(c *conn, p []byte) syscall.Errno {
	if !c.priv {
		return syscall.EACCES
	}
	ids, e := domidArg(p, 2)
	if e != 0 {
		return e
	}
	d := s.domains[ids[0]]
	if d == nil || !d.introduced {
		return syscall.ENOENT
	}
	d.hasTarget, d.target = true, ids[1]
	return 0
}

// destroyDomain forgets a domain like the C daemon does on RELEASE or when
// the domain is gone: its connections close, the nodes it owns are removed
// (4.17's default since XSA-419), permission entries naming it are dropped,
// and @releaseDomain fires.
func (s *Server) destroyDomain(d *domain) {
	for _, c := range append([]*conn(nil), d.conns...) {
		s.removeConn(c)
		c.shutdown()
	}
	delete(s.domains, d.id)
	t := s.tree
	owned := make([]string, 0, len(t.paths[d.id]))
	for p := range t.paths[d.id] {
		owned = append(owned, p)
	}
	sort.Strings(owned) // parents before children
	for _, p := range owned {
		if n := t.get(p); n != nil && n.owner() == d.id {
			s.removeSubtree(t, nil, p, n)
		}
	}
	refs := make([]string, 0, len(t.refs[d.id]))
	for p := range t.refs[d.id] {
		refs = append(refs, p)
	}
	for _, p := range refs {
		n := t.get(p)
		if n == nil {
			continue
		}
		perms := []xenstore.Perm{n.perms[0]}
		for _, x := range n.perms[1:] {
			if x.Domid != d.id {
				perms = append(perms, x)
			}
		}
		t.put(p, &node{value: n.value, perms: perms, children: n.children})
	}
	s.fire("@releaseDomain", false, nil)
}

func (s *Server) exceptionLoop() {
	defer s.wg.Done()
	for {
		select {
		case <-s.done:
			return
		case <-s.excCh:
		}
		s.excMu.Lock()
		all, only := s.excAll, s.excIDs
		s.excAll, s.excIDs = false, nil
		s.excMu.Unlock()
		s.checkDomains(all, only)
	}
}

// checkDomains re-checks every known guest domain (all) or those of only
// that it knows with Config.DomainState (called without the lock) and
// fires @releaseDomain as the C daemon does.
func (s *Server) checkDomains(all bool, only map[uint32]struct{}) {
	if s.state == nil {
		return
	}
	s.mu.Lock()
	var ids []uint32
	if all {
		ids = make([]uint32, 0, len(s.domains))
		for id := range s.domains {
			if id != 0 {
				ids = append(ids, id)
			}
		}
	} else {
		for id := range only {
			if _, known := s.domains[id]; known && id != 0 {
				ids = append(ids, id)
			}
		}
	}
	s.mu.Unlock()
	type st struct{ exists, down bool }
	res := make([]st, len(ids))
	for i, id := range ids {
		res[i].exists, res[i].down = s.state(id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, id := range ids {
		d := s.domains[id]
		if d == nil {
			continue
		}
		if !res[i].exists {
			s.destroyDomain(d)
			continue
		}
		if res[i].down && !d.shutdown && d.introduced {
			d.shutdown = true
			s.fire("@releaseDomain", false, nil)
		}
	}
}

func (s *Server) doControl(c *conn, p []byte) ([]byte, syscall.Errno) {
	if !c.priv {
		return nil, syscall.EACCES
	}
	args := splitArgs(p)
	if len(args) == 0 || args[0] == "" {
		return nil, syscall.EINVAL
	}
	switch args[0] {
	case "check", "log", "logfile", "memreport":
		return okReply, 0
	case "print":
		s.log.Info("xenstored: control print", "msg", strings.Join(args[1:], " "))
		return okReply, 0
	case "quota":
		q := s.quota
		txt := "Nodes per domain: " + strconv.Itoa(q.Nodes) +
			"\nWatches per domain: " + strconv.Itoa(q.Watches) +
			"\nTransactions per domain: " + strconv.Itoa(q.Transactions) +
			"\nOutstanding requests per domain: " + strconv.Itoa(q.Outstanding) +
			"\nNodes per transaction: " + strconv.Itoa(q.TransactionNodes) +
			"\nMax node size: " + strconv.Itoa(q.NodeSize) +
			"\nMax path length: " + strconv.Itoa(q.PathLen) +
			"\nPermissions per node: " + strconv.Itoa(q.Perms) + "\n"
		return append([]byte(txt), 0), 0
	case "help":
		return []byte("check\nlog\nlogfile\nmemreport\nprint\nquota\nhelp\n\x00"), 0
	}
	return nil, syscall.EINVAL
}
