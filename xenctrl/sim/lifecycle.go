package sim

import (
	"context"
	"sync"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// events collects what to report once h.mu is released.
type events struct {
	exceptions []xenctrl.Domid // domains that raised VIRQ_DOM_EXC
	booted     []xenctrl.Domid
}

func (h *Hypervisor) fire(ev events) {
	for _, d := range ev.booted {
		if h.cfg.OnGuestBoot != nil {
			h.cfg.OnGuestBoot(d)
		}
	}
	if h.cfg.OnDomainException != nil {
		for _, d := range ev.exceptions {
			h.cfg.OnDomainException(d)
		}
	}
}

// change runs fn on dom with CPU-time accounting (the domain's and the
// pCPUs') around it and wakes everyone waiting on the domain's state. h.mu
// must be held.
func (h *Hypervisor) change(dom *domain, fn func()) {
	now := time.Now()
	wasBusy := !dom.runSince.IsZero()
	if wasBusy {
		dom.cpuNS += dom.ranSince(now)
		dom.runSince = time.Time{}
	}
	fn()
	busy := dom.busy()
	if busy {
		dom.runSince = now
	}
	if busy != wasBusy {
		delta := int64(dom.maxVCPUs)
		if wasBusy {
			delta = -delta
		}
		h.cpus.addBusy(now, delta)
	}
	close(dom.changed)
	dom.changed = make(chan struct{})
}

// PauseDomain is XEN_DOMCTL_pausedomain (domain_pause_by_systemcontroller).
func (h *Hypervisor) PauseDomain(ctx context.Context, d xenctrl.Domid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	const op = "domctl pausedomain"
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return err
	}
	if d == 0 {
		return errno(op, d, syscall.EINVAL) // d == current->domain
	}
	if dom.pauses+1 > MaxControllerPauses {
		return errno(op, d, syscall.EOVERFLOW)
	}
	h.change(dom, func() { dom.pauses++ })
	return nil
}

// UnpauseDomain is XEN_DOMCTL_unpausedomain. The first time the count drops
// to zero creation is finished; a domain with memory then boots.
func (h *Hypervisor) UnpauseDomain(ctx context.Context, d xenctrl.Domid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	const op = "domctl unpausedomain"
	var ev events
	defer func() { h.fire(ev) }()
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return err
	}
	if dom.pauses-1 < 0 {
		return errno(op, d, syscall.EINVAL)
	}
	h.change(dom, func() {
		dom.pauses--
		if dom.pauses == 0 && !dom.created {
			dom.created = true
			if dom.totPages > 0 && !dom.shutdown && !dom.dying {
				dom.vcpus = true
				dom.vcpusUp = true
				ev.booted = append(ev.booted, d)
				h.log.Debug("sim: guest boots", "domid", d)
			}
		}
	})
	return nil
}

// ShutdownDomain is SCHEDOP_remote_shutdown.
func (h *Hypervisor) ShutdownDomain(ctx context.Context, d xenctrl.Domid, reason xenctrl.ShutdownReason) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return h.shutdown("sched_op remote_shutdown", d, reason, false)
}

// GuestShutdown is what the guest inside d does with SCHEDOP_shutdown: only
// a guest whose vCPUs are running can make the call (EBUSY otherwise).
func (h *Hypervisor) GuestShutdown(ctx context.Context, d xenctrl.Domid, reason xenctrl.ShutdownReason) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return h.shutdown("guest sched_op shutdown", d, reason, true)
}

