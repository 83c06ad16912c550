package domain

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

func TestHost(t *testing.T) {
	e := newEnv(t, envOpts{memory: 8 << 30})
	h, err := e.m.Host(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h.Backend != "sim" || h.TotalMemory != 8<<30 || h.FreeMemory == 0 || h.FreeMemory >= h.TotalMemory || h.NrCPUs != 8 || h.VersionMajor != 4 || h.Version() != "4.17-sim" {
		t.Fatalf("host %+v", h)
	}
	vm := e.create("h")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	h2, _ := e.m.Host(e.ctx)
	if h.FreeMemory-h2.FreeMemory < 64<<20 {
		t.Fatalf("free memory %d -> %d after starting a 64 MiB VM", h.FreeMemory, h2.FreeMemory)
	}
}

func TestUpdateVM(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("old")
	s := spec("new")
	s.MemoryStaticMax = 128 << 20
	s.MemoryDynamicMax = 96 << 20
	got, err := e.m.UpdateVM(e.ctx, "old", s)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != vm.ID || got.Spec.Name != "new" || got.Spec.MemoryDynamicMin != 96<<20 || got.Generation != 2 {
		t.Fatalf("updated %+v", got)
	}
	if _, err := e.m.GetVM(e.ctx, "old"); CodeOf(err) != CodeNotFound {
		t.Fatalf("old name still resolves: %v", err)
	}
	if e.vm("new").ID != vm.ID {
		t.Fatal("new name does not resolve")
	}
	e.run(e.m.Start(e.ctx, "new", true))
	e.run(e.m.Destroy(e.ctx, "new"))
	if byName, _ := e.m.ListTasks(e.ctx, "new"); len(byName) != 2 || byName[0].VMID != vm.ID {
		t.Fatalf("ListTasks by name: %+v", byName)
	}
	// The old name is free again; the new spec is used at start.
	e.create("old")
	e.run(e.m.Start(e.ctx, "new", false))
	if info := e.guestDomains()[0]; info.TotPages != (96<<20)/4096 || info.MaxPages != (128<<20)/4096 {
		t.Fatalf("domain built from stale spec: %+v", info)
	}
	e.close()
	e.open(0)
	if e.vm("new").Spec.MemoryStaticMax != 128<<20 || e.vm("old").ID == vm.ID {
		t.Fatal("update not persisted")
	}
}

func TestPruneTasks(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("p")
	tk := e.run(e.m.Start(e.ctx, vm.ID, false))
	e.m.pruneTasks(e.ctx, time.Now().Add(-time.Hour))
	if _, err := e.m.GetTask(e.ctx, tk.ID); err != nil {
		t.Fatalf("recent task pruned: %v", err)
	}
	e.m.pruneTasks(e.ctx, time.Now().Add(time.Hour))
	if _, err := e.m.GetTask(e.ctx, tk.ID); CodeOf(err) != CodeNotFound {
		t.Fatalf("old task kept: %v", err)
	}
	e.close()
	e.open(0)
	if tasks, _ := e.m.ListTasks(e.ctx, ""); len(tasks) != 0 {
		t.Fatalf("pruned tasks back after restart: %v", tasks)
	}
}

// FuzzValidateSpec feeds arbitrary API input through normalize and
// validateSpec: no panic, and an accepted spec satisfies the invariants.
func FuzzValidateSpec(f *testing.F) {
	f.Add("web-1", "", uint64(64<<20), uint64(0), uint64(0), uint32(1), uint32(0), 2, "xvda", "00:16:3e:00:00:01", "k", "v")
	f.Add("a", "2b1f0c55-1111-4222-8333-444455556666", uint64(4096), uint64(4096), uint64(4096), uint32(128), uint32(128), 3, "hdz", "fe:ff:ff:ff:ff:ff", "a/b", "")
	f.Add("", "x", uint64(1), uint64(2), uint64(3), uint32(0), uint32(9), 9, "", "zz", "../..", "\x00")
	f.Fuzz(func(t *testing.T, name, uuid string, smax, dmin, dmax uint64, vmax, vstart uint32, typ int, dev, mac, key, val string) {
		s := Spec{Name: name, UUID: uuid, MemoryStaticMax: smax, MemoryDynamicMin: dmin, MemoryDynamicMax: dmax,
			VCPUsMax: vmax, VCPUsAtStartup: vstart, Type: Type(typ),
			Disks: []Disk{{Device: dev, Path: "/x"}}, NICs: []NIC{{MAC: mac}},
			XenstoreData: map[string]string{key: val}, Platform: map[string]string{key: val}}
		n := normalize(cloneSpec(s))
		err := validateSpec(n, 1<<40)
		if err != nil {
			var de *Error
			if CodeOf(err) != CodeInvalidArgument || !strings.HasPrefix(errField(err, &de), "spec.") {
				t.Fatalf("error %v without a spec field", err)
			}
			return
		}
		if n.MemoryDynamicMin > n.MemoryDynamicMax || n.MemoryDynamicMax > n.MemoryStaticMax || n.MemoryStaticMax == 0 ||
			n.VCPUsAtStartup > n.VCPUsMax || n.VCPUsMax > MaxVCPUs || len(n.Name) > MaxNameLen || strings.Contains(key, "..") {
			t.Fatalf("accepted invalid spec %+v", n)
		}
	})
}

func errField(err error, de **Error) string {
	if e, ok := err.(*Error); ok {
		*de = e
		return e.Field
	}
	return ""
}

// blockingBuilder builds like EmptyBuilder, then blocks until released or
// cancelled: a build in progress.
type blockingBuilder struct {
	empty   EmptyBuilder
	started chan struct{}
	release chan struct{}
}

// on returns the builder for the env's hypervisor.
func (b blockingBuilder) on(hv xenctrl.Hypervisor) Builder {
	b.empty.Hypervisor = hv
	return b
}

func (b blockingBuilder) Build(ctx context.Context, d xenctrl.Domid, s Spec) (BuildResult, error) {
	res, err := b.empty.Build(ctx, d, s)
	if err != nil {
		return res, err
	}
	b.started <- struct{}{}
	select {
	case <-b.release:
		return res, nil
	case <-ctx.Done():
		return res, ctx.Err()
	}
}

func TestCancelRunningStartUndoesEverything(t *testing.T) {
	bb := blockingBuilder{started: make(chan struct{}, 1), release: make(chan struct{})}
	e := newEnv(t, envOpts{builder: bb.on})
	vm := e.create("slow")
	tk, err := e.m.Start(e.ctx, vm.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-bb.started:
	case <-time.After(30 * time.Second):
		t.Fatal("build never started")
	}
	if n := len(e.guestDomains()); n != 1 {
		t.Fatalf("%d domains while building", n)
	}
	if _, err := e.m.CancelTask(e.ctx, tk.ID); err != nil {
		t.Fatal(err)
	}
	got := e.wait(tk)
	if got.State != TaskCancelled || got.Err == nil || got.Err.Code != CodeCancelled {
		t.Fatalf("cancelled start: %s %+v", got.State, got.Err)
	}
	if v := e.vm(vm.ID); v.Power != Halted || v.Domid != 0 {
		t.Fatalf("VM after cancelled start: %+v", v)
	}
	if n := len(e.guestDomains()); n != 0 {
		t.Fatalf("%d domains left after a cancelled start", n)
	}
	if left := e.xsTree("/local/domain", "/vm", "/xenopsd-ng"); len(left) > 3 {
		t.Fatalf("xenstore nodes left: %v", left)
	}
	// Not stuck: the next start works.
	close(bb.release)
	e.run(e.m.Start(e.ctx, vm.ID, false))
}

// badKernelBuilder refuses every spec the way the real builder refuses a
// malformed kernel.
type badKernelBuilder struct{}

func (badKernelBuilder) Build(context.Context, xenctrl.Domid, Spec) (BuildResult, error) {
	return BuildResult{}, InvalidField("spec.kernel", "/boot/vmlinuz: kernel: truncated")
}

// A builder's InvalidArgument reaches the task with its code and field, and
// the failed start leaves no domain.
func TestBuilderErrorKeepsCodeAndField(t *testing.T) {
	e := newEnv(t, envOpts{builder: func(xenctrl.Hypervisor) Builder { return badKernelBuilder{} }})
	vm := e.create("badkernel")
	tk, err := e.m.Start(e.ctx, vm.ID, false)
	if err != nil {
		t.Fatal(err)
	}
	got := e.wait(tk)
	if got.State != TaskFailed || got.Err == nil || got.Err.Code != CodeInvalidArgument || got.Err.Field != "spec.kernel" {
		t.Fatalf("start with a bad kernel: %s %+v, want InvalidArgument on spec.kernel", got.State, got.Err)
	}
	if n := len(e.guestDomains()); n != 0 {
		t.Fatalf("%d domains left after a refused build", n)
	}
	if v := e.vm(vm.ID); v.Power != Halted {
		t.Fatalf("VM after a refused build: %s", v.Power)
	}
}
