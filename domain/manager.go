package domain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/xenopsd-ng/xenopsd-ng/store"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// Builder loads a guest into a freshly created, paused, empty domain d on
// the hypervisor it was made for: it sets its memory limit, gives it
// memory and whatever the guest needs to boot, and reports the xenstore
// and console rings it set up.
type Builder interface {
	Build(ctx context.Context, d xenctrl.Domid, spec Spec) (BuildResult, error)
}

// BuildResult is what a Builder set up for the guest. Its rings are named
// by GFN, the frame number a foreign mapping of the domain takes: what
// xenstored's INTRODUCE and /local/domain/<d>/store/ring-ref want, and
// xenconsoled console/ring-ref. For a PVH or HVM guest that is the ring's
// PFN (Xen translates it); for a PV guest the MFN backing it. 0: no ring.
type BuildResult struct {
	StoreGFN    uint64
	StorePort   uint32
	ConsoleGFN  uint64
	ConsolePort uint32
}

// DefaultWorkers is the worker pool size when Config.Workers is 0.
const DefaultWorkers = 16

// Config is what New needs.
type Config struct {
	Hypervisor xenctrl.Hypervisor
	Xenstore   *xenstore.Client
	Store      *store.Store
	Builder    Builder // nil => EmptyBuilder on Hypervisor
	// Devices plugs disks and NICs; nil => VMs with either cannot start.
	Devices Devices
	Workers int // worker pool size (0: DefaultWorkers)
	Logger  *slog.Logger
}

// Manager owns every VM on the host. Create it with New.
type Manager struct {
	hv      xenctrl.Hypervisor
	xs      *xenstore.Client
	st      *store.Store
	builder Builder
	devs    Devices // nil: no device backend
	log     *slog.Logger

	baseCtx    context.Context // cancelled when Close gives up waiting
	baseCancel context.CancelFunc
	bgCancel   context.CancelFunc // stops the domain watcher
	bgDone     chan struct{}
	workersWG  sync.WaitGroup

	mu       sync.Mutex
	work     *sync.Cond // signalled when ready gets an entry or closing is set
	closing  bool
	vms      map[string]*vmEntry
	names    map[string]string // name -> VM id (including reservations)
	pending  map[string]bool   // VM ids being created
	reqs     map[string]string // request id -> VM id
	inflight map[string]chan struct{}
	tasks    map[string]*taskEntry
	ready    []*vmEntry               // VMs with queued ops and no worker, FIFO
	rev      uint64                   // last event revision applied to memory
	domids   map[xenctrl.Domid]string // domid -> VM id, for every claim (and reservation)
	rover    xenctrl.Domid            // last domid reserveDomid picked
	diskUse  map[fileID][]deviceUse   // backing file -> the VMs holding it (checkDevices)
	macUse   map[string]deviceUse     // MAC -> the VM holding it

	hub *progressHub // live task progress for watchers

	excMu sync.Mutex
	exc   chan struct{} // closed and replaced on every domain exception
}

// vmRecord is what the store keeps under v1/vm/<uuid>.
type vmRecord struct {
	VM        VM     `json:"vm"`
	RequestID string `json:"request_id,omitempty"`
	// RequestSpec is the fingerprint of the spec the request_id's CreateVM
	// asked for (specFingerprint); empty in records older than it.
	RequestSpec string `json:"request_spec,omitempty"`
	// Building is set (and synced) before CreateDomain and cleared in the
	// batch that records the built domain or the failure: a record found
	// with Building set after a restart means a half-built domain.
	Building bool `json:"building,omitempty"`
	// Preserved: the domain shut down and was kept, for inspection
	// (on_*=preserve) or because the guest suspended itself
	// (VM.DomainSuspended); only Destroy removes it.
	Preserved bool `json:"preserved,omitempty"`
	// Domains are the VM's domain claims (see domainClaim), each written
	// before the hypercall that creates or destroys its domain.
	Domains []domainClaim `json:"domains,omitempty"`
}

type vmEntry struct {
	id       string
	handle   xenctrl.Handle // uuidHandle(id)
	submitMu sync.Mutex     // serialises task submission (check, persist, enqueue)
	mu       sync.Mutex     // serialises record writers

	// guarded by Manager.mu
	rec        vmRecord
	queue      []*op
	running    *op
	scheduled  bool
	projected  PowerState
	deleting   bool
	checkQueue bool // a guest-event check is queued
}

