package service

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/store"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// realManager runs the real core on an in-process sim host with 1 GiB of
// memory and returns it with the sim host's client; all is stopped at cleanup.
func realManager(t testing.TB) (*domain.Manager, *simhost.Client) {
	t.Helper()
	return realManagerWith(t, nil)
}

// realManagerWith is realManager with the core's builder made by newBuilder
// for the sim host (nil: default).
func realManagerWith(t testing.TB, newBuilder func(xenctrl.Hypervisor) domain.Builder) (*domain.Manager, *simhost.Client) {
	t.Helper()
	dir := t.TempDir()
	simDir := filepath.Join(dir, "sim")
	ctx, cancel := context.WithCancel(context.Background())
	hostDone := make(chan error, 1)
	go func() {
		hostDone <- simhost.Run(ctx, simhost.Config{Dir: simDir, TotalMemory: 1 << 30, NrCPUs: 4, IdleTimeout: -1})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-hostDone; err != nil && ctx.Err() == nil {
			t.Errorf("sim host: %v", err)
		}
	})
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	var hc *simhost.Client
	for i := 0; hc == nil; i++ {
		c, err := simhost.Dial(dctx, simDir)
		switch {
		case err == nil:
			hc = c
		case i == 1000:
			t.Fatalf("sim host does not answer: %v", err)
		default:
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Cleanup(func() { hc.Close() })
	xs, err := xenstore.Dial(dctx, hc.XenstoredPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { xs.Close() })
	st, err := store.Open(filepath.Join(dir, "db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	devs := devices.NewPlugger(xs, hc, nil)
	devs.SetWaits(2*time.Second, 2*time.Second) // within FuzzVMService's bound on a call
	m, err := domain.New(dctx, domain.Config{Hypervisor: hc, Xenstore: xs, Store: st, Workers: 4, Builder: builderFor(newBuilder, hc), Devices: devs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		m.Close(cctx)
	})
	return m, hc
}

func goodSpec(name string, mem uint64) *pb.VMSpec {
	return &pb.VMSpec{Name: name, Type: pb.DomainType_DOMAIN_TYPE_PVH, MemoryStaticMax: mem,
		MemoryDynamicMin: mem, MemoryDynamicMax: mem, VcpusMax: 1, VcpusAtStartup: 1}
}

// TestRealManagerErrors drives the real core through the API with bad input
// and illegal transitions: each gets the right code and field, and changes
// nothing in the store (same VMs, same event revision) or the hypervisor.
func TestRealManagerErrors(t *testing.T) {
	m, hc := realManager(t)
	c := serve(t, m, Options{})
	ctx := ctxT(t)
	halted, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: goodSpec("halted", 128<<20)})
	if err != nil {
		t.Fatal(err)
	}
	running, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: goodSpec("running", 128<<20)})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := c.vm.StartVM(ctx, &pb.StartVMRequest{Id: "running", Wait: true}); err != nil || r.Task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("start: %v %v", r, err)
	}
	spec := func(edit func(*pb.VMSpec)) *pb.VMSpec {
		s := goodSpec("new", 128<<20)
		edit(s)
		return s
	}
	tests := []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"empty name", func() error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: spec(func(s *pb.VMSpec) { s.Name = "" })})
			return err
		}, codes.InvalidArgument, "spec.name"},
		{"bad uuid", func() error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: spec(func(s *pb.VMSpec) { s.Uuid = "not-a-uuid" })})
			return err
		}, codes.InvalidArgument, "spec.uuid"},
		{"zero memory", func() error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: spec(func(s *pb.VMSpec) {
				s.MemoryStaticMax, s.MemoryDynamicMin, s.MemoryDynamicMax = 0, 0, 0
			})})
			return err
		}, codes.InvalidArgument, "spec.memory_static_max"},
		{"memory above host", func() error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: goodSpec("big", 2<<30)})
			return err
		}, codes.InvalidArgument, "spec.memory_static_max"},
		{"dynamic_max above static_max", func() error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: spec(func(s *pb.VMSpec) { s.MemoryDynamicMax = 256 << 20 })})
			return err
		}, codes.InvalidArgument, "spec.memory_dynamic_max"},
		{"zero vcpus", func() error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: spec(func(s *pb.VMSpec) { s.VcpusMax = 0 })})
			return err
		}, codes.InvalidArgument, "spec.vcpus_max"},
		{"bad nic mac", func() error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: spec(func(s *pb.VMSpec) { s.Nics = []*pb.NIC{{Mac: "zz"}} })})
			return err
		}, codes.InvalidArgument, "spec.nics[0].mac"},
		{"unknown enum (API layer)", func() error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: spec(func(s *pb.VMSpec) { s.OnReboot = 17 })})
			return err
		}, codes.InvalidArgument, "spec.on_reboot"},
		{"duplicate name", func() error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: goodSpec("halted", 128<<20)})
			return err
		}, codes.AlreadyExists, ""},
		{"unknown vm", func() error {
			_, err := c.vm.GetVM(ctx, &pb.GetVMRequest{Id: "nobody"})
			return err
		}, codes.NotFound, ""},
		{"unknown task", func() error {
			_, err := c.task.GetTask(ctx, &pb.GetTaskRequest{Id: "nothing"})
			return err
		}, codes.NotFound, ""},
		{"pause a halted vm", func() error {
			_, err := c.vm.PauseVM(ctx, &pb.PauseVMRequest{Id: halted.Vm.Id})
			return err
		}, codes.FailedPrecondition, ""},
		{"delete a running vm", func() error {
			_, err := c.vm.DeleteVM(ctx, &pb.DeleteVMRequest{Id: running.Vm.Id})
			return err
		}, codes.FailedPrecondition, ""},
		{"start a running vm", func() error {
			_, err := c.vm.StartVM(ctx, &pb.StartVMRequest{Id: "running"})
			return err
		}, codes.FailedPrecondition, ""},
		{"negative timeout", func() error {
			_, err := c.vm.ShutdownVM(ctx, &pb.ShutdownVMRequest{Id: "running", Timeout: durationpb.New(-time.Second)})
			return err
		}, codes.InvalidArgument, "timeout"},
	}
	before, rev, err := m.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	domsBefore, err := hc.ListDomains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			code, field, _ := details(t, err)
			if code != tt.code || field != tt.field {
				t.Errorf("%v (field %q), want %v field %q", err, field, tt.code, tt.field)
			}
		})
	}
	after, rev2, err := m.ListVMs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	domsAfter, err := hc.ListDomains(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) || rev2 != rev || len(domsAfter) != len(domsBefore) {
		t.Errorf("rejected calls changed state: %d->%d VMs, revision %d->%d, %d->%d domains",
			len(before), len(after), rev, rev2, len(domsBefore), len(domsAfter))
	}
}

