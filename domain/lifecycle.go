package domain

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

var (
	live   = []PowerState{Running, Paused}
	halted = []PowerState{Halted}
)

// checkState fails with FailedPrecondition unless r is in one of states.
func checkState(r vmRecord, op string, states ...PowerState) error {
	for _, s := range states {
		if r.VM.Power == s && !r.Building {
			return nil
		}
	}
	return &Error{Code: CodeFailedPrecondition, Message: fmt.Sprintf("VM %s is %s; %s needs %s", r.VM.ID, r.VM.Power, op, statesString(states))}
}

// Start builds and boots the VM's domain (left paused if paused). The VM
// must be Halted. The returned task is queued; the work runs on the pool.
func (m *Manager) Start(ctx context.Context, ref string, paused bool) (Task, error) {
	e, err := m.resolve(ref)
	if err != nil {
		return Task{}, err
	}
	spec := m.vmSnapshot(e).VM.Spec
	if err := m.checkDevices(ctx, e.id, spec, false); err != nil {
		return Task{}, err
	}
	// Early check of free memory (the build is the real check: ENOMEM).
	if p, err := m.hv.PhysInfo(ctx); err == nil && p.FreePages*xenctrl.PageSize < spec.MemoryDynamicMax {
		return Task{}, &Error{Code: CodeResourceExhausted, Message: fmt.Sprintf(
			"VM %s needs %d bytes, the host has %d bytes free", e.id, spec.MemoryDynamicMax, p.FreePages*xenctrl.PageSize)}
	}
	next := Running
	if paused {
		next = Paused
	}
	return m.submit(ctx, ref, "start", halted, next, func(ctx context.Context, e *vmEntry, te *taskEntry) (func(*vmRecord), error) {
		r := m.vmSnapshot(e)
		if err := checkState(r, "start", Halted); err != nil {
			return nil, err
		}
		return m.startDomain(ctx, e, te, paused)
	})
}

// maxDomidRetries bounds how often a start picks another domid after
// CreateDomain found the one it claimed taken (by a toolstack other than
// this daemon, between the probe and the hypercall).
const maxDomidRetries = 3

// startDomain builds a domain from the VM's spec: the building marker and
// the claim on the domain's domid (primary, creating) are synced first, so
// that a crash in the middle leaves a trace that reconciliation acts on.
func (m *Manager) startDomain(ctx context.Context, e *vmEntry, te *taskEntry, paused bool) (func(*vmRecord), error) {
	halted := func(r *vmRecord) {
		r.Building, r.VM.Power, r.VM.Domid, r.Preserved, r.VM.DomainSuspended = false, Halted, 0, false, false
		for _, c := range r.Domains {
			if c.Role == rolePrimary {
				r.dropClaim(c.Domid)
			}
		}
	}
	d, err := m.reserveDomid(ctx, e.id)
	if err != nil {
		return halted, err
	}
	if err := m.setRunning(ctx, e, te, func(r *vmRecord) {
		r.Building = true
		r.setClaim(d, rolePrimary, claimCreating)
	}); err != nil {
		m.releaseDomid(e.id, d)
		return nil, err
	}
	spec := m.vmSnapshot(e).VM.Spec
	if err := m.checkDevices(ctx, e.id, spec, true); err != nil {
		return halted, err
	}
	var devs []devices.Record
	for try := 0; ; try++ {
		devs, err = m.buildDomain(ctx, spec, d, te)
		if !errors.Is(err, syscall.EEXIST) || try == maxDomidRetries {
			break
		}
		m.log.Warn("claimed domid taken by someone else; claiming another", "vm", e.id, "domid", d)
		if d, err = m.moveClaim(ctx, e, d); err != nil {
			break
		}
	}
	if err == nil && !paused {
		if err = m.hv.UnpauseDomain(ctx, d); err != nil {
			err = hvError(fmt.Sprintf("unpause domain %d", d), err)
			cctx, cancel := cleanupCtx(ctx)
			if terr := m.teardown(cctx, e.id, d); terr != nil {
				m.log.Error("undo domain", "vm", e.id, "domid", d, "err", terr)
			}
			cancel()
		}
	}
	if err != nil {
		return halted, err
	}
	power := Running
	if paused {
		power = Paused
	}
	started := time.Now()
	m.log.Info("VM started", "vm", e.id, "domid", d, "paused", paused)
	return func(r *vmRecord) {
		r.Building, r.VM.Power, r.VM.Domid, r.VM.Problem, r.Preserved, r.VM.DomainSuspended = false, power, uint32(d), "", false, false
		r.VM.Devices, r.VM.StartedAt = devs, started
		r.setClaim(d, rolePrimary, claimLive)
	}, nil
}

