package metrics

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// Hypervisor is what Collector asks the hypervisor; xenctrl.Hypervisor is one.
type Hypervisor interface {
	Kind() string
	Version(ctx context.Context) (xenctrl.Version, error)
	PhysInfo(ctx context.Context) (xenctrl.PhysInfo, error)
	CPUIdle(ctx context.Context) ([]time.Duration, error)
	ListDomains(ctx context.Context) ([]xenctrl.DomainInfo, error)
	DomainInfo(ctx context.Context, d xenctrl.Domid) (xenctrl.DomainInfo, error)
	GetVCPUInfo(ctx context.Context, d xenctrl.Domid, vcpu uint32) (xenctrl.VCPUInfo, error)
}

// Manager is what Collector reads from the domain manager (the VMs the
// daemon owns and its tasks); *domain.Manager is one.
type Manager interface {
	ListVMs(ctx context.Context) ([]domain.VM, uint64, error)
	GetVM(ctx context.Context, ref string) (domain.VM, error)
	ListTasks(ctx context.Context, vmID string) ([]domain.Task, error)
}

// Defaults of CollectorOptions.
const (
	DefaultMaxAge  = 500 * time.Millisecond
	DefaultTimeout = 10 * time.Second
)

// CollectorOptions tune a Collector. Zero fields get defaults.
type CollectorOptions struct {
	// MaxAge: a scrape within MaxAge of the last snapshot reuses it.
	MaxAge time.Duration
	// Timeout bounds the calls one snapshot makes.
	Timeout time.Duration
	Logger  *slog.Logger
	// Devices reads the plugged devices' I/O counters (nil: no device
	// series).
	Devices DeviceCounters
}

// Collector reads the host's and the VMs' metrics from the hypervisor and
// the domain manager at each scrape, and writes them (Handler).
type Collector struct {
	hv   Hypervisor
	mgr  Manager
	opts CollectorOptions

	mu      sync.Mutex // one snapshot at a time; guards the fields below
	last    snapshot
	version *xenctrl.Version // read once
}

// snapshot is everything one scrape exports, read in one go.
type snapshot struct {
	at      time.Time
	phys    xenctrl.PhysInfo
	cpuIdle []time.Duration // per pCPU
	domains []xenctrl.DomainInfo
	vms     []domain.VM
	tasks   map[domain.TaskState]int
	devices map[string][]deviceReading // by VM id
	err     error                      // what went wrong reading it; the rest may be partial
}

// NewCollector returns a Collector reading hv and mgr.
func NewCollector(hv Hypervisor, mgr Manager, opts CollectorOptions) *Collector {
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	return &Collector{hv: hv, mgr: mgr, opts: opts}
}

// snapshot is snapshotCtx for a scrape, which has no context of its own.
func (c *Collector) snapshot() (snapshot, *xenctrl.Version) {
	return c.snapshotCtx(context.Background())
}

// snapshotCtx returns the last snapshot if it is recent enough, else reads
// a new one within ctx and Timeout.
func (c *Collector) snapshotCtx(ctx context.Context) (snapshot, *xenctrl.Version) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.last.at.IsZero() && time.Since(c.last.at) < c.opts.MaxAge {
		return c.last, c.version
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	if c.version == nil {
		if v, err := c.hv.Version(ctx); err == nil {
			c.version = &v
		} else {
			c.opts.Logger.Warn("metrics: read the hypervisor's version", "err", err)
		}
	}
	s := c.read(ctx)
	if s.err != nil {
		// Not cached: the next scrape tries again.
		return s, c.version
	}
	c.last = s
	return s, c.version
}

// read reads a snapshot. What failed is left zero, its error in err.
func (c *Collector) read(ctx context.Context) snapshot {
	s := snapshot{at: time.Now()}
	var errs [6]error
	s.phys, errs[0] = c.hv.PhysInfo(ctx)
	s.cpuIdle, errs[1] = c.hv.CPUIdle(ctx)
	s.domains, errs[2] = c.hv.ListDomains(ctx)
	s.vms, _, errs[3] = c.mgr.ListVMs(ctx)
	s.tasks, errs[4] = c.taskCounts(ctx)
	if c.opts.Devices != nil {
		s.devices, errs[5] = readDevices(ctx, c.opts.Devices, s.vms)
	}
	s.err = errors.Join(errs[:]...)
	return s
}

// taskStates are the task states xenopsd_tasks counts.
var taskStates = []domain.TaskState{domain.TaskPending, domain.TaskRunning, domain.TaskSucceeded,
	domain.TaskFailed, domain.TaskCancelled, domain.TaskInterrupted}

// taskCounts counts the manager's tasks (those not yet pruned) by state.
func (c *Collector) taskCounts(ctx context.Context) (map[domain.TaskState]int, error) {
	tasks, err := c.mgr.ListTasks(ctx, "")
	if err != nil {
		return nil, err
	}
	out := make(map[domain.TaskState]int, len(taskStates))
	for _, t := range tasks {
		out[t.State]++
	}
	return out, nil
}

// Domain states, as xen_host_domains labels them (one per domain, the first
// that applies).
var domainStates = []string{"dying", "shutdown", "paused", "running", "blocked", "other"}

func domainState(d xenctrl.DomainInfo) string {
	switch {
	case d.Dying:
		return "dying"
	case d.Shutdown:
		return "shutdown"
	case d.Paused:
		return "paused"
	case d.Running:
		return "running"
	case d.Blocked:
		return "blocked"
	}
	return "other" // runnable, waiting for a pCPU, or never booted
}

// powerStates are the VM power states xenopsd_vms counts.
var powerStates = []domain.PowerState{domain.Halted, domain.Running, domain.Paused, domain.Suspended}

func powerLabel(p domain.PowerState) string {
	switch p {
	case domain.Halted:
		return "halted"
	case domain.Running:
		return "running"
	case domain.Paused:
		return "paused"
	case domain.Suspended:
		return "suspended"
	}
	return "unspecified"
}

func pagesToBytes(pages uint64) float64 { return float64(pages) * xenctrl.PageSize }
