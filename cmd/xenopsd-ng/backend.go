package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/builder"
	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/devices/dom0"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/kernel"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// backendError marks a failure to reach the chosen hypervisor backend
// (exit status 3).
type backendError struct{ err error }

func (e *backendError) Error() string { return e.err.Error() }
func (e *backendError) Unwrap() error { return e.err }

// startTimeout bounds start-up steps that wait for another process (the
// sim host, xenstored).
const startTimeout = 60 * time.Second

// backend is an open hypervisor and xenstore connection.
type backend struct {
	hv      xenctrl.Hypervisor
	xs      *xenstore.Client
	builder domain.Builder // vmBuilder
	devices domain.Devices // disks and NICs: a devices.Plugger on the backend's dom0 Host
	// close closes the connections. startFailed says the daemon gives up
	// before serving: a backend then also undoes what it set up for this
	// run alone (sim.go).
	close func(startFailed bool)
}

// openBackend connects to the hypervisor the command line asks for. It never
// falls back from xen to sim.
func openBackend(ctx context.Context, cfg config, log *slog.Logger) (*backend, error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var be *backend
	var err error
	mem := kernel.NewBudget(cfg.memoryLimit)
	switch cfg.backend {
	case "xen":
		be, err = openXen(ctx, log, mem)
	case "sim":
		be, err = openSim(ctx, cfg.simDir, log, mem)
	default:
		return nil, fmt.Errorf("unknown backend %q", cfg.backend)
	}
	if err != nil {
		return nil, err
	}
	v, err := be.hv.Version(ctx)
	if err != nil {
		be.close(true)
		return nil, &backendError{fmt.Errorf("%s backend: hypervisor version: %w", cfg.backend, err)}
	}
	log.Info("hypervisor", "kind", be.hv.Kind(), "version", v.String())
	return be, nil
}

// openXen opens /dev/xen/privcmd and dom0's xenstored.
func openXen(ctx context.Context, log *slog.Logger, mem *kernel.Budget) (*backend, error) {
	x, err := xenctrl.Open(log)
	if err != nil {
		return nil, &backendError{fmt.Errorf("--backend=xen: %w (xenopsd-ng does not fall back to the simulator; run with --backend=sim on a machine without Xen)", err)}
	}
	xs, err := xenstore.Dial(ctx, "")
	if err != nil {
		x.Close()
		return nil, &backendError{fmt.Errorf("--backend=xen: connect to xenstored: %w", err)}
	}
	return &backend{
		hv:      x,
		xs:      xs,
		builder: newVMBuilder(x, log, false, mem),
		devices: devices.NewPlugger(xs, dom0.New(log), log.With("component", "devices")),
		close:   func(bool) { xs.Close(); x.Close() },
	}, nil
}

// vmBuilder builds VMs the same way on both backends: a VM with a kernel
// through the domain builder (PV or PVH by type), which opens and checks
// its kernel and ramdisk; a VM without one as an empty domain that has
// memory but no guest kernel.
//
// What an empty domain gets beyond its memory is the one difference. On
// Xen it has no guest, hence no xenstore or console ring to introduce. On
// the simulator a simulated guest still boots in it and connects to
// xenstored (simhost/guest.go), so it keeps the stand-in rings
// domain.EmptyBuilder reports (its last pages, port 0) and is introduced
// to xenstored like a built guest: the many kernel-less VMs of benchmarks
// and tests then boot, answer control/shutdown and fire @releaseDomain
// without a kernel image to load.
type vmBuilder struct {
	guest domain.Builder
	empty domain.EmptyBuilder
	// emptyRings: an empty domain keeps EmptyBuilder's stand-in rings
	// (the simulator).
	emptyRings bool
}

// newVMBuilder returns the builder of VMs on hv; emptyRings as in
// vmBuilder; mem is the memory all builds share (nil: no limit).
func newVMBuilder(hv builderHypervisor, log *slog.Logger, emptyRings bool, mem *kernel.Budget) vmBuilder {
	return vmBuilder{
		guest:      builder.New(hv, builder.Config{Logger: log.With("component", "builder"), Memory: mem}),
		empty:      domain.EmptyBuilder{Hypervisor: hv},
		emptyRings: emptyRings,
	}
}

// builderHypervisor is a hypervisor that can both run domains and build
// guests: *xenctrl.Xen, and *simhost.Client for the simulator.
type builderHypervisor interface {
	xenctrl.Hypervisor
	builder.Hypervisor
}

func (b vmBuilder) Build(ctx context.Context, d xenctrl.Domid, spec domain.Spec) (domain.BuildResult, error) {
	if spec.Kernel != "" {
		return b.guest.Build(ctx, d, spec)
	}
	res, err := b.empty.Build(ctx, d, spec)
	if err != nil || !b.emptyRings {
		return domain.BuildResult{}, err
	}
	return res, nil
}
