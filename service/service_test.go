package service

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// clients are the four API clients on one connection.
type clients struct {
	host  pb.HostServiceClient
	vm    pb.VMServiceClient
	task  pb.TaskServiceClient
	event pb.EventServiceClient
	conn  *grpc.ClientConn
}

// serve starts the API on m over a real gRPC server listening on a unix
// socket in a temp dir, and returns clients; both are stopped at cleanup.
func serve(t *testing.T, m Manager, opts Options) clients {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	srv := grpc.NewServer(grpc.UnaryInterceptor(UnaryLogger(opts.Logger)), grpc.StreamInterceptor(StreamLogger(opts.Logger)))
	New(m, opts).Register(srv)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return clients{pb.NewHostServiceClient(conn), pb.NewVMServiceClient(conn), pb.NewTaskServiceClient(conn), pb.NewEventServiceClient(conn), conn}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// details returns the status's code, BadRequest field (if any) and ErrorInfo.
func details(t *testing.T, err error) (codes.Code, string, *errdetails.ErrorInfo) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok {
		t.Fatalf("not a status error: %v", err)
	}
	var field string
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			if len(d.FieldViolations) != 1 {
				t.Fatalf("BadRequest with %d violations", len(d.FieldViolations))
			}
			field = d.FieldViolations[0].Field
		case *errdetails.ErrorInfo:
			info = d
		}
	}
	if info == nil {
		t.Fatalf("status %v has no ErrorInfo", st)
	}
	if info.Domain != ErrorDomain || info.Reason != CodeName(st.Code()) {
		t.Errorf("ErrorInfo = %v, want domain %q reason %q", info, ErrorDomain, CodeName(st.Code()))
	}
	return st.Code(), field, info
}

func fullSpec() *pb.VMSpec {
	return &pb.VMSpec{
		Uuid: "6f1d7f0e-8a45-4b8e-9a55-0a3c2b1d4e5f", Name: "web-1", Type: pb.DomainType_DOMAIN_TYPE_PVH,
		MemoryStaticMax: 1 << 30, MemoryDynamicMin: 512 << 20, MemoryDynamicMax: 1 << 30,
		VcpusMax: 4, VcpusAtStartup: 2, Kernel: "/boot/vmlinuz", Ramdisk: "/boot/initrd", Cmdline: "console=hvc0",
		Platform: map[string]string{"tsc_mode": "0"}, XenstoreData: map[string]string{"vm-data/a": "b"},
		OnPoweroff: pb.LifecycleAction_LIFECYCLE_ACTION_DESTROY, OnReboot: pb.LifecycleAction_LIFECYCLE_ACTION_RESTART,
		OnCrash: pb.LifecycleAction_LIFECYCLE_ACTION_PRESERVE,
		Disks: []*pb.Disk{{Device: "xvda", Path: "/dev/vg/a", Mode: pb.DiskMode_DISK_MODE_RW},
			{Device: "xvdd", Path: "/iso/x.iso", Mode: pb.DiskMode_DISK_MODE_RO, Cdrom: true}},
		Nics: []*pb.NIC{{Mac: "00:16:3e:00:00:01", Bridge: "xenbr0", Mtu: 1500}},
	}
}

