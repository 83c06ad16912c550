package metrics

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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

// Collector is a prometheus.Collector of the host's and the VMs' metrics,
// read from the hypervisor and the domain manager at each scrape.
type Collector struct {
	hv   Hypervisor
	mgr  Manager
	opts CollectorOptions
	d    descs

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
	return &Collector{hv: hv, mgr: mgr, opts: opts, d: newDescs()}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) { c.d.describe(ch) }

// Collect implements prometheus.Collector: the host's, then every VM's
// metrics, from one snapshot. What could not be read is reported as an
// invalid metric, which the handler logs; what could is still exported.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s, version := c.snapshot()
	if s.err != nil {
		ch <- prometheus.NewInvalidMetric(c.d.scrapeError, s.err)
	}
	if version != nil {
		ch <- c.d.gauge(c.d.versionInfo, 1, version.String(), strconv.Itoa(version.Major),
			strconv.Itoa(version.Minor), c.hv.Kind())
	}
	c.collectHost(ch, s)
	c.collectVMs(ch, s)
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

func (c *Collector) collectHost(ch chan<- prometheus.Metric, s snapshot) {
	if s.phys != (xenctrl.PhysInfo{}) {
		ch <- c.d.gauge(c.d.hostMemTotal, pagesToBytes(s.phys.TotalPages))
		ch <- c.d.gauge(c.d.hostMemFree, pagesToBytes(s.phys.FreePages))
		ch <- c.d.gauge(c.d.hostMemScrub, pagesToBytes(s.phys.ScrubPages))
		ch <- c.d.gauge(c.d.hostCPUs, float64(s.phys.NrCPUs))
		ch <- c.d.gauge(c.d.hostCPUHz, float64(s.phys.CPUkHz)*1000)
	}
	for cpu, idle := range s.cpuIdle {
		ch <- prometheus.MustNewConstMetric(c.d.hostCPUIdle, prometheus.CounterValue, idle.Seconds(), strconv.Itoa(cpu))
	}
	if s.domains != nil {
		counts := make(map[string]int, len(domainStates))
		for _, d := range s.domains {
			counts[domainState(d)]++
		}
		for _, st := range domainStates {
			ch <- c.d.gauge(c.d.hostDomains, float64(counts[st]), st)
		}
	}
	if s.vms != nil {
		counts := map[domain.PowerState]int{}
		for _, vm := range s.vms {
			counts[vm.Power]++
		}
		for _, p := range powerStates {
			ch <- c.d.gauge(c.d.vms, float64(counts[p]), powerLabel(p))
		}
	}
	if s.tasks != nil {
		for _, st := range taskStates {
			ch <- c.d.gauge(c.d.tasks, float64(s.tasks[st]), strings.ToLower(st.String()))
		}
	}
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

// collectVMs exports each VM's power state, and the domain metrics of each
// VM whose domain is in the snapshot with the VM's handle.
func (c *Collector) collectVMs(ch chan<- prometheus.Metric, s snapshot) {
	byDomid := make(map[xenctrl.Domid]int, len(s.domains))
	for i, d := range s.domains {
		byDomid[d.Domid] = i
	}
	for _, vm := range s.vms {
		ch <- domainMetric{desc: c.d.vmPower, kind: prometheus.GaugeValue, value: 1, labels: []*dto.LabelPair{
			labelPair("name", vm.Spec.Name), labelPair("state", powerLabel(vm.Power)), labelPair("uuid", vm.ID)}}
		c.collectRestarts(ch, vm)
		if vm.Domid == 0 {
			continue
		}
		i, ok := byDomid[xenctrl.Domid(vm.Domid)]
		if !ok {
			continue
		}
		if h, err := uuid.Parse(vm.ID); err != nil || xenctrl.Handle(h) != s.domains[i].Handle {
			continue // the domid is someone else's now
		}
		c.collectDomain(ch, s, vm, s.domains[i])
	}
}

// collectRestarts exports vm's restarts by cause: reboot and crash always,
// poweroff (a spec's on_poweroff=restart) once it happened.
func (c *Collector) collectRestarts(ch chan<- prometheus.Metric, vm domain.VM) {
	for _, r := range []struct {
		cause string
		n     uint64
	}{{"crash", vm.Restarts.Crash}, {"poweroff", vm.Restarts.Poweroff}, {"reboot", vm.Restarts.Reboot}} {
		if r.n == 0 && r.cause == "poweroff" {
			continue
		}
		ch <- domainMetric{desc: c.d.vmRestarts, kind: prometheus.CounterValue, value: float64(r.n), labels: []*dto.LabelPair{
			labelPair("cause", r.cause), labelPair("name", vm.Spec.Name), labelPair("uuid", vm.ID)}}
	}
}

func (c *Collector) collectDomain(ch chan<- prometheus.Metric, s snapshot, vm domain.VM, d xenctrl.DomainInfo) {
	domid := strconv.Itoa(int(d.Domid))
	l := domainLabels(vm.ID, vm.Spec.Name, domid)
	gauge := func(desc *prometheus.Desc, v float64) prometheus.Metric {
		return domainMetric{desc: desc, labels: l, kind: prometheus.GaugeValue, value: v}
	}
	ch <- domainMetric{desc: c.d.vmCPU, labels: l, kind: prometheus.CounterValue, value: float64(d.CPUTime) / 1e9}
	ch <- gauge(c.d.vmVCPUs, float64(d.OnlineVCPUs))
	ch <- gauge(c.d.vmMem, pagesToBytes(d.TotPages))
	ch <- gauge(c.d.vmMemMax, pagesToBytes(d.MaxPages))
	ch <- gauge(c.d.vmStaticMax, float64(vm.Spec.MemoryStaticMax))
	ch <- gauge(c.d.vmTarget, float64(vm.Spec.MemoryDynamicMax))
	ch <- domainMetric{desc: c.d.vmDomainState, kind: prometheus.GaugeValue, value: 1,
		labels: domainLabels(vm.ID, vm.Spec.Name, domid, labelPair("state", domainState(d)))}
	if !vm.StartedAt.IsZero() {
		ch <- gauge(c.d.vmUptime, max(s.at.Sub(vm.StartedAt).Seconds(), 0))
	}
	c.collectDevices(ch, s.devices[vm.ID], l)
}

func pagesToBytes(pages uint64) float64 { return float64(pages) * xenctrl.PageSize }
