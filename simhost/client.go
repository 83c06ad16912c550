package simhost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// Socket and file names inside a sim host's directory.
const (
	HypervisorSocket = "hypervisor.sock"
	XenstoredSocket  = "xenstored.sock"
	PIDFile          = "simhost.pid"
	LogFile          = "simhost.log"
	lockFile         = "simhost.lock"
)

// Client talks to a sim host over its hypervisor socket (gRPC,
// xenopsd.simhost.v1). It implements xenctrl.Hypervisor and, with the
// methods of client_build.go, builder.Hypervisor. Calls from many
// goroutines share one connection, and each call's context travels to the
// host: a deadline or a cancel ends the call there too.
//
// One connection is one sim host boot: when it breaks (the host stopped or
// restarted), calls fail until the next one dials again and greets the
// host anew (so BootID tells a restart). A call in flight when it broke
// fails, since whether it took effect is unknown.
type Client struct {
	dir     string
	started bool // Ensure started the host

	mu   sync.Mutex
	cur  *conn             // nil: dial on the next call
	last *pb.HelloResponse // the host's answer on the last connection
}

var _ xenctrl.Hypervisor = (*Client)(nil)

// conn is one connection to one sim host boot.
type conn struct {
	nc    net.Conn
	cc    *grpc.ClientConn
	host  pb.SimHostServiceClient
	hv    pb.HypervisorServiceClient
	build pb.DomainBuildServiceClient
	guest pb.GuestServiceClient
	dom0  pb.Dom0ServiceClient
	hello *pb.HelloResponse
}

func (cn *conn) close() {
	cn.cc.Close()
	cn.nc.Close() // in case gRPC never took it
}

// errConnLost is what a connection's dialer answers when gRPC tries to
// reconnect: a new connection belongs to a new Client conn, with its Hello.
var errConnLost = errors.New("sim host connection lost")

// Dial connects to the sim host serving dir.
func Dial(ctx context.Context, dir string) (*Client, error) {
	c := &Client{dir: dir}
	if _, err := c.conn(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// dialSocket connects to the hypervisor socket; its error is the system's
// (ENOENT, ECONNREFUSED when no host serves dir).
func dialSocket(ctx context.Context, dir string) (net.Conn, error) {
	path := filepath.Join(dir, HypervisorSocket)
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("sim host: dial %s: %w", path, err)
	}
	return nc, nil
}

// greet runs gRPC over nc, which it owns from now on, and asks who answers.
func greet(ctx context.Context, dir string, nc net.Conn) (*conn, error) {
	var used atomic.Bool
	dialer := func(context.Context, string) (net.Conn, error) {
		if used.Swap(true) {
			return nil, errConnLost
		}
		return nc, nil
	}
	cc, err := grpc.NewClient("passthrough:///simhost",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialer),
		grpc.WithInitialWindowSize(streamWindow),
		grpc.WithInitialConnWindowSize(connWindow),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("sim host %s: %w", dir, err)
	}
	cn := &conn{nc: nc, cc: cc, host: pb.NewSimHostServiceClient(cc),
		hv: pb.NewHypervisorServiceClient(cc), build: pb.NewDomainBuildServiceClient(cc),
		guest: pb.NewGuestServiceClient(cc), dom0: pb.NewDom0ServiceClient(cc)}
	if cn.hello, err = cn.host.Hello(ctx, &pb.HelloRequest{}); err != nil {
		cn.close()
		return nil, fmt.Errorf("sim host: hello on %s: %w", filepath.Join(dir, HypervisorSocket), err)
	}
	return cn, nil
}

// conn returns the live connection, dialling if there is none.
func (c *Client) conn(ctx context.Context) (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur != nil {
		return c.cur, nil
	}
	nc, err := dialSocket(ctx, c.dir)
	if err != nil {
		return nil, err
	}
	cn, err := greet(ctx, c.dir, nc)
	if err != nil {
		return nil, err
	}
	c.cur, c.last = cn, cn.hello
	return cn, nil
}

