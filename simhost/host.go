// Package simhost is the simulated machine: one process that plays Xen
// (package xenctrl/sim), its xenstored (package xenstore/xenstored) and
// the guest kernels of its domains, so that the toolstack daemon can be
// started, killed and restarted against it while "domains" keep running,
// as they do on a real Xen host.
//
// A sim host owns a directory:
//
//	hypervisor.sock  gRPC, xenopsd.simhost.v1 (api/xenopsd/simhost/v1):
//	                 every xenctrl.Hypervisor method, what the domain
//	                 builder needs besides (guest memory, set-up
//	                 hypercalls), guest controls, Hello and Stop (the
//	                 rpc_*.go files, one per service)
//	xenstored.sock   the embedded xenstored (privileged dom0 connections)
//	simhost.pid      the host's pid while it runs
//	simhost.lock     flock held while it runs: one host per directory
//	simhost.log      stdout/stderr of a host started by Ensure
//
// The host also plays dom0's kernel and hotplug scripts for devices:
// blkback and netback serve the vbd and vif backends the toolstack writes
// in xenstore (backend*.go), on loop devices, network interfaces and
// bridges kept in the host (dom0.go) that the toolstack drives as a
// devices.Host through Dom0Service; each simulated guest runs blkfront and
// netfront (frontend*.go). Both ends follow Linux's drivers, failures and
// error nodes included, so the toolstack's device code is tested here.
// The guests do a fixed amount of I/O per connect and per second of CPU
// time they run while connected, which dom0 counts as blkback's statistics
// and the vifs' link counters do (dom0_traffic.go).
//
// Xen raising VIRQ_DOM_EXC is wired to xenstored's DomainException, and
// xenstored asks the simulator whether a domain exists or is dying. When a
// domain first runs, a simulated guest connects to xenstored as that
// domain, advertises control/feature-poweroff, -reboot and -suspend as
// Linux does, and answers control/shutdown requests. Its xenstore ring is
// a reference on the domain (sim.Hypervisor.Hold): a destroyed domain
// stays dying until xenstored has seen it die and dropped the ring, as on
// Xen.
//
// The host exits on Stop, when its context ends, or after IdleTimeout
// without any client connection (a safety net for forgotten test hosts).
// Its domains vanish with it.
package simhost

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/simhost/v1"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// DefaultIdleTimeout is how long a sim host runs with no client connected
// before it exits on its own.
const DefaultIdleTimeout = time.Hour

// Config describes a sim host.
type Config struct {
	// Dir holds the sockets, pid file and lock (created 0700 if missing).
	Dir string
	// TotalMemory (bytes) and NrCPUs size the machine (sim defaults if 0).
	TotalMemory uint64
	NrCPUs      uint32
	// IdleTimeout: exit after this long with no client connection on
	// either socket. 0 means DefaultIdleTimeout; negative disables it.
	IdleTimeout time.Duration
	// NoGuests disables the simulated guests (domains then never answer
	// shutdown requests, like guests without PV drivers).
	NoGuests bool
	// Bridges are dom0's network bridges; nil means DefaultBridges.
	Bridges []string
	Logger  *slog.Logger
}

// DefaultBridges are the bridges of a sim host's dom0 unless configured.
var DefaultBridges = []string{"xenbr0"}

// host is one running sim host.
type host struct {
	cfg    Config
	log    *slog.Logger
	hv     *sim.Hypervisor
	xs     xenstoreServer
	bootID string

	stopOnce sync.Once
	stopped  chan struct{}
	reason   atomic.Value // string: why the host stops

	clients  atomic.Int64 // open client connections, both sockets
	idleFrom atomic.Int64 // unix nanos when clients last dropped to 0

	kick chan struct{} // VIRQ_DOM_EXC, coalesced
	// excMu guards excDomids, the domains whose changes raised the
	// exceptions kick coalesced.
	excMu     sync.Mutex
	excDomids []uint32

	gmu    sync.Mutex
	guests map[xenctrl.Domid]*guest
	gwg    sync.WaitGroup

	console *consoled // xenconsoled's part: guest console logs (console.go)
	dom0    *dom0     // loop devices, interfaces, bridges (dom0.go)
}

