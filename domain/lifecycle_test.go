package domain

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

func TestLifecycle(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("web-1")
	if vm.Power != Halted || !ValidUUID(vm.ID) || vm.Spec.MemoryDynamicMax != 64<<20 || vm.Spec.VCPUsAtStartup != 1 {
		t.Fatalf("created VM %+v", vm)
	}
	e.run(e.m.Start(e.ctx, "web-1", false))
	vm = e.vm(vm.ID)
	if vm.Power != Running || vm.Domid == 0 {
		t.Fatalf("after start: %v domid %d", vm.Power, vm.Domid)
	}
	info, err := e.hv.DomainInfo(e.ctx, xenctrl.Domid(vm.Domid))
	if err != nil || info.Handle != uuidHandle(vm.ID) || info.Paused || !info.HVM || info.TotPages != (64<<20)/4096 {
		t.Fatalf("domain info %+v, %v", info, err)
	}
	if ok, err := e.xs.IsDomainIntroduced(e.ctx, vm.Domid); err != nil || !ok {
		t.Fatalf("domain not introduced: %v %v", ok, err)
	}
	e.run(e.m.Pause(e.ctx, vm.ID))
	if info, _ := e.hv.DomainInfo(e.ctx, xenctrl.Domid(vm.Domid)); !info.Paused || e.vm(vm.ID).Power != Paused {
		t.Fatalf("after pause: info %+v vm %v", info, e.vm(vm.ID).Power)
	}
	e.run(e.m.Unpause(e.ctx, vm.ID))
	if info, _ := e.hv.DomainInfo(e.ctx, xenctrl.Domid(vm.Domid)); info.Paused || e.vm(vm.ID).Power != Running {
		t.Fatalf("after unpause: info %+v", info)
	}
	e.run(e.m.Shutdown(e.ctx, vm.ID, ShutdownOptions{Timeout: 30 * time.Second}))
	if got := e.vm(vm.ID); got.Power != Halted || got.Domid != 0 {
		t.Fatalf("after shutdown: %v domid %d", got.Power, got.Domid)
	}
	if n := len(e.guestDomains()); n != 0 {
		t.Fatalf("%d domains left after shutdown", n)
	}
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d2 := e.vm(vm.ID).Domid
	e.run(e.m.Destroy(e.ctx, vm.ID))
	if got := e.vm(vm.ID); got.Power != Halted {
		t.Fatalf("after destroy: %v", got.Power)
	}
	if n := len(e.guestDomains()); n != 0 {
		t.Fatalf("%d domains left after destroy", n)
	}
	if left := e.xsTree(domPath(xenctrl.Domid(d2)), vmPath(vm.ID), PrivatePath(vm.ID)); len(left) != 0 {
		t.Fatalf("xenstore nodes left after destroy: %v", left)
	}
	if err := e.m.DeleteVM(e.ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.GetVM(e.ctx, vm.ID); CodeOf(err) != CodeNotFound {
		t.Fatalf("get deleted VM: %v", err)
	}
	tasks, _ := e.m.ListTasks(e.ctx, vm.ID)
	var ops []string
	for _, tk := range tasks {
		ops = append(ops, tk.Op+":"+tk.State.String())
	}
	want := "start:Succeeded pause:Succeeded unpause:Succeeded shutdown:Succeeded start:Succeeded destroy:Succeeded"
	if strings.Join(ops, " ") != want {
		t.Fatalf("tasks %v, want %s", ops, want)
	}
}

func TestStartPausedThenUnpause(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("p")
	e.run(e.m.Start(e.ctx, vm.ID, true))
	got := e.vm(vm.ID)
	info, _ := e.hv.DomainInfo(e.ctx, xenctrl.Domid(got.Domid))
	if got.Power != Paused || !info.Paused {
		t.Fatalf("start paused: %v %+v", got.Power, info)
	}
	e.run(e.m.Unpause(e.ctx, vm.ID))
	info, _ = e.hv.DomainInfo(e.ctx, xenctrl.Domid(got.Domid))
	if e.vm(vm.ID).Power != Running || info.Paused {
		t.Fatalf("unpause: %+v", info)
	}
}

func TestXenstoreLayoutAndPermissions(t *testing.T) {
	e := newEnv(t, envOpts{noGuest: true})
	s := spec("layout")
	s.Type = TypeHVM
	s.VCPUsMax, s.VCPUsAtStartup = 4, 2
	s.Platform = map[string]string{"tsc_mode": "default"}
	s.XenstoreData = map[string]string{"vm-data/role": "db"}
	vm, err := e.m.CreateVM(e.ctx, s, "")
	if err != nil {
		t.Fatal(err)
	}
	e.run(e.m.Start(e.ctx, vm.ID, true))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	dom := domPath(d)
	for path, want := range map[string]string{
		dom + "/name": "layout", dom + "/domid": fmt.Sprint(d), dom + "/vm": "/vm/" + vm.ID,
		dom + "/memory/static-max": "65536", dom + "/memory/target": "65536",
		dom + "/cpu/1/availability": "online", dom + "/cpu/2/availability": "offline",
		dom + "/platform/tsc_mode": "default", dom + "/vm-data/role": "db",
		"/vm/" + vm.ID + "/uuid": vm.ID, "/vm/" + vm.ID + "/name": "layout",
		PrivatePath(vm.ID) + "/domid": fmt.Sprint(d),
	} {
		v, err := e.xs.Read(e.ctx, path)
		if err != nil || string(v) != want {
			t.Errorf("%s = %q, %v; want %q", path, v, err, want)
		}
	}
	// As the guest: read its tree, write only where a guest may.
	conn, err := e.srv.ConnectDomain(uint32(d))
	if err != nil {
		t.Fatal(err)
	}
	g := xenstore.NewClient(conn)
	defer g.Close()
	if _, err := g.Read(e.ctx, dom+"/name"); err != nil {
		t.Errorf("guest cannot read its name: %v", err)
	}
	for _, p := range []string{"/control/shutdown", "/control/feature-poweroff", "/control/feature-s3", "/data/x", "/drivers/linux", "/attr/os", "/error/e", "/device/suspend/event-channel"} {
		if err := g.Write(e.ctx, dom+p, []byte("1")); err != nil {
			t.Errorf("guest write %s: %v", p, err)
		}
	}
	for _, p := range []string{"/name", "/memory/target", "/vm", "/control/newnode", "/cpu/0/availability", "/domid"} {
		if err := g.Write(e.ctx, dom+p, []byte("x")); !errors.Is(err, syscall.EACCES) {
			t.Errorf("guest write %s: %v, want EACCES", p, err)
		}
	}
	for _, p := range []string{PrivatePath(vm.ID) + "/domid", "/vm/" + vm.ID + "/name"} {
		if err := g.Write(e.ctx, p, []byte("x")); !errors.Is(err, syscall.EACCES) {
			t.Errorf("guest write %s: %v, want EACCES", p, err)
		}
	}
	if _, err := g.Read(e.ctx, PrivatePath(vm.ID)+"/domid"); !errors.Is(err, syscall.EACCES) {
		t.Errorf("guest read of the toolstack subtree: %v, want EACCES", err)
	}
	e.run(e.m.Destroy(e.ctx, vm.ID))
	if left := e.xsTree(dom, vmPath(vm.ID), PrivatePath(vm.ID)); len(left) != 0 {
		t.Fatalf("left after destroy: %v", left)
	}
}

// snapshot captures everything bad input must not change.
type snapshot struct {
	head    uint64
	vms     []VM
	domains []xenctrl.DomainInfo
	xs      []string
}

func (e *env) snap() snapshot {
	vms, _, _ := e.m.ListVMs(e.ctx)
	doms := e.guestDomains()
	for i := range doms {
		doms[i].CPUTime = 0
	}
	return snapshot{head: e.st.Head(), vms: vms, domains: doms, xs: e.xsTree("/")}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t, envOpts{memory: 4 << 30})
	running := e.create("running")
	e.run(e.m.Start(e.ctx, running.ID, false))
	halted := e.create("halted")
	big, err := e.m.CreateVM(e.ctx, func() Spec { s := spec("big"); s.MemoryStaticMax = 3 << 30; return s }(), "")
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(*Spec)) Spec { s := spec("new-vm"); f(&s); return s }
	specCases := []struct {
		name  string
		spec  Spec
		code  Code
		field string
	}{
		{"empty name", mod(func(s *Spec) { s.Name = "" }), CodeInvalidArgument, "spec.name"},
		{"long name", mod(func(s *Spec) { s.Name = strings.Repeat("a", 65) }), CodeInvalidArgument, "spec.name"},
		{"bad chars", mod(func(s *Spec) { s.Name = "a/b" }), CodeInvalidArgument, "spec.name"},
		{"leading dash", mod(func(s *Spec) { s.Name = "-x" }), CodeInvalidArgument, "spec.name"},
		{"duplicate name", mod(func(s *Spec) { s.Name = "halted" }), CodeAlreadyExists, "spec.name"},
		{"uppercase uuid", mod(func(s *Spec) { s.UUID = "ABCDEF01-2345-4678-9abc-def012345678" }), CodeInvalidArgument, "spec.uuid"},
		{"short uuid", mod(func(s *Spec) { s.UUID = "1234" }), CodeInvalidArgument, "spec.uuid"},
		{"nil uuid", mod(func(s *Spec) { s.UUID = "00000000-0000-0000-0000-000000000000" }), CodeInvalidArgument, "spec.uuid"},
		{"duplicate uuid", mod(func(s *Spec) { s.UUID = halted.ID }), CodeAlreadyExists, "spec.uuid"},
		{"memory 0", mod(func(s *Spec) { s.MemoryStaticMax = 0 }), CodeInvalidArgument, "spec.memory_static_max"},
		{"memory above host", mod(func(s *Spec) { s.MemoryStaticMax = 8 << 30 }), CodeInvalidArgument, "spec.memory_static_max"},
		{"memory unaligned", mod(func(s *Spec) { s.MemoryStaticMax = 1000 }), CodeInvalidArgument, "spec.memory_static_max"},
		{"dynamic_min > static_max", mod(func(s *Spec) { s.MemoryDynamicMin = 128 << 20 }), CodeInvalidArgument, "spec.memory_dynamic_min"},
		{"dynamic_max > static_max", mod(func(s *Spec) { s.MemoryDynamicMax = 128 << 20 }), CodeInvalidArgument, "spec.memory_dynamic_max"},
		{"vcpus 0", mod(func(s *Spec) { s.VCPUsMax = 0 }), CodeInvalidArgument, "spec.vcpus_max"},
		{"vcpus 129", mod(func(s *Spec) { s.VCPUsMax = 129 }), CodeInvalidArgument, "spec.vcpus_max"},
		{"at_startup > max", mod(func(s *Spec) { s.VCPUsMax, s.VCPUsAtStartup = 2, 3 }), CodeInvalidArgument, "spec.vcpus_at_startup"},
		{"bad type", mod(func(s *Spec) { s.Type = 9 }), CodeInvalidArgument, "spec.type"},
		{"bad action", mod(func(s *Spec) { s.OnCrash = 7 }), CodeInvalidArgument, "spec.on_crash"},
		{"relative kernel", mod(func(s *Spec) { s.Kernel = "vmlinuz" }), CodeInvalidArgument, "spec.kernel"},
		{"bad platform key", mod(func(s *Spec) { s.Platform = map[string]string{"a/b": "1"} }), CodeInvalidArgument, "spec.platform"},
		{"bad xenstore key", mod(func(s *Spec) { s.XenstoreData = map[string]string{"../x": "1"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"name is a uuid", mod(func(s *Spec) { s.Name = "2b1f0c55-1111-4222-8333-444455556666" }), CodeInvalidArgument, "spec.name"},
		{"name is an upper-case uuid", mod(func(s *Spec) { s.Name = "2B1F0C55-1111-4222-8333-444455556666" }), CodeInvalidArgument, "spec.name"},
		{"unknown platform key", mod(func(s *Spec) { s.Platform = map[string]string{"viridian": "true"} }), CodeInvalidArgument, "spec.platform"},
		{"bad tsc_mode", mod(func(s *Spec) { s.Platform = map[string]string{"tsc_mode": "0"} }), CodeInvalidArgument, "spec.platform[tsc_mode]"},
		{"xenstore control/shutdown", mod(func(s *Spec) { s.XenstoreData = map[string]string{"control/shutdown": "poweroff"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore vm", mod(func(s *Spec) { s.XenstoreData = map[string]string{"vm": "/vm/x"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore name", mod(func(s *Spec) { s.XenstoreData = map[string]string{"name": "x"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore ring-ref", mod(func(s *Spec) { s.XenstoreData = map[string]string{"store/ring-ref": "1"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore data itself", mod(func(s *Spec) { s.XenstoreData = map[string]string{"data": "x"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore data/ prefix trick", mod(func(s *Spec) { s.XenstoreData = map[string]string{"data-x/a": "x"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore key with a dot", mod(func(s *Spec) { s.XenstoreData = map[string]string{"vm-data/a.b": "1"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore key with //", mod(func(s *Spec) { s.XenstoreData = map[string]string{"vm-data//a": "1"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore key with trailing /", mod(func(s *Spec) { s.XenstoreData = map[string]string{"vm-data/a/": "1"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore absolute key", mod(func(s *Spec) { s.XenstoreData = map[string]string{"/vm-data/a": "1"} }), CodeInvalidArgument, "spec.xenstore_data"},
		{"xenstore value too long", mod(func(s *Spec) { s.XenstoreData = map[string]string{"vm-data/a": strings.Repeat("v", 2049)} }), CodeInvalidArgument, "spec.xenstore_data[vm-data/a]"},
		{"bad disk device", mod(func(s *Spec) { s.Disks = []Disk{{Device: "vda", Path: "/d"}} }), CodeInvalidArgument, "spec.disks[0].device"},
		{"duplicate disk", mod(func(s *Spec) { s.Disks = []Disk{{Device: "xvda", Path: "/a"}, {Device: "xvda", Path: "/b"}} }), CodeInvalidArgument, "spec.disks[1].device"},
		{"bad mac", mod(func(s *Spec) { s.NICs = []NIC{{MAC: "00:16:3e:zz:00:01"}} }), CodeInvalidArgument, "spec.nics[0].mac"},
		{"multicast mac", mod(func(s *Spec) { s.NICs = []NIC{{MAC: "01:16:3e:00:00:01"}} }), CodeInvalidArgument, "spec.nics[0].mac"},
		{"duplicate mac", mod(func(s *Spec) { s.NICs = []NIC{{MAC: "00:16:3e:00:00:01"}, {MAC: "00:16:3E:00:00:01"}} }), CodeInvalidArgument, "spec.nics[1].mac"},
	}
	before := e.snap()
	check := func(name string, err error, want Code, field string) {
		t.Helper()
		var de *Error
		if !errors.As(err, &de) || de.Code != want || (field != "" && de.Field != field) {
			t.Errorf("%s: got %v (code %s), want %s on %q", name, err, code(err), want, field)
		}
		if after := e.snap(); !reflect.DeepEqual(before, after) {
			t.Errorf("%s changed state: head %d->%d, %d->%d VMs, %d->%d domains, %d->%d xenstore nodes",
				name, before.head, after.head, len(before.vms), len(after.vms), len(before.domains), len(after.domains), len(before.xs), len(after.xs))
		}
	}
	for _, c := range specCases {
		_, err := e.m.CreateVM(e.ctx, c.spec, "")
		check("create/"+c.name, err, c.code, c.field)
		if c.code == CodeInvalidArgument {
			_, err = e.m.UpdateVM(e.ctx, halted.ID, c.spec)
			check("update/"+c.name, err, c.code, c.field)
		}
	}
	_, err = e.m.CreateVM(e.ctx, spec("x"), "bad request id!")
	check("bad request id", err, CodeInvalidArgument, "request_id")
	calls := []struct {
		name  string
		call  func() error
		code  Code
		field string
	}{
		{"pause halted", func() error { _, err := e.m.Pause(e.ctx, halted.ID); return err }, CodeFailedPrecondition, ""},
		{"unpause running", func() error { _, err := e.m.Unpause(e.ctx, running.ID); return err }, CodeFailedPrecondition, ""},
		{"start running", func() error { _, err := e.m.Start(e.ctx, running.ID, false); return err }, CodeFailedPrecondition, ""},
		{"destroy halted", func() error { _, err := e.m.Destroy(e.ctx, halted.ID); return err }, CodeFailedPrecondition, ""},
		{"shutdown halted", func() error { _, err := e.m.Shutdown(e.ctx, halted.ID, ShutdownOptions{}); return err }, CodeFailedPrecondition, ""},
		{"reboot halted", func() error { _, err := e.m.Reboot(e.ctx, halted.ID, ShutdownOptions{}); return err }, CodeFailedPrecondition, ""},
		{"delete running", func() error { return e.m.DeleteVM(e.ctx, running.ID) }, CodeFailedPrecondition, ""},
		{"negative timeout", func() error {
			_, err := e.m.Shutdown(e.ctx, running.ID, ShutdownOptions{Timeout: -time.Second})
			return err
		}, CodeInvalidArgument, "timeout"},
		{"unknown vm get", func() error { _, err := e.m.GetVM(e.ctx, "nope"); return err }, CodeNotFound, "id"},
		{"unknown vm start", func() error { _, err := e.m.Start(e.ctx, "2b1f0c55-1111-4222-8333-444455556666", false); return err }, CodeNotFound, "id"},
		{"unknown vm delete", func() error { return e.m.DeleteVM(e.ctx, "nope") }, CodeNotFound, "id"},
		{"unknown vm update", func() error { _, err := e.m.UpdateVM(e.ctx, "nope", spec("z")); return err }, CodeNotFound, "id"},
		{"empty ref", func() error { _, err := e.m.GetVM(e.ctx, ""); return err }, CodeInvalidArgument, "id"},
		{"unknown task", func() error { _, err := e.m.GetTask(e.ctx, "nope"); return err }, CodeNotFound, "id"},
		{"cancel unknown task", func() error { _, err := e.m.CancelTask(e.ctx, "nope"); return err }, CodeNotFound, "id"},
		{"wait unknown task", func() error { _, err := e.m.WaitTask(e.ctx, "nope"); return err }, CodeNotFound, "id"},
		{"watch beyond head", func() error { return e.m.Watch(e.ctx, e.st.Head()+5, WatchOptions{}, func(Event) error { return nil }) }, CodeInvalidArgument, "after_revision"},
		{"update changes uuid", func() error {
			s := spec("halted")
			s.UUID = running.ID
			_, err := e.m.UpdateVM(e.ctx, halted.ID, s)
			return err
		}, CodeInvalidArgument, "spec.uuid"},
		{"rename onto another", func() error { _, err := e.m.UpdateVM(e.ctx, halted.ID, spec("running")); return err }, CodeAlreadyExists, "spec.name"},
		{"start beyond free memory", func() error { _, err := e.m.Start(e.ctx, big.ID, false); return err }, CodeResourceExhausted, ""},
	}
	for _, c := range calls {
		before = e.snap()
		check(c.name, c.call(), c.code, c.field)
	}
}

func TestResourceExhaustedLeavesNothing(t *testing.T) {
	// Two VMs that each fit but not together: the early check passes for
	// both, the second build hits ENOMEM in populate_physmap.
	e := newEnv(t, envOpts{memory: 4 << 30})
	host, _ := e.m.Host(e.ctx)
	size := (host.FreeMemory * 6 / 10) &^ (1<<20 - 1)
	var ids []string
	for _, n := range []string{"a", "b"} {
		s := spec(n)
		s.MemoryStaticMax = size
		vm, err := e.m.CreateVM(e.ctx, s, "")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, vm.ID)
	}
	t1, err1 := e.m.Start(e.ctx, ids[0], false)
	t2, err2 := e.m.Start(e.ctx, ids[1], false)
	if err1 != nil || err2 != nil {
		t.Fatalf("submit: %v %v", err1, err2)
	}
	r1, r2 := e.wait(t1), e.wait(t2)
	ok, failed := r1, r2
	if r1.State != TaskSucceeded {
		ok, failed = r2, r1
	}
	if ok.State != TaskSucceeded || failed.State != TaskFailed || failed.Err.Code != CodeResourceExhausted {
		t.Fatalf("tasks: %s %v / %s %v", r1.State, r1.Err, r2.State, r2.Err)
	}
	if n := len(e.guestDomains()); n != 1 {
		t.Fatalf("%d domains, want 1 (no half-built one)", n)
	}
	if vm := e.vm(failed.VMID); vm.Power != Halted || vm.Domid != 0 {
		t.Fatalf("failed VM: %+v", vm)
	}
	okVM := e.vm(ok.VMID)
	e.run(e.m.Destroy(e.ctx, okVM.ID))
	if left := e.xsTree("/local/domain", "/vm", "/xenopsd-ng"); len(left) != 3 {
		t.Fatalf("xenstore nodes left: %v", left)
	}
}

func TestGuestInitiated(t *testing.T) {
	e := newEnv(t, envOpts{})
	cases := []struct {
		name   string
		set    func(*Spec)
		reason xenctrl.ShutdownReason
		power  PowerState
		newDom bool
	}{
		{"poweroff-destroy", func(*Spec) {}, xenctrl.ShutdownPoweroff, Halted, false},
		{"crash-destroy", func(*Spec) {}, xenctrl.ShutdownCrash, Halted, false},
		{"crash-preserve", func(s *Spec) { s.OnCrash = ActionPreserve }, xenctrl.ShutdownCrash, Paused, false},
		{"reboot-restart", func(*Spec) {}, xenctrl.ShutdownReboot, Running, true},
		{"crash-restart", func(s *Spec) { s.OnCrash = ActionRestart }, xenctrl.ShutdownCrash, Running, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := spec(c.name)
			c.set(&s)
			vm, err := e.m.CreateVM(e.ctx, s, "")
			if err != nil {
				t.Fatal(err)
			}
			e.run(e.m.Start(e.ctx, vm.ID, false))
			d := e.vm(vm.ID).Domid
			gen := e.vm(vm.ID).Generation
			rev0 := e.st.Head()
			if err := e.hv.GuestShutdown(e.ctx, xenctrl.Domid(d), c.reason); err != nil {
				t.Fatal(err)
			}
			e.eventually("VM reacts to guest "+c.reason.String(), func() bool {
				got := e.vm(vm.ID)
				return got.Generation > gen && got.Power == c.power && (!c.newDom || got.Domid != d) && (c.power != Halted || got.Domid == 0)
			})
			got := e.vm(vm.ID)
			switch c.power {
			case Halted:
				if len(e.xsTree(domPath(xenctrl.Domid(d)))) != 0 {
					t.Fatal("xenstore nodes left")
				}
			case Paused:
				info, err := e.hv.DomainInfo(e.ctx, xenctrl.Domid(d))
				if err != nil || !info.Shutdown || got.Problem == "" {
					t.Fatalf("preserved domain: %+v %v problem %q", info, err, got.Problem)
				}
				// Queued: it fails at run time. The record says Paused a
				// moment before the operation that wrote it has ended, and
				// until then a submit is checked against the state the
				// start projected (Running): retry the submit until then.
				e.eventually("unpause of the preserved VM accepted", func() bool {
					_, err := e.m.Unpause(e.ctx, vm.ID)
					return err == nil
				})
				e.run(e.m.Destroy(e.ctx, vm.ID))
			case Running:
				if _, err := e.hv.DomainInfo(e.ctx, xenctrl.Domid(d)); !xenctrl.IsNoDomain(err) && got.Domid != d {
					t.Fatalf("old domain %d still there: %v", d, err)
				}
				// A restart is not a halt: watchers never see the VM Halted.
				col := &collector{}
				e.watchUntil(col, rev0, e.st.Head())
				for _, ev := range col.evs {
					if ev.VM != nil && ev.VM.ID == vm.ID && ev.VM.Power != Running {
						t.Fatalf("during the restart the VM was %s (revision %d)", ev.VM.Power, ev.Revision)
					}
				}
				e.run(e.m.Destroy(e.ctx, vm.ID))
			}
		})
	}
	if n := len(e.guestDomains()); n != 0 {
		t.Fatalf("%d domains left", n)
	}
}

func TestShutdownIgnoredAndForce(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("stubborn")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := xenctrl.Domid(e.vm(vm.ID).Domid)
	if err := e.hv.SetGuestBehaviour(e.ctx, d, simIgnore()); err != nil {
		t.Fatal(err)
	}
	tk, err := e.m.Shutdown(e.ctx, vm.ID, ShutdownOptions{Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.wait(tk); got.State != TaskFailed || got.Err.Code != CodeDeadlineExceeded {
		t.Fatalf("unforced shutdown of a stubborn guest: %s %v", got.State, got.Err)
	}
	if got := e.vm(vm.ID); got.Power != Running {
		t.Fatalf("after failed shutdown: %v", got.Power)
	}
	e.run(e.m.Reboot(e.ctx, vm.ID, ShutdownOptions{Timeout: 200 * time.Millisecond, Force: true}))
	d2 := xenctrl.Domid(e.vm(vm.ID).Domid)
	if e.vm(vm.ID).Power != Running || d2 == d {
		t.Fatalf("hard reboot: %+v", e.vm(vm.ID))
	}
	e.hv.SetGuestBehaviour(e.ctx, d2, simIgnore())
	e.run(e.m.Shutdown(e.ctx, vm.ID, ShutdownOptions{Timeout: 200 * time.Millisecond, Force: true}))
	if got := e.vm(vm.ID); got.Power != Halted || len(e.guestDomains()) != 0 {
		t.Fatalf("forced shutdown: %v, %d domains", got.Power, len(e.guestDomains()))
	}
}

func TestCleanReboot(t *testing.T) {
	e := newEnv(t, envOpts{})
	vm := e.create("rb")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	d := e.vm(vm.ID).Domid
	e.run(e.m.Reboot(e.ctx, vm.ID, ShutdownOptions{Timeout: 30 * time.Second}))
	got := e.vm(vm.ID)
	if got.Power != Running || got.Domid == d || len(e.guestDomains()) != 1 {
		t.Fatalf("after reboot: %+v domains %d", got, len(e.guestDomains()))
	}
}

func TestCancelQueuedTask(t *testing.T) {
	e := newEnv(t, envOpts{workers: 1})
	vm := e.create("c")
	e.run(e.m.Start(e.ctx, vm.ID, false))
	e.hv.SetGuestBehaviour(e.ctx, xenctrl.Domid(e.vm(vm.ID).Domid), simIgnore())
	// A shutdown that waits, then a destroy queued behind it.
	sd, err := e.m.Shutdown(e.ctx, vm.ID, ShutdownOptions{Timeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ds, err := e.m.Destroy(e.ctx, vm.ID)
	if err != nil {
		t.Fatal(err)
	}
	got, err := e.m.CancelTask(e.ctx, ds.ID)
	if err != nil || got.State != TaskCancelled {
		t.Fatalf("cancel queued: %+v %v", got, err)
	}
	if _, err := e.m.CancelTask(e.ctx, sd.ID); err != nil {
		t.Fatal(err)
	}
	if got := e.wait(sd); got.State != TaskCancelled {
		t.Fatalf("cancel running shutdown: %s %v", got.State, got.Err)
	}
	if _, err := e.m.CancelTask(e.ctx, sd.ID); CodeOf(err) != CodeFailedPrecondition {
		t.Fatalf("cancel finished task: %v", err)
	}
	if e.vm(vm.ID).Power != Running {
		t.Fatal("cancelled shutdown changed the VM")
	}
}

func TestIdempotentCreate(t *testing.T) {
	e := newEnv(t, envOpts{})
	a, err := e.m.CreateVM(e.ctx, spec("idem"), "req-1")
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.m.CreateVM(e.ctx, spec("idem"), "req-1")
	if err != nil || b.ID != a.ID {
		t.Fatalf("retry: %v %v", b.ID, err)
	}
	e.close()
	e.open(0)
	c, err := e.m.CreateVM(e.ctx, spec("idem"), "req-1")
	if err != nil || c.ID != a.ID {
		t.Fatalf("retry after restart: %v %v", c.ID, err)
	}
	vms, _, _ := e.m.ListVMs(e.ctx)
	if len(vms) != 1 {
		t.Fatalf("%d VMs", len(vms))
	}
	if _, err := e.m.CreateVM(e.ctx, spec("idem"), "req-2"); CodeOf(err) != CodeAlreadyExists {
		t.Fatalf("new request, same name: %v", err)
	}
}

func simIgnore() simBehaviour { return simBehaviour{IgnoreShutdownRequests: true} }

var _ = context.Background

// TestStartRefusesDevices: disks and NICs are recorded but not plugged yet,
// so a VM that has them is not started without them: the start is refused
// naming the field, and nothing is built.
// TestStartRefusesDevices: a manager without a device backend cannot plug.
func TestStartRefusesDevices(t *testing.T) {
	e := newEnv(t, envOpts{})
	for _, c := range []struct {
		field string
		mod   func(*Spec)
	}{
		{"spec.disks", func(s *Spec) { s.Disks = []Disk{{Device: "xvda", Path: "/dev/null"}} }},
		{"spec.nics", func(s *Spec) { s.NICs = []NIC{{MAC: "00:16:3e:00:00:01"}} }},
	} {
		s := spec("dev-" + c.field[5:])
		c.mod(&s)
		vm, err := e.m.CreateVM(e.ctx, s, "")
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.m.Start(e.ctx, vm.ID, false)
		var de *Error
		if !errors.As(err, &de) || de.Code != CodeFailedPrecondition || de.Field != c.field {
			t.Errorf("start with %s: %v, want FailedPrecondition on %s", c.field, err, c.field)
		}
		if got, _ := e.m.GetVM(e.ctx, vm.ID); got.Power != Halted || got.Domid != 0 {
			t.Errorf("after the refused start: %+v", got)
		}
	}
	if n := len(e.guestDomains()); n != 0 {
		t.Errorf("%d domains after refused starts", n)
	}
}
