package simhost

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// guest is the simulated kernel of one domain: the part of Linux's
// drivers/xen/manage.c that matters to a toolstack.
type guest struct {
	h       *host
	d       xenctrl.Domid
	cli     *xenstore.Client
	release func() // the hypervisor reference held by the xenstore ring
	ctx     context.Context
	cancel  context.CancelFunc
	once    sync.Once
	born    time.Time // boot time, for console timestamps
}

// shutdownCommands are the control/shutdown values Linux acts on, and the
// SCHEDOP_shutdown reason each ends in.
var shutdownCommands = map[string]xenctrl.ShutdownReason{
	"poweroff": xenctrl.ShutdownPoweroff,
	"halt":     xenctrl.ShutdownPoweroff,
	"reboot":   xenctrl.ShutdownReboot,
	"suspend":  xenctrl.ShutdownSuspend,
}

// guestBoot starts the guest of a domain whose vCPUs just came online.
func (h *host) guestBoot(d xenctrl.Domid) {
	if h.cfg.NoGuests {
		return
	}
	release, err := h.hv.Hold(d)
	if err != nil {
		h.log.Debug("simhost: guest not started: domain went away", "domid", d, "err", err)
		return
	}
	conn, err := h.xs.ConnectDomain(uint32(d))
	if err != nil {
		release()
		h.log.Warn("simhost: guest cannot reach xenstored", "domid", d, "err", err)
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &guest{h: h, d: d, cli: xenstore.NewClient(conn), release: release, ctx: ctx, cancel: cancel, born: time.Now()}
	h.gmu.Lock()
	if h.guests == nil { // host stopping
		h.gmu.Unlock()
		g.stop()
		return
	}
	if old := h.guests[d]; old != nil {
		// Cannot happen (a domid is not reused before release), but never
		// leak a guest.
		defer old.stop()
	}
	h.guests[d] = g
	h.gwg.Add(1)
	h.gmu.Unlock()
	go func() {
		defer h.gwg.Done()
		defer g.stop()
		g.run()
	}()
}

// stop disconnects the guest from xenstored and drops its reference.
func (g *guest) stop() {
	g.once.Do(func() {
		g.cancel()
		_ = g.cli.Close()
		g.release()
		g.h.console.forget(g.d)
		g.h.gmu.Lock()
		if g.h.guests != nil && g.h.guests[g.d] == g {
			delete(g.h.guests, g.d)
		}
		g.h.gmu.Unlock()
	})
}

// reapGuests stops the guests of dying domains: xenstored has seen
// VIRQ_DOM_EXC and unmaps their rings.
func (h *host) reapGuests() {
	var dead []*guest
	dying := h.hv.DyingDomains()
	h.gmu.Lock()
	for _, d := range dying {
		if g := h.guests[d]; g != nil {
			dead = append(dead, g)
		}
	}
	h.gmu.Unlock()
	for _, g := range dead {
		g.stop()
	}
}

// stopGuests stops every guest for good (host shutdown).
func (h *host) stopGuests() {
	h.gmu.Lock()
	gs := h.guests
	h.guests = nil
	h.gmu.Unlock()
	for _, g := range gs {
		g.stop()
	}
}

// home is the domain's xenstore directory.
func (g *guest) home() string { return fmt.Sprintf("/local/domain/%d", g.d) }

func (g *guest) path(rel string) string { return g.home() + "/" + rel }

// run is the guest's life: advertise features, then answer shutdown
// requests until the domain dies or the host stops.
func (g *guest) run() {
	log := g.h.log.With("domid", g.d)
	ctx := g.ctx
	// Linux writes these (xenbus_printf) once its watch is set up; the
	// toolstack must have created control/ writable by the guest, as libxl
	// does, or the writes fail (EACCES) exactly as on Xen.
	w, err := g.cli.Watch(ctx, g.path("control/shutdown"), "shutdown")
	if err != nil {
		log.Warn("simhost: guest cannot watch control/shutdown", "err", err)
		<-ctx.Done()
		return
	}
	defer w.Close()
	// Boot output (and the marker) goes to the console before the features
	// are advertised: a toolstack seeing feature-poweroff has it logged.
	g.h.console.print(g.d, bootLines(g.d, g.born), true)
	for _, f := range []string{"feature-poweroff", "feature-reboot", "feature-suspend"} {
		if err := g.cli.Write(ctx, g.path("control/"+f), []byte("1")); err != nil {
			log.Debug("simhost: guest cannot advertise feature", "feature", f, "err", err)
		}
	}
	log.Debug("simhost: guest up")
	// The frontends run beside the shutdown handler until the guest ends.
	var fwg sync.WaitGroup
	defer fwg.Wait()
	defer g.cancel()
	fwg.Add(1)
	go func() {
		defer fwg.Done()
		g.runFrontends(ctx)
	}()
	for {
		select {
		case _, ok := <-w.Events():
			if !ok {
				return // xenstored dropped the ring
			}
			g.onShutdownWatch(ctx)
		case <-ctx.Done():
			return
		}
	}
}

// onShutdownWatch is Linux's shutdown_handler: read control/shutdown in a
// transaction, clear it if it is a command the guest handles, then act.
func (g *guest) onShutdownWatch(ctx context.Context) {
	log := g.h.log.With("domid", g.d)
	// A paused guest runs no code: it reacts once unpaused. A shut-down or
	// dying one never will.
	if err := g.h.hv.WaitRunnable(ctx, g.d); err != nil {
		return
	}
	var cmd string
	var b sim.GuestBehaviour
	err := g.cli.Transaction(ctx, func(tx *xenstore.Tx) error {
		cmd = ""
		v, err := tx.Read(ctx, g.path("control/shutdown"))
		if errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if err != nil {
			return err
		}
		cmd = string(v)
		// Behaviour is checked after the read, so a request written after
		// SetGuestBehaviour always sees it.
		if b, err = g.h.hv.GuestBehaviour(g.d); err != nil {
			return err
		}
		if _, ok := shutdownCommands[cmd]; ok && !b.IgnoreShutdownRequests {
			return tx.Write(ctx, g.path("control/shutdown"), nil)
		}
		return nil
	})
	if err != nil {
		log.Warn("simhost: guest cannot read control/shutdown", "err", err)
		return
	}
	if b.IgnoreShutdownRequests {
		if cmd != "" {
			log.Debug("simhost: guest ignores control/shutdown (as told)", "request", cmd)
		}
		return
	}
	reason, ok := shutdownCommands[cmd]
	if !ok {
		if cmd != "" {
			log.Info("simhost: guest ignores unknown shutdown request", "request", cmd)
			g.h.console.print(g.d, stamp(g.born)+" Ignoring shutdown request: "+cmd+"\n", true)
		}
		return
	}
	log.Debug("simhost: guest acknowledged shutdown request", "request", cmd)
	if b.ShutdownDelay > 0 {
		t := time.NewTimer(b.ShutdownDelay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
	g.h.console.print(g.d, shutdownLine(g.born, reason), true)
	// SCHEDOP_shutdown. If the toolstack paused us meanwhile, finish once
	// unpaused; stop when the domain can no longer run.
	for {
		err := g.h.hv.GuestShutdown(ctx, g.d, reason)
		if err == nil && reason == xenctrl.ShutdownSuspend {
			g.suspended(ctx)
			return
		}
		if !errors.Is(err, syscall.EBUSY) {
			if err != nil {
				log.Debug("simhost: guest shutdown failed", "err", err)
			}
			return
		}
		if err := g.h.hv.WaitRunnable(ctx, g.d); err != nil {
			return
		}
	}
}

// suspended is the rest of Linux's do_suspend once SCHEDOP_shutdown
// (suspend) returns: the guest waits for its domain to be resumed, then
// carries on, its console output and CPU time going on. A return value of
// 1 is a cancelled suspend (a cooperative resume); anything else would
// mean a new domain, which the simulator does not make yet.
func (g *guest) suspended(ctx context.Context) {
	rc, err := g.h.hv.WaitSuspendEnds(ctx, g.d)
	if err != nil {
		return
	}
	g.h.log.Debug("simhost: guest resumed", "domid", g.d, "cancelled", rc == 1)
	g.h.console.print(g.d, resumeLine(g.born, rc == 1), true)
}
