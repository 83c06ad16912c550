package domain

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"syscall"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// x86 emulation flags (XEN_X86_EMU_*, public/arch-x86/xen.h).
const (
	emuLAPIC = 1 << 0
	emuVPCI  = 1 << 10
	emuAll   = 1<<11 - 1
	// emuHVM is what libxl passes for HVM guests: everything but vPCI,
	// which Xen only allows for the hardware domain.
	emuHVM = emuAll &^ emuVPCI
)

// Timeouts for waits inside operations (each is a bound, not a sleep).
const (
	destroyWait  = 30 * time.Second
	cleanupLimit = 60 * time.Second
	pollInterval = 250 * time.Millisecond
)

// EmptyBuilder builds a domain with memory and nothing else: max_mem
// (static max) and populate_physmap (dynamic max). Its store "ring" is the
// last page, its port 0: enough for the simulator, not for a real guest.
type EmptyBuilder struct{ Hypervisor xenctrl.Hypervisor }

// Build implements Builder.
func (b EmptyBuilder) Build(ctx context.Context, d xenctrl.Domid, spec Spec) (BuildResult, error) {
	if err := b.Hypervisor.SetMaxMem(ctx, d, spec.MemoryStaticMax/1024); err != nil {
		return BuildResult{}, err
	}
	pages := spec.MemoryDynamicMax / xenctrl.PageSize
	if err := b.Hypervisor.PopulatePhysmap(ctx, d, pages); err != nil {
		return BuildResult{}, err
	}
	return BuildResult{StoreGFN: pages - 1, ConsoleGFN: pages - 2}, nil
}

func domainConfig(spec Spec, d xenctrl.Domid) xenctrl.DomainConfig {
	cfg := xenctrl.DomainConfig{
		Domid:         d,
		Handle:        uuidHandle(spec.UUID),
		MaxVCPUs:      spec.VCPUsMax,
		MaxEvtchnPort: 1023, // libxl's default event_channels
	}
	switch spec.Type {
	case TypePVH:
		cfg.Flags = xenctrl.CreateHVM | xenctrl.CreateHAP
		cfg.EmulationFlags = emuLAPIC
	case TypeHVM:
		cfg.Flags = xenctrl.CreateHVM | xenctrl.CreateHAP
		cfg.EmulationFlags = emuHVM
	}
	return cfg
}

// cleanupCtx is a context for undoing work: not cancelled with the
// operation, but bounded.
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupLimit)
}

// buildDomain creates, builds and introduces a paused domain d for spec,
// and plugs its devices, which it returns. On any failure everything it
// did is undone before it returns. A domid that turned out to be used is
// an error matching syscall.EEXIST.
func (m *Manager) buildDomain(ctx context.Context, spec Spec, d xenctrl.Domid, te *taskEntry) ([]devices.Record, error) {
	t0 := time.Now()
	if _, err := m.hv.CreateDomain(ctx, domainConfig(spec, d)); errors.Is(err, syscall.EEXIST) {
		return nil, fmt.Errorf("create domain %d: %w", d, err)
	} else if err != nil {
		return nil, hvError(fmt.Sprintf("create domain %d", d), err)
	}
	m.progress(te, 0.3)
	tCreate := time.Now()
	fail := func(err error) ([]devices.Record, error) {
		cctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if terr := m.teardown(cctx, spec.UUID, d); terr != nil {
			m.log.Error("undo half-built domain", "vm", spec.UUID, "domid", d, "err", terr)
		}
		return nil, err
	}
	res, err := m.builder.Build(ctx, d, spec)
	if err != nil {
		return fail(hvError(fmt.Sprintf("build domain %d", d), err))
	}
	m.progress(te, 0.6)
	tBuild := time.Now()
	if err := m.writeLayout(ctx, spec, d, res); err != nil {
		return fail(&Error{Code: CodeInternal, Message: fmt.Sprintf("write xenstore layout of domain %d: %v", d, err)})
	}
	// A domain without a xenstore ring (StoreGFN 0: an empty domain with no
	// guest) has nothing for xenstored to connect to; real xenstored refuses
	// to introduce it (EINVAL).
	if res.StoreGFN != 0 {
		if err := m.xs.Introduce(ctx, uint32(d), res.StoreGFN, res.StorePort); err != nil {
			return fail(&Error{Code: CodeInternal, Message: fmt.Sprintf("introduce domain %d to xenstored: %v", d, err)})
		}
	}
	m.progress(te, 0.7)
	tLayout := time.Now()
	var devs []devices.Record
	if len(spec.Disks) > 0 || len(spec.NICs) > 0 {
		if devs, err = m.plugDevices(ctx, spec, d); err != nil {
			return fail(err)
		}
	}
	m.progress(te, 0.8)
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	m.log.Info("domain built", "vm", spec.UUID, "domid", d, "create", tCreate.Sub(t0),
		"build", tBuild.Sub(tCreate), "xenstore", tLayout.Sub(tBuild), "devices", time.Since(tLayout), "total", time.Since(t0))
	return devs, nil
}

