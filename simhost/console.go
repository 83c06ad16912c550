package simhost

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// ConsoleDir is the directory, inside the host's directory, where the host
// logs its guests' consoles as xenconsoled --log=guest does in dom0:
// console/guest-<name>.log, <name> being /local/domain/<domid>/name when
// the guest first prints. The files outlive the domains (post-mortem); a
// domain rebuilt under the same name appends to the same file.
const ConsoleDir = "console"

// BootMarker is the line a simulated guest prints once booted (followed by
// " domid=N").
const BootMarker = "SIM-GUEST-BOOTED"

// consoled plays xenconsoled for the simulated guests: what a guest
// "writes to its console ring" is appended to its log file at once. Only
// the names of live domains are kept in memory, never console output.
type consoled struct {
	dir string
	log *slog.Logger
	xs  xenstoreServer

	mu    sync.Mutex
	names map[xenctrl.Domid]string // name each domain's log was opened under
	cli   *xenstore.Client         // privileged (dom0) connection, lazily made
	l     *pipeListener
}

func newConsoled(dir string, xs xenstoreServer, log *slog.Logger) *consoled {
	return &consoled{dir: dir, xs: xs, log: log, names: make(map[xenctrl.Domid]string)}
}

// client returns the dom0 xenstore connection, connecting it on first use
// through an in-process listener served by the embedded xenstored (every
// connection it accepts from a listener is privileged, as dom0's socket).
func (c *consoled) client() (*xenstore.Client, error) {
	if c.cli != nil {
		return c.cli, nil
	}
	if c.l == nil {
		c.l = newPipeListener()
		go func(l *pipeListener) { _ = c.xs.Serve(l) }(c.l)
	}
	conn, err := c.l.dial()
	if err != nil {
		return nil, err
	}
	c.cli = xenstore.NewClient(conn)
	return c.cli, nil
}

// name reads the domain's name as xenconsoled does, from a dom0 connection.
func (c *consoled) name(ctx context.Context, d xenctrl.Domid) (string, error) {
	cli, err := c.client()
	if err != nil {
		return "", err
	}
	v, err := cli.Read(ctx, fmt.Sprintf("/local/domain/%d/name", d))
	if err != nil {
		c.cli.Close()
		c.cli = nil // a broken connection is redialled next time
		return "", err
	}
	name := string(v)
	// xenconsoled uses the name as it is in a path; refuse what could
	// leave the directory.
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return "", fmt.Errorf("unusable domain name %q", name)
	}
	return name, nil
}

// print appends text to the console log of domain d. keep records the name
// for the domain's life (the guest's own output); otherwise a name read
// now is used once. Like xenconsoled, a domain without a name gets no log.
func (c *consoled) print(d xenctrl.Domid, text string, keep bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c.mu.Lock()
	defer c.mu.Unlock()
	name, ok := c.names[d]
	if !ok {
		var err error
		if name, err = c.name(ctx, d); err != nil {
			c.log.Debug("simhost: console not logged: no domain name", "domid", d, "err", err)
			return
		}
		if keep {
			c.names[d] = name
		}
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		c.log.Warn("simhost: console log dir", "err", err)
		return
	}
	f, err := os.OpenFile(filepath.Join(c.dir, "guest-"+name+".log"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		c.log.Warn("simhost: open console log", "domid", d, "err", err)
		return
	}
	defer f.Close()
	if _, err := f.WriteString(text); err != nil {
		c.log.Warn("simhost: write console log", "domid", d, "err", err)
	}
}

// forget drops a dead domain's name.
func (c *consoled) forget(d xenctrl.Domid) {
	c.mu.Lock()
	delete(c.names, d)
	c.mu.Unlock()
}

// close drops the dom0 connection and stops the in-process listener.
func (c *consoled) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cli != nil {
		c.cli.Close()
		c.cli = nil
	}
	if c.l != nil {
		c.l.Close()
	}
}

// pipeListener is an in-process net.Listener whose connections are pipes:
// xenstored connections of dom0's own (console, backends) that do not count
// as clients for the idle safety net.
type pipeListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *pipeListener) dial() (net.Conn, error) {
	client, server := net.Pipe()
	select {
	case l.conns <- server:
		return client, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-time.After(10 * time.Second):
		return nil, errors.New("simhost: xenstored does not accept an in-process connection")
	}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return pipeAddr{} }

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "simhost-dom0" }

// Guest console output: what the simulated kernel prints, in Linux's words.

// bootLines is the guest's boot output; since is its boot time.
func bootLines(d xenctrl.Domid, since time.Time) string {
	ts := stamp(since)
	return fmt.Sprintf("%s Linux version 6.1.0-sim (xenopsd-ng simulated guest) #1 SMP\n"+
		"%s Hypervisor detected: Xen\n"+
		"%s xen:events: Using FIFO-based ABI\n"+
		"%s xenbus: xenstore ready (domid %d)\n"+
		"%s domid=%d\n", ts, ts, ts, ts, d, BootMarker, d)
}

// shutdownLine is what Linux prints as it carries out a shutdown.
func shutdownLine(since time.Time, reason xenctrl.ShutdownReason) string {
	ts := stamp(since)
	switch reason {
	case xenctrl.ShutdownPoweroff:
		return ts + " reboot: Power down\n"
	case xenctrl.ShutdownReboot:
		return ts + " reboot: Restarting system\n"
	case xenctrl.ShutdownSuspend:
		return ts + " PM: suspend entry (deep)\n"
	case xenctrl.ShutdownCrash:
		return ts + " Kernel panic - not syncing: sysrq triggered crash\n"
	}
	return fmt.Sprintf("%s xen: SCHEDOP_shutdown reason %d\n", ts, reason)
}

// ResumeMarker is what a simulated guest prints when its suspend hypercall
// returns after a cooperative resume (suspend cancelled).
const ResumeMarker = "xen:manage: suspend cancelled, resuming"

// resumeLine is what the guest prints once its domain is resumed.
func resumeLine(since time.Time, cancelled bool) string {
	ts := stamp(since)
	if cancelled {
		return ts + " " + ResumeMarker + "\n" + ts + " PM: suspend exit\n"
	}
	return ts + " xen:manage: resumed in a new domain\n" + ts + " PM: suspend exit\n"
}

// stamp is a dmesg-style timestamp, seconds since since.
func stamp(since time.Time) string {
	el := time.Since(since)
	if since.IsZero() || el < 0 {
		el = 0
	}
	return fmt.Sprintf("[%5d.%06d]", el/time.Second, (el%time.Second)/time.Microsecond)
}