// shutdown is domain_shutdown: the first reason sticks; shutting down a
// domain that is already shut down succeeds and changes nothing.
func (h *Hypervisor) shutdown(op string, d xenctrl.Domid, reason xenctrl.ShutdownReason, fromGuest bool) error {
	if reason > xenctrl.ShutdownSoftReset {
		return errno(op, d, syscall.EINVAL)
	}
	var ev events
	defer func() { h.fire(ev) }()
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return err
	}
	if d == 0 {
		// On Xen this would power off or reboot the whole host
		// (hwdom_shutdown); the simulator refuses instead.
		return errno(op, d, syscall.EINVAL)
	}
	if fromGuest && !dom.runnable() {
		return errno(op, d, syscall.EBUSY)
	}
	if dom.shutdown {
		return nil
	}
	h.change(dom, func() {
		dom.shutdown = true
		dom.reason = reason
		if fromGuest && reason == xenctrl.ShutdownSuspend {
			// SCHEDOP_shutdown(suspend) returns 0 in vCPU 0's %rax
			// unless a cooperative resume sets it to 1.
			if c := dom.setup.vcpuContext[0]; c != nil {
				_ = xenctrl.SetVCPUContextRAX(c, 0)
			}
		}
	})
	h.log.Debug("sim: domain shut down", "domid", d, "reason", reason, "from_guest", fromGuest)
	ev.exceptions = append(ev.exceptions, d)
	return nil
}

// ResumeDomain is XEN_DOMCTL_resumedomain (Xen 4.17's domain_resume): the
// shutdown state is cleared whatever its reason, and a domain that is not
// shut down is left as it is; both succeed. EINVAL for dom0 (the caller's
// own domain). The domain runs again if nothing else holds it paused.
func (h *Hypervisor) ResumeDomain(ctx context.Context, d xenctrl.Domid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	const op = "domctl resumedomain"
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return err
	}
	if d == 0 {
		return errno(op, d, syscall.EINVAL)
	}
	if !dom.shutdown {
		return nil
	}
	h.change(dom, func() {
		dom.shutdown = false
		dom.reason = 0
	})
	h.log.Debug("sim: domain resumed", "domid", d)
	return nil
}

// DestroyDomain is XEN_DOMCTL_destroydomain (domain_kill): the domain is
// paused, its memory returns to the host, and it stays dying until its last
// reference is dropped. Destroying a dying domain again succeeds.
func (h *Hypervisor) DestroyDomain(ctx context.Context, d xenctrl.Domid) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	const op = "domctl destroydomain"
	var ev events
	defer func() { h.fire(ev) }()
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return err
	}
	if d == 0 {
		return errno(op, d, syscall.EINVAL) // d == current->domain
	}
	if dom.dying {
		return nil
	}
	h.dying[d] = dom
	h.change(dom, func() {
		dom.dying = true
		h.releaseMemoryLocked(dom)
	})
	h.log.Debug("sim: domain dying", "domid", d, "refs", dom.refs)
	ev.exceptions = append(ev.exceptions, d)
	if dom.refs == 0 {
		h.scheduleRelease(dom, &ev)
	}
	return nil
}

// scheduleRelease removes a dying domain with no references left, now or
// on its own goroutine (Config.ReleaseDelay). h.mu must be held.
func (h *Hypervisor) scheduleRelease(dom *domain, ev *events) {
	if h.cfg.ReleaseDelay < 0 {
		h.releaseLocked(dom)
		ev.exceptions = append(ev.exceptions, dom.id)
		return
	}
	release := func() {
		h.mu.Lock()
		ok := h.domains[dom.id] == dom && dom.refs == 0
		if ok {
			h.releaseLocked(dom)
		}
		h.mu.Unlock()
		if ok {
			h.fire(events{exceptions: []xenctrl.Domid{dom.id}})
		}
	}
	if h.cfg.ReleaseDelay == 0 {
		go release()
	} else {
		time.AfterFunc(h.cfg.ReleaseDelay, release)
	}
}

// releaseLocked is domain_destroy: the domain leaves the domain list and
// its domid becomes free. h.mu must be held.
func (h *Hypervisor) releaseLocked(dom *domain) {
	delete(h.domains, dom.id)
	delete(h.dying, dom.id)
	close(dom.changed)
	dom.changed = nil
	h.log.Debug("sim: domain released", "domid", dom.id)
}