// New opens the manager: it reloads every VM and task from the store,
// reconciles them with the domains the hypervisor reports, and starts the
// worker pool and the domain watcher.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Hypervisor == nil || cfg.Xenstore == nil || cfg.Store == nil {
		return nil, errors.New("domain.New: Hypervisor, Xenstore and Store are required")
	}
	m := &Manager{
		hv: cfg.Hypervisor, xs: cfg.Xenstore, st: cfg.Store, builder: cfg.Builder, devs: cfg.Devices, log: cfg.Logger,
		diskUse: map[fileID][]deviceUse{}, macUse: map[string]deviceUse{},
		vms: map[string]*vmEntry{}, names: map[string]string{}, pending: map[string]bool{},
		reqs: map[string]string{}, inflight: map[string]chan struct{}{}, tasks: map[string]*taskEntry{},
		domids: map[xenctrl.Domid]string{}, exc: make(chan struct{}), hub: newProgressHub(),
	}
	if m.builder == nil {
		m.builder = EmptyBuilder{Hypervisor: cfg.Hypervisor}
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.work = sync.NewCond(&m.mu)
	m.baseCtx, m.baseCancel = context.WithCancel(context.Background())
	if err := m.load(); err != nil {
		m.baseCancel()
		return nil, err
	}
	if err := m.reconcile(ctx); err != nil {
		m.baseCancel()
		return nil, fmt.Errorf("reconcile with the hypervisor: %w", err)
	}
	workers := cfg.Workers
	if workers <= 0 {
		workers = DefaultWorkers
	}
	for i := 0; i < workers; i++ {
		m.workersWG.Add(1)
		go m.worker()
	}
	bg, cancel := context.WithCancel(m.baseCtx)
	m.bgCancel = cancel
	m.bgDone = make(chan struct{})
	watchReady := make(chan error, 1)
	go m.watchDomains(bg, watchReady)
	select {
	case err := <-watchReady:
		if err != nil {
			m.log.Warn("no @releaseDomain watch; falling back to polling", "err", err)
		}
	case <-ctx.Done():
	}
	m.scanDomains(ctx)
	return m, nil
}

// load reads every record into memory.
func (m *Manager) load() error {
	err := m.st.List(store.KindVM, func(id string, v []byte) error {
		var r vmRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("decode VM record %s: %w", id, err)
		}
		upgradeRecord(&r)
		e := &vmEntry{id: id, handle: uuidHandle(id), rec: r, projected: r.VM.Power}
		m.vms[id] = e
		m.indexClaims(id, nil, r.Domains)
		m.adoptDeviceUses(r.VM)
		m.names[r.VM.Spec.Name] = id
		return nil
	})
	if err != nil {
		return err
	}
	err = m.st.List(store.KindReq, func(id string, v []byte) error {
		m.reqs[id] = string(v)
		return nil
	})
	if err != nil {
		return err
	}
	err = m.st.List(store.KindTask, func(id string, v []byte) error {
		var t Task
		if err := json.Unmarshal(v, &t); err != nil {
			return fmt.Errorf("decode task record %s: %w", id, err)
		}
		te := newTaskEntry(m.baseCtx, t)
		if t.State.Done() {
			te.final = true
			te.closeDone()
		}
		m.tasks[id] = te
		return nil
	})
	m.rev = m.st.Head()
	return err
}

// Host reports the host's backend, version, CPUs and memory.
func (m *Manager) Host(ctx context.Context) (HostInfo, error) {
	v, err := m.hv.Version(ctx)
	if err != nil {
		return HostInfo{}, hvError("read hypervisor version", err)
	}
	p, err := m.hv.PhysInfo(ctx)
	if err != nil {
		return HostInfo{}, hvError("read host physinfo", err)
	}
	h := HostInfo{
		Backend:      m.hv.Kind(),
		VersionMajor: v.Major, VersionMinor: v.Minor, VersionExtra: v.Extra,
		NrCPUs: p.NrCPUs, NrNodes: p.NrNodes, CoresPerSocket: p.CoresPerSocket,
		ThreadsPerCore: p.ThreadsPerCore, CPUkHz: p.CPUkHz,
		FreeMemory: p.FreePages * xenctrl.PageSize, TotalMemory: p.TotalPages * xenctrl.PageSize,
	}
	for _, c := range []struct {
		bit  uint32
		name string
	}{{xenctrl.PhysCapHVM, "hvm"}, {xenctrl.PhysCapPV, "pv"}, {xenctrl.PhysCapHAP, "hap"}} {
		if p.Capabilities&c.bit != 0 {
			h.Capabilities = append(h.Capabilities, c.name)
		}
	}
	return h, nil
}

