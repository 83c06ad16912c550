package devices

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// flakyStore fails the n-th Transaction or Watch (1-based; 0: none).
type flakyStore struct {
	*xenstore.Client
	mu                sync.Mutex
	failTx, failWatch int
	txs, watches      int
}

var errInjected = errors.New("injected xenstore failure")

func (s *flakyStore) Transaction(ctx context.Context, fn func(tx *xenstore.Tx) error) error {
	s.mu.Lock()
	s.txs++
	fail := s.txs == s.failTx
	s.mu.Unlock()
	if fail {
		return errInjected
	}
	return s.Client.Transaction(ctx, fn)
}

func (s *flakyStore) Watch(ctx context.Context, path, token string) (*xenstore.Watch, error) {
	s.mu.Lock()
	s.watches++
	fail := s.watches == s.failWatch
	s.mu.Unlock()
	if fail {
		return nil, errInjected
	}
	return s.Client.Watch(ctx, path, token)
}

// TestPlugDiskFailureUndoes: a disk plug that fails at any step names the
// step and leaves no node and no attachment behind.
func TestPlugDiskFailureUndoes(t *testing.T) {
	for _, c := range []struct {
		name      string
		failTx    int    // the n-th xenstore transaction fails
		failWatch int    // the n-th watch fails
		host      string // the Host method that fails
		backend   backendMode
		cancelled bool // the caller's context ends during the wait
		want      string
	}{
		{name: "directories", failTx: 1, want: "writing its xenstore directories"},
		{name: "attach", host: "AttachDisk", want: "attaching"},
		{name: "physical-device", failTx: 2, want: "writing physical-device"},
		{name: "watch", failWatch: 2, want: "waiting for blkback"},
		{name: "silent backend", backend: backendSilent, want: "InitWait did not happen within"},
		{name: "failing backend", backend: backendFails, want: "the backend went Closing: 2 opening /dev/loop7"},
		{name: "cancelled", backend: backendSilent, cancelled: true, want: "context canceled"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.p = NewPlugger(&flakyStore{Client: e.xs, failTx: c.failTx, failWatch: c.failWatch}, e.host, nil)
			e.p.backendWait = 300 * time.Millisecond
			if c.host != "" {
				e.host.setFail(c.host, errors.New("host says no"))
			}
			e.backend(KindVBD, 51712, c.backend)
			ctx := e.ctx
			if c.cancelled {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(e.ctx)
				time.AfterFunc(50*time.Millisecond, cancel)
			}
			_, err := e.p.PlugDisk(ctx, guest, Disk{Device: "xvda", Path: e.file("a.img")})
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "vbd xvda (51712) of domain 5") {
				t.Fatalf("PlugDisk: %v; want an error naming the device and %q", err, c.want)
			}
			e.assertGone(Record{Kind: KindVBD, Domid: guest, DevID: 51712})
		})
	}
}

// TestPlugNICFailureUndoes: likewise for a NIC.
func TestPlugNICFailureUndoes(t *testing.T) {
	for _, c := range []struct {
		name    string
		failTx  int
		host    string
		backend backendMode
		want    string
	}{
		{name: "bridge", host: "CheckBridge", want: "bridge: host says no"},
		{name: "directories", failTx: 1, want: "writing its xenstore directories"},
		{name: "silent backend", backend: backendSilent, want: "InitWait did not happen within"},
		{name: "connect", host: "ConnectVIF", want: "connecting vif5.2 to bridge xenbr0: host says no"},
		{name: "hotplug-status", failTx: 2, want: "writing hotplug-status"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.p = NewPlugger(&flakyStore{Client: e.xs, failTx: c.failTx}, e.host, nil)
			e.p.backendWait = 300 * time.Millisecond
			if c.host != "" {
				e.host.setFail(c.host, errors.New("host says no"))
			}
			e.backend(KindVIF, 2, c.backend)
			_, err := e.p.PlugNIC(e.ctx, guest, NIC{DevID: 2, MAC: "00:16:3e:00:00:02", Bridge: "xenbr0"})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("PlugNIC: %v; want an error with %q", err, c.want)
			}
			e.assertGone(Record{Kind: KindVIF, Domid: guest, DevID: 2})
		})
	}
}

// guestWrites is a scripted frontend that writes nodes (relative to its
// device directory) once it sees its directory.
func (e *env) guestWrites(kind Kind, devid int, nodes ...node) {
	rec := Record{Kind: kind, Domid: guest, DevID: devid}
	dir := strings.TrimPrefix(rec.FrontendPath(), "/local/domain/5/") + "/"
	e.actor(e.guestXS, []string{dir + "backend-id"}, func(ctx context.Context) bool {
		if _, err := e.guestXS.Read(ctx, dir+"backend-id"); err != nil {
			return false
		}
		for _, n := range nodes {
			put(ctx, e.guestXS, dir+n.key, n.value)
		}
		return true
	})
}

