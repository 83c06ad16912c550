package simhost

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"path/filepath"
	"sync"
	"time"

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

// Client talks to a sim host over its hypervisor socket. It implements
// xenctrl.Hypervisor. Calls from many goroutines share one connection.
// When the connection breaks (the host stopped or restarted), the next
// call dials again; a call that was in flight when it broke fails, since
// whether it took effect is unknown.
type Client struct {
	dir string

	mu    sync.Mutex
	rpc   *rpc.Client
	hello Hello
}

var _ xenctrl.Hypervisor = (*Client)(nil)

// Dial connects to the sim host serving dir.
func Dial(ctx context.Context, dir string) (*Client, error) {
	c := &Client{dir: dir}
	if _, err := c.conn(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// conn returns the live rpc client, dialling if there is none.
func (c *Client) conn(ctx context.Context) (*rpc.Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rpc != nil {
		return c.rpc, nil
	}
	path := filepath.Join(c.dir, HypervisorSocket)
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("sim host: dial %s: %w", path, err)
	}
	rc := rpc.NewClient(nc)
	var r Reply
	if err := callCtx(ctx, rc, "Hello", Args{}, &r); err != nil {
		rc.Close()
		return nil, fmt.Errorf("sim host: hello on %s: %w", path, err)
	}
	c.rpc, c.hello = rc, r.Hello
	return rc, nil
}

// broken forgets rc if it is still the current connection.
func (c *Client) broken(rc *rpc.Client) {
	c.mu.Lock()
	if c.rpc == rc {
		c.rpc = nil
	}
	c.mu.Unlock()
	rc.Close()
}

func callCtx(ctx context.Context, rc *rpc.Client, method string, args Args, r *Reply) error {
	call := rc.Go(serviceName+"."+method, args, r, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		return call.Error
	case <-ctx.Done():
		return ctx.Err()
	}
}

// call runs one method; a transport failure drops the connection.
func (c *Client) call(ctx context.Context, method string, args Args) (Reply, error) {
	var r Reply
	if err := ctx.Err(); err != nil {
		return r, err
	}
	rc, err := c.conn(ctx)
	if err != nil {
		return r, err
	}
	if err := callCtx(ctx, rc, method, args, &r); err != nil {
		if errors.Is(err, rpc.ErrShutdown) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			c.broken(rc)
			return r, fmt.Errorf("sim host %s: %s: connection lost: %w", c.dir, method, err)
		}
		return r, err
	}
	return r, r.Err.err()
}

// XenstoredPath is the unix socket of the sim host's xenstored.
func (c *Client) XenstoredPath() string { return filepath.Join(c.dir, XenstoredSocket) }

// Dir is the sim host's directory.
func (c *Client) Dir() string { return c.dir }

// BootID identifies the host process this client last connected to; it
// changes when the sim host is restarted (a "host reboot").
func (c *Client) BootID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hello.BootID
}

// PID is the process id of the sim host this client last connected to.
func (c *Client) PID() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.hello.PID
}

// Kind implements xenctrl.Hypervisor.
func (c *Client) Kind() string { return "sim" }

// Close closes the connection; the sim host and its domains live on.
func (c *Client) Close() error {
	c.mu.Lock()
	rc := c.rpc
	c.rpc = nil
	c.mu.Unlock()
	if rc != nil {
		return rc.Close()
	}
	return nil
}

// Version implements xenctrl.Hypervisor.
func (c *Client) Version(ctx context.Context) (xenctrl.Version, error) {
	r, err := c.call(ctx, "Version", Args{})
	return r.Version, err
}

// PhysInfo implements xenctrl.Hypervisor.
func (c *Client) PhysInfo(ctx context.Context) (xenctrl.PhysInfo, error) {
	r, err := c.call(ctx, "PhysInfo", Args{})
	return r.Phys, err
}

// CreateDomain implements xenctrl.Hypervisor.
func (c *Client) CreateDomain(ctx context.Context, cfg xenctrl.DomainConfig) (xenctrl.Domid, error) {
	r, err := c.call(ctx, "CreateDomain", Args{Config: cfg})
	return r.Domid, err
}

// SetMaxMem implements xenctrl.Hypervisor.
func (c *Client) SetMaxMem(ctx context.Context, d xenctrl.Domid, kib uint64) error {
	_, err := c.call(ctx, "SetMaxMem", Args{Domid: d, KiB: kib})
	return err
}

