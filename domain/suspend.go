package domain

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// SuspendOptions tune Suspend.
type SuspendOptions struct {
	// Timeout bounds the wait for the guest to suspend itself
	// (0: DefaultSuspendTimeout; at most MaxShutdownTimeout).
	Timeout time.Duration
}

// DefaultSuspendTimeout is how long Suspend waits for the guest when no
// timeout is given: libxl's wait for a guest to suspend is 60 seconds.
const DefaultSuspendTimeout = 60 * time.Second

// Suspend asks a Running VM's guest to suspend itself in place
// (control/shutdown = "suspend", as libxl does for a guest without a
// suspend event channel) and waits up to opts.Timeout for its domain to
// shut down with reason suspend. The domain is kept with its memory: the
// VM is then Paused with DomainSuspended set, ready for Resume (or, later,
// to be saved). A guest that does not advertise control/feature-suspend is
// FailedPrecondition, one that does not suspend in time DeadlineExceeded;
// in both cases the request is withdrawn and the VM keeps running.
func (m *Manager) Suspend(ctx context.Context, ref string, opts SuspendOptions) (Task, error) {
	timeout, err := guestTimeout(opts.Timeout, DefaultSuspendTimeout)
	if err != nil {
		return Task{}, err
	}
	return m.submit(ctx, ref, "suspend", []PowerState{Running}, Paused, func(ctx context.Context, e *vmEntry, te *taskEntry) (func(*vmRecord), error) {
		r := m.vmSnapshot(e)
		if err := checkState(r, "suspend", Running); err != nil {
			return nil, err
		}
		if err := m.markRunning(te); err != nil {
			return nil, err
		}
		d := xenctrl.Domid(r.VM.Domid)
		control := domPath(d) + "/control/"
		feat, err := m.xs.Read(ctx, control+"feature-suspend")
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil && !errors.Is(err, syscall.ENOENT):
			return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("read control/feature-suspend of domain %d: %v", d, err)}
		case string(feat) != "1":
			return nil, &Error{Code: CodeFailedPrecondition, Message: fmt.Sprintf(
				"guest of VM %s does not advertise control/feature-suspend (its kernel has no Xen suspend support, or has not finished booting); the VM keeps running", e.id)}
		}
		if err := m.xs.Write(ctx, control+"shutdown", []byte("suspend")); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("write control/shutdown of domain %d: %v", d, err)}
		}
		m.progress(te, 0.3)
		wctx, cancel := context.WithTimeout(ctx, timeout)
		var info xenctrl.DomainInfo
		gone := false
		err = m.waitDomain(wctx, d, func(i xenctrl.DomainInfo, err error) bool {
			if xenctrl.IsNoDomain(err) || (err == nil && i.Handle != uuidHandle(e.id)) {
				gone = true
				return true
			}
			info = i
			return err == nil && (i.Shutdown || i.Dying)
		})
		cancel()
		switch {
		case err != nil:
			// Withdraw the request so that the guest does not suspend
			// later, unasked (it clears the node when it acts on it).
			cctx, ccancel := cleanupCtx(ctx)
			if werr := m.xs.Write(cctx, control+"shutdown", nil); werr != nil {
				m.log.Warn("withdraw the suspend request", "vm", e.id, "domid", d, "err", werr)
			}
			ccancel()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, &Error{Code: CodeDeadlineExceeded, Message: fmt.Sprintf(
				"guest of VM %s did not suspend within %v (control/shutdown=\"suspend\" ignored?); the request was withdrawn and the VM keeps running", e.id, timeout)}
		case gone:
			apply, _ := m.destroyToHalted(ctx, e, d)
			return apply, &Error{Code: CodeAborted, Message: fmt.Sprintf("domain %d of VM %s vanished while suspending", d, e.id)}
		}
		m.progress(te, 0.6)
		apply, err := m.applyAction(ctx, e, te, d, info)
		if err == nil && (info.Dying || info.ShutdownReason != xenctrl.ShutdownSuspend) {
			err = &Error{Code: CodeAborted, Message: fmt.Sprintf(
				"guest of VM %s shut down with reason %s instead of suspending (dying %v); its on_* action was applied", e.id, info.ShutdownReason, info.Dying)}
		}
		return apply, err
	})
}