// Run runs a sim host until ctx ends, a client calls Stop, or it has been
// idle for cfg.IdleTimeout. It returns an error if it cannot start (for
// instance, another host already serves cfg.Dir).
func Run(ctx context.Context, cfg Config) error {
	if cfg.Dir == "" {
		return errors.New("simhost: Config.Dir is empty")
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("simhost", cfg.Dir)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("simhost: create dir: %w", err)
	}
	unlock, err := lockDir(cfg.Dir)
	if err != nil {
		return err
	}
	defer unlock()

	h := &host{
		cfg:     cfg,
		log:     log,
		bootID:  newBootID(),
		stopped: make(chan struct{}),
		kick:    make(chan struct{}, 1),
		guests:  make(map[xenctrl.Domid]*guest),
	}
	if cfg.Bridges == nil {
		cfg.Bridges = DefaultBridges
	}
	h.dom0 = newDom0(cfg.Bridges)
	h.idleFrom.Store(time.Now().UnixNano())
	h.hv = sim.New(sim.Config{
		TotalMemory:       cfg.TotalMemory,
		NrCPUs:            cfg.NrCPUs,
		OnDomainException: h.domainException,
		OnGuestBoot:       h.guestBoot,
		Logger:            log,
	})
	h.dom0.guestCPU = h.guestCPU
	h.xs = newXenstored(log, h.domainState)

	hvPath := filepath.Join(cfg.Dir, HypervisorSocket)
	xsPath := filepath.Join(cfg.Dir, XenstoredSocket)
	consoleDir := filepath.Join(cfg.Dir, ConsoleDir)
	h.console = newConsoled(consoleDir, h.xs, log)
	srv := newRPCServer(services{
		host: &hostServer{
			hello: &pb.HelloResponse{Pid: int64(os.Getpid()), BootId: h.bootID, XenstoredPath: xsPath},
			stop:  func() { h.stop("stop requested by a client") },
		},
		hypervisor: &hypervisorServer{hv: h.hv},
		build:      newBuildServer(h.hv),
		guest: &guestServer{
			hv: h.hv,
			// A guest shutting itself down prints why, as Linux does.
			onShutdown: func(d xenctrl.Domid, r xenctrl.ShutdownReason) {
				h.console.print(d, shutdownLine(time.Time{}, r), false)
			},
		},
		dom0: &dom0Server{d: h.dom0},
	})

	pidPath := filepath.Join(cfg.Dir, PIDFile)
	var hvl, xsl net.Listener
	fail := func(err error) error {
		for _, l := range []net.Listener{hvl, xsl} {
			if l != nil {
				l.Close()
			}
		}
		_ = h.xs.Close()
		os.Remove(hvPath)
		os.Remove(xsPath)
		os.Remove(pidPath)
		return err
	}
	if hvl, err = listenUnix(hvPath); err != nil {
		return fail(err)
	}
	if xsl, err = listenUnix(xsPath); err != nil {
		return fail(err)
	}
	if err := os.WriteFile(pidPath, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return fail(fmt.Errorf("simhost: write pid file: %w", err))
	}

	backends, err := h.startBackends()
	if err != nil {
		return fail(err)
	}
	defer backends.stop()

	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := srv.Serve(&countingListener{Listener: hvl, h: h}); err != nil && !errors.Is(err, net.ErrClosed) {
			log.Warn("simhost: hypervisor socket stopped serving", "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := h.xs.Serve(&countingListener{Listener: xsl, h: h}); err != nil && !errors.Is(err, net.ErrClosed) {
			log.Warn("simhost: xenstored stopped serving", "err", err)
		}
	}()
	go func() { defer wg.Done(); h.exceptionLoop() }()
	log.Info("simhost: running", "pid", os.Getpid(), "boot_id", h.bootID,
		"idle_timeout", cfg.IdleTimeout, "hypervisor", hvPath, "xenstored", xsPath)

	h.wait(ctx)
	log.Info("simhost: stopping", "reason", h.reason.Load())

	hvl.Close()
	xsl.Close()
	h.stopGuests()
	backends.stop()
	h.console.close()
	_ = h.xs.Close()
	os.Remove(hvPath)
	os.Remove(xsPath)
	os.Remove(pidPath)
	unlock()
	srv.Stop() // closes the clients' connections
	wg.Wait()
	h.gwg.Wait()
	log.Info("simhost: stopped")
	return nil
}

// runningBackends is dom0's backend bus while it runs.
type runningBackends struct {
	cancel context.CancelFunc
	done   chan struct{}
	cli    *xenstore.Client
	l      *pipeListener
	once   sync.Once
}