// Xenstore paths of a VM's domain.
func domPath(d xenctrl.Domid) string { return "/local/domain/" + strconv.Itoa(int(d)) }
func vmPath(id string) string        { return "/vm/" + id }

// PrivatePath is the toolstack's own subtree for a VM, readable by dom0 only.
func PrivatePath(id string) string { return "/xenopsd-ng/" + id }

// writeLayout writes the domain's xenstore tree in one transaction, with the
// permissions libxl__domain_make and libxl__build_post use: the guest may
// read its whole tree but write only control/shutdown, control/feature-*,
// control/sysrq, data, drivers, feature, attr, error and
// device/suspend/event-channel.
func (m *Manager) writeLayout(ctx context.Context, spec Spec, d xenctrl.Domid, res BuildResult) error {
	dom, vm, priv := domPath(d), vmPath(spec.UUID), PrivatePath(spec.UUID)
	id := uint32(d)
	noperm := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}}
	roperm := []xenstore.Perm{{Domid: 0, Access: xenstore.AccessNone}, {Domid: id, Access: xenstore.AccessRead}}
	rwperm := []xenstore.Perm{{Domid: id, Access: xenstore.AccessNone}}
	kib := func(b uint64) string { return strconv.FormatUint(b/1024, 10) }
	// The three roots are (re)created outside the transaction: creating
	// siblings under /local/domain, /vm and /xenopsd-ng changes their
	// parents' child lists, which would make concurrent builds conflict
	// (EAGAIN) on the C xenstored rule. A root gets its final permissions
	// at once; until then it inherits its dom0-only parent's. Everything
	// below the roots is written in one transaction.
	if err := m.removeRoots(ctx, dom, vm, priv); err != nil {
		return err
	}
	if err := m.xs.Batch(ctx,
		xenstore.WriteOp(dom, nil), xenstore.SetPermsOp(dom, roperm),
		xenstore.WriteOp(vm, nil), xenstore.SetPermsOp(vm, roperm),
		xenstore.WriteOp(priv, nil), xenstore.SetPermsOp(priv, noperm),
	); err != nil {
		return fmt.Errorf("create %s, %s and %s: %w", dom, vm, priv, err)
	}
	return m.xs.Transaction(ctx, func(tx *xenstore.Tx) error {
		type node struct {
			path, value string
			perms       []xenstore.Perm // nil: inherit the parent's
		}
		var nodes []node
		add := func(path, value string, perms []xenstore.Perm) { nodes = append(nodes, node{path, value, perms}) }
		add(dom+"/vm", vm, nil)
		add(dom+"/name", spec.Name, nil)
		add(dom+"/domid", strconv.Itoa(int(d)), nil)
		add(dom+"/cpu", "", roperm)
		for i := uint32(0); i < spec.VCPUsMax; i++ {
			avail := "offline"
			if i < spec.VCPUsAtStartup {
				avail = "online"
			}
			add(fmt.Sprintf("%s/cpu/%d/availability", dom, i), avail, nil)
		}
		add(dom+"/memory", "", roperm)
		add(dom+"/memory/static-max", kib(spec.MemoryStaticMax), nil)
		add(dom+"/memory/target", kib(spec.MemoryDynamicMax), nil)
		if spec.Type == TypeHVM {
			add(dom+"/memory/videoram", "8192", nil) // libxl's default video_memkb
			add(dom+"/hvmloader", "", roperm)
		}
		add(dom+"/device", "", roperm)
		add(dom+"/device/suspend/event-channel", "", rwperm)
		add(dom+"/control", "", roperm)
		add(dom+"/control/shutdown", "", rwperm)
		features := []string{"feature-poweroff", "feature-reboot", "feature-suspend"}
		if spec.Type == TypeHVM {
			features = append(features, "feature-s3", "feature-s4")
		}
		for _, f := range features {
			add(dom+"/control/"+f, "", rwperm)
		}
		add(dom+"/control/sysrq", "", rwperm)
		add(dom+"/control/platform-feature-multiprocessor-suspend", "1", nil)
		add(dom+"/control/platform-feature-xs_reset_watches", "1", nil)
		for _, p := range []string{"data", "drivers", "feature", "attr", "error"} {
			add(dom+"/"+p, "", rwperm)
		}
		if res.StoreGFN != 0 { // a guest with a xenstore ring
			add(dom+"/store/port", strconv.FormatUint(uint64(res.StorePort), 10), nil)
			add(dom+"/store/ring-ref", strconv.FormatUint(res.StoreGFN, 10), nil)
		}
		if res.ConsoleGFN != 0 { // a guest with a console ring, for xenconsoled
			add(dom+"/console/port", strconv.FormatUint(uint64(res.ConsolePort), 10), nil)
			add(dom+"/console/ring-ref", strconv.FormatUint(res.ConsoleGFN, 10), nil)
			add(dom+"/console/type", "xenconsoled", nil)
			add(dom+"/console/limit", "1048576", nil)
		}
		for k, v := range spec.Platform {
			add(dom+"/platform/"+k, v, nil)
		}
		for k, v := range spec.XenstoreData {
			add(dom+"/"+k, v, nil)
		}
		add(vm+"/uuid", spec.UUID, nil)
		add(vm+"/name", spec.Name, nil)
		add(vm+"/domid", strconv.Itoa(int(d)), nil)
		add(priv+"/domid", strconv.Itoa(int(d)), nil)
		add(priv+"/type", spec.Type.String(), nil)
		add(priv+"/created", time.Now().UTC().Format(time.RFC3339Nano), nil)
		// All nodes in one pipelined batch: one round trip, applied in order.
		ops := make([]xenstore.Op, 0, 2*len(nodes))
		for _, n := range nodes {
			ops = append(ops, xenstore.WriteOp(n.path, []byte(n.value)))
			if n.perms != nil {
				ops = append(ops, xenstore.SetPermsOp(n.path, n.perms))
			}
		}
		if err := tx.Batch(ctx, ops...); err != nil {
			return fmt.Errorf("write the layout below %s: %w", dom, err)
		}
		return nil
	})
}

