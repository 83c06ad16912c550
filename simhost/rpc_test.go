package simhost

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// blockingHypervisor's PauseDomain blocks until its context ends and
// reports what the server-side context said; DestroyDomain fails with the
// error it is given. Other methods are not called.
type blockingHypervisor struct {
	xenctrl.Hypervisor
	entered chan struct{}
	seen    chan serverCtx
	fail    error
}

type serverCtx struct {
	err         error
	hasDeadline bool
}

func (h *blockingHypervisor) PauseDomain(ctx context.Context, _ xenctrl.Domid) error {
	h.entered <- struct{}{}
	<-ctx.Done()
	_, ok := ctx.Deadline()
	h.seen <- serverCtx{ctx.Err(), ok}
	return ctx.Err()
}

func (h *blockingHypervisor) DestroyDomain(context.Context, xenctrl.Domid) error { return h.fail }

func (h *blockingHypervisor) SetMaxVCPUs(context.Context, xenctrl.Domid, uint32) error {
	return errors.New("not called")
}

func (h *blockingHypervisor) ResumeDomain(context.Context, xenctrl.Domid) error {
	return errors.New("not called")
}

// serveFake serves hv on a hypervisor socket in a temporary directory
// until the test ends, and returns a client of it.
func serveFake(t *testing.T, hv hypervisor) *Client {
	t.Helper()
	dir := t.TempDir()
	l, err := net.Listen("unix", filepath.Join(dir, HypervisorSocket))
	if err != nil {
		t.Fatal(err)
	}
	srv := newRPCServer(services{
		host:       &hostServer{hello: &pb.HelloResponse{Pid: 1, BootId: "fake"}, stop: func() {}},
		hypervisor: &hypervisorServer{hv: hv},
		build:      newBuildServer(sim.New(sim.Config{})),
		guest:      &guestServer{hv: sim.New(sim.Config{})},
		dom0:       &dom0Server{d: newDom0(nil)},
	})
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	c, err := Dial(testCtx(t), dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestCancelReachesSimHost(t *testing.T) {
	hv := &blockingHypervisor{entered: make(chan struct{}, 1), seen: make(chan serverCtx, 1)}
	c := serveFake(t, hv)
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- c.PauseDomain(ctx, 1) }()
	<-hv.entered // the call is blocked inside the host
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("PauseDomain after cancel: %v, want context.Canceled", err)
	}
	if s := <-hv.seen; !errors.Is(s.err, context.Canceled) {
		t.Fatalf("server-side context ended with %v, want context.Canceled", s.err)
	}
	// The connection survives a cancelled call.
	if c.BootID() != "fake" {
		t.Fatalf("BootID %q", c.BootID())
	}
}

func TestDeadlineReachesSimHost(t *testing.T) {
	hv := &blockingHypervisor{entered: make(chan struct{}, 1), seen: make(chan serverCtx, 1)}
	c := serveFake(t, hv)
	ctx, cancel := context.WithTimeout(testCtx(t), 50*time.Millisecond)
	defer cancel()
	if err := c.PauseDomain(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PauseDomain past its deadline: %v, want context.DeadlineExceeded", err)
	}
	<-hv.entered
	if s := <-hv.seen; !s.hasDeadline || s.err == nil {
		t.Fatalf("server-side context: deadline %v, ended with %v; want a deadline that ended it", s.hasDeadline, s.err)
	}
}

func TestErrnoRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sent   error
		errno  syscall.Errno
		xenErr *xenctrl.Error
	}{
		{"xenctrl.Error", &xenctrl.Error{Op: "domctl destroydomain", Domid: 7, Errno: syscall.ESRCH}, syscall.ESRCH,
			&xenctrl.Error{Op: "domctl destroydomain", Domid: 7, Errno: syscall.ESRCH}},
		{"wrapped xenctrl.Error", wrap("destroying", &xenctrl.Error{Op: "domctl destroydomain", Errno: syscall.EBUSY}), syscall.EBUSY,
			&xenctrl.Error{Op: "domctl destroydomain", Errno: syscall.EBUSY}},
		{"bare errno", wrap("lookup", syscall.ENOMEM), syscall.ENOMEM, nil},
		{"no errno", errors.New("something else"), 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := serveFake(t, &blockingHypervisor{fail: tc.sent})
			err := c.DestroyDomain(testCtx(t), 7)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.errno != 0 && !errors.Is(err, tc.errno) {
				t.Fatalf("%v: errors.Is(%v) false", err, tc.errno)
			}
			var xe *xenctrl.Error
			if got := errors.As(err, &xe); got != (tc.xenErr != nil) || (got && *xe != *tc.xenErr) {
				t.Fatalf("%v: *xenctrl.Error %v %+v, want %+v", err, got, xe, tc.xenErr)
			}
		})
	}
}

// wrap is an error that wraps err, as fmt.Errorf("%s: %w") would.
func wrap(msg string, err error) error { return &wrapped{msg, err} }

type wrapped struct {
	msg string
	err error
}

func (w *wrapped) Error() string { return w.msg + ": " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }

func TestBadDomidRefused(t *testing.T) {
	hv := &blockingHypervisor{fail: errors.New("must not be called")}
	c := serveFake(t, hv)
	cn, err := c.conn(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	_, err = cn.hv.DestroyDomain(testCtx(t), &pb.DestroyDomainRequest{Domid: 1 << 16})
	if err == nil || errorFromRPC(err).Error() != "sim host: InvalidArgument: domid 65536: a domid is 16 bits" {
		t.Fatalf("domid 65536: %v", err)
	}
}

// TestDomainConfigRoundTrip fills every field of xenctrl.DomainConfig: a
// field the conversions forget comes back zero.
func TestDomainConfigRoundTrip(t *testing.T) {
	var in xenctrl.DomainConfig
	v := reflect.ValueOf(&in).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
			f.SetUint(uint64(i + 1))
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Array:
			for j := range f.Len() {
				f.Index(j).SetUint(uint64(j + 1))
			}
		default:
			t.Fatalf("field %s: kind %v: teach this test to fill it", v.Type().Field(i).Name, f.Kind())
		}
	}
	out, err := domainConfigFromRPC(domainConfigToRPC(in))
	if err != nil || out != in {
		t.Fatalf("round trip: %+v, %v; want %+v", out, err, in)
	}
	if _, err := domainConfigFromRPC(&pb.DomainConfig{Handle: []byte{1, 2, 3}}); err == nil {
		t.Fatal("a 3-byte handle was accepted")
	}
}

// TestCallsCountsEachRPC: Calls says how many of each RPC the host served,
// failed ones included (and the Calls being answered), and nothing it did
// not serve.
func TestCallsCountsEachRPC(t *testing.T) {
	c := serveFake(t, &blockingHypervisor{fail: syscall.ESRCH})
	ctx := testCtx(t)
	for range 3 {
		if err := c.DestroyDomain(ctx, 7); err == nil {
			t.Fatal("DestroyDomain: no error")
		}
	}
	got, err := c.Calls(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const destroy = "/xenopsd.simhost.v1.HypervisorService/DestroyDomain"
	if got[destroy] != 3 {
		t.Errorf("Calls: %v, want %s: 3", got, destroy)
	}
	for m := range got {
		switch m {
		case destroy, "/xenopsd.simhost.v1.SimHostService/Hello", "/xenopsd.simhost.v1.SimHostService/Calls":
		default:
			t.Errorf("Calls: %v counts %s, which the test never called", got, m)
		}
	}
}
