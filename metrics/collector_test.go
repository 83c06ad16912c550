package metrics

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// countingHV counts the calls a scrape makes; failList makes ListDomains fail.
type countingHV struct {
	Hypervisor
	version, phys, idle, list atomic.Int64
	failList                  bool
}

func (c *countingHV) Version(ctx context.Context) (xenctrl.Version, error) {
	c.version.Add(1)
	return c.Hypervisor.Version(ctx)
}

func (c *countingHV) PhysInfo(ctx context.Context) (xenctrl.PhysInfo, error) {
	c.phys.Add(1)
	return c.Hypervisor.PhysInfo(ctx)
}

func (c *countingHV) CPUIdle(ctx context.Context) ([]time.Duration, error) {
	c.idle.Add(1)
	return c.Hypervisor.CPUIdle(ctx)
}

func (c *countingHV) ListDomains(ctx context.Context) ([]xenctrl.DomainInfo, error) {
	c.list.Add(1)
	if c.failList {
		return nil, &xenctrl.Error{Op: "sysctl getdomaininfolist", Errno: 5}
	}
	return c.Hypervisor.ListDomains(ctx)
}

// calls is every hypervisor call made so far.
func (c *countingHV) calls() int64 {
	return c.version.Load() + c.phys.Load() + c.idle.Load() + c.list.Load()
}

type fakeVMs []domain.VM

func (f fakeVMs) ListVMs(context.Context) ([]domain.VM, uint64, error) { return f, 1, nil }

func (f fakeVMs) ListTasks(context.Context, string) ([]domain.Task, error) {
	return []domain.Task{{State: domain.TaskSucceeded}, {State: domain.TaskSucceeded}, {State: domain.TaskRunning}}, nil
}

func (f fakeVMs) GetVM(_ context.Context, ref string) (domain.VM, error) {
	for _, vm := range f {
		if vm.ID == ref || vm.Spec.Name == ref {
			return vm, nil
		}
	}
	return domain.VM{}, &domain.Error{Code: domain.CodeNotFound, Field: "id", Message: "no VM " + ref}
}

// bootDomain creates a running domain with vcpus vCPUs and the handle of
// the VM id.
func bootDomain(t testing.TB, h *sim.Hypervisor, id string, vcpus uint32) xenctrl.Domid {
	t.Helper()
	ctx := context.Background()
	d, err := h.CreateDomain(ctx, xenctrl.DomainConfig{Handle: xenctrl.Handle(uuid.MustParse(id)), MaxVCPUs: vcpus})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.SetMaxMem(ctx, d, 1024); err != nil {
		t.Fatal(err)
	}
	if err := h.PopulatePhysmap(ctx, d, 256); err != nil {
		t.Fatal(err)
	}
	if err := h.UnpauseDomain(ctx, d); err != nil {
		t.Fatal(err)
	}
	return d
}

func vm(id, name string, power domain.PowerState, d xenctrl.Domid) domain.VM {
	return domain.VM{ID: id, Power: power, Domid: uint32(d), Spec: domain.Spec{UUID: id, Name: name,
		MemoryStaticMax: 8 << 20, MemoryDynamicMax: 4 << 20}}
}

// gather is one scrape of c, as Handler writes it in the text format,
// parsed by the Prometheus client's own parser (so it also checks the
// format); err is what the collector could not read.
func gather(t testing.TB, c *Collector) (mfs []*dto.MetricFamily, err error) {
	t.Helper()
	var buf bytes.Buffer
	bw := bufio.NewWriter(&buf)
	err = c.write(bw, false)
	if ferr := bw.Flush(); ferr != nil {
		t.Fatal(ferr)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	byName, perr := parser.TextToMetricFamilies(bytes.NewReader(buf.Bytes()))
	if perr != nil {
		t.Fatalf("the scrape does not parse: %v\n%s", perr, buf.Bytes())
	}
	for _, mf := range byName {
		mfs = append(mfs, mf)
	}
	return mfs, err
}

// series scrapes c and returns the samples of the metric name, keyed by
// their labels ("k=v,k=v" in label-name order).
func series(t testing.TB, c *Collector, name string) map[string]float64 {
	t.Helper()
	mfs, err := gather(t, c)
	if err != nil {
		t.Logf("scrape: %v", err) // partial results are still checked
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			slices.Sort(ls)
			out[strings.Join(ls, ",")] = value(m)
		}
	}
	return out
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return 0
}

