// Package xenstored is an embedded xenstore daemon speaking the Xen 4.17
// wire protocol, for the simulator, the quick start and tests.
//
// It follows the C xenstored: a node tree with permissions (owner, default
// access, per-domain entries; dom0 is privileged), transactions with the C
// conflict rule (a commit fails with EAGAIN if any node the transaction read
// or wrote changed meanwhile, including a parent whose child list changed),
// watches that fire once on registration and on every change at or below the
// watched path, the special watches @introduceDomain and @releaseDomain,
// domain introduction and release, per-domain quotas with the 4.17 defaults
// for unprivileged domains, and the C daemon's errno names.
//
// Requests are processed one at a time under one lock, as the C daemon's
// single thread does; each connection has its own reader and a writer
// goroutine with an output queue, so a client that does not read its watch
// events never stalls the others. Socket connections (Serve) act as dom0;
// ConnectDomain gives an in-process connection acting as a domain's ring.
package xenstored

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// Quota holds the per-domain limits that apply to unprivileged domains. A
// zero field takes the C xenstored 4.17 default.
type Quota struct {
	Nodes            int // nodes a domain may own (1000)
	Watches          int // watches per domain (128); exceeding gives E2BIG
	Transactions     int // open transactions per connection (10)
	Outstanding      int // unanswered replies before the daemon stops reading (20)
	TransactionNodes int // nodes one transaction may change (1024)
	NodeSize         int // record size of one node (2048)
	// PathLen bounds a path below /local/domain/<id>/ (the whole path
	// elsewhere); unlike the other limits it binds dom0 too. Default and
	// ceiling 2048, as C caps its -M option at XENSTORE_REL_PATH_MAX.
	PathLen int
	Perms   int // permission entries per node (5)
}

func (q Quota) withDefaults() Quota {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&q.Nodes, 1000)
	def(&q.Watches, 128)
	def(&q.Transactions, 10)
	def(&q.Outstanding, 20)
	def(&q.TransactionNodes, 1024)
	def(&q.NodeSize, 2048)
	def(&q.PathLen, xenstore.RelPathMax)
	q.PathLen = min(q.PathLen, xenstore.RelPathMax)
	def(&q.Perms, 5)
	return q
}

// Config configures a Server.
type Config struct {
	Logger *slog.Logger
	// DomainState reports whether a domain exists and whether it has shut
	// down or is dying, so the server can fire @releaseDomain as C xenstored
	// does on VIRQ_DOM_EXC. nil: every domain exists and none ever dies. It
	// is never called with the server's lock held.
	DomainState func(domid uint32) (exists, shutdownOrDying bool)
	Quota       Quota // zero value => C xenstored 4.17 defaults
}

// Server is the embedded xenstore daemon.
type Server struct {
	log   *slog.Logger
	quota Quota
	state func(uint32) (bool, bool)

	mu        sync.Mutex
	tree      *tree
	conns     map[*conn]struct{}
	listeners map[net.Listener]struct{}
	domains   map[uint32]*domain
	watchIdx  map[string][]*watch
	special   map[string][]xenstore.Perm
	nextTx    uint32
	closed    bool

	// Domain exceptions waiting for exceptionLoop (excMu): the domains to
	// re-check, or all of them.
	excMu  sync.Mutex
	excAll bool
	excIDs map[uint32]struct{}
	excCh  chan struct{}
	done   chan struct{}
	wg     sync.WaitGroup
}

// New returns a server with an empty tree holding "/" (and /local/domain/0's
// ancestors are left to the toolstack, as with a fresh C xenstored).
func New(cfg Config) *Server {
	lg := cfg.Logger
	if lg == nil {
		lg = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		log:       lg,
		quota:     cfg.Quota.withDefaults(),
		state:     cfg.DomainState,
		tree:      newTree(),
		conns:     make(map[*conn]struct{}),
		listeners: make(map[net.Listener]struct{}),
		domains:   make(map[uint32]*domain),
		watchIdx:  make(map[string][]*watch),
		special: map[string][]xenstore.Perm{
			"@introduceDomain": {{Domid: 0, Access: xenstore.AccessNone}},
			"@releaseDomain":   {{Domid: 0, Access: xenstore.AccessNone}},
		},
		nextTx: 1,
		excCh:  make(chan struct{}, 1),
		done:   make(chan struct{}),
	}
	s.domains[0] = &domain{id: 0, introduced: true}
	s.wg.Add(1)
	go s.exceptionLoop()
	return s
}

