package devices

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"syscall"
)

// ErrBadFrontend marks a device failed because of what its guest wrote in
// the frontend directory (which the guest owns and may fill with anything).
var ErrBadFrontend = errors.New("bad frontend")

// Bounds on guest-written numbers.
const (
	// maxGrantRef bounds a ring's grant reference: refs below 8 are
	// reserved for the toolstack (GNTTAB_NR_RESERVED_ENTRIES, grant_table.h);
	// 2^22 entries would be a grant table of 8192 v1 frames, 128 times Xen's
	// default gnttab_max_frames, so anything above is garbage.
	minGrantRef = 8
	maxGrantRef = 1<<22 - 1
	// maxEventChannel: ports are 1..2^17-1 (EVTCHN_FIFO_NR_CHANNELS,
	// event_channel.h; port 0 is never bound).
	maxEventChannel = 1<<17 - 1
	// capRingPageOrder and capQueues bound what we read however much the
	// backend advertised (Linux: XENBUS_MAX_RING_GRANT_ORDER is 4).
	capRingPageOrder = 4
	capQueues        = 64
)

// frontend is what a frontend directory says, validated.
type frontend struct {
	State  State
	Queues []queue // filled only when the rings were read
}

// queue is one ring set: its grant references and event channels.
type queue struct {
	RingRefs      []uint32
	EventChannels []uint32 // vbd: one; vif: one shared or tx and rx
}

// ringLimits is what the backend advertised to the frontend: its
// max-ring-page-order and multi-queue-max-queues.
type ringLimits struct{ maxOrder, maxQueues int }

// nodeGetter returns the value of a node relative to the frontend
// directory; ok is false when the node does not exist.
type nodeGetter func(key string) (value string, ok bool, err error)

// parseFrontend reads and checks a frontend directory through get: its
// backend node must be wantBackend (the path we wrote) and its state a
// XenbusState; with rings, the ring references and event channels the
// frontend published (io/blkif.h, io/netif.h) must be canonical decimals in
// range, distinct and as many as it announced, within lim. Every failure
// that is the guest's doing wraps ErrBadFrontend. The number of nodes read
// is bounded by capQueues×(2^capRingPageOrder+2)+4.
func parseFrontend(kind Kind, wantBackend string, lim ringLimits, rings bool, get nodeGetter) (frontend, error) {
	var fe frontend
	be, ok, err := get("backend")
	if err != nil {
		return fe, err
	}
	if !ok {
		return fe, badFrontend("its backend node is missing")
	}
	if be != wantBackend {
		return fe, badFrontend("it points its backend node at %s, not at %s", quote(be), wantBackend)
	}
	st, err := required(get, "state", 0, uint64(StateReconfigured))
	if err != nil {
		return fe, err
	}
	fe.State = State(st)
	if !rings {
		return fe, nil
	}
	nq, err := optional(get, "multi-queue-num-queues", 1, uint64(clamp(lim.maxQueues, 1, capQueues)), 0)
	if err != nil {
		return fe, err
	}
	prefixes := []string{""}
	if nq > 1 { // one queue: its nodes at the top level, as Linux writes them
		prefixes = make([]string, nq)
		for i := range prefixes {
			prefixes[i] = "queue-" + strconv.Itoa(i) + "/"
		}
	}
	var order uint64 // blkif: one ring-page-order for all queues
	if kind == KindVBD {
		if order, err = optional(get, "ring-page-order", 0, uint64(clamp(lim.maxOrder, 0, capRingPageOrder)), 0); err != nil {
			return fe, err
		}
	}
	seen := make(map[uint64]bool)
	for _, pre := range prefixes {
		var q queue
		switch kind {
		case KindVBD:
			q, err = blkifQueue(get, pre, int(order), seen)
		case KindVIF:
			q, err = netifQueue(get, pre, seen)
		default:
			return fe, fmt.Errorf("devices: unknown kind %q", kind)
		}
		if err != nil {
			return fe, err
		}
		fe.Queues = append(fe.Queues, q)
	}
	return fe, nil
}

// blkifQueue reads one blkif ring: ring-ref (one page) or ring-ref<i> for
// 2^ring-page-order pages, and event-channel.
func blkifQueue(get nodeGetter, pre string, order int, seen map[uint64]bool) (queue, error) {
	var q queue
	var err error
	keys := []string{pre + "ring-ref"}
	if order > 0 {
		keys = keys[:0]
		for i := 0; i < 1<<order; i++ {
			keys = append(keys, pre+"ring-ref"+strconv.Itoa(i))
		}
	}
	if q.RingRefs, err = grantRefs(get, keys, seen); err != nil {
		return q, err
	}
	ev, err := required(get, pre+"event-channel", 1, maxEventChannel)
	q.EventChannels = []uint32{uint32(ev)}
	return q, err
}