const (
	webID   = "11111111-1111-4111-8111-111111111111"
	dbID    = "22222222-2222-4222-8222-222222222222"
	otherID = "33333333-3333-4333-8333-333333333333"
)

func TestCollectorHostAndVMs(t *testing.T) {
	h := sim.New(sim.Config{TotalMemory: 4 << 30, NrCPUs: 4})
	web := bootDomain(t, h, webID, 2)
	stranger := bootDomain(t, h, otherID, 1) // a domain with another VM's handle
	vms := fakeVMs{
		vm(webID, "web", domain.Running, web),
		vm(dbID, "db", domain.Halted, 0),
		vm("44444444-4444-4444-8444-444444444444", "imposter", domain.Running, stranger),
	}
	c := NewCollector(h, vms, CollectorOptions{MaxAge: time.Nanosecond})

	webLabels := "domid=" + itoa(web) + ",name=web,uuid=" + webID
	cpu := series(t, c, "xen_vm_cpu_seconds_total")
	if len(cpu) != 1 {
		t.Fatalf("cpu series %v, want web's only (db has no domain, imposter's domid carries another handle)", cpu)
	}
	if cpu[webLabels] <= 0 {
		t.Fatalf("web's cpu %v, want > 0 for a running domain", cpu)
	}
	if got := series(t, c, "xen_vm_vcpus_online")[webLabels]; got != 2 {
		t.Errorf("web's vcpus %v, want 2", got)
	}
	if got := series(t, c, "xen_vm_memory_bytes")[webLabels]; got != 256*4096 {
		t.Errorf("web's memory %v, want %d", got, 256*4096)
	}
	if got := series(t, c, "xen_vm_memory_limit_bytes")[webLabels]; got != 1024<<10 {
		t.Errorf("web's memory limit %v, want %d", got, 1024<<10)
	}
	if got := series(t, c, "xen_vm_memory_static_max_bytes")[webLabels]; got != 8<<20 {
		t.Errorf("web's static max %v", got)
	}
	if got := series(t, c, "xen_vm_memory_target_bytes")[webLabels]; got != 4<<20 {
		t.Errorf("web's target %v", got)
	}
	if got := series(t, c, "xen_vm_domain_state")["domid="+itoa(web)+",name=web,state=running,uuid="+webID]; got != 1 {
		t.Errorf("web's domain state: %v", series(t, c, "xen_vm_domain_state"))
	}
	power := series(t, c, "xenopsd_vm_power_state")
	if power["name=db,state=halted,uuid="+dbID] != 1 || power["name=web,state=running,uuid="+webID] != 1 || len(power) != 3 {
		t.Errorf("power states %v", power)
	}
	doms := series(t, c, "xen_host_domains")
	if doms["state=running"] != 2 || doms["state=blocked"] != 1 || len(doms) != len(domainStates) { // web, stranger; dom0 idle
		t.Errorf("domains by state %v", doms)
	}
	if got := series(t, c, "xenopsd_vms"); got["state=running"] != 2 || got["state=halted"] != 1 {
		t.Errorf("VMs by state %v", got)
	}
	if got := series(t, c, "xenopsd_tasks"); got["state=succeeded"] != 2 || got["state=running"] != 1 || len(got) != 6 {
		t.Errorf("tasks by state %v", got)
	}
	pi, _ := h.PhysInfo(context.Background())
	if got := series(t, c, "xen_host_memory_total_bytes")[""]; got != float64(pi.TotalPages*4096) {
		t.Errorf("host memory %v, want %d pages", got, pi.TotalPages)
	}
	if got := series(t, c, "xen_host_cpu_idle_seconds_total"); len(got) != 4 || got["cpu=3"] <= 0 {
		t.Errorf("pCPU idle %v, want 4 CPUs", got)
	}
	if got := series(t, c, "xen_version_info"); len(got) != 1 || got["backend=sim,major=4,minor=17,version=4.17-sim"] != 1 {
		t.Errorf("version info %v", got)
	}

	// CPU time is a counter that rises while the domain runs.
	before := cpu[webLabels]
	for i := 0; i < 1000 && series(t, c, "xen_vm_cpu_seconds_total")[webLabels] == before; i++ {
		time.Sleep(time.Millisecond)
	}
	if after := series(t, c, "xen_vm_cpu_seconds_total")[webLabels]; after <= before {
		t.Errorf("cpu time went from %v to %v while running", before, after)
	}
}

