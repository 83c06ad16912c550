package xenstore

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
)

// DefaultSocketPath is where the C xenstored listens unless XENSTORED_PATH is set.
const DefaultSocketPath = "/run/xenstored/socket"

// XenbusPath is the Linux xenbus device through which a domain reaches xenstored.
const XenbusPath = "/dev/xen/xenbus"

// ErrClosed is returned by requests on a closed client or after the
// connection to the daemon was lost.
var ErrClosed = errors.New("xenstore: client closed")

// Client is a pipelined xenstore client. Any number of goroutines may issue
// requests at once: they share one connection, each request carries its own
// req_id and a single reader goroutine matches replies to requests and hands
// watch events to per-watch queues, so a slow watch consumer never delays
// replies.
type Client struct {
	conn       io.ReadWriteCloser
	msgPerWrit bool // the transport takes exactly one message per write (xenbus device)

	wmu      sync.Mutex
	wbuf     []byte
	spare    []byte
	flushing bool

	mu      sync.Mutex
	nextID  uint32
	pending map[uint32]chan Msg
	watches map[string][]*Watch // by token
	err     error               // set once the connection is gone
	done    chan struct{}
	closeMu sync.Once

	counters atomic.Pointer[counters] // CountRequests; nil: not counted
}

// Counter is a count the client adds to; prometheus.Counter is one.
type Counter interface{ Add(float64) }

// counters are CountRequests' counters.
type counters struct{ roundTrips, requests Counter }

// CountRequests makes the client count, from now on, its round trips to the
// daemon in roundTrips (one request and its reply, or a Batch: its requests
// sent in one write and their replies) and the requests they carried in
// requests. Watch events cost no request and are not counted.
func (c *Client) CountRequests(roundTrips, requests Counter) {
	c.counters.Store(&counters{roundTrips: roundTrips, requests: requests})
}

// sent counts a round trip of n requests.
func (c *Client) sent(n int) {
	if k := c.counters.Load(); k != nil {
		k.roundTrips.Add(1)
		k.requests.Add(float64(n))
	}
}

// Dial connects to xenstored's unix socket. An empty path means
// $XENSTORED_PATH, or DefaultSocketPath when that is unset.
func Dial(ctx context.Context, path string) (*Client, error) {
	if path == "" {
		path = os.Getenv("XENSTORED_PATH")
	}
	if path == "" {
		path = DefaultSocketPath
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("xenstore: dial %s: %w", path, err)
	}
	return NewClient(conn), nil
}

// DialXenbus opens /dev/xen/xenbus (the kernel's xenstore ring device). The
// device accepts exactly one message per write, so writes are not batched.
func DialXenbus(ctx context.Context) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(XenbusPath, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("xenstore: open %s: %w", XenbusPath, err)
	}
	c := newClient(f, true)
	return c, nil
}

// NewClient runs the protocol over any transport, which the client owns from
// now on (Close closes it).
func NewClient(conn io.ReadWriteCloser) *Client {
	return newClient(conn, false)
}

func newClient(conn io.ReadWriteCloser, msgPerWrite bool) *Client {
	c := &Client{
		conn:       conn,
		msgPerWrit: msgPerWrite,
		nextID:     1,
		pending:    make(map[uint32]chan Msg),
		watches:    make(map[string][]*Watch),
		done:       make(chan struct{}),
	}
	go c.readLoop()
	return c
}

// Close closes the connection; pending requests fail with ErrClosed and
// every watch's Events channel is closed.
func (c *Client) Close() error {
	var err error
	c.closeMu.Do(func() {
		err = c.conn.Close()
		c.fail(ErrClosed)
	})
	return err
}

// fail records the terminal error and wakes everything waiting.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return
	}
	c.err = err
	close(c.done)
	var ws []*Watch
	for _, l := range c.watches {
		ws = append(ws, l...)
	}
	c.watches = map[string][]*Watch{}
	c.pending = map[uint32]chan Msg{}
	c.mu.Unlock()
	for _, w := range ws {
		w.shutdown()
	}
}

func (c *Client) readLoop() {
	br := bufio.NewReaderSize(c.conn, 64<<10)
	hdr := make([]byte, HeaderSize)
	for {
		m, err := ReadMsgLimit(br, hdr, MaxReplyPayload)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
				err = ErrClosed
			} else {
				err = fmt.Errorf("xenstore: connection lost: %w", err)
			}
			c.conn.Close()
			c.fail(err)
			return
		}
		if m.Type == TypeWatchEvent {
			c.dispatchEvent(m.Payload)
			continue
		}
		c.mu.Lock()
		ch := c.pending[m.ReqID]
		delete(c.pending, m.ReqID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m // buffered, capacity 1
		}
	}
}