// moveClaim replaces the VM's claim on domid d, which CreateDomain found
// taken, by a claim on a newly reserved domid.
func (m *Manager) moveClaim(ctx context.Context, e *vmEntry, d xenctrl.Domid) (xenctrl.Domid, error) {
	next, err := m.reserveDomid(ctx, e.id)
	if err != nil {
		return d, err
	}
	if err := m.updateClaims(ctx, e, func(r *vmRecord) error {
		r.dropClaim(d)
		r.setClaim(next, rolePrimary, claimCreating)
		return nil
	}); err != nil {
		m.releaseDomid(e.id, next)
		return d, err
	}
	return next, nil
}

// Pause pauses a Running VM's domain.
func (m *Manager) Pause(ctx context.Context, ref string) (Task, error) {
	return m.submit(ctx, ref, "pause", []PowerState{Running}, Paused, func(ctx context.Context, e *vmEntry, te *taskEntry) (func(*vmRecord), error) {
		r := m.vmSnapshot(e)
		if err := checkState(r, "pause", Running); err != nil {
			return nil, err
		}
		if err := m.hv.PauseDomain(ctx, xenctrl.Domid(r.VM.Domid)); err != nil {
			return nil, hvError(fmt.Sprintf("pause domain %d", r.VM.Domid), err)
		}
		return func(r *vmRecord) { r.VM.Power = Paused }, nil
	})
}

// Unpause resumes a Paused VM's domain.
func (m *Manager) Unpause(ctx context.Context, ref string) (Task, error) {
	return m.submit(ctx, ref, "unpause", []PowerState{Paused}, Running, func(ctx context.Context, e *vmEntry, te *taskEntry) (func(*vmRecord), error) {
		r := m.vmSnapshot(e)
		if err := checkState(r, "unpause", Paused); err != nil {
			return nil, err
		}
		if r.VM.DomainSuspended {
			return nil, &Error{Code: CodeFailedPrecondition, Message: fmt.Sprintf("VM %s's guest suspended itself (domain %d is kept, shut down with reason suspend); use resume to let it carry on", r.VM.ID, r.VM.Domid)}
		}
		if r.Preserved {
			return nil, &Error{Code: CodeFailedPrecondition, Message: fmt.Sprintf("VM %s's domain has shut down and is preserved for inspection; destroy it", r.VM.ID)}
		}
		if err := m.hv.UnpauseDomain(ctx, xenctrl.Domid(r.VM.Domid)); err != nil {
			return nil, hvError(fmt.Sprintf("unpause domain %d", r.VM.Domid), err)
		}
		return func(r *vmRecord) { r.VM.Power = Running }, nil
	})
}

// Destroy tears the VM's domain down at once (hard shutdown).
func (m *Manager) Destroy(ctx context.Context, ref string) (Task, error) {
	return m.submit(ctx, ref, "destroy", live, Halted, func(ctx context.Context, e *vmEntry, te *taskEntry) (func(*vmRecord), error) {
		r := m.vmSnapshot(e)
		if err := checkState(r, "destroy", live...); err != nil {
			return nil, err
		}
		if err := m.markRunning(te); err != nil {
			return nil, err
		}
		return m.destroyToHalted(ctx, e, xenctrl.Domid(r.VM.Domid))
	})
}

// destroyToHalted records the VM's claim on domain d as destroying, tears
// the domain down and returns the change that makes the VM Halted and drops
// the claim (with a Problem if the domain could not be removed completely).
func (m *Manager) destroyToHalted(ctx context.Context, e *vmEntry, d xenctrl.Domid) (func(*vmRecord), error) {
	if err := m.markDestroying(ctx, e, d); err != nil {
		return nil, err
	}
	cctx, cancel := cleanupCtx(ctx)
	defer cancel()
	err := m.teardown(cctx, e.id, d)
	problem := ""
	if err != nil {
		problem = fmt.Sprintf("domain %d was not torn down cleanly: %v", d, err)
		m.log.Error("teardown", "vm", e.id, "domid", d, "err", err)
	}
	return func(r *vmRecord) {
		r.VM.Power, r.VM.Domid, r.VM.Problem, r.Preserved, r.Building, r.VM.DomainSuspended = Halted, 0, problem, false, false, false
		r.dropClaim(d)
	}, nil
}

