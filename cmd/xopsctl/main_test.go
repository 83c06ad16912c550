package main

import (
	"bytes"
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

// fakeServer is an in-memory stand-in for the daemon's gRPC API, enough to
// test what xopsctl sends and how it prints what it gets. The end-to-end
// tests (tests/e2e) run xopsctl against the real daemon.
type fakeServer struct {
	apiv1.UnimplementedHostServiceServer
	apiv1.UnimplementedVMServiceServer
	apiv1.UnimplementedTaskServiceServer
	apiv1.UnimplementedEventServiceServer

	mu       sync.Mutex
	created  []*apiv1.CreateVMRequest
	shutdown []*apiv1.ShutdownVMRequest
	vms      map[string]*apiv1.VM
	tasks    map[string]*apiv1.Task // what lifecycle calls return; GetTask returns them running at 50%
	events   []*apiv1.WatchResponse
	watches  []*apiv1.WatchRequest
	// breakAfter > 0: the next Watch sends that many messages and then
	// fails as a daemon going away does.
	breakAfter int
}

func (f *fakeServer) GetHost(context.Context, *apiv1.GetHostRequest) (*apiv1.GetHostResponse, error) {
	return &apiv1.GetHostResponse{Host: &apiv1.Host{
		Backend: apiv1.Backend_BACKEND_SIM, HypervisorVersion: "4.17.3", HypervisorVersionMajor: 4, HypervisorVersionMinor: 17,
		TotalMemoryBytes: 16 << 30, FreeMemoryBytes: 15 << 30, NrCpus: 8, Capabilities: []string{"hvm", "pv", "hap"},
	}}, nil
}

func invalid(field, msg string) error {
	st, _ := status.New(codes.InvalidArgument, field+": "+msg).WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}},
	})
	return st.Err()
}

func (f *fakeServer) CreateVM(_ context.Context, r *apiv1.CreateVMRequest) (*apiv1.CreateVMResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = append(f.created, r)
	if r.GetSpec().GetMemoryStaticMax() == 0 {
		return nil, invalid("spec.memory_static_max", "must be at least 1 MiB")
	}
	vm := &apiv1.VM{Id: "11111111-2222-4333-8444-555555555555", Spec: r.GetSpec(), PowerState: apiv1.PowerState_POWER_STATE_HALTED}
	f.vms[r.GetSpec().GetName()] = vm
	return &apiv1.CreateVMResponse{Vm: vm}, nil
}

func (f *fakeServer) GetVM(_ context.Context, r *apiv1.GetVMRequest) (*apiv1.GetVMResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if vm, ok := f.vms[r.GetId()]; ok {
		return &apiv1.GetVMResponse{Vm: vm}, nil
	}
	return nil, status.Errorf(codes.NotFound, "no VM %q", r.GetId())
}

func (f *fakeServer) ListVMs(context.Context, *apiv1.ListVMsRequest) (*apiv1.ListVMsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	resp := &apiv1.ListVMsResponse{Revision: 41}
	for _, name := range []string{"alpha", "a-much-longer-name"} {
		if vm, ok := f.vms[name]; ok {
			resp.Vms = append(resp.Vms, vm)
		}
	}
	return resp, nil
}

func (f *fakeServer) StartVM(_ context.Context, r *apiv1.StartVMRequest) (*apiv1.StartVMResponse, error) {
	return &apiv1.StartVMResponse{Task: f.tasks["t-start"]}, nil
}

func (f *fakeServer) ShutdownVM(_ context.Context, r *apiv1.ShutdownVMRequest) (*apiv1.ShutdownVMResponse, error) {
	f.mu.Lock()
	f.shutdown = append(f.shutdown, r)
	f.mu.Unlock()
	return &apiv1.ShutdownVMResponse{Task: f.tasks["t-shutdown"]}, nil
}