// netifQueue reads one netif queue: tx-ring-ref, rx-ring-ref and either
// event-channel or event-channel-tx and event-channel-rx.
func netifQueue(get nodeGetter, pre string, seen map[uint64]bool) (queue, error) {
	var q queue
	var err error
	if q.RingRefs, err = grantRefs(get, []string{pre + "tx-ring-ref", pre + "rx-ring-ref"}, seen); err != nil {
		return q, err
	}
	shared, err := optional(get, pre+"event-channel", 1, maxEventChannel, 0)
	if err != nil {
		return q, err
	}
	if shared != 0 {
		q.EventChannels = []uint32{uint32(shared)}
		return q, nil
	}
	for _, k := range []string{pre + "event-channel-tx", pre + "event-channel-rx"} {
		ev, err := required(get, k, 1, maxEventChannel)
		if err != nil {
			return q, err
		}
		q.EventChannels = append(q.EventChannels, uint32(ev))
	}
	return q, nil
}

func grantRefs(get nodeGetter, keys []string, seen map[uint64]bool) ([]uint32, error) {
	refs := make([]uint32, 0, len(keys))
	for _, k := range keys {
		r, err := required(get, k, minGrantRef, maxGrantRef)
		if err != nil {
			return nil, err
		}
		if seen[r] {
			return nil, badFrontend("%s: grant reference %d is used twice", k, r)
		}
		seen[r] = true
		refs = append(refs, uint32(r))
	}
	return refs, nil
}

func required(get nodeGetter, key string, lo, hi uint64) (uint64, error) {
	v, ok, err := get(key)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, badFrontend("its %s node is missing", key)
	}
	return decimal(key, v, lo, hi)
}

// optional is required with def for a missing node.
func optional(get nodeGetter, key string, lo, hi, def uint64) (uint64, error) {
	v, ok, err := get(key)
	if err != nil || !ok {
		return def, err
	}
	return decimal(key, v, lo, hi)
}

// decimal parses a canonical decimal (digits only, no leading zeros) in
// lo..hi.
func decimal(key, v string, lo, hi uint64) (uint64, error) {
	n, err := canonicalUint(v)
	if err != nil || n < lo || n > hi {
		return 0, badFrontend("%s is %s, not a decimal number in %d..%d", key, quote(v), lo, hi)
	}
	return n, nil
}

func canonicalUint(v string) (uint64, error) {
	if v == "" || len(v) > 10 || (v[0] == '0' && len(v) > 1) {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(v); i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseUint(v, 10, 64)
}

func badFrontend(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadFrontend, fmt.Sprintf(format, args...))
}

// quote shows a guest-written value in an error: quoted, at most 64 bytes.
func quote(v string) string {
	if len(v) > 64 {
		return strconv.Quote(v[:64]) + "…"
	}
	return strconv.Quote(v)
}

func clamp(v, lo, hi int) int { return max(lo, min(v, hi)) }

// parseState parses a state node written by a backend (trusted, but
// checked all the same).
func parseState(v string) (State, error) {
	n, err := canonicalUint(v)
	if err != nil || n > uint64(StateReconfigured) {
		return 0, fmt.Errorf("state %s is not a XenbusState", quote(v))
	}
	return State(n), nil
}

// readFrontend reads rec's frontend directory through parseFrontend; with
// rings it takes the limits from what the backend advertised.
func (p *Plugger) readFrontend(ctx context.Context, rec Record, rings bool) (frontend, error) {
	var lim ringLimits
	if rings {
		var err error
		if lim, err = p.backendLimits(ctx, rec); err != nil {
			return frontend{}, err
		}
	}
	dir := rec.FrontendPath() + "/"
	get := func(key string) (string, bool, error) { return p.readNode(ctx, dir+key) }
	return parseFrontend(rec.Kind, rec.BackendPath(), lim, rings, get)
}

// backendLimits reads the ring limits the backend advertised (absent: one
// single-page queue).
func (p *Plugger) backendLimits(ctx context.Context, rec Record) (ringLimits, error) {
	lim := ringLimits{maxOrder: 0, maxQueues: 1}
	for key, dst := range map[string]*int{"max-ring-page-order": &lim.maxOrder, "multi-queue-max-queues": &lim.maxQueues} {
		v, ok, err := p.readNode(ctx, rec.BackendPath()+"/"+key)
		if err != nil {
			return lim, err
		}
		if n, perr := canonicalUint(v); ok && perr == nil {
			*dst = int(min(n, capQueues))
		}
	}
	return lim, nil
}

// readNode reads a node; ok is false if it does not exist.
func (p *Plugger) readNode(ctx context.Context, path string) (string, bool, error) {
	v, err := p.xs.Read(ctx, path)
	if errors.Is(err, syscall.ENOENT) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return string(v), true, nil
}