// broken forgets cn if it is still the current connection.
func (c *Client) broken(cn *conn) {
	c.mu.Lock()
	if c.cur == cn {
		c.cur = nil
	}
	c.mu.Unlock()
	cn.close()
}

// call runs one RPC on the current connection. A transport failure drops
// the connection; a hypervisor error comes back as the simulator's error.
func (c *Client) call(ctx context.Context, method string, rpc func(context.Context, *conn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	cn, err := c.conn(ctx)
	if err != nil {
		return err
	}
	err = rpc(ctx, cn)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return fmt.Errorf("sim host: %s: %w", method, ctx.Err())
	case status.Code(err) == codes.DeadlineExceeded:
		// The host's copy of the deadline can end a moment before ours.
		return fmt.Errorf("sim host: %s: %w", method, context.DeadlineExceeded)
	case status.Code(err) == codes.Unavailable:
		c.broken(cn)
		return fmt.Errorf("sim host %s: %s: connection lost: %w", c.dir, method, err)
	}
	return errorFromRPC(err)
}

// hello is what the host answered on the last connection.
func (c *Client) hello() *pb.HelloResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// XenstoredPath is the unix socket of the sim host's xenstored.
func (c *Client) XenstoredPath() string { return filepath.Join(c.dir, XenstoredSocket) }

// Dir is the sim host's directory.
func (c *Client) Dir() string { return c.dir }

// BootID identifies the host process this client last connected to; it
// changes when the sim host is restarted (a "host reboot").
func (c *Client) BootID() string { return c.hello().GetBootId() }

// PID is the process id of the sim host this client last connected to.
func (c *Client) PID() int { return int(c.hello().GetPid()) }

// Started reports whether the host was started by the Ensure call that
// returned this client, rather than found running.
func (c *Client) Started() bool { return c.started }

// Kind implements xenctrl.Hypervisor.
func (c *Client) Kind() string { return "sim" }

// Close closes the connection; the sim host and its domains live on.
func (c *Client) Close() error {
	c.mu.Lock()
	cn := c.cur
	c.cur = nil
	c.mu.Unlock()
	if cn != nil {
		cn.close()
	}
	return nil
}

// Version implements xenctrl.Hypervisor.
func (c *Client) Version(ctx context.Context) (v xenctrl.Version, err error) {
	err = c.call(ctx, "Version", func(ctx context.Context, cn *conn) error {
		r, err := cn.hv.Version(ctx, &pb.VersionRequest{})
		v = versionFromRPC(r)
		return err
	})
	return v, err
}

// PhysInfo implements xenctrl.Hypervisor.
func (c *Client) PhysInfo(ctx context.Context) (p xenctrl.PhysInfo, err error) {
	err = c.call(ctx, "PhysInfo", func(ctx context.Context, cn *conn) error {
		r, err := cn.hv.PhysInfo(ctx, &pb.PhysInfoRequest{})
		p = physInfoFromRPC(r)
		return err
	})
	return p, err
}

// CPUIdle implements xenctrl.Hypervisor.
func (c *Client) CPUIdle(ctx context.Context) (idle []time.Duration, err error) {
	err = c.call(ctx, "CPUIdle", func(ctx context.Context, cn *conn) error {
		r, err := cn.hv.CPUIdle(ctx, &pb.CPUIdleRequest{})
		idle = make([]time.Duration, len(r.GetIdleNs()))
		for i, ns := range r.GetIdleNs() {
			idle[i] = time.Duration(ns)
		}
		return err
	})
	return idle, err
}

// GetVCPUInfo implements xenctrl.Hypervisor.
func (c *Client) GetVCPUInfo(ctx context.Context, d xenctrl.Domid, vcpu uint32) (v xenctrl.VCPUInfo, err error) {
	err = c.call(ctx, "GetVCPUInfo", func(ctx context.Context, cn *conn) error {
		r, err := cn.hv.GetVCPUInfo(ctx, &pb.GetVCPUInfoRequest{Domid: uint32(d), Vcpu: vcpu})
		v = xenctrl.VCPUInfo{VCPU: r.GetVcpu(), Online: r.GetOnline(), Blocked: r.GetBlocked(), Running: r.GetRunning(),
			CPUTime: r.GetCpuTimeNs(), CPU: r.GetCpu()}
		return err
	})
	return v, err
}