func (f *fakeServer) GetTask(_ context.Context, r *apiv1.GetTaskRequest) (*apiv1.GetTaskResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if t, ok := f.tasks[r.GetId()]; ok {
		running := proto.Clone(t).(*apiv1.Task)
		running.State, running.Progress = apiv1.TaskState_TASK_STATE_RUNNING, 0.5
		return &apiv1.GetTaskResponse{Task: running}, nil
	}
	return nil, status.Errorf(codes.NotFound, "no task %q", r.GetId())
}

// Watch sends the events after the request's revision (progress only if
// asked for), then waits for the client to go.
func (f *fakeServer) Watch(r *apiv1.WatchRequest, s grpc.ServerStreamingServer[apiv1.WatchResponse]) error {
	f.mu.Lock()
	f.watches = append(f.watches, r)
	events := f.events
	breakAfter := f.breakAfter
	f.breakAfter = 0
	f.mu.Unlock()
	sent := 0
	for _, ev := range events {
		e := ev.GetEvent()
		if e != nil && (e.GetRevision() <= r.GetAfterRevision() || (e.GetTaskProgress() != nil && !r.GetTaskProgress())) {
			continue
		}
		if breakAfter > 0 && sent == breakAfter {
			return status.Error(codes.Unavailable, "daemon restarting")
		}
		if err := s.Send(ev); err != nil {
			return err
		}
		sent++
	}
	<-s.Context().Done()
	return nil
}