// ErrServerClosed is returned by Serve and ConnectDomain after Close.
var ErrServerClosed = errors.New("xenstored: server closed")

// Serve accepts connections on l until Close; each connection acts as the
// privileged dom0.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	for {
		nc, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			delete(s.listeners, l)
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			return fmt.Errorf("xenstored: accept: %w", err)
		}
		if _, err := s.addConn(nc, 0, true); err != nil {
			nc.Close()
			return err
		}
	}
}

// ConnectDomain returns an in-process connection acting as domain domid's
// xenstore ring: unprivileged, relative paths under /local/domain/<domid>,
// quotas apply. The domain need not be introduced yet; RELEASE or its
// destruction closes the connection.
func (s *Server) ConnectDomain(domid uint32) (net.Conn, error) {
	if domid == 0 || domid >= xenstore.DomidFirstRes {
		return nil, fmt.Errorf("xenstored: ConnectDomain: domid %d is not a guest domain id", domid)
	}
	client, server := net.Pipe()
	if _, err := s.addConn(server, domid, false); err != nil {
		client.Close()
		server.Close()
		return nil, err
	}
	return client, nil
}

// DomainException is the simulated VIRQ_DOM_EXC: the server re-checks the
// domains given, or every introduced domain when none is (as C xenstored
// does, since Xen's VIRQ names no domain), with Config.DomainState
// (asynchronously), and fires @releaseDomain for domains that shut down or
// disappeared. Exceptions that arrive before the re-check are coalesced.
func (s *Server) DomainException(domids ...uint32) {
	s.excMu.Lock()
	if len(domids) == 0 {
		s.excAll = true
	} else {
		if s.excIDs == nil {
			s.excIDs = make(map[uint32]struct{})
		}
		for _, id := range domids {
			s.excIDs[id] = struct{}{}
		}
	}
	s.excMu.Unlock()
	select {
	case s.excCh <- struct{}{}:
	default:
	}
}

// Close stops all listeners and connections.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.done)
	for l := range s.listeners {
		l.Close()
	}
	var cs []*conn
	for c := range s.conns {
		cs = append(cs, c)
	}
	s.mu.Unlock()
	for _, c := range cs {
		c.shutdown()
	}
	s.wg.Wait()
	return nil
}

func (s *Server) addConn(nc net.Conn, domid uint32, priv bool) (*conn, error) {
	c := &conn{
		s: s, nc: nc, domid: domid, priv: priv,
		watches: make(map[watchKey]*watch),
		txs:     make(map[uint32]*txn),
		home:    "/local/domain/" + fmt.Sprint(domid) + "/",
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	c.space = sync.NewCond(&c.outMu)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, ErrServerClosed
	}
	s.conns[c] = struct{}{}
	if !priv {
		d := s.domain(domid)
		d.conns = append(d.conns, c)
	}
	s.mu.Unlock()
	s.wg.Add(2)
	go c.readLoop()
	go c.writeLoop()
	return c, nil
}

// removeConn drops a connection's watches and transactions (s.mu held).
func (s *Server) removeConn(c *conn) {
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	c.removed = true
	for _, w := range c.watches {
		s.unindexWatch(w)
	}
	c.watches = make(map[watchKey]*watch)
	c.txs = make(map[uint32]*txn)
	if d := s.domains[c.domid]; d != nil && !c.priv {
		for i, x := range d.conns {
			if x == c {
				d.conns = append(d.conns[:i:i], d.conns[i+1:]...)
				break
			}
		}
	}
}