// Hold takes a reference to a live domain, as a foreign mapping of one of
// its pages does (xenstored mapping the store ring, a backend mapping a
// grant). A destroyed domain stays dying until every reference is
// dropped. release is idempotent. ESRCH if d does not exist, EINVAL if it
// is dying (its pages can no longer be mapped).
func (h *Hypervisor) Hold(d xenctrl.Domid) (release func(), err error) {
	const op = "hold domain"
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup(op, d)
	if err != nil {
		return nil, err
	}
	if dom.dying {
		return nil, errno(op, d, syscall.EINVAL)
	}
	dom.refs++
	var once sync.Once
	return func() { once.Do(func() { h.drop(dom) }) }, nil
}

func (h *Hypervisor) drop(dom *domain) {
	var ev events
	h.mu.Lock()
	dom.refs--
	if dom.refs == 0 && dom.dying && h.domains[dom.id] == dom {
		h.scheduleRelease(dom, &ev)
	}
	h.mu.Unlock()
	h.fire(ev)
}

// DyingDomains lists the domains destroyed but not yet released, in no
// particular order. Its cost is proportional to their number only.
func (h *Hypervisor) DyingDomains() []xenctrl.Domid {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]xenctrl.Domid, 0, len(h.dying))
	for d := range h.dying {
		out = append(out, d)
	}
	return out
}

// SetGuestBehaviour changes how the guest inside d acts from now on.
func (h *Hypervisor) SetGuestBehaviour(ctx context.Context, d xenctrl.Domid, b GuestBehaviour) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if b.ShutdownDelay < 0 {
		return errno("set guest behaviour (shutdown_delay < 0)", d, syscall.EINVAL)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup("set guest behaviour", d)
	if err != nil {
		return err
	}
	h.change(dom, func() { dom.behaviour = b })
	return nil
}

// GuestBehaviour reports how the guest inside d acts.
func (h *Hypervisor) GuestBehaviour(d xenctrl.Domid) (GuestBehaviour, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	dom, err := h.lookup("guest behaviour", d)
	if err != nil {
		return GuestBehaviour{}, err
	}
	return dom.behaviour, nil
}

// WaitSuspendEnds is the guest's view of its SCHEDOP_shutdown(suspend)
// call: it blocks while d is shut down, and once d has been resumed
// (ResumeDomain) reports the call's return value, vCPU 0's %rax: 1 for a
// cancelled suspend (a cooperative resume), 0 otherwise. It returns an
// error matching ESRCH when d does not exist or disappears, one matching
// ESHUTDOWN once it is dying, and ctx's error when ctx ends first.
func (h *Hypervisor) WaitSuspendEnds(ctx context.Context, d xenctrl.Domid) (uint64, error) {
	for {
		h.mu.Lock()
		dom, err := h.lookup("wait suspend ends", d)
		if err != nil {
			h.mu.Unlock()
			return 0, err
		}
		switch {
		case dom.dying:
			h.mu.Unlock()
			return 0, errno("wait suspend ends", d, syscall.ESHUTDOWN)
		case !dom.shutdown:
			rax, _ := xenctrl.VCPUContextRAX(currentVCPUContext(dom, 0))
			h.mu.Unlock()
			return rax, nil
		}
		ch := dom.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

// WaitRunnable blocks until d's vCPUs can run (it is booted, unpaused, not
// shut down, not dying). It returns an error matching ESRCH when d does not
// exist or disappears, one matching ESHUTDOWN once d has shut down or is
// dying, and ctx's error when ctx ends first.
func (h *Hypervisor) WaitRunnable(ctx context.Context, d xenctrl.Domid) error {
	for {
		h.mu.Lock()
		dom, err := h.lookup("wait runnable", d)
		if err != nil {
			h.mu.Unlock()
			return err
		}
		switch {
		case dom.runnable():
			h.mu.Unlock()
			return nil
		case dom.shutdown || dom.dying:
			h.mu.Unlock()
			return errno("wait runnable", d, syscall.ESHUTDOWN)
		}
		ch := dom.changed
		h.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
