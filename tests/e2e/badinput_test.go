package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// TestBadInput sends invalid requests over gRPC and the CLI and checks the
// canonical code, the field named for INVALID_ARGUMENT, and that nothing
// changed: the same VM records (generations included), the same event
// revision and the same domains on the host.
func TestBadInput(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	simc := d.Sim()
	c := newAPI(d.Conn())
	ctx := testCtx(t, 3*time.Minute)

	// Fixtures: one halted, one running VM.
	for _, name := range []string{"halted1", "running1"} {
		if _, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec(name, 64<<20)}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: "running1", Wait: true})
	mustSucceed(t, "start running1", r.GetTask(), err)
	host, err := c.host.GetHost(ctx, &apiv1.GetHostRequest{})
	if err != nil {
		t.Fatal(err)
	}
	total := host.GetHost().GetTotalMemoryBytes()
	halted1 := cliVM(t, d, "halted1")

	mod := func(f func(s *apiv1.VMSpec)) *apiv1.VMSpec {
		s := spec("fresh", 64<<20)
		f(s)
		return s
	}
	create := func(s *apiv1.VMSpec) func(context.Context) error {
		return func(ctx context.Context) error {
			_, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: s})
			return err
		}
	}
	const unknown = "00000000-0000-4000-8000-00000000dead"
	cases := []struct {
		name  string
		call  func(context.Context) error
		code  codes.Code
		field string
	}{
		{"create: no spec", func(ctx context.Context) error {
			_, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{})
			return err
		}, codes.InvalidArgument, "spec"},
		{"create: empty name", create(mod(func(s *apiv1.VMSpec) { s.Name = "" })), codes.InvalidArgument, "spec.name"},
		{"create: name with control characters", create(mod(func(s *apiv1.VMSpec) { s.Name = "bad\nname" })), codes.InvalidArgument, "spec.name"},
		{"create: name too long", create(mod(func(s *apiv1.VMSpec) { s.Name = strings.Repeat("n", 4096) })), codes.InvalidArgument, "spec.name"},
		{"create: name taken", create(mod(func(s *apiv1.VMSpec) { s.Name = "halted1" })), codes.AlreadyExists, ""},
		{"create: bad uuid", create(mod(func(s *apiv1.VMSpec) { s.Uuid = "not-a-uuid" })), codes.InvalidArgument, "spec.uuid"},
		{"create: upper-case uuid", create(mod(func(s *apiv1.VMSpec) { s.Uuid = "ABCDEF01-2345-4678-89AB-CDEF01234567" })), codes.InvalidArgument, "spec.uuid"},
		{"create: uuid taken", create(mod(func(s *apiv1.VMSpec) { s.Uuid = halted1.GetId() })), codes.AlreadyExists, ""},
		{"create: unknown type", create(mod(func(s *apiv1.VMSpec) { s.Type = 42 })), codes.InvalidArgument, "spec.type"},
		{"create: memory 0", create(mod(func(s *apiv1.VMSpec) {
			s.MemoryStaticMax, s.MemoryDynamicMin, s.MemoryDynamicMax = 0, 0, 0
		})), codes.InvalidArgument, "spec.memory_static_max"},
		{"create: memory above the host", create(mod(func(s *apiv1.VMSpec) {
			s.MemoryStaticMax, s.MemoryDynamicMin, s.MemoryDynamicMax = 2*total, 2*total, 2*total
		})), codes.InvalidArgument, "spec.memory_static_max"},
		{"create: memory not page-aligned", create(mod(func(s *apiv1.VMSpec) {
			s.MemoryStaticMax, s.MemoryDynamicMin, s.MemoryDynamicMax = 1<<20+1, 1<<20+1, 1<<20+1
		})), codes.InvalidArgument, "spec.memory_static_max"},
		{"create: name with a slash", create(mod(func(s *apiv1.VMSpec) { s.Name = "a/b" })), codes.InvalidArgument, "spec.name"},
		{"create: dynamic_min > static_max", create(mod(func(s *apiv1.VMSpec) { s.MemoryDynamicMin = s.MemoryStaticMax + 4096 })), codes.InvalidArgument, "spec.memory_dynamic_min"},
		{"create: dynamic_max > static_max", create(mod(func(s *apiv1.VMSpec) { s.MemoryDynamicMax = s.MemoryStaticMax * 2 })), codes.InvalidArgument, "spec.memory_dynamic_max"},
		{"create: dynamic_min > dynamic_max", create(mod(func(s *apiv1.VMSpec) { s.MemoryDynamicMax = s.MemoryDynamicMin / 2 })), codes.InvalidArgument, "spec.memory_dynamic_min"},
		{"create: vcpus 0", create(mod(func(s *apiv1.VMSpec) { s.VcpusMax, s.VcpusAtStartup = 0, 0 })), codes.InvalidArgument, "spec.vcpus_max"},
		{"create: vcpus above the limit", create(mod(func(s *apiv1.VMSpec) { s.VcpusMax, s.VcpusAtStartup = 100000, 1 })), codes.InvalidArgument, "spec.vcpus_max"},
		{"create: vcpus_at_startup > vcpus_max", create(mod(func(s *apiv1.VMSpec) { s.VcpusMax, s.VcpusAtStartup = 2, 4 })), codes.InvalidArgument, "spec.vcpus_at_startup"},
		{"create: bad NIC mac", create(mod(func(s *apiv1.VMSpec) { s.Nics = []*apiv1.NIC{{Mac: "zz:16:3e:00:00:01"}} })), codes.InvalidArgument, "spec.nics[0].mac"},
		{"create: disk without device", create(mod(func(s *apiv1.VMSpec) {
			s.Disks = []*apiv1.Disk{{Device: "xvda", Path: "/dev/null", Mode: apiv1.DiskMode_DISK_MODE_RW}, {Path: "/dev/null"}}
		})), codes.InvalidArgument, "spec.disks[1].device"},

		{"get: unknown id", func(ctx context.Context) error {
			_, err := c.vm.GetVM(ctx, &apiv1.GetVMRequest{Id: unknown})
			return err
		}, codes.NotFound, ""},
		{"get: empty id", func(ctx context.Context) error {
			_, err := c.vm.GetVM(ctx, &apiv1.GetVMRequest{})
			return err
		}, codes.InvalidArgument, "id"},
		{"start: unknown id", func(ctx context.Context) error {
			_, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: "no-such-vm"})
			return err
		}, codes.NotFound, ""},
		{"start: running VM", func(ctx context.Context) error {
			return lifecycleErr(c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: "running1", Wait: true}))
		}, codes.FailedPrecondition, ""},
		{"pause: halted VM", func(ctx context.Context) error {
			return lifecycleErr(c.vm.PauseVM(ctx, &apiv1.PauseVMRequest{Id: "halted1", Wait: true}))
		}, codes.FailedPrecondition, ""},
		{"unpause: running VM", func(ctx context.Context) error {
			return lifecycleErr(c.vm.UnpauseVM(ctx, &apiv1.UnpauseVMRequest{Id: "running1", Wait: true}))
		}, codes.FailedPrecondition, ""},
		{"shutdown: halted VM", func(ctx context.Context) error {
			return lifecycleErr(c.vm.ShutdownVM(ctx, &apiv1.ShutdownVMRequest{Id: "halted1", Wait: true}))
		}, codes.FailedPrecondition, ""},
		{"shutdown: negative timeout", func(ctx context.Context) error {
			return lifecycleErr(c.vm.ShutdownVM(ctx, &apiv1.ShutdownVMRequest{Id: "running1", Timeout: durationpb.New(-time.Second)}))
		}, codes.InvalidArgument, "timeout"},
		{"reboot: halted VM", func(ctx context.Context) error {
			return lifecycleErr(c.vm.RebootVM(ctx, &apiv1.RebootVMRequest{Id: "halted1", Wait: true}))
		}, codes.FailedPrecondition, ""},
		{"destroy: halted VM", func(ctx context.Context) error {
			return lifecycleErr(c.vm.DestroyVM(ctx, &apiv1.DestroyVMRequest{Id: "halted1", Wait: true}))
		}, codes.FailedPrecondition, ""},
		{"delete: running VM", func(ctx context.Context) error {
			_, err := c.vm.DeleteVM(ctx, &apiv1.DeleteVMRequest{Id: "running1"})
			return err
		}, codes.FailedPrecondition, ""},
		{"delete: unknown id", func(ctx context.Context) error {
			_, err := c.vm.DeleteVM(ctx, &apiv1.DeleteVMRequest{Id: unknown})
			return err
		}, codes.NotFound, ""},
		{"update: uuid change", func(ctx context.Context) error {
			s := proto.Clone(halted1.GetSpec()).(*apiv1.VMSpec)
			s.Uuid = unknown
			_, err := c.vm.UpdateVM(ctx, &apiv1.UpdateVMRequest{Id: "halted1", Spec: s})
			return err
		}, codes.InvalidArgument, "spec.uuid"},
		{"update: memory 0", func(ctx context.Context) error {
			s := proto.Clone(halted1.GetSpec()).(*apiv1.VMSpec)
			s.MemoryStaticMax = 0
			_, err := c.vm.UpdateVM(ctx, &apiv1.UpdateVMRequest{Id: "halted1", Spec: s})
			return err
		}, codes.InvalidArgument, "spec.memory_static_max"},
		{"task get: unknown id", func(ctx context.Context) error {
			_, err := c.task.GetTask(ctx, &apiv1.GetTaskRequest{Id: unknown})
			return err
		}, codes.NotFound, ""},
		{"task cancel: unknown id", func(ctx context.Context) error {
			_, err := c.task.CancelTask(ctx, &apiv1.CancelTaskRequest{Id: unknown})
			return err
		}, codes.NotFound, ""},
		{"watch: revision beyond head", func(ctx context.Context) error {
			s, err := c.event.Watch(ctx, &apiv1.WatchRequest{AfterRevision: 1 << 60})
			if err != nil {
				return err
			}
			_, err = s.Recv()
			return err
		}, codes.InvalidArgument, "after_revision"},
	}

	before := snapshot(t, c, simc)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			err := tc.call(ctx)
			checkStatus(t, err, tc.code, tc.field)
			if after := snapshot(t, c, simc); after != before {
				t.Errorf("state changed:\nbefore: %s\nafter:  %s", before, after)
			}
		})
	}

	// The same through the CLI: exit status 1, the server's code, message and field.
	cliCases := []struct {
		args       []string
		exit       int
		wantStderr []string
	}{
		{[]string{"vm", "create", "--name", "x", "--memory", "0"}, 1, []string{"INVALID_ARGUMENT", "spec.memory_static_max"}},
		{[]string{"vm", "create", "--name", "x", "--memory", "64M", "--vcpus", "0"}, 1, []string{"INVALID_ARGUMENT", "spec.vcpus_max"}},
		{[]string{"vm", "get", "no-such-vm"}, 1, []string{"NOT_FOUND"}},
		{[]string{"vm", "pause", "halted1"}, 1, []string{"FAILED_PRECONDITION"}},
		{[]string{"vm", "delete", "running1"}, 1, []string{"FAILED_PRECONDITION"}},
		{[]string{"task", "get", unknown}, 1, []string{"NOT_FOUND"}},
		// Mistakes caught before any request: exit status 2, naming the flag.
		{[]string{"vm", "create", "--name", "x", "--memory", "lots"}, 2, []string{"--memory"}},
		{[]string{"vm", "create", "--name", "x", "--memory", "64M", "--type", "xen"}, 2, []string{"--type"}},
		{[]string{"vm", "create", "--name", "x"}, 2, []string{"--memory"}},
		{[]string{"vm", "start"}, 2, []string{"arg"}},
		{[]string{"vm", "get", "halted1", "-o", "xml"}, 2, []string{"--output"}},
	}
	for _, tc := range cliCases {
		t.Run("cli "+strings.Join(tc.args, " "), func(t *testing.T) {
			r := d.CLI(tc.args...)
			if r.Code != tc.exit {
				t.Errorf("exit %d, want %d; stderr: %s", r.Code, tc.exit, r.Stderr)
			}
			for _, w := range tc.wantStderr {
				if !strings.Contains(r.Stderr, w) {
					t.Errorf("stderr %q does not contain %q", r.Stderr, w)
				}
			}
			if after := snapshot(t, c, simc); after != before {
				t.Errorf("state changed:\nbefore: %s\nafter:  %s", before, after)
			}
		})
	}
}

