package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/console"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
)

const consoleVMID = "0b8e1d2c-3f4a-4b5c-8d6e-7f8091a2b3c4"

func (f *fakeManager) setPower(id string, p domain.PowerState, domid uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm := f.vms[id]
	vm.Power, vm.Domid = p, domid
	f.vms[id] = vm
}

// consoleSetup serves the API on a fake manager holding one VM "web-1" and
// a console log directory.
func consoleSetup(t *testing.T) (*fakeManager, clients, *console.Logs) {
	t.Helper()
	f := newFake()
	f.vms[consoleVMID] = domain.VM{ID: consoleVMID, Spec: domain.Spec{UUID: consoleVMID, Name: "web-1"}, Power: domain.Halted}
	logs := &console.Logs{Dir: t.TempDir(), PollInterval: 5 * time.Millisecond, GoneGrace: 20 * time.Millisecond}
	return f, serve(t, f, Options{Console: logs}), logs
}

// readConsole reads a StreamConsole stream to its end.
func readConsole(ctx context.Context, c clients, req *pb.StreamConsoleRequest) (string, []*pb.StreamConsoleResponse, error) {
	st, err := c.vm.StreamConsole(ctx, req)
	if err != nil {
		return "", nil, err
	}
	var b bytes.Buffer
	var rs []*pb.StreamConsoleResponse
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return b.String(), rs, nil
		}
		if err != nil {
			return b.String(), rs, err
		}
		b.Write(r.GetData())
		rs = append(rs, r)
	}
}

func TestStreamConsoleErrors(t *testing.T) {
	_, c, _ := consoleSetup(t)
	ctx := ctxT(t)
	for _, tc := range []struct {
		name  string
		req   *pb.StreamConsoleRequest
		code  codes.Code
		field string
	}{
		{"no id", &pb.StreamConsoleRequest{}, codes.InvalidArgument, "id"},
		{"no such VM", &pb.StreamConsoleRequest{Id: "nosuch"}, codes.NotFound, ""},
		{"no log yet", &pb.StreamConsoleRequest{Id: "web-1"}, codes.NotFound, "id"},
		{"no log, halted, follow", &pb.StreamConsoleRequest{Id: "web-1", Follow: true}, codes.NotFound, "id"},
		{"tail and offset", &pb.StreamConsoleRequest{Id: "web-1", TailBytes: 1, Offset: 1}, codes.InvalidArgument, "tail_bytes"},
	} {
		_, _, err := readConsole(ctx, c, tc.req)
		code, field, info := details(t, err)
		if field == "" {
			field = info.GetMetadata()["field"]
		}
		if code != tc.code || field != tc.field {
			t.Errorf("%s: %v (field %q), want %v field %q", tc.name, err, field, tc.code, tc.field)
		}
	}

	// A daemon without a console directory says so.
	noConsole := serve(t, newFake(), Options{})
	_, _, err := readConsole(ctx, noConsole, &pb.StreamConsoleRequest{Id: "x"})
	if code, _, _ := details(t, err); code != codes.FailedPrecondition {
		t.Errorf("no console dir: %v, want FAILED_PRECONDITION", err)
	}
}