// Close stops accepting work, marks queued tasks interrupted, waits for the
// running ones until ctx ends, then records those still running as
// TaskInterrupted and cancels them. It does not close the store, the
// hypervisor or the xenstore client.
func (m *Manager) Close(ctx context.Context) error {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return nil
	}
	m.closing = true
	var queued []taskPut
	now := time.Now().UTC()
	for _, e := range m.vms {
		for _, o := range e.queue {
			if o.task != nil && !o.task.final {
				o.task.final = true
				queued = append(queued, interrupted(o.task, now, "xenopsd-ng shut down before the task started"))
			}
		}
		e.queue = nil
	}
	m.ready = nil
	m.work.Broadcast()
	m.mu.Unlock()
	if len(queued) > 0 {
		if err := m.commit(context.Background(), txn{tasks: queued}); err != nil {
			m.log.Error("record queued tasks as interrupted", "err", err)
		}
	}
	m.bgCancel()
	workersDone := make(chan struct{})
	go func() { m.workersWG.Wait(); close(workersDone) }()
	select {
	case <-workersDone:
	case <-ctx.Done():
		m.mu.Lock()
		var running []taskPut
		for _, e := range m.vms {
			if o := e.running; o != nil && o.task != nil && !o.task.final {
				o.task.final = true
				running = append(running, interrupted(o.task, time.Now().UTC(), "xenopsd-ng shut down while the task was running; it is reconciled at the next start"))
			}
		}
		m.mu.Unlock()
		if len(running) > 0 {
			if err := m.commit(context.Background(), txn{tasks: running}); err != nil {
				m.log.Error("record running tasks as interrupted", "err", err)
			}
		}
		m.baseCancel()
		select {
		case <-workersDone:
		case <-time.After(10 * time.Second):
			m.log.Warn("workers still busy after cancellation")
		}
	}
	m.baseCancel()
	<-m.bgDone
	return nil
}

func interrupted(te *taskEntry, now time.Time, why string) taskPut {
	t := te.t
	t.State = TaskInterrupted
	t.Err = &Error{Code: CodeAborted, Message: why}
	t.UpdatedAt = now
	return taskPut{te: te, t: t}
}

// txn is one state change: VM records written or deleted, request ids,
// and task snapshots, committed as one batch with one event per item.
type txn struct {
	// quiet: the VM records changed only in what clients do not see (domain
	// claims): no event, and the VMs' generations stay.
	quiet  bool
	vms    []vmRecord
	delVMs []string
	reqs   map[string]string
	delReq []string
	tasks  []taskPut
}

type taskPut struct {
	te *taskEntry
	t  Task
}

type eventRecord struct {
	Kind EventKind `json:"kind"`
	VMID string    `json:"vm_id,omitempty"`
	VM   *VM       `json:"vm,omitempty"`
	Task *Task     `json:"task,omitempty"`
	Time time.Time `json:"time"`
}