// startBackends connects dom0's kernel to xenstored and starts blkback
// and netback (backend.go).
func (h *host) startBackends() (*runningBackends, error) {
	l := newPipeListener()
	go func() { _ = h.xs.Serve(l) }()
	conn, err := l.dial()
	if err != nil {
		l.Close()
		return nil, fmt.Errorf("simhost: connect the backends to xenstored: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rb := &runningBackends{cancel: cancel, done: make(chan struct{}), cli: xenstore.NewClient(conn), l: l}
	bus := newBackendBus(rb.cli, h.hv, h.dom0, h.cpus(), h.log)
	h.dom0.setQEMUHooks(qemuHooks{
		started: func(domid uint32) { bus.qemuStarted(ctx, domid) },
		stopped: func(domid uint32) { bus.qemuStopped(ctx, domid) },
	})
	go func() {
		defer close(rb.done)
		bus.run(ctx)
	}()
	return rb, nil
}

func (rb *runningBackends) stop() {
	rb.once.Do(func() {
		rb.cancel()
		rb.cli.Close()
		<-rb.done
		rb.l.Close()
	})
}

// cpus is the host's CPU count.
func (h *host) cpus() uint32 {
	p, err := h.hv.PhysInfo(context.Background())
	if err != nil || p.NrCPUs == 0 {
		return 1
	}
	return p.NrCPUs
}

func newBootID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// lockDir takes the directory's flock so that only one host serves it.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("simhost: open lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("simhost: another sim host already serves %s", dir)
		}
		return nil, fmt.Errorf("simhost: lock %s: %w", dir, err)
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }, nil
}

// dirLocked reports whether a host holds dir's flock (a missing lock file
// means none does).
func dirLocked(dir string) bool {
	f, err := os.Open(filepath.Join(dir, lockFile))
	if err != nil {
		return false
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return errors.Is(err, syscall.EWOULDBLOCK)
	}
	return false
}

// listenUnix listens on path, replacing a stale socket file (the lock says
// no other host owns the directory).
func listenUnix(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("simhost: remove stale socket %s: %w", path, err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("simhost: listen %s: %w", path, err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("simhost: chmod %s: %w", path, err)
	}
	return l, nil
}

func (h *host) stop(reason string) {
	h.stopOnce.Do(func() {
		h.reason.Store(reason)
		close(h.stopped)
	})
}

// wait blocks until the host must stop, checking the idle safety net.
func (h *host) wait(ctx context.Context) {
	var tick <-chan time.Time
	if h.cfg.IdleTimeout > 0 {
		t := time.NewTicker(max(h.cfg.IdleTimeout/8, 5*time.Millisecond))
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			h.stop("context ended: " + ctx.Err().Error())
		case <-h.stopped:
			return
		case <-tick:
			if h.clients.Load() > 0 {
				continue
			}
			idle := time.Since(time.Unix(0, h.idleFrom.Load()))
			if idle >= h.cfg.IdleTimeout {
				h.log.Warn("simhost: no client for the idle timeout; exiting (domains are lost)",
					"idle", idle.Round(time.Millisecond), "idle_timeout", h.cfg.IdleTimeout)
				h.stop(fmt.Sprintf("idle for %v with no client", idle.Round(time.Millisecond)))
			}
		}
	}
}

func (h *host) clientUp() { h.clients.Add(1) }

func (h *host) clientDown() {
	if h.clients.Add(-1) == 0 {
		h.idleFrom.Store(time.Now().UnixNano())
	}
}

// countingListener counts the client connections of either socket for the
// idle safety net.
type countingListener struct {
	net.Listener
	h *host
}

func (l *countingListener) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.h.clientUp()
	return &countedConn{Conn: nc, h: l.h}, nil
}

type countedConn struct {
	net.Conn
	h    *host
	once sync.Once
}

func (c *countedConn) Close() error {
	c.once.Do(c.h.clientDown)
	return c.Conn.Close()
}

// domainState answers xenstored's question about a domain.
func (h *host) domainState(domid uint32) (exists, shutdownOrDying bool) {
	if domid >= uint32(xenctrl.DomidFirstReserved) {
		return false, false
	}
	return h.hv.DomainStatus(xenctrl.Domid(domid))
}

// guestCPU is domain domid's CPU time, 0 when it is gone: what drives its
// devices' simulated I/O.
func (h *host) guestCPU(domid uint32) time.Duration {
	di, err := h.hv.DomainInfo(context.Background(), xenctrl.Domid(domid))
	if err != nil {
		return 0
	}
	return time.Duration(di.CPUTime)
}

// domainException is the simulator's VIRQ_DOM_EXC, raised by domain d:
// coalesced, handled on exceptionLoop so that the hypervisor never waits
// for xenstored.
func (h *host) domainException(d xenctrl.Domid) {
	h.excMu.Lock()
	h.excDomids = append(h.excDomids, uint32(d))
	h.excMu.Unlock()
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// exceptionLoop lets xenstored process VIRQ_DOM_EXC (firing
// @releaseDomain), then drops the xenstore rings of dying domains, which
// lets the hypervisor release them.
func (h *host) exceptionLoop() {
	for {
		select {
		case <-h.kick:
			h.excMu.Lock()
			domids := h.excDomids
			h.excDomids = nil
			h.excMu.Unlock()
			if len(domids) > 0 {
				// xenstored re-checks these domains only: unlike Xen's
				// VIRQ, the simulator knows which domains changed.
				h.xs.DomainException(domids...)
			}
			h.reapGuests()
		case <-h.stopped:
			return
		}
	}
}