func TestStreamConsoleReadAndFollow(t *testing.T) {
	f, c, logs := consoleSetup(t)
	ctx := ctxT(t)
	path := filepath.Join(logs.Dir, console.FileName("web-1"))
	const boot = "Linux version 6.1\nSIM-GUEST-BOOTED domid=7\n"
	if err := os.WriteFile(path, []byte(boot), 0o600); err != nil {
		t.Fatal(err)
	}
	// By name and by id, whole log, tail, offset beyond the end.
	for _, id := range []string{"web-1", consoleVMID} {
		got, rs, err := readConsole(ctx, c, &pb.StreamConsoleRequest{Id: id})
		if err != nil || got != boot {
			t.Fatalf("read %s: %q, %v", id, got, err)
		}
		if last := rs[len(rs)-1]; last.GetNextOffset() != uint64(len(boot)) {
			t.Errorf("next_offset %d, want %d", last.GetNextOffset(), len(boot))
		}
	}
	got, _, err := readConsole(ctx, c, &pb.StreamConsoleRequest{Id: "web-1", TailBytes: 8})
	if err != nil || got != boot[len(boot)-8:] {
		t.Fatalf("tail: %q, %v", got, err)
	}
	_, _, err = readConsole(ctx, c, &pb.StreamConsoleRequest{Id: "web-1", Offset: 1000})
	if code, field, _ := details(t, err); code != codes.InvalidArgument || field != "offset" {
		t.Fatalf("offset beyond end: %v", err)
	}

	// Follow a running VM from where the read ended; output until the
	// domain goes is delivered, then the stream ends by itself.
	f.setPower(consoleVMID, domain.Running, 7)
	st, err := c.vm.StreamConsole(ctx, &pb.StreamConsoleRequest{Id: "web-1", Follow: true, Offset: uint64(len(boot))})
	if err != nil {
		t.Fatal(err)
	}
	appendFile(t, path, "hello from the guest\n")
	r, err := st.Recv()
	if err != nil || string(r.GetData()) != "hello from the guest\n" || r.GetOffset() != uint64(len(boot)) {
		t.Fatalf("followed chunk %v, %v", r, err)
	}
	appendFile(t, path, "reboot: Power down\n")
	f.setPower(consoleVMID, domain.Halted, 0)
	var rest bytes.Buffer
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("follow ended with %v", err)
		}
		rest.Write(r.GetData())
	}
	if rest.String() != "reboot: Power down\n" {
		t.Fatalf("last output %q", rest.String())
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	fh, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := fh.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

// TestStreamConsoleRealSim: the real core on a sim host. Following a VM's
// console from its start shows the simulated guest's boot marker; a clean
// shutdown shows the guest's last words and ends the follow; the log then
// stays readable (post-mortem).
func TestStreamConsoleRealSim(t *testing.T) {
	m, hc := realManager(t)
	logs := &console.Logs{Dir: filepath.Join(hc.Dir(), simhost.ConsoleDir), PollInterval: 10 * time.Millisecond}
	c := serve(t, m, Options{Console: logs})
	ctx := ctxT(t)
	if _, err := c.vm.CreateVM(ctx, &pb.CreateVMRequest{Spec: goodSpec("con-1", 128<<20)}); err != nil {
		t.Fatal(err)
	}
	if r, err := c.vm.StartVM(ctx, &pb.StartVMRequest{Id: "con-1", Wait: true}); err != nil || r.Task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("start: %v %v", r, err)
	}
	vm, err := c.vm.GetVM(ctx, &pb.GetVMRequest{Id: "con-1"})
	if err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("%s domid=%d\n", simhost.BootMarker, vm.Vm.GetDomid())

	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := c.vm.StreamConsole(fctx, &pb.StreamConsoleRequest{Id: "con-1", Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	for !strings.Contains(got.String(), marker) {
		r, err := st.Recv()
		if err != nil {
			t.Fatalf("console ended (%v) before the marker %q; got %q", err, marker, got.String())
		}
		got.Write(r.GetData())
	}
	sd, err := c.vm.ShutdownVM(ctx, &pb.ShutdownVMRequest{Id: "con-1", Wait: true})
	if err != nil || sd.Task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("shutdown: %v %v", sd, err)
	}
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("follow of a halted VM ended with %v, want the end of the stream", err)
		}
		got.Write(r.GetData())
	}
	if !strings.Contains(got.String(), "reboot: Power down\n") {
		t.Fatalf("no shutdown line in %q", got.String())
	}
	post, _, err := readConsole(ctx, c, &pb.StreamConsoleRequest{Id: "con-1"})
	if err != nil || post != got.String() {
		t.Fatalf("post-mortem read %q, %v; want %q", post, err, got.String())
	}
}

// TestConsoleLogFollowsTheVM: renaming a VM moves its log, deleting it
// removes the log, and a log older than the VM reading it is not served.
func TestConsoleLogFollowsTheVM(t *testing.T) {
	f, c, logs := consoleSetup(t)
	ctx := ctxT(t)
	path := func(name string) string { return filepath.Join(logs.Dir, console.FileName(name)) }
	if err := os.WriteFile(path("web-1"), []byte("web-1 output\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.vm.UpdateVM(ctx, &pb.UpdateVMRequest{Id: "web-1", Spec: &pb.VMSpec{Name: "web-2"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path("web-1")); !os.IsNotExist(err) {
		t.Errorf("log under the old name after a rename: %v", err)
	}
	if got, _, err := readConsole(ctx, c, &pb.StreamConsoleRequest{Id: "web-2"}); err != nil || got != "web-1 output\n" {
		t.Errorf("console after a rename: %q, %v", got, err)
	}
	if _, err := c.vm.DeleteVM(ctx, &pb.DeleteVMRequest{Id: "web-2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path("web-2")); !os.IsNotExist(err) {
		t.Errorf("log of a deleted VM still there: %v", err)
	}

	// A log last written before the VM existed is an earlier VM's.
	if err := os.WriteFile(path("web-3"), []byte("earlier VM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(path("web-3"), old, old); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.vms[consoleVMID] = domain.VM{ID: consoleVMID, Spec: domain.Spec{UUID: consoleVMID, Name: "web-3"}, Power: domain.Halted, CreatedAt: time.Now()}
	f.mu.Unlock()
	got, _, err := readConsole(ctx, c, &pb.StreamConsoleRequest{Id: "web-3"})
	if code, _, _ := details(t, err); code != codes.NotFound || got != "" {
		t.Errorf("console of a VM newer than its log: %q, %v; want NOT_FOUND", got, err)
	}
	// Starting the VM clears that log, so its guest does not append to it.
	if _, err := c.vm.StartVM(ctx, &pb.StartVMRequest{Id: "web-3"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path("web-3")); !os.IsNotExist(err) {
		t.Errorf("an earlier VM's log is still there after the start: %v", err)
	}
}