func (c *Client) dispatchEvent(p []byte) {
	path, token, err := DecodeWatchEvent(p)
	if err != nil {
		return
	}
	c.mu.Lock()
	ws := c.watches[token]
	c.mu.Unlock()
	for _, w := range ws {
		w.push(WatchEvent{Path: path, Token: token})
	}
}

// send queues an encoded message; concurrent senders are coalesced into one
// write by whoever is currently flushing.
func (c *Client) send(msg []byte) error {
	if c.msgPerWrit {
		// The xenbus device takes exactly one message per write.
		c.wmu.Lock()
		defer c.wmu.Unlock()
		for len(msg) >= HeaderSize {
			h, _ := DecodeHeader(msg)
			n := HeaderSize + int(h.Len)
			if n > len(msg) {
				n = len(msg)
			}
			if _, err := c.conn.Write(msg[:n]); err != nil {
				return err
			}
			msg = msg[n:]
		}
		return nil
	}
	c.wmu.Lock()
	c.wbuf = append(c.wbuf, msg...)
	if c.flushing {
		c.wmu.Unlock()
		return nil
	}
	c.flushing = true
	var err error
	for len(c.wbuf) > 0 && err == nil {
		buf := c.wbuf
		c.wbuf = c.spare[:0]
		c.wmu.Unlock()
		_, err = c.conn.Write(buf)
		c.wmu.Lock()
		c.spare = buf[:0]
	}
	if err != nil {
		c.wbuf = c.wbuf[:0]
	}
	c.flushing = false
	c.wmu.Unlock()
	return err
}

// call is a request in flight.
type call struct {
	id   uint32
	t    MsgType
	path string
	ch   chan Msg
}

// register allocates req_ids and reply slots for n requests.
func (c *Client) register(n int) ([]call, error) {
	calls := make([]call, n)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return nil, c.err
	}
	id := c.nextID
	for i := range calls {
		for {
			if _, busy := c.pending[id]; !busy && id != 0 {
				break
			}
			id++
		}
		calls[i].id = id
		calls[i].ch = make(chan Msg, 1)
		c.pending[id] = calls[i].ch
		id++
	}
	c.nextID = id
	return calls, nil
}

func (c *Client) unregister(calls []call) {
	c.mu.Lock()
	for _, cl := range calls {
		delete(c.pending, cl.id)
	}
	c.mu.Unlock()
}

// wait waits for one call's reply. ERROR replies become *Error.
func (c *Client) wait(ctx context.Context, cl call) ([]byte, error) {
	result := func(m Msg) ([]byte, error) {
		if m.Type == TypeError {
			return nil, DecodeError(cl.t, cl.path, m.Payload)
		}
		if m.Type != cl.t {
			return nil, fmt.Errorf("xenstore %s %q: reply has type %s", cl.t, cl.path, m.Type)
		}
		return m.Payload, nil
	}
	select {
	case m := <-cl.ch:
		return result(m)
	case <-ctx.Done():
		c.unregister([]call{cl})
		return nil, ctx.Err()
	case <-c.done:
		select { // the reply may have raced with the failure
		case m := <-cl.ch:
			return result(m)
		default:
		}
		return nil, c.terminalErr()
	}
}

// request sends one message and waits for its reply.
func (c *Client) request(ctx context.Context, t MsgType, tx uint32, path string, payload []byte) ([]byte, error) {
	if len(payload) > PayloadMax {
		return nil, tooBig(t, path, len(payload))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	calls, err := c.register(1)
	if err != nil {
		return nil, err
	}
	cl := calls[0]
	cl.t, cl.path = t, path
	if err := c.send(AppendMsg(make([]byte, 0, HeaderSize+len(payload)), t, cl.id, tx, payload)); err != nil {
		c.conn.Close()
		c.fail(fmt.Errorf("xenstore: write: %w", err))
		return nil, c.terminalErr()
	}
	c.sent(1)
	return c.wait(ctx, cl)
}

func tooBig(t MsgType, path string, n int) error {
	return &Error{Op: t, Path: path, Name: "E2BIG", Errno: errnoNames["E2BIG"],
		Local: fmt.Sprintf("payload is %d bytes, limit %d", n, PayloadMax)}
}

func (c *Client) terminalErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		return ErrClosed
	}
	return c.err
}