// SetMaxVCPUs is XEN_DOMCTL_max_vcpus (as (*xenctrl.Xen).SetMaxVCPUs).
func (c *Client) SetMaxVCPUs(ctx context.Context, d xenctrl.Domid, n uint32) error {
	_, err := c.call(ctx, "SetMaxVCPUs", Args{Domid: d, VCPUs: n})
	return err
}

// PopulatePhysmap implements xenctrl.Hypervisor.
func (c *Client) PopulatePhysmap(ctx context.Context, d xenctrl.Domid, nrPages uint64) error {
	_, err := c.call(ctx, "PopulatePhysmap", Args{Domid: d, Pages: nrPages})
	return err
}

// PauseDomain implements xenctrl.Hypervisor.
func (c *Client) PauseDomain(ctx context.Context, d xenctrl.Domid) error {
	_, err := c.call(ctx, "PauseDomain", Args{Domid: d})
	return err
}

// UnpauseDomain implements xenctrl.Hypervisor.
func (c *Client) UnpauseDomain(ctx context.Context, d xenctrl.Domid) error {
	_, err := c.call(ctx, "UnpauseDomain", Args{Domid: d})
	return err
}

// ShutdownDomain implements xenctrl.Hypervisor.
func (c *Client) ShutdownDomain(ctx context.Context, d xenctrl.Domid, reason xenctrl.ShutdownReason) error {
	_, err := c.call(ctx, "ShutdownDomain", Args{Domid: d, Reason: reason})
	return err
}

// DestroyDomain implements xenctrl.Hypervisor.
func (c *Client) DestroyDomain(ctx context.Context, d xenctrl.Domid) error {
	_, err := c.call(ctx, "DestroyDomain", Args{Domid: d})
	return err
}

// DomainInfo implements xenctrl.Hypervisor.
func (c *Client) DomainInfo(ctx context.Context, d xenctrl.Domid) (xenctrl.DomainInfo, error) {
	r, err := c.call(ctx, "DomainInfo", Args{Domid: d})
	if err != nil {
		return xenctrl.DomainInfo{}, err
	}
	ds, err := decodeInfos(r.List)
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
	r, err := c.call(ctx, "ListDomains", Args{})
	if err != nil {
		return nil, err
	}
	return decodeInfos(r.List)
}

// GuestShutdown makes the guest inside d shut itself down with reason, as
// its kernel would with SCHEDOP_shutdown (crash, reboot, poweroff, ...).
// EBUSY unless the guest is running.
func (c *Client) GuestShutdown(ctx context.Context, d xenctrl.Domid, reason xenctrl.ShutdownReason) error {
	_, err := c.call(ctx, "GuestShutdown", Args{Domid: d, Reason: reason})
	return err
}

// SetGuestBehaviour changes how the simulated guest inside d behaves.
func (c *Client) SetGuestBehaviour(ctx context.Context, d xenctrl.Domid, b sim.GuestBehaviour) error {
	_, err := c.call(ctx, "SetGuestBehaviour", Args{Domid: d, Behaviour: b})
	return err
}

// Stop asks the sim host to exit and waits (until ctx ends) until it no
// longer answers. Its domains vanish with it, as on a host power-off.
func (c *Client) Stop(ctx context.Context) error {
	rc, err := c.conn(ctx)
	if err != nil {
		return err
	}
	boot := c.BootID()
	var r Reply
	err = callCtx(ctx, rc, "Stop", Args{}, &r)
	c.broken(rc)
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("sim host %s: stop: %w", c.dir, err)
	}
	// The reply may be lost as the host closes its connections; either way
	// wait until nothing answers as this host (a new one may already run).
	path := filepath.Join(c.dir, HypervisorSocket)
	for {
		var d net.Dialer
		nc, derr := d.DialContext(ctx, "unix", path)
		if derr != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("sim host %s did not exit: %w", c.dir, ctx.Err())
			}
			return nil
		}
		probe := rpc.NewClient(nc)
		var hr Reply
		herr := callCtx(ctx, probe, "Hello", Args{}, &hr)
		probe.Close()
		if herr == nil && hr.Hello.BootID != boot {
			return nil
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return fmt.Errorf("sim host %s did not exit: %w", c.dir, ctx.Err())
		}
	}
}