// CreateDomain implements xenctrl.Hypervisor.
func (c *Client) CreateDomain(ctx context.Context, cfg xenctrl.DomainConfig) (d xenctrl.Domid, err error) {
	err = c.call(ctx, "CreateDomain", func(ctx context.Context, cn *conn) error {
		r, err := cn.hv.CreateDomain(ctx, &pb.CreateDomainRequest{Config: domainConfigToRPC(cfg)})
		d = xenctrl.Domid(r.GetDomid())
		return err
	})
	return d, err
}

// SetMaxMem implements xenctrl.Hypervisor.
func (c *Client) SetMaxMem(ctx context.Context, d xenctrl.Domid, kib uint64) error {
	return c.call(ctx, "SetMaxMem", func(ctx context.Context, cn *conn) error {
		_, err := cn.hv.SetMaxMem(ctx, &pb.SetMaxMemRequest{Domid: uint32(d), Kib: kib})
		return err
	})
}

// SetMaxVCPUs is XEN_DOMCTL_max_vcpus (as (*xenctrl.Xen).SetMaxVCPUs).
func (c *Client) SetMaxVCPUs(ctx context.Context, d xenctrl.Domid, n uint32) error {
	return c.call(ctx, "SetMaxVCPUs", func(ctx context.Context, cn *conn) error {
		_, err := cn.hv.SetMaxVCPUs(ctx, &pb.SetMaxVCPUsRequest{Domid: uint32(d), Vcpus: n})
		return err
	})
}

// PopulatePhysmap implements xenctrl.Hypervisor.
func (c *Client) PopulatePhysmap(ctx context.Context, d xenctrl.Domid, nrPages uint64) error {
	return c.call(ctx, "PopulatePhysmap", func(ctx context.Context, cn *conn) error {
		_, err := cn.hv.PopulatePhysmap(ctx, &pb.PopulatePhysmapRequest{Domid: uint32(d), Pages: nrPages})
		return err
	})
}

// PauseDomain implements xenctrl.Hypervisor.
func (c *Client) PauseDomain(ctx context.Context, d xenctrl.Domid) error {
	return c.call(ctx, "PauseDomain", func(ctx context.Context, cn *conn) error {
		_, err := cn.hv.PauseDomain(ctx, &pb.PauseDomainRequest{Domid: uint32(d)})
		return err
	})
}

// UnpauseDomain implements xenctrl.Hypervisor.
func (c *Client) UnpauseDomain(ctx context.Context, d xenctrl.Domid) error {
	return c.call(ctx, "UnpauseDomain", func(ctx context.Context, cn *conn) error {
		_, err := cn.hv.UnpauseDomain(ctx, &pb.UnpauseDomainRequest{Domid: uint32(d)})
		return err
	})
}

// ShutdownDomain implements xenctrl.Hypervisor.
func (c *Client) ShutdownDomain(ctx context.Context, d xenctrl.Domid, reason xenctrl.ShutdownReason) error {
	return c.call(ctx, "ShutdownDomain", func(ctx context.Context, cn *conn) error {
		_, err := cn.hv.ShutdownDomain(ctx, &pb.ShutdownDomainRequest{Domid: uint32(d), Reason: uint32(reason)})
		return err
	})
}

// DestroyDomain implements xenctrl.Hypervisor.
func (c *Client) DestroyDomain(ctx context.Context, d xenctrl.Domid) error {
	return c.call(ctx, "DestroyDomain", func(ctx context.Context, cn *conn) error {
		_, err := cn.hv.DestroyDomain(ctx, &pb.DestroyDomainRequest{Domid: uint32(d)})
		return err
	})
}