// commit persists t atomically with its events and applies it to memory
// in revision order. It must not be called with m.mu held.
func (m *Manager) commit(ctx context.Context, t txn) error {
	var c store.Change
	now := time.Now().UTC()
	addEvent := func(ev eventRecord) error {
		ev.Time = now
		b, err := json.Marshal(ev)
		if err != nil {
			return err
		}
		c.Events = append(c.Events, b)
		return nil
	}
	for i := range t.vms {
		r := &t.vms[i]
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		c.Ops = append(c.Ops, store.Op{Kind: store.KindVM, ID: r.VM.ID, Value: b})
		if t.quiet {
			continue
		}
		vm := r.VM
		if err := addEvent(eventRecord{Kind: EventVMChanged, VMID: vm.ID, VM: &vm}); err != nil {
			return err
		}
	}
	for _, id := range t.delVMs {
		c.Ops = append(c.Ops, store.Op{Kind: store.KindVM, ID: id, Delete: true})
		if err := addEvent(eventRecord{Kind: EventVMDeleted, VMID: id}); err != nil {
			return err
		}
	}
	for k, v := range t.reqs {
		c.Ops = append(c.Ops, store.Op{Kind: store.KindReq, ID: k, Value: []byte(v)})
	}
	for _, k := range t.delReq {
		c.Ops = append(c.Ops, store.Op{Kind: store.KindReq, ID: k, Delete: true})
	}
	for _, tp := range t.tasks {
		b, err := json.Marshal(tp.t)
		if err != nil {
			return err
		}
		c.Ops = append(c.Ops, store.Op{Kind: store.KindTask, ID: tp.t.ID, Value: b})
		task := tp.t
		if err := addEvent(eventRecord{Kind: EventTaskChanged, VMID: task.VMID, Task: &task}); err != nil {
			return err
		}
	}
	// The snapshots supersede the tasks' live progress reports that watchers
	// have not taken yet (see progressHub).
	for _, tp := range t.tasks {
		m.hub.forget(tp.t.ID)
	}
	err := m.st.Commit(ctx, c, func(first uint64) {
		m.mu.Lock()
		defer m.mu.Unlock()
		for _, r := range t.vms {
			e := m.vms[r.VM.ID]
			if e == nil {
				e = &vmEntry{id: r.VM.ID, handle: uuidHandle(r.VM.ID), projected: r.VM.Power}
				m.vms[r.VM.ID] = e
			}
			if old := e.rec.VM.Spec.Name; old != "" && old != r.VM.Spec.Name && m.names[old] == r.VM.ID {
				delete(m.names, old)
			}
			m.names[r.VM.Spec.Name] = r.VM.ID
			m.indexClaims(r.VM.ID, e.rec.Domains, r.Domains)
			m.indexDevicesLocked(r)
			e.rec = r
			if !e.scheduled {
				e.projected = r.VM.Power
			}
		}
		for _, id := range t.delVMs {
			if e := m.vms[id]; e != nil {
				if m.names[e.rec.VM.Spec.Name] == id {
					delete(m.names, e.rec.VM.Spec.Name)
				}
				m.indexClaims(id, e.rec.Domains, nil)
				m.releaseDevicesLocked(id)
				delete(m.vms, id)
			}
		}
		for k, v := range t.reqs {
			m.reqs[k] = v
		}
		for _, k := range t.delReq {
			delete(m.reqs, k)
		}
		for _, tp := range t.tasks {
			tp.te.t = tp.t
			m.tasks[tp.t.ID] = tp.te
			if tp.t.State.Done() {
				tp.te.closeDone()
			}
		}
		if n := uint64(len(c.Events)); n > 0 {
			m.rev = first + n - 1
		}
	})
	if err != nil {
		return &Error{Code: CodeUnavailable, Message: fmt.Sprintf("persist state: %v", err)}
	}
	return nil
}

// updateVM applies fn to a copy of e's record and commits it together with
// tasks. fn may return an error to abort (nothing is written).
func (m *Manager) updateVM(ctx context.Context, e *vmEntry, fn func(r *vmRecord) error, tasks ...taskPut) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	m.mu.Lock()
	r := e.rec
	_, exists := m.vms[e.id]
	m.mu.Unlock()
	t := txn{tasks: tasks}
	if exists && fn != nil {
		r.VM.Spec = cloneSpec(r.VM.Spec)
		if err := fn(&r); err != nil {
			return err
		}
		if r.VM.Domid == 0 { // devices are plugged into a domain
			r.VM.Devices = nil
		}
		r.VM.Generation++
		r.VM.UpdatedAt = time.Now().UTC()
		t.vms = []vmRecord{r}
	}
	if len(t.vms) == 0 && len(t.tasks) == 0 {
		return nil
	}
	return m.commit(ctx, t)
}

// vmSnapshot returns e's current record.
func (m *Manager) vmSnapshot(e *vmEntry) vmRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	return e.rec
}

func newUUID() string { return uuid.NewString() }

func cloneSpec(s Spec) Spec {
	c := s
	c.Platform = maps.Clone(s.Platform)
	c.XenstoreData = maps.Clone(s.XenstoreData)
	c.Disks = slices.Clone(s.Disks)
	c.NICs = slices.Clone(s.NICs)
	return c
}

// uuidHandle converts a UUID into a domain handle (zero if malformed).
func uuidHandle(id string) xenctrl.Handle {
	u, err := uuid.Parse(id)
	if err != nil || len(id) != 36 {
		return xenctrl.Handle{}
	}
	return xenctrl.Handle(u)
}

func handleUUID(h xenctrl.Handle) string { return uuid.UUID(h).String() }