// conn is one client connection.
type conn struct {
	s     *Server
	nc    net.Conn
	domid uint32
	priv  bool
	home  string // "/local/domain/<domid>/"
	// setPermsOwnerGone is set by readLoop (outside s.mu, as DomainState
	// must be called) for a SET_PERMS whose owner domain does not exist.
	setPermsOwnerGone bool

	// guarded by s.mu
	removed bool
	watches map[watchKey]*watch
	txs     map[uint32]*txn

	outMu   sync.Mutex
	space   *sync.Cond
	out     [][]byte
	replies int // queued replies (not events), for the outstanding quota
	events  int // queued watch events
	closed  bool
	writing bool // a goroutine is writing to nc
	wake    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// maxQueuedEvents bounds the watch events queued for an unprivileged
// connection that does not read them; further events are dropped.
const maxQueuedEvents = 4096

func (c *conn) shutdown() {
	c.once.Do(func() {
		if c.nc != nil {
			c.nc.Close()
		}
		c.outMu.Lock()
		c.closed = true
		c.out = nil
		c.space.Broadcast()
		c.outMu.Unlock()
		close(c.done)
	})
}

func (c *conn) readLoop() {
	defer c.s.wg.Done()
	defer func() {
		c.shutdown()
		c.s.mu.Lock()
		c.s.removeConn(c)
		c.s.mu.Unlock()
	}()
	br := bufio.NewReaderSize(c.nc, 64<<10)
	hdr := make([]byte, xenstore.HeaderSize)
	for {
		if !c.priv && !c.waitOutstanding() {
			return
		}
		m, err := xenstore.ReadMsg(br, hdr)
		if err != nil {
			if errors.Is(err, xenstore.ErrPayloadTooLarge) {
				// Like the C daemon: an oversized request kills the connection.
				c.s.log.Warn("xenstored: closing connection after oversized request",
					"domid", c.domid, "len", m.Len)
			} else if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, io.ErrClosedPipe) {
				c.s.log.Debug("xenstored: connection read failed", "domid", c.domid, "err", err)
			}
			return
		}
		c.setPermsOwnerGone = m.Type == xenstore.TypeSetPerms && c.s.permsOwnerGone(m.Payload)
		c.s.mu.Lock()
		if c.removed { // released or destroyed meanwhile
			c.s.mu.Unlock()
			return
		}
		t, payload, after := c.s.handle(c, m)
		c.s.mu.Unlock()
		reply := xenstore.AppendMsg(make([]byte, 0, xenstore.HeaderSize+len(payload)+1), t, m.ReqID, m.TxID, payload)
		// Fast path: nothing else to answer or send, so write the reply
		// ourselves instead of handing it to the writer goroutine.
		if after == nil && br.Buffered() == 0 && c.writeDirect(reply) {
			continue
		}
		c.enqueue(reply, true)
		if after != nil {
			c.enqueue(after, false)
		}
	}
}

// waitOutstanding blocks while the connection has Outstanding replies queued.
func (c *conn) waitOutstanding() bool {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	for c.replies >= c.s.quota.Outstanding && !c.closed {
		c.space.Wait()
	}
	return !c.closed
}

// enqueue queues a message for the writer; it never blocks.
func (c *conn) enqueue(msg []byte, reply bool) {
	c.outMu.Lock()
	if c.closed {
		c.outMu.Unlock()
		return
	}
	if !reply {
		if !c.priv && c.events >= maxQueuedEvents {
			c.outMu.Unlock()
			c.s.log.Warn("xenstored: dropping watch event for a connection not reading them", "domid", c.domid)
			return
		}
		c.events++
		msg = append(msg, 'e') // marker byte, stripped by the writer
	} else {
		c.replies++
		msg = append(msg, 'r')
	}
	c.out = append(c.out, msg)
	c.outMu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// writeDirect writes msg at once if no other output is queued or being
// written; false means the caller must queue it.
func (c *conn) writeDirect(msg []byte) bool {
	c.outMu.Lock()
	if c.closed || c.writing || len(c.out) > 0 {
		c.outMu.Unlock()
		return false
	}
	c.writing = true
	c.outMu.Unlock()
	_, err := c.nc.Write(msg)
	c.outMu.Lock()
	c.writing = false
	more := len(c.out) > 0
	c.outMu.Unlock()
	if err != nil {
		c.shutdown()
	} else if more {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
	return true
}

func (c *conn) writeLoop() {
	defer c.s.wg.Done()
	bw := bufio.NewWriterSize(c.nc, 64<<10)
	for {
		select {
		case <-c.wake:
		case <-c.done:
			return
		}
		for {
			c.outMu.Lock()
			if c.writing { // readLoop is writing; it wakes us when done
				c.outMu.Unlock()
				break
			}
			batch := c.out
			c.out = nil
			c.writing = len(batch) > 0
			c.outMu.Unlock()
			if len(batch) == 0 {
				break
			}
			var nr, ne int
			for _, m := range batch {
				if m[len(m)-1] == 'r' {
					nr++
				} else {
					ne++
				}
				if _, err := bw.Write(m[:len(m)-1]); err != nil {
					c.shutdown()
					return
				}
			}
			if err := bw.Flush(); err != nil {
				c.shutdown()
				return
			}
			c.outMu.Lock()
			c.writing = false
			c.replies -= nr
			c.events -= ne
			c.space.Broadcast()
			c.outMu.Unlock()
		}
	}
}