func TestCreateConvertsEveryField(t *testing.T) {
	f := newFake()
	c := serve(t, f, Options{})
	ctx := ctxT(t)
	resp, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: fullSpec(), RequestId: "req-1"})
	if err != nil {
		t.Fatal(err)
	}
	want := domain.Spec{
		UUID: "6f1d7f0e-8a45-4b8e-9a55-0a3c2b1d4e5f", Name: "web-1", Type: domain.TypePVH,
		MemoryStaticMax: 1 << 30, MemoryDynamicMin: 512 << 20, MemoryDynamicMax: 1 << 30,
		VCPUsMax: 4, VCPUsAtStartup: 2, Kernel: "/boot/vmlinuz", Ramdisk: "/boot/initrd", Cmdline: "console=hvc0",
		Platform: map[string]string{"tsc_mode": "0"}, XenstoreData: map[string]string{"vm-data/a": "b"},
		OnPoweroff: domain.ActionDestroy, OnReboot: domain.ActionRestart, OnCrash: domain.ActionPreserve,
		Disks: []domain.Disk{{Device: "xvda", Path: "/dev/vg/a", Mode: domain.DiskRW},
			{Device: "xvdd", Path: "/iso/x.iso", Mode: domain.DiskRO, CDROM: true}},
		NICs: []domain.NIC{{MAC: "00:16:3e:00:00:01", Bridge: "xenbr0", MTU: 1500}},
	}
	if !reflect.DeepEqual(f.lastSpec, want) {
		t.Errorf("manager got spec\n%+v\nwant\n%+v", f.lastSpec, want)
	}
	if got := f.Calls(); len(got) != 1 || got[0] != "CreateVM req-1" {
		t.Errorf("calls = %q", got)
	}
	if !proto.Equal(resp.Vm.Spec, fullSpec()) {
		t.Errorf("round trip spec = %v", resp.Vm.Spec)
	}
	if resp.Vm.Id != want.UUID || resp.Vm.PowerState != pb.PowerState_POWER_STATE_HALTED || resp.Vm.Generation != 1 ||
		resp.Vm.CreateTime.AsTime().Unix() != 1700000000 {
		t.Errorf("vm = %v", resp.Vm)
	}
}

func TestProtoLevelValidation(t *testing.T) {
	tests := []struct {
		name  string
		call  func(context.Context, clients) error
		field string
	}{
		{"nil spec", func(ctx context.Context, c clients) error {
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{})
			return err
		}, "spec"},
		{"unknown type", func(ctx context.Context, c clients) error {
			s := fullSpec()
			s.Type = 42
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: s})
			return err
		}, "spec.type"},
		{"unknown on_crash", func(ctx context.Context, c clients) error {
			s := fullSpec()
			s.OnCrash = -1
			_, err := c.vm.UpdateVM(ctx, &pb.UpdateVMRequest{Id: "web-1", Spec: s})
			return err
		}, "spec.on_crash"},
		{"unknown disk mode", func(ctx context.Context, c clients) error {
			s := fullSpec()
			s.Disks[1].Mode = 7
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: s})
			return err
		}, "spec.disks[1].mode"},
		{"negative shutdown timeout", func(ctx context.Context, c clients) error {
			_, err := c.vm.ShutdownVM(ctx, &pb.ShutdownVMRequest{Id: "web-1", Timeout: durationpb.New(-time.Second)})
			return err
		}, "timeout"},
		{"invalid reboot timeout", func(ctx context.Context, c clients) error {
			_, err := c.vm.RebootVM(ctx, &pb.RebootVMRequest{Id: "web-1", Timeout: &durationpb.Duration{Seconds: 1, Nanos: -1}})
			return err
		}, "timeout"},
		{"negative suspend timeout", func(ctx context.Context, c clients) error {
			_, err := c.vm.SuspendVM(ctx, &pb.SuspendVMRequest{Id: "web-1", Timeout: durationpb.New(-time.Second)})
			return err
		}, "timeout"},
		{"invalid suspend timeout", func(ctx context.Context, c clients) error {
			_, err := c.vm.SuspendVM(ctx, &pb.SuspendVMRequest{Id: "web-1", Timeout: &durationpb.Duration{Seconds: 1, Nanos: -1}})
			return err
		}, "timeout"},
		{"empty resume id", func(ctx context.Context, c clients) error {
			_, err := c.vm.ResumeVM(ctx, &pb.ResumeVMRequest{})
			return err
		}, "id"},
		{"empty id", func(ctx context.Context, c clients) error {
			_, err := c.vm.StartVM(ctx, &pb.StartVMRequest{Id: " "})
			return err
		}, "id"},
		{"empty task id", func(ctx context.Context, c clients) error {
			_, err := c.task.WaitTask(ctx, &pb.WaitTaskRequest{})
			return err
		}, "id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			c := serve(t, f, Options{})
			err := tt.call(ctxT(t), c)
			code, field, info := details(t, err)
			if code != codes.InvalidArgument || field != tt.field || info.Metadata["field"] != tt.field {
				t.Errorf("got %v field %q (%v), want InvalidArgument field %q", err, field, info, tt.field)
			}
			if calls := f.Calls(); len(calls) != 0 {
				t.Errorf("bad request reached the manager: %q", calls)
			}
		})
	}
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		err   error
		code  codes.Code
		field string
	}{
		{domain.InvalidField("spec.memory_dynamic_min", "above memory_static_max"), codes.InvalidArgument, "spec.memory_dynamic_min"},
		{domain.Errorf(domain.CodeNotFound, "no VM x"), codes.NotFound, ""},
		{domain.Errorf(domain.CodeAlreadyExists, "name taken"), codes.AlreadyExists, ""},
		{domain.Errorf(domain.CodeFailedPrecondition, "VM is Halted"), codes.FailedPrecondition, ""},
		{domain.Errorf(domain.CodeResourceExhausted, "host has 1 GiB free"), codes.ResourceExhausted, ""},
		{domain.Errorf(domain.CodeAborted, "interrupted"), codes.Aborted, ""},
		{domain.Errorf(domain.CodeUnavailable, "closing"), codes.Unavailable, ""},
		{domain.Errorf(domain.CodeInternal, "store broke"), codes.Internal, ""},
		{errors.New("plain"), codes.Internal, ""},
		{context.DeadlineExceeded, codes.DeadlineExceeded, ""},
		{context.Canceled, codes.Canceled, ""},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			f := newFake()
			f.err = tt.err
			c := serve(t, f, Options{})
			ctx := ctxT(t)
			_, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: fullSpec()})
			code, field, _ := details(t, err)
			if code != tt.code || field != tt.field {
				t.Errorf("CreateVM: %v field %q, want %v field %q", err, field, tt.code, tt.field)
			}
			if msg := status.Convert(err).Message(); msg != tt.err.Error() {
				t.Errorf("message %q, want %q", msg, tt.err.Error())
			}
			// Same mapping on a lifecycle call and a stream.
			_, err = c.vm.PauseVM(ctx, &pb.PauseVMRequest{Id: "x"})
			if status.Code(err) != tt.code {
				t.Errorf("PauseVM: %v, want %v", err, tt.code)
			}
			stream, err := c.event.Watch(ctx, &pb.WatchRequest{})
			if err == nil {
				_, err = stream.Recv()
			}
			if status.Code(err) != tt.code {
				t.Errorf("Watch: %v, want %v", err, tt.code)
			}
		})
	}
}