func startFake(t *testing.T) (*fakeServer, string) {
	t.Helper()
	f := &fakeServer{vms: map[string]*apiv1.VM{}, tasks: map[string]*apiv1.Task{}}
	sock := filepath.Join(t.TempDir(), "x.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	apiv1.RegisterHostServiceServer(srv, f)
	apiv1.RegisterVMServiceServer(srv, f)
	apiv1.RegisterTaskServiceServer(srv, f)
	apiv1.RegisterEventServiceServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return f, sock
}

// xops runs xopsctl in-process.
func xops(t *testing.T, sock string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = run(ctx, append([]string{"--socket", sock}, args...), &o, &e)
	return o.String(), e.String(), code
}

func TestHostInfo(t *testing.T) {
	_, sock := startFake(t)
	out, errOut, code := xops(t, sock, "host", "info")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{"backend:", "sim", "xen_version:", "4.17.3", "total_memory:", "16384", "virt_caps:", "hvm pv hap"} {
		if !strings.Contains(out, want) {
			t.Errorf("host info lacks %q:\n%s", want, out)
		}
	}
	out, _, _ = xops(t, sock, "host", "info", "-o", "json")
	h := &apiv1.Host{}
	if err := protojson.Unmarshal([]byte(out), h); err != nil || h.GetNrCpus() != 8 {
		t.Errorf("-o json: %v %v\n%s", err, h, out)
	}
}

func TestCreateFromFlagsAndFile(t *testing.T) {
	f, sock := startFake(t)
	out, errOut, code := xops(t, sock, "vm", "create", "--name", "alpha", "--memory", "256M", "--vcpus", "2",
		"--type", "pv", "--kernel", "/k", "--cmdline", "ro", "--request-id", "r1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if strings.TrimSpace(out) != "11111111-2222-4333-8444-555555555555" {
		t.Errorf("create printed %q, want the id", out)
	}
	want := &apiv1.CreateVMRequest{RequestId: "r1", Spec: &apiv1.VMSpec{
		Name: "alpha", Type: apiv1.DomainType_DOMAIN_TYPE_PV, MemoryStaticMax: 256 << 20, MemoryDynamicMin: 256 << 20,
		MemoryDynamicMax: 256 << 20, VcpusMax: 2, VcpusAtStartup: 2, Kernel: "/k", Cmdline: "ro",
	}}
	if !proto.Equal(f.created[0], want) {
		t.Errorf("sent %v\nwant %v", f.created[0], want)
	}

	file := filepath.Join(t.TempDir(), "s.yaml")
	os.WriteFile(file, []byte("name: from-file\ntype: DOMAIN_TYPE_HVM\nmemory_static_max: 1073741824\nvcpus_max: 4\nplatform: {viridian: \"true\"}\n"), 0o644)
	if _, errOut, code := xops(t, sock, "vm", "create", "-f", file, "--name", "a-much-longer-name"); code != 0 {
		t.Fatalf("create -f: exit %d: %s", code, errOut)
	}
	got := f.created[1].GetSpec()
	if got.GetName() != "a-much-longer-name" || got.GetType() != apiv1.DomainType_DOMAIN_TYPE_HVM ||
		got.GetMemoryStaticMax() != 1<<30 || got.GetVcpusMax() != 4 || got.GetPlatform()["viridian"] != "true" {
		t.Errorf("spec from file with --name override: %v", got)
	}

	// Table: aligned columns.
	out, _, _ = xops(t, sock, "vm", "list")
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("vm list:\n%s", out)
	}
	col := strings.Index(lines[0], "TYPE")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l[col:], "pv") && !strings.HasPrefix(l[col:], "hvm") {
			t.Errorf("TYPE column not aligned:\n%s", out)
		}
	}

	// Bad spec files and flags name what is wrong, exit 2, send nothing.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("name: x\nmemory_megabytes: 3\n"), 0o644)
	n := len(f.created)
	for _, args := range [][]string{
		{"vm", "create", "-f", bad},
		{"vm", "create", "--name", "x", "--memory", "1.5"},
		{"vm", "create", "--name", "x", "--memory", "1G", "--type", "kvm"},
		{"vm", "create", "--memory", "1G"},
	} {
		_, errOut, code := xops(t, sock, args...)
		if code != 2 || errOut == "" {
			t.Errorf("%v: exit %d, stderr %q; want 2 and a message", args, code, errOut)
		}
	}
	if len(f.created) != n {
		t.Errorf("bad command lines reached the server")
	}

	// The server's INVALID_ARGUMENT: exit 1, code, message and field.
	_, errOut, code = xops(t, sock, "vm", "create", "--name", "x", "--memory", "0")
	if code != 1 || !strings.Contains(errOut, "INVALID_ARGUMENT") || !strings.Contains(errOut, "(field spec.memory_static_max)") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	_, errOut, code = xops(t, sock, "vm", "get", "nope")
	if code != 1 || !strings.Contains(errOut, `NOT_FOUND: no VM "nope"`) {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func taskEvent(rev uint64, t *apiv1.Task) *apiv1.WatchResponse {
	return &apiv1.WatchResponse{Kind: &apiv1.WatchResponse_Event{Event: &apiv1.Event{Revision: rev,
		Change: &apiv1.Event_TaskChanged{TaskChanged: t}}}}
}

func progressEvent(rev uint64, taskID string, p float64) *apiv1.WatchResponse {
	return &apiv1.WatchResponse{Kind: &apiv1.WatchResponse_Event{Event: &apiv1.Event{Revision: rev,
		Change: &apiv1.Event_TaskProgress{TaskProgress: &apiv1.TaskProgress{TaskId: taskID, VmId: "vm1", Progress: p}}}}}
}

func vmEvent(rev uint64) *apiv1.WatchResponse {
	return &apiv1.WatchResponse{Kind: &apiv1.WatchResponse_Event{Event: &apiv1.Event{Revision: rev,
		Change: &apiv1.Event_VmChanged{VmChanged: &apiv1.VM{Id: "vm1"}}}}}
}

// A lifecycle command waits for its task through the event stream: from the
// current revision (ListVMs' 41), the task re-read once, then its own
// progress and final state; other tasks' events are not its business.
func TestLifecycleWaitsWithProgress(t *testing.T) {
	f, sock := startFake(t)
	f.tasks["t-start"] = &apiv1.Task{Id: "t-start", VmId: "vm1", Op: "start", State: apiv1.TaskState_TASK_STATE_PENDING}
	f.tasks["t-shutdown"] = &apiv1.Task{Id: "t-shutdown", VmId: "vm1", Op: "shutdown", State: apiv1.TaskState_TASK_STATE_RUNNING}
	f.events = []*apiv1.WatchResponse{
		taskEvent(40, &apiv1.Task{Id: "t-start", Op: "start", State: apiv1.TaskState_TASK_STATE_FAILED}), // before the wait: not seen
		taskEvent(42, &apiv1.Task{Id: "t-other", Op: "pause", State: apiv1.TaskState_TASK_STATE_FAILED}),
		progressEvent(42, "t-start", 0.8),
		taskEvent(43, &apiv1.Task{Id: "t-start", VmId: "vm1", Op: "start", State: apiv1.TaskState_TASK_STATE_SUCCEEDED, Progress: 1}),
		taskEvent(44, &apiv1.Task{Id: "t-shutdown", VmId: "vm1", Op: "shutdown", State: apiv1.TaskState_TASK_STATE_FAILED,
			Error: &apiv1.TaskError{Code: "DEADLINE_EXCEEDED", Message: "guest did not shut down within 2s"}}),
	}
	out, errOut, code := xops(t, sock, "vm", "start", "vm1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want := "task t-start: start pending 0%\ntask t-start: start running 50%\ntask t-start: start running 80%\n" +
		"task t-start: start succeeded 100%\n"
	if errOut != want {
		t.Errorf("progress on stderr:\n%s\nwant:\n%s", errOut, want)
	}
	if strings.TrimSpace(out) != "start vm1: succeeded" {
		t.Errorf("stdout %q", out)
	}
	if w := f.watches[0]; w.GetAfterRevision() != 41 || !w.GetTaskProgress() {
		t.Errorf("watch request %v, want after 41 with task progress", w)
	}

	out, _, code = xops(t, sock, "vm", "start", "vm1", "--no-wait")
	if code != 0 || strings.TrimSpace(out) != "t-start" {
		t.Errorf("--no-wait: exit %d, stdout %q; want the task id", code, out)
	}

	// A task that fails: exit 1 with the task's error.
	_, errOut, code = xops(t, sock, "vm", "shutdown", "vm1", "--timeout", "2s", "--force")
	if code != 1 || !strings.Contains(errOut, "DEADLINE_EXCEEDED: guest did not shut down within 2s") {
		t.Errorf("failed task: exit %d, stderr %q", code, errOut)
	}
	if r := f.shutdown[0]; r.GetTimeout().AsDuration() != 2*time.Second || !r.GetForce() {
		t.Errorf("shutdown request %v", r)
	}
	_, errOut, code = xops(t, sock, "vm", "shutdown", "vm1", "--timeout", "-1s")
	if code != 2 || !strings.Contains(errOut, "--timeout") {
		t.Errorf("negative timeout: exit %d, stderr %q", code, errOut)
	}
}

// task wait survives the stream breaking (a daemon restart): it reconnects
// from the last revision it saw, re-reads the task, and sees it finish.
func TestTaskWaitReconnects(t *testing.T) {
	f, sock := startFake(t)
	f.tasks["t-long"] = &apiv1.Task{Id: "t-long", VmId: "vm1", Op: "start", State: apiv1.TaskState_TASK_STATE_RUNNING}
	f.events = []*apiv1.WatchResponse{
		vmEvent(42),
		progressEvent(42, "t-long", 0.7),
		taskEvent(43, &apiv1.Task{Id: "t-long", VmId: "vm1", Op: "start", State: apiv1.TaskState_TASK_STATE_SUCCEEDED, Progress: 1}),
	}
	f.breakAfter = 2
	out, errOut, code := xops(t, sock, "task", "wait", "t-long")
	if code != 0 || !strings.Contains(out, "succeeded") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
	want := "task t-long: start running 50%\ntask t-long: start running 70%\n" +
		"xopsctl: event stream ended (rpc error: code = Unavailable desc = daemon restarting); reconnecting from revision 42\n" +
		"task t-long: start running 50%\ntask t-long: start succeeded 100%\n"
	if errOut != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", errOut, want)
	}
	if len(f.watches) != 2 || f.watches[1].GetAfterRevision() != 42 {
		t.Errorf("watch requests %v, want a second one after 42", f.watches)
	}
}

func TestEventsWatch(t *testing.T) {
	f, sock := startFake(t)
	f.events = []*apiv1.WatchResponse{
		{Kind: &apiv1.WatchResponse_Resync{Resync: &apiv1.Resync{HeadRevision: 9}}},
		{Kind: &apiv1.WatchResponse_Event{Event: &apiv1.Event{Revision: 10, Change: &apiv1.Event_VmDeleted{VmDeleted: &apiv1.VMDeleted{Id: "gone"}}}}},
		{Kind: &apiv1.WatchResponse_Event{Event: &apiv1.Event{Revision: 11, Change: &apiv1.Event_TaskChanged{TaskChanged: &apiv1.Task{
			Id: "t1", VmId: "v1", Op: "start", State: apiv1.TaskState_TASK_STATE_RUNNING, Progress: 0.25}}}}},
		progressEvent(11, "t1", 0.4),
	}
	out, errOut, code := xops(t, sock, "events", "watch", "--after", "3", "--count", "2")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "resync") || !strings.Contains(errOut, "continuing from revision 9") {
		t.Errorf("resync not reported on stderr: %q", errOut)
	}
	for _, want := range []string{"vm-deleted", "gone", "task-changed", "op=start state=running progress=25%"} {
		if !strings.Contains(out, want) {
			t.Errorf("events table lacks %q:\n%s", want, out)
		}
	}
	out, _, code = xops(t, sock, "events", "watch", "--after", "10", "--count", "1", "-o", "json")
	wr := &apiv1.WatchResponse{}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	// The resync line, then one event.
	if code != 0 || len(lines) != 2 || protojson.Unmarshal([]byte(lines[1]), wr) != nil || wr.GetEvent().GetRevision() != 11 {
		t.Errorf("-o json: exit %d\n%s", code, out)
	}
	// Progress only when asked for.
	if strings.Contains(out, "taskProgress") || f.watches[len(f.watches)-1].GetTaskProgress() {
		t.Errorf("progress without --progress:\n%s", out)
	}
	out, _, code = xops(t, sock, "events", "watch", "--after", "10", "--count", "2", "--progress")
	if code != 0 || !strings.Contains(out, "task-progress") || !strings.Contains(out, "vm=vm1 progress=40%") {
		t.Errorf("--progress: exit %d\n%s", code, out)
	}
}