// Resume resumes a VM whose guest suspended itself in place (Paused with
// DomainSuspended): the guest's suspend call is made to return "cancelled"
// and its domain runs on, with its memory and devices, as libxl does for a
// cancelled save or migration (xc_domain_resume with fast=1). The VM is
// then Running. Any other VM is FailedPrecondition.
func (m *Manager) Resume(ctx context.Context, ref string) (Task, error) {
	return m.submit(ctx, ref, "resume", []PowerState{Paused}, Running, func(ctx context.Context, e *vmEntry, te *taskEntry) (func(*vmRecord), error) {
		r := m.vmSnapshot(e)
		if err := checkState(r, "resume", Paused); err != nil {
			return nil, err
		}
		if !r.VM.DomainSuspended {
			return nil, &Error{Code: CodeFailedPrecondition, Message: fmt.Sprintf(
				"VM %s is Paused but its guest is not suspended; resume needs a VM whose guest suspended itself (use unpause for a paused one)", r.VM.ID)}
		}
		rs, ok := m.hv.(xenctrl.Resumer)
		if !ok {
			return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("the %s hypervisor backend cannot resume domains", m.hv.Kind())}
		}
		if err := m.markRunning(te); err != nil {
			return nil, err
		}
		d := xenctrl.Domid(r.VM.Domid)
		info, err := m.hv.DomainInfo(ctx, d)
		switch {
		case err != nil && ctx.Err() != nil:
			return nil, ctx.Err()
		case xenctrl.IsNoDomain(err) || (err == nil && info.Handle != uuidHandle(e.id)):
			apply, _ := m.destroyToHalted(ctx, e, d)
			return apply, &Error{Code: CodeAborted, Message: fmt.Sprintf("suspended domain %d of VM %s vanished", d, e.id)}
		case err != nil:
			return nil, hvError(fmt.Sprintf("domain %d info", d), err)
		case info.Dying || !info.Shutdown || info.ShutdownReason != xenctrl.ShutdownSuspend:
			return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf(
				"VM %s is recorded suspended but domain %d is not (shutdown %v, reason %s, dying %v)", e.id, d, info.Shutdown, info.ShutdownReason, info.Dying)}
		}
		// Hold the domain paused while it is resumed, so that the guest
		// runs only once xenstored has re-armed @releaseDomain for it.
		if err := m.hv.PauseDomain(ctx, d); err != nil {
			return nil, hvError(fmt.Sprintf("pause domain %d", d), err)
		}
		paused := true
		defer func() {
			if paused {
				cctx, cancel := cleanupCtx(ctx)
				if err := m.hv.UnpauseDomain(cctx, d); err != nil {
					m.log.Error("undo the pause of a suspended domain", "vm", e.id, "domid", d, "err", err)
				}
				cancel()
			}
		}()
		if err := xenctrl.ResumeCooperative(ctx, rs, d); err != nil {
			return nil, hvError(fmt.Sprintf("resume domain %d", d), err)
		}
		m.progress(te, 0.5)
		// The guest runs on from here: whatever fails now, the VM is
		// Running again (a later shutdown is noticed by the rescan).
		running := func(r *vmRecord) { r.VM.Power, r.Preserved, r.VM.DomainSuspended = Running, false, false }
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		var problems []error
		if err := m.xs.Resume(cctx, uint32(d)); err != nil {
			problems = append(problems, fmt.Errorf("xenstored RESUME: %w", err))
		}
		paused = false
		if err := m.hv.UnpauseDomain(cctx, d); err != nil {
			problems = append(problems, fmt.Errorf("unpause: %w", err))
		}
		m.log.Info("VM resumed", "vm", e.id, "domid", d)
		if len(problems) > 0 {
			return running, &Error{Code: CodeInternal, Message: fmt.Sprintf("domain %d of VM %s resumed, but: %v", d, e.id, errors.Join(problems...))}
		}
		return running, nil
	})
}