// guestTimeout checks how long a request gives the guest (0..
// MaxShutdownTimeout) and puts def for 0.
func guestTimeout(timeout, def time.Duration) (time.Duration, error) {
	if timeout < 0 || timeout > MaxShutdownTimeout {
		return 0, InvalidField("timeout", "%v is out of range 0..%v", timeout, MaxShutdownTimeout)
	}
	if timeout == 0 {
		return def, nil
	}
	return timeout, nil
}

// Shutdown asks the guest to power off (control/shutdown = "poweroff"),
// waits up to opts.Timeout for its domain to shut down, then applies
// on_poweroff (or the action for the reason the guest actually gave).
// With opts.Force the domain is destroyed when the guest does not comply.
func (m *Manager) Shutdown(ctx context.Context, ref string, opts ShutdownOptions) (Task, error) {
	return m.cleanShutdown(ctx, ref, "shutdown", "poweroff", opts)
}

// Reboot asks the guest to reboot (control/shutdown = "reboot"), waits for
// its domain to shut down and applies on_reboot (default: rebuild from the
// same spec). With opts.Force a guest that does not comply in time is
// destroyed and rebuilt (hard reboot).
func (m *Manager) Reboot(ctx context.Context, ref string, opts ShutdownOptions) (Task, error) {
	return m.cleanShutdown(ctx, ref, "reboot", "reboot", opts)
}

func (m *Manager) cleanShutdown(ctx context.Context, ref, name, request string, opts ShutdownOptions) (Task, error) {
	timeout, err := guestTimeout(opts.Timeout, DefaultShutdownTimeout)
	if err != nil {
		return Task{}, err
	}
	return m.submit(ctx, ref, name, live, PowerUnspecified, func(ctx context.Context, e *vmEntry, te *taskEntry) (func(*vmRecord), error) {
		r := m.vmSnapshot(e)
		if err := checkState(r, name, live...); err != nil {
			return nil, err
		}
		if err := m.setRunning(ctx, e, te, nil); err != nil {
			return nil, err
		}
		d := xenctrl.Domid(r.VM.Domid)
		if r.Preserved {
			// Already shut down: nothing to ask the guest.
			return m.destroyToHalted(ctx, e, d)
		}
		if err := m.xs.Write(ctx, domPath(d)+"/control/shutdown", []byte(request)); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err() // cancelled: nothing was asked of the guest
			}
			return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("write control/shutdown of domain %d: %v", d, err)}
		}
		m.progress(te, 0.3)
		wctx, cancel := context.WithTimeout(ctx, timeout)
		var info xenctrl.DomainInfo
		gone := false
		err := m.waitDomain(wctx, d, func(i xenctrl.DomainInfo, err error) bool {
			if xenctrl.IsNoDomain(err) || (err == nil && i.Handle != uuidHandle(e.id)) {
				gone = true
				return true
			}
			info = i
			return err == nil && (i.Shutdown || i.Dying)
		})
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil && !opts.Force:
			return nil, &Error{Code: CodeDeadlineExceeded, Message: fmt.Sprintf(
				"guest of VM %s did not %s within %v (control/shutdown=%q ignored?); retry with force to destroy it", e.id, name, timeout, request)}
		case err != nil:
			m.log.Warn("guest did not comply; forcing", "vm", e.id, "op", name, "timeout", timeout)
			if name == "reboot" {
				return m.rebuild(ctx, e, te, d)
			}
			return m.destroyToHalted(ctx, e, d)
		case gone:
			return m.destroyToHalted(ctx, e, d)
		}
		m.progress(te, 0.6)
		return m.applyAction(ctx, e, te, d, info)
	})
}

// actionFor is the spec's action for a shutdown reason, with libxl's
// defaults: destroy on poweroff and crash, restart on reboot.
func actionFor(s Spec, reason xenctrl.ShutdownReason) (Action, string) {
	switch reason {
	case xenctrl.ShutdownPoweroff:
		return orDefault(s.OnPoweroff, ActionDestroy), "poweroff"
	case xenctrl.ShutdownReboot, xenctrl.ShutdownSoftReset:
		return orDefault(s.OnReboot, ActionRestart), "reboot"
	default: // crash, watchdog (suspend is no crash: see applyAction)
		return orDefault(s.OnCrash, ActionDestroy), "crash"
	}
}