// lifecycleErr turns a lifecycle response into an error: the RPC's own, or
// the failed task's code as a status (a request the daemon accepted but
// whose task failed).
func lifecycleErr[R interface{ GetTask() *apiv1.Task }](r R, err error) error {
	if err != nil {
		return err
	}
	tk := r.GetTask()
	if tk.GetState() == apiv1.TaskState_TASK_STATE_SUCCEEDED {
		return nil
	}
	return fmt.Errorf("accepted, but task %s ended %v: %v", tk.GetId(), tk.GetState(), tk.GetError())
}

// checkStatus checks err is a gRPC status with code and, for a field, a
// google.rpc.BadRequest naming it.
func checkStatus(t *testing.T, err error, code codes.Code, field string) {
	t.Helper()
	if err == nil {
		t.Fatalf("succeeded, want %v", code)
	}
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("error %v is not a gRPC status, want %v", err, code)
	}
	if st.Code() != code {
		t.Errorf("code %v (%s), want %v", st.Code(), st.Message(), code)
	}
	if st.Message() == "" {
		t.Error("empty error message")
	}
	if field == "" {
		return
	}
	var fields []string
	for _, det := range st.Details() {
		if br, ok := det.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	if !slices.Contains(fields, field) {
		t.Errorf("BadRequest fields %v, want %q (message %q)", fields, field, st.Message())
	}
}

// snapshot summarises what must not change: the event revision, every VM's
// id, name, power state, domid and generation, the number of tasks, and the
// host's domains.
func snapshot(t *testing.T, c *api, hv xenctrl.Hypervisor) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := c.vm.ListVMs(ctx, &apiv1.ListVMsRequest{})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "revision %d;", l.GetRevision())
	vms := l.GetVms()
	slices.SortFunc(vms, func(x, y *apiv1.VM) int { return strings.Compare(x.GetId(), y.GetId()) })
	for _, vm := range vms {
		fmt.Fprintf(&b, " vm %s %s %v dom %d gen %d;", vm.GetId(), vm.GetSpec().GetName(), vm.GetPowerState(), vm.GetDomid(), vm.GetGeneration())
	}
	tl, err := c.task.ListTasks(ctx, &apiv1.ListTasksRequest{})
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	fmt.Fprintf(&b, " %d tasks;", len(tl.GetTasks()))
	doms, err := hv.ListDomains(ctx)
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	for _, di := range doms {
		fmt.Fprintf(&b, " dom %d %x paused=%t pages=%d;", di.Domid, di.Handle, di.Paused, di.TotPages)
	}
	return b.String()
}