// TestGarbageFrontendFailsPlug: a frontend that lies fails its device's
// plug with ErrBadFrontend saying what it did, and the plug is undone.
func TestGarbageFrontendFailsPlug(t *testing.T) {
	for _, c := range []struct {
		name  string
		nodes []node
		want  string
	}{
		{"backend elsewhere", []node{{"backend", "/local/domain/0/backend/vbd/7/51712"}},
			`points its backend node at "/local/domain/0/backend/vbd/7/51712", not at /local/domain/0/backend/vbd/5/51712`},
		{"state garbage", []node{{"state", "banana"}}, `state is "banana", not a decimal number in 0..8`},
		{"state too big", []node{{"state", "9"}}, `state is "9"`},
		{"state padded", []node{{"state", "01"}}, `state is "01"`},
		{"out of order", []node{{"state", "4"}}, "Connected while the backend is still Initialising"},
		{"reconfiguring", []node{{"state", "7"}}, "Reconfiguring"},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.backend(KindVBD, 51712, backendSilent)
			e.guestWrites(KindVBD, 51712, c.nodes...)
			_, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: e.file("a.img")})
			if !errors.Is(err, ErrBadFrontend) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("PlugDisk: %v; want ErrBadFrontend with %q", err, c.want)
			}
			e.assertGone(Record{Kind: KindVBD, Domid: guest, DevID: 51712})
		})
	}
}

// TestGarbageRingsFailConnect: rings that make no sense fail
// WaitConnected and show in Status; the daemon can still unplug.
func TestGarbageRingsFailConnect(t *testing.T) {
	for _, c := range []struct {
		name  string
		nodes []node
		want  string
	}{
		{"absurd ring-ref", []node{{"ring-ref", "4294967295"}, {"event-channel", "5"}}, `ring-ref is "4294967295", not a decimal number in 8..4194303`},
		{"reserved ring-ref", []node{{"ring-ref", "1"}, {"event-channel", "5"}}, `ring-ref is "1"`},
		{"no event channel", []node{{"ring-ref", "8"}}, "event-channel node is missing"},
		{"event channel 0", []node{{"ring-ref", "8"}, {"event-channel", "0"}}, `event-channel is "0"`},
		{"order beyond the backend's", []node{{"ring-page-order", "2"}, {"ring-ref0", "8"}, {"event-channel", "5"}}, `ring-page-order is "2", not a decimal number in 0..0`},
		{"too many queues", []node{{"multi-queue-num-queues", "2"}}, `multi-queue-num-queues is "2", not a decimal number in 1..1`},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := newEnv(t)
			e.backend(KindVBD, 51712, backendNormal)
			rec, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: e.file("a.img")})
			if err != nil {
				t.Fatal(err)
			}
			dir := "device/vbd/51712/"
			for _, n := range c.nodes {
				put(e.ctx, e.guestXS, dir+n.key, n.value)
			}
			put(e.ctx, e.guestXS, dir+"state", int(StateInitialised))
			e.waitBackend(rec, StateConnected)
			put(e.ctx, e.guestXS, dir+"state", int(StateConnected))
			err = e.p.WaitConnected(e.ctx, rec)
			if !errors.Is(err, ErrBadFrontend) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("WaitConnected: %v; want ErrBadFrontend with %q", err, c.want)
			}
			st, err := e.p.Status(e.ctx, rec)
			if err != nil || !strings.Contains(st.Error, c.want) || st.Frontend != StateConnected {
				t.Fatalf("Status = %+v, %v", st, err)
			}
			e.p.closeWait = 100 * time.Millisecond
			if err := e.p.Unplug(e.ctx, rec, true); err != nil {
				t.Fatal(err)
			}
			e.assertGone(rec)
		})
	}
}

// waitBackend waits (bounded by the test's context) until rec's backend
// is in state s.
func (e *env) waitBackend(rec Record, s State) {
	e.t.Helper()
	err := e.p.wait(e.ctx, rec, 10*time.Second, "test backend state", false, func(be, _ State) (bool, error) {
		return be == s, nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// TestFloodingFrontend: a guest writing to its frontend directory as fast
// as it can neither stalls a wait past its bound nor the daemon's other
// calls.
func TestFloodingFrontend(t *testing.T) {
	e := newEnv(t)
	e.backend(KindVBD, 51712, backendNormal)
	rec, err := e.p.PlugDisk(e.ctx, guest, Disk{Device: "xvda", Path: e.file("a.img")})
	if err != nil {
		t.Fatal(err)
	}
	fctx, stop := context.WithCancel(e.ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := []string{"device/vbd/51712/state", "device/vbd/51712/junk"}[w%2]
			for i := 0; fctx.Err() == nil; i++ {
				e.guestXS.Write(fctx, key, []byte("1"))
			}
		}()
	}
	defer func() { stop(); wg.Wait() }()
	e.p.backendWait = 300 * time.Millisecond
	err = e.p.WaitConnected(e.ctx, rec)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitConnected under a flood: %v", err)
	}
	if st, err := e.p.Status(e.ctx, rec); err != nil || st.Backend != StateInitWait {
		t.Fatalf("Status under a flood: %+v, %v", st, err)
	}
}