func orDefault(a, def Action) Action {
	if a == ActionUnspecified {
		return def
	}
	return a
}

// applyAction handles a domain that shut down (info.Shutdown) or is dying.
func (m *Manager) applyAction(ctx context.Context, e *vmEntry, te *taskEntry, d xenctrl.Domid, info xenctrl.DomainInfo) (func(*vmRecord), error) {
	if info.Dying {
		return m.destroyToHalted(ctx, e, d)
	}
	if info.ShutdownReason == xenctrl.ShutdownSuspend {
		// The guest suspended itself: its memory is intact and the domain
		// can be resumed (Resume) or, later, saved. Keep it.
		m.log.Info("guest suspended itself; domain kept", "vm", e.id, "domid", d)
		return func(r *vmRecord) { r.VM.Power, r.Preserved, r.VM.DomainSuspended = Paused, true, true }, nil
	}
	spec := m.vmSnapshot(e).VM.Spec
	action, what := actionFor(spec, info.ShutdownReason)
	m.log.Info("domain shut down", "vm", e.id, "domid", d, "reason", info.ShutdownReason, "action", action)
	switch action {
	case ActionRestart:
		apply, err := m.rebuild(ctx, e, te, d)
		return countRestart(apply, what), err
	case ActionPreserve:
		problem := fmt.Sprintf("domain %d shut down (%s, on_%s=preserve); kept for inspection until destroyed", d, info.ShutdownReason, what)
		return func(r *vmRecord) { r.VM.Power, r.VM.Problem, r.Preserved = Paused, problem, true }, nil
	default:
		return m.destroyToHalted(ctx, e, d)
	}
}

// countRestart makes apply also count a restart caused by what (actionFor's
// name of the shutdown reason).
func countRestart(apply func(*vmRecord), what string) func(*vmRecord) {
	if apply == nil {
		return nil
	}
	return func(r *vmRecord) {
		apply(r)
		switch what {
		case "reboot":
			r.VM.Restarts.Reboot++
		case "crash":
			r.VM.Restarts.Crash++
		default:
			r.VM.Restarts.Poweroff++
		}
	}
}

// rebuild destroys domain d and starts a new one from the same spec. The
// VM stays Running throughout, as it does for XAPI across a guest reboot;
// between the two domains it has domid 0 (and, once the new build has
// begun, the Building marker that reconciliation acts on after a crash).
func (m *Manager) rebuild(ctx context.Context, e *vmEntry, te *taskEntry, d xenctrl.Domid) (func(*vmRecord), error) {
	halt, err := m.destroyToHalted(ctx, e, d)
	if err != nil {
		return nil, err
	}
	var problem string
	if err := m.updateVM(ctx, e, func(r *vmRecord) error {
		halt(r)
		problem = r.VM.Problem
		if problem == "" {
			r.VM.Power = Running
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if problem != "" {
		return nil, &Error{Code: CodeInternal, Message: "cannot restart: " + problem}
	}
	return m.startDomain(ctx, e, nil, false)
}

// guestCheck is the internal operation queued when a VM's domain may have
// shut down, died or vanished without the toolstack asking.
func (m *Manager) guestCheck(ctx context.Context, e *vmEntry, _ *taskEntry) (func(*vmRecord), error) {
	r := m.vmSnapshot(e)
	if r.Building || r.Preserved || (r.VM.Power != Running && r.VM.Power != Paused) {
		return nil, nil
	}
	d := xenctrl.Domid(r.VM.Domid)
	info, err := m.hv.DomainInfo(ctx, d)
	switch {
	case xenctrl.IsNoDomain(err) || (err == nil && info.Handle != uuidHandle(e.id)):
		problem := fmt.Sprintf("domain %d vanished", d)
		m.log.Warn("domain vanished", "vm", e.id, "domid", d)
		cctx, cancel := cleanupCtx(ctx)
		if m.devs != nil {
			if err := m.devs.RemoveDomainDevices(cctx, uint32(d)); err != nil {
				m.log.Error("remove the devices of a vanished domain", "vm", e.id, "domid", d, "err", err)
			}
		}
		m.removeLayout(cctx, e.id, d)
		cancel()
		return func(r *vmRecord) {
			r.VM.Power, r.VM.Domid, r.VM.Problem = Halted, 0, problem
			r.dropClaim(d)
		}, nil
	case err != nil:
		return nil, err
	case info.Shutdown || info.Dying:
		return m.applyAction(ctx, e, nil, d, info)
	}
	return nil, nil
}