func TestLifecycleWait(t *testing.T) {
	f := newFake()
	c := serve(t, f, Options{})
	ctx := ctxT(t)
	if _, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: fullSpec()}); err != nil {
		t.Fatal(err)
	}
	r, err := c.vm.StartVM(ctx, &pb.StartVMRequest{Id: "web-1", Paused: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Task.State != pb.TaskState_TASK_STATE_PENDING || r.Task.Op != "start" || r.Task.VmId != fullSpec().Uuid || !f.lastPaused {
		t.Errorf("no wait: task %v paused=%v", r.Task, f.lastPaused)
	}
	r, err = c.vm.StartVM(ctx, &pb.StartVMRequest{Id: "web-1", Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if r.Task.State != pb.TaskState_TASK_STATE_SUCCEEDED || r.Task.Progress != 1 || r.Task.Error != nil {
		t.Errorf("wait: task %v", r.Task)
	}
	// A failed task is an OK call returning the FAILED task and its error.
	f.finishState, f.finishErr = domain.TaskFailed, domain.Errorf(domain.CodeFailedPrecondition, "VM is not running")
	sr, err := c.vm.ShutdownVM(ctx, &pb.ShutdownVMRequest{Id: "web-1", Force: true, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if sr.Task.State != pb.TaskState_TASK_STATE_FAILED || sr.Task.Error.GetCode() != "FAILED_PRECONDITION" ||
		sr.Task.Error.GetMessage() != "VM is not running" {
		t.Errorf("failed task: %v", sr.Task)
	}
	if f.lastShutdown != (domain.ShutdownOptions{Timeout: 0, Force: true}) {
		t.Errorf("unset timeout: %+v", f.lastShutdown)
	}
	if _, err := c.vm.RebootVM(ctx, &pb.RebootVMRequest{Id: "web-1", Timeout: durationpb.New(90 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	if f.lastShutdown != (domain.ShutdownOptions{Timeout: 90 * time.Second}) {
		t.Errorf("explicit timeout: %+v", f.lastShutdown)
	}
	if r, err := c.vm.SuspendVM(ctx, &pb.SuspendVMRequest{Id: "web-1", Timeout: durationpb.New(30 * time.Second)}); err != nil || r.Task.GetOp() != "suspend" {
		t.Fatalf("SuspendVM: %v, %v", r, err)
	}
	if f.lastSuspend != (domain.SuspendOptions{Timeout: 30 * time.Second}) {
		t.Errorf("suspend timeout: %+v", f.lastSuspend)
	}
	if r, err := c.vm.ResumeVM(ctx, &pb.ResumeVMRequest{Id: "web-1"}); err != nil || r.Task.GetOp() != "resume" {
		t.Fatalf("ResumeVM: %v, %v", r, err)
	}
	// Waiting past the caller's deadline: DEADLINE_EXCEEDED, task still there.
	f.blockWait = true
	dctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = c.vm.DestroyVM(dctx, &pb.DestroyVMRequest{Id: "web-1", Wait: true})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("DestroyVM past deadline: %v", err)
	}
	lt, err := c.task.ListTasks(ctx, &pb.ListTasksRequest{VmId: fullSpec().Uuid})
	if err != nil || len(lt.Tasks) != 7 {
		t.Errorf("ListTasks: %v, %d tasks", err, len(lt.GetTasks()))
	}
}

func TestTasksAndHost(t *testing.T) {
	f := newFake()
	f.host = domain.HostInfo{
		Backend: "sim", VersionMajor: 4, VersionMinor: 17, VersionExtra: ".3",
		NrCPUs: 8, CPUkHz: 2400000, ThreadsPerCore: 2, CoresPerSocket: 4, NrNodes: 1, Capabilities: []string{"hvm", "pv"},
		TotalMemory: 16 << 30, FreeMemory: 15 << 30,
	}
	c := serve(t, f, Options{Version: "v0.1.0-test"})
	ctx := ctxT(t)
	h, err := c.host.GetHost(ctx, &pb.GetHostRequest{})
	if err != nil {
		t.Fatal(err)
	}
	want := &pb.Host{DaemonVersion: "v0.1.0-test", HypervisorVersion: "4.17.3", HypervisorVersionMajor: 4, HypervisorVersionMinor: 17,
		Backend: pb.Backend_BACKEND_SIM, TotalMemoryBytes: 16 << 30, FreeMemoryBytes: 15 << 30, NrCpus: 8, CpuKhz: 2400000,
		ThreadsPerCore: 2, CoresPerSocket: 4, NrNodes: 1, Capabilities: []string{"hvm", "pv"}}
	if !proto.Equal(h.Host, want) {
		t.Errorf("host = %v\nwant %v", h.Host, want)
	}

	if _, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: fullSpec()}); err != nil {
		t.Fatal(err)
	}
	r, err := c.vm.PauseVM(ctx, &pb.PauseVMRequest{Id: "web-1"})
	if err != nil {
		t.Fatal(err)
	}
	ct, err := c.task.CancelTask(ctx, &pb.CancelTaskRequest{Id: r.Task.Id})
	if err != nil {
		t.Fatal(err)
	}
	if ct.Task.State != pb.TaskState_TASK_STATE_CANCELLED || ct.Task.Error.GetCode() != "CANCELLED" {
		t.Errorf("cancelled task = %v", ct.Task)
	}
	gt, err := c.task.GetTask(ctx, &pb.GetTaskRequest{Id: r.Task.Id})
	if err != nil || !proto.Equal(gt.Task, ct.Task) {
		t.Errorf("GetTask = %v, %v", gt, err)
	}
	_, err = c.task.GetTask(ctx, &pb.GetTaskRequest{Id: "nope"})
	if code, _, _ := details(t, err); code != codes.NotFound {
		t.Errorf("GetTask(nope) = %v", err)
	}
	if _, err := c.vm.DeleteVM(ctx, &pb.DeleteVMRequest{Id: "web-1"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.vm.GetVM(ctx, &pb.GetVMRequest{Id: "web-1"})
	if status.Code(err) != codes.NotFound {
		t.Errorf("GetVM after delete: %v", err)
	}
}

func TestWatch(t *testing.T) {
	f := newFake()
	vm := domain.VM{ID: "vm-1", Spec: domain.Spec{UUID: "vm-1", Name: "a"}, Power: domain.Running, Domid: 3}
	task := domain.Task{ID: "t-1", VMID: "vm-1", Op: "start", State: domain.TaskRunning, Progress: 0.5}
	f.firstRetained = 3 // revisions 1 and 2 were compacted away
	f.events = []domain.Event{
		{Revision: 3, Kind: domain.EventVMChanged, VMID: "vm-1", VM: &vm},
		{Revision: 4, Kind: domain.EventTaskChanged, VMID: "vm-1", Task: &task},
		{Revision: 5, Kind: domain.EventVMDeleted, VMID: "vm-1"},
	}
	c := serve(t, f, Options{})
	ctx := ctxT(t)

	recv := func(s pb.EventService_WatchClient) *pb.WatchResponse {
		t.Helper()
		r, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// Resuming from a compacted revision: resync to the head first.
	wctx, cancel := context.WithCancel(ctx)
	s, err := c.event.Watch(wctx, &pb.WatchRequest{AfterRevision: 1, TaskProgress: true})
	if err != nil {
		t.Fatal(err)
	}
	if r := recv(s); r.GetResync().GetHeadRevision() != 5 {
		t.Errorf("first message %v, want resync to 5", r)
	}
	<-f.watching
	f.live <- domain.Event{Revision: 6, Kind: domain.EventVMChanged, VMID: "vm-1", VM: &vm}
	if r := recv(s); r.GetEvent().GetRevision() != 6 || r.GetEvent().GetVmChanged().GetDomid() != 3 {
		t.Errorf("live event %v", r)
	}
	// Live task progress (asked for): a task_progress case carrying the
	// revision of the persisted event it follows.
	if calls := f.Calls(); len(calls) == 0 || calls[len(calls)-1] != "Watch 1 progress=true" {
		t.Errorf("calls %q: want the request's after_revision and task_progress passed on", calls)
	}
	f.live <- domain.Event{Revision: 6, Kind: domain.EventTaskProgress, VMID: "vm-1",
		Progress: &domain.TaskProgress{TaskID: "t-1", VMID: "vm-1", Progress: 0.75}}
	want := &pb.TaskProgress{TaskId: "t-1", VmId: "vm-1", Progress: 0.75}
	if r := recv(s); r.GetEvent().GetRevision() != 6 || !proto.Equal(r.GetEvent().GetTaskProgress(), want) {
		t.Errorf("live progress %v, want revision 6 and %v", r, want)
	}
	cancel()
	if _, err := s.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("after cancel: %v", err)
	}

	// Resuming from a retained revision: exactly the events after it.
	s, err = c.event.Watch(ctx, &pb.WatchRequest{AfterRevision: 3})
	if err != nil {
		t.Fatal(err)
	}
	r := recv(s)
	if e := r.GetEvent(); e.GetRevision() != 4 || e.GetTaskChanged().GetProgress() != 0.5 || e.GetTaskChanged().GetState() != pb.TaskState_TASK_STATE_RUNNING {
		t.Errorf("event 4: %v", r)
	}
	if r := recv(s); r.GetEvent().GetRevision() != 5 || r.GetEvent().GetVmDeleted().GetId() != "vm-1" {
		t.Errorf("event 5: %v", r)
	}

	// Beyond the head: INVALID_ARGUMENT naming after_revision.
	s, err = c.event.Watch(ctx, &pb.WatchRequest{AfterRevision: 99})
	if err == nil {
		_, err = s.Recv()
	}
	if code, field, _ := details(t, err); code != codes.InvalidArgument || field != "after_revision" {
		t.Errorf("Watch(99): %v field %q", err, field)
	}
}
