package xenstore

import (
	"context"
	"sync"
)

// WatchEvent is one WATCH_EVENT: the path that changed (relative if the watch
// was registered with a relative path) and the watch's token.
type WatchEvent struct {
	Path  string
	Token string
}

// maxQueuedEvents bounds the events queued for a consumer that does not read
// its channel; beyond it events are dropped and counted (xenstore watches may
// be spurious or coalesced, so consumers re-read state anyway).
const maxQueuedEvents = 1 << 16

// Watch is a registered watch. Events arrive on Events() in order; the
// client's reader never blocks on a slow consumer (events are queued).
type Watch struct {
	c     *Client
	path  string
	token string

	ch     chan WatchEvent
	mu     sync.Mutex
	queue  []WatchEvent
	drops  uint64
	wake   chan struct{}
	done   chan struct{}
	closed bool
}

// Watch registers a watch on path (or a special path such as
// @introduceDomain) with the given token. The daemon fires it once at once,
// then on every change of path or below it. ctx bounds the registration
// only; stop the watch with Close. Events are routed by token, so use a
// token unique to this watch on this client.
func (c *Client) Watch(ctx context.Context, path, token string) (*Watch, error) {
	if err := checkPath(TypeWatch, path); err != nil {
		return nil, err
	}
	w := &Watch{
		c: c, path: path, token: token,
		ch:   make(chan WatchEvent, 16),
		wake: make(chan struct{}, 1),
		done: make(chan struct{}),
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.watches[token] = append(c.watches[token], w)
	c.mu.Unlock()
	go w.pump()
	if _, err := c.request(ctx, TypeWatch, 0, path, JoinStrings(path, token)); err != nil {
		c.forget(w)
		w.shutdown()
		return nil, err
	}
	return w, nil
}

// Path returns the watched path as registered.
func (w *Watch) Path() string { return w.path }

// Token returns the watch's token.
func (w *Watch) Token() string { return w.token }

// Events returns the channel of events. It is closed when the watch is
// closed or the client's connection ends.
func (w *Watch) Events() <-chan WatchEvent { return w.ch }

// Dropped returns how many events were discarded because the consumer fell
// more than 65536 events behind.
func (w *Watch) Dropped() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.drops
}

// Next waits for the next event or until ctx ends. ok is false once the
// watch is closed.
func (w *Watch) Next(ctx context.Context) (ev WatchEvent, ok bool, err error) {
	select {
	case ev, ok = <-w.ch:
		return ev, ok, nil
	case <-ctx.Done():
		return WatchEvent{}, false, ctx.Err()
	}
}

// Close unregisters the watch (UNWATCH) and closes its channel.
func (w *Watch) Close() error {
	if !w.c.forget(w) {
		w.shutdown()
		return nil
	}
	w.shutdown()
	ctx, cancel := context.WithTimeout(context.Background(), unwatchTimeout)
	defer cancel()
	_, err := w.c.request(ctx, TypeUnwatch, 0, w.path, JoinStrings(w.path, w.token))
	if err == ErrClosed {
		return nil
	}
	return err
}

// forget removes w from the client's table; false if it was not there.
func (c *Client) forget(w *Watch) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := c.watches[w.token]
	for i, x := range l {
		if x == w {
			l = append(l[:i:i], l[i+1:]...)
			if len(l) == 0 {
				delete(c.watches, w.token)
			} else {
				c.watches[w.token] = l
			}
			return true
		}
	}
	return false
}

func (w *Watch) push(ev WatchEvent) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	if len(w.queue) >= maxQueuedEvents {
		w.drops++
	} else {
		w.queue = append(w.queue, ev)
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *Watch) shutdown() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.done)
	}
	w.mu.Unlock()
}

// pump moves queued events to the channel.
func (w *Watch) pump() {
	defer close(w.ch)
	for {
		w.mu.Lock()
		q := w.queue
		w.queue = nil
		w.mu.Unlock()
		for _, ev := range q {
			select {
			case w.ch <- ev:
			case <-w.done:
				return
			}
		}
		select {
		case <-w.wake:
		case <-w.done:
			return
		}
	}
}