// removeLayout deletes every node the toolstack wrote for the VM's domain:
// three subtree removals, each atomic in xenstored (not one transaction:
// removing siblings would make concurrent teardowns conflict).
func (m *Manager) removeLayout(ctx context.Context, id string, d xenctrl.Domid) error {
	paths := []string{PrivatePath(id), vmPath(id)}
	if d != 0 {
		paths = append(paths, domPath(d))
	}
	return m.removeRoots(ctx, paths...)
}

// removeRoots removes the subtrees at paths (missing ones are fine) in one
// pipelined batch; only if that reports an error are they removed one by
// one, to tell which failed and how (a missing parent gives ENOENT).
func (m *Manager) removeRoots(ctx context.Context, paths ...string) error {
	ops := make([]xenstore.Op, len(paths))
	for i, p := range paths {
		ops[i] = xenstore.RemoveOp(p)
	}
	if err := m.xs.Batch(ctx, ops...); err == nil {
		return nil
	}
	var errs []error
	for _, p := range paths {
		if err := m.xs.Remove(ctx, p); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("rm %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// teardown destroys domain d of VM id (if d still belongs to it), releases
// it in xenstored, removes every node of the VM's layout and waits
// (bounded) until the hypervisor no longer lists it.
func (m *Manager) teardown(ctx context.Context, id string, d xenctrl.Domid) error {
	return m.destroyDomain(ctx, id, d, PrivatePath(id), vmPath(id))
}

// destroyDomain destroys domain d of VM id (if d still belongs to it),
// releases it in xenstored, removes /local/domain/<d> and the subtrees
// vmPaths, and waits (bounded) until the hypervisor no longer lists it.
func (m *Manager) destroyDomain(ctx context.Context, id string, d xenctrl.Domid, vmPaths ...string) error {
	var errs []error
	if d != 0 {
		info, err := m.hv.DomainInfo(ctx, d)
		switch {
		case err == nil && info.Handle == uuidHandle(id):
			if err := m.hv.DestroyDomain(ctx, d); err != nil && !xenctrl.IsNoDomain(err) {
				errs = append(errs, fmt.Errorf("destroy domain %d: %w", d, err))
			}
		case err == nil:
			m.log.Warn("domid now belongs to another domain; not destroying it", "vm", id, "domid", d)
			d = 0
		case xenctrl.IsNoDomain(err):
		default:
			errs = append(errs, fmt.Errorf("domain %d info: %w", d, err))
		}
	}
	paths := vmPaths
	if d != 0 && m.devs != nil {
		if err := m.devs.RemoveDomainDevices(ctx, uint32(d)); err != nil {
			errs = append(errs, fmt.Errorf("remove the devices of domain %d: %w", d, err))
		}
	}
	if d != 0 {
		if err := m.xs.Release(ctx, uint32(d)); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EINVAL) {
			errs = append(errs, fmt.Errorf("release domain %d in xenstored: %w", d, err))
		}
		paths = append(paths[:len(paths):len(paths)], domPath(d))
	}
	if len(paths) > 0 {
		if err := m.removeRoots(ctx, paths...); err != nil {
			errs = append(errs, err)
		}
	}
	if d != 0 && len(errs) == 0 {
		wctx, cancel := context.WithTimeout(ctx, destroyWait)
		defer cancel()
		err := m.waitDomain(wctx, d, func(info xenctrl.DomainInfo, err error) bool {
			return xenctrl.IsNoDomain(err) || (err == nil && info.Handle != uuidHandle(id))
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("domain %d still exists (dying) after destroy: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// domainException returns a channel closed at the next domain exception
// (@releaseDomain), for waiters.
func (m *Manager) domainException() <-chan struct{} {
	m.excMu.Lock()
	defer m.excMu.Unlock()
	return m.exc
}

func (m *Manager) notifyException() {
	m.excMu.Lock()
	close(m.exc)
	m.exc = make(chan struct{})
	m.excMu.Unlock()
}

// waitDomain polls d's info at every domain exception (and every
// pollInterval as a fallback) until cond holds or ctx ends.
func (m *Manager) waitDomain(ctx context.Context, d xenctrl.Domid, cond func(xenctrl.DomainInfo, error) bool) error {
	t := time.NewTicker(pollInterval)
	defer t.Stop()
	for {
		exc := m.domainException()
		info, err := m.hv.DomainInfo(ctx, d)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if cond(info, err) {
			return nil
		}
		select {
		case <-exc:
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