// DomainInfo implements xenctrl.Hypervisor.
func (c *Client) DomainInfo(ctx context.Context, d xenctrl.Domid) (xenctrl.DomainInfo, error) {
	var recs []byte
	err := c.call(ctx, "DomainInfo", func(ctx context.Context, cn *conn) error {
		r, err := cn.hv.DomainInfo(ctx, &pb.DomainInfoRequest{Domid: uint32(d)})
		recs = r.GetDomain().GetRecords()
		return err
	})
	if err != nil {
		return xenctrl.DomainInfo{}, err
	}
	ds, err := decodeInfos(recs)
	if err == nil && len(ds) != 1 {
		err = fmt.Errorf("sim host: DomainInfo(%d) answered %d records", d, len(ds))
	}
	if err != nil {
		return xenctrl.DomainInfo{}, err
	}
	return ds[0], nil
}

// ListDomains implements xenctrl.Hypervisor.
func (c *Client) ListDomains(ctx context.Context) ([]xenctrl.DomainInfo, error) {
	var recs []byte
	err := c.call(ctx, "ListDomains", func(ctx context.Context, cn *conn) error {
		r, err := cn.hv.ListDomains(ctx, &pb.ListDomainsRequest{})
		recs = r.GetDomains().GetRecords()
		return err
	})
	if err != nil {
		return nil, err
	}
	return decodeInfos(recs)
}

// GuestShutdown makes the guest inside d shut itself down with reason, as
// its kernel would with SCHEDOP_shutdown (crash, reboot, poweroff, ...).
// EBUSY unless the guest is running.
func (c *Client) GuestShutdown(ctx context.Context, d xenctrl.Domid, reason xenctrl.ShutdownReason) error {
	return c.call(ctx, "GuestShutdown", func(ctx context.Context, cn *conn) error {
		_, err := cn.guest.GuestShutdown(ctx, &pb.GuestShutdownRequest{Domid: uint32(d), Reason: uint32(reason)})
		return err
	})
}

// SetGuestBehaviour changes how the simulated guest inside d behaves.
func (c *Client) SetGuestBehaviour(ctx context.Context, d xenctrl.Domid, b sim.GuestBehaviour) error {
	return c.call(ctx, "SetGuestBehaviour", func(ctx context.Context, cn *conn) error {
		_, err := cn.guest.SetGuestBehaviour(ctx, &pb.SetGuestBehaviourRequest{Domid: uint32(d), Behaviour: guestBehaviourToRPC(b)})
		return err
	})
}

// Calls is the number of RPCs the sim host has served since it started, by
// full method name (see SimHostService.Calls).
func (c *Client) Calls(ctx context.Context) (map[string]uint64, error) {
	var out map[string]uint64
	err := c.call(ctx, "Calls", func(ctx context.Context, cn *conn) error {
		r, err := cn.host.Calls(ctx, &pb.CallsRequest{})
		out = r.GetCalls()
		return err
	})
	return out, err
}

// Stop asks the sim host to exit and waits (until ctx ends) until it no
// longer answers. Its domains vanish with it, as on a host power-off.
func (c *Client) Stop(ctx context.Context) error {
	cn, err := c.conn(ctx)
	if err != nil {
		return err
	}
	boot := cn.hello.GetBootId()
	_, err = cn.host.Stop(ctx, &pb.StopRequest{})
	c.broken(cn)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("sim host %s: stop: %w", c.dir, err)
	}
	// The reply may be lost as the host closes its connections; either way
	// wait until nothing answers as this host (a new one may already run)
	// and it has let go of the directory: it closes its sockets first and
	// removes its pid file and releases the flock after.
	for {
		nc, err := dialSocket(ctx, c.dir)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("sim host %s did not exit: %w", c.dir, ctx.Err())
			}
			if !dirLocked(c.dir) {
				return nil
			}
		} else if probe, err := greet(ctx, c.dir, nc); err == nil {
			other := probe.hello.GetBootId() != boot
			probe.close()
			if other {
				return nil
			}
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("sim host %s did not exit: %w", c.dir, ctx.Err())
		}
	}
}