// TestRealManagerHostMemory: a start the host has no memory for is a FAILED
// task with RESOURCE_EXHAUSTED, and the VM stays Halted.
func TestRealManagerHostMemory(t *testing.T) {
	m, _ := realManager(t)
	c := serve(t, m, Options{})
	ctx := ctxT(t)
	for _, n := range []string{"a", "b"} {
		if _, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: goodSpec(n, 640<<20)}); err != nil {
			t.Fatal(err)
		}
	}
	if r, err := c.vm.StartVM(ctx, &pb.StartVMRequest{Id: "a", Wait: true}); err != nil || r.Task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("start a: %v %v", r, err)
	}
	r, err := c.vm.StartVM(ctx, &pb.StartVMRequest{Id: "b", Wait: true})
	if err != nil {
		// The core may also refuse up front; both must say RESOURCE_EXHAUSTED.
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("start b: %v", err)
		}
	} else if r.Task.State != pb.TaskState_TASK_STATE_FAILED || r.Task.Error.GetCode() != "RESOURCE_EXHAUSTED" {
		t.Fatalf("start b: task %v", r.Task)
	}
	g, err := c.vm.GetVM(ctx, &pb.GetVMRequest{Id: "b"})
	if err != nil || g.Vm.PowerState != pb.PowerState_POWER_STATE_HALTED || g.Vm.Domid != 0 {
		t.Errorf("b after failed start: %v %v", g, err)
	}
	h, err := c.host.GetHost(ctx, &pb.GetHostRequest{})
	if err != nil || h.Host.TotalMemoryBytes != 1<<30 || h.Host.FreeMemoryBytes >= 1<<30-640<<20+1 {
		t.Errorf("host after one 640 MiB VM: %v %v", h, err)
	}
}

func builderFor(newBuilder func(xenctrl.Hypervisor) domain.Builder, hv xenctrl.Hypervisor) domain.Builder {
	if newBuilder == nil {
		return nil
	}
	return newBuilder(hv)
}