// TestCollectorOneBatch: a scrape costs one PhysInfo, one CPUIdle and one
// ListDomains whatever the number of VMs (and the version once); within MaxAge, none.
func TestCollectorOneBatch(t *testing.T) {
	h := sim.New(sim.Config{})
	var vms fakeVMs
	for i := range 20 {
		id := uuid.NewString()
		vms = append(vms, vm(id, "vm"+itoa(xenctrl.Domid(i)), domain.Running, bootDomain(t, h, id, 1)))
	}
	hv := &countingHV{Hypervisor: h}
	c := NewCollector(hv, vms, CollectorOptions{MaxAge: time.Nanosecond})
	for range 3 {
		if n := len(series(t, c, "xen_vm_cpu_seconds_total")); n != 20 {
			t.Fatalf("%d cpu series, want 20", n)
		}
	}
	if v, p, i, l := hv.version.Load(), hv.phys.Load(), hv.idle.Load(), hv.list.Load(); v != 1 || p != 3 || i != 3 || l != 3 {
		t.Fatalf("3 scrapes made %d version, %d physinfo, %d getcpuinfo, %d list calls; want 1, 3, 3, 3", v, p, i, l)
	}

	cached := &countingHV{Hypervisor: h}
	c = NewCollector(cached, vms, CollectorOptions{MaxAge: time.Hour})
	series(t, c, "xen_vm_cpu_seconds_total")
	first := cached.calls()
	series(t, c, "xen_vm_cpu_seconds_total")
	if cached.calls() != first {
		t.Fatalf("a scrape within MaxAge made %d hypervisor calls", cached.calls()-first)
	}
}

// TestCollectorError: a failed ListDomains fails the collector's part of the
// scrape (the handler logs it), keeps what was read, and is not cached.
func TestCollectorError(t *testing.T) {
	h := sim.New(sim.Config{})
	hv := &countingHV{Hypervisor: h, failList: true}
	c := NewCollector(hv, fakeVMs{vm(dbID, "db", domain.Halted, 0)}, CollectorOptions{MaxAge: time.Hour})
	if _, err := gather(t, c); err == nil || !strings.Contains(err.Error(), "getdomaininfolist") {
		t.Fatalf("gather: %v, want the ListDomains error", err)
	}
	if got := series(t, c, "xenopsd_vm_power_state"); len(got) != 1 {
		t.Errorf("power states %v, want db's", got)
	}
	if got := series(t, c, "xen_host_domains"); len(got) != 0 {
		t.Errorf("domains by state %v from a failed list", got)
	}
	hv.failList = false
	if _, err := gather(t, c); err != nil {
		t.Fatalf("gather after the hypervisor recovered: %v (a failed snapshot was cached)", err)
	}
}

// TestCollectorLint: the names and help follow Prometheus's conventions.
func TestCollectorLint(t *testing.T) {
	h := sim.New(sim.Config{})
	c := NewCollector(h, fakeVMs{vm(webID, "web", domain.Running, bootDomain(t, h, webID, 1))}, CollectorOptions{})
	lint(t, c)
	ops := NewOperations()
	ops.Observe("start", nil, time.Second)
	if problems, err := testutil.CollectAndLint(ops); err != nil || len(problems) != 0 {
		t.Errorf("operations: %v %v", problems, err)
	}
}

// lint checks a scrape of c with the Prometheus client's linter.
func lint(t *testing.T, c *Collector) {
	t.Helper()
	mfs, err := gather(t, c)
	if err != nil {
		t.Fatal(err)
	}
	problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestOperationOutcome(t *testing.T) {
	ops := NewOperations()
	ops.Observe("start", nil, 20*time.Millisecond)
	ops.Observe("start", errors.New("boom"), time.Millisecond)
	ops.Observe("shutdown", context.Canceled, time.Second)
	ops.Observe("shutdown", &domain.Error{Code: domain.CodeCancelled, Message: "cancelled"}, time.Second)
	want := map[string]uint64{
		"operation=start,outcome=succeeded":    1,
		"operation=start,outcome=failed":       1,
		"operation=shutdown,outcome=cancelled": 2,
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(ops)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, m := range mfs[0].GetMetric() {
		var ls []string
		for _, l := range m.GetLabel() {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		got[strings.Join(ls, ",")] = m.GetHistogram().GetSampleCount()
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func itoa(d xenctrl.Domid) string { return strconv.Itoa(int(d)) }