func TestNoDaemon(t *testing.T) {
	_, errOut, code := xops(t, filepath.Join(t.TempDir(), "none.sock"), "vm", "list")
	if code != 1 || !strings.Contains(errOut, "is the daemon running?") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
	t.Setenv("XOPSCTL_SOCKET", "/nonexistent/env.sock")
	var o, e bytes.Buffer
	code = run(context.Background(), []string{"host", "info"}, &o, &e)
	if code != 1 || !strings.Contains(e.String(), "/nonexistent/env.sock") {
		t.Errorf("XOPSCTL_SOCKET not used: exit %d, stderr %q", code, e.String())
	}
}

// A task that outlives --timeout: the wait ends with a hint, the task goes on.
func TestTaskWaitTimeLimit(t *testing.T) {
	f, sock := startFake(t)
	f.tasks["t-stuck"] = &apiv1.Task{Id: "t-stuck", VmId: "vm1", Op: "shutdown", State: apiv1.TaskState_TASK_STATE_RUNNING}
	_, errOut, code := xops(t, sock, "task", "wait", "t-stuck", "--timeout", "200ms")
	if code != 1 || !strings.Contains(errOut, "task t-stuck still running after the command's time limit; follow it with: xopsctl task wait t-stuck") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

// TestRelativeSocket: --socket may be relative to the working directory.
func TestRelativeSocket(t *testing.T) {
	_, sock := startFake(t)
	t.Chdir(filepath.Dir(filepath.Dir(sock)))
	rel := filepath.Join(filepath.Base(filepath.Dir(sock)), filepath.Base(sock))
	if _, errOut, code := xops(t, rel, "host", "info"); code != 0 {
		t.Fatalf("--socket %s: exit %d: %s", rel, code, errOut)
	}
}
