package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl/sim"
)

// TestDrainRecordsInterruptedTask stops the daemon while a shutdown task
// waits for a guest that ignores the request: after the drain deadline the
// task is recorded INTERRUPTED, and a restarted daemon reports it so.
func TestDrainRecordsInterruptedTask(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	state := filepath.Join(dir, "state")
	simDir := filepath.Join(state, "sim")
	t.Cleanup(func() { stopSimHost(t, simDir) })
	args := []string{"--backend=sim", "--socket", sock, "--state-dir", state, "--drain-timeout", "200ms"}
	d := startDaemon(t, args...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	vms := pb.NewVMServiceClient(dialUnix(t, sock))
	cr, err := vms.CreateVM(ctx, &pb.CreateVMRequest{Spec: &pb.VMSpec{Name: "stubborn", Type: pb.DomainType_DOMAIN_TYPE_PVH,
		MemoryStaticMax: 128 << 20, MemoryDynamicMin: 128 << 20, MemoryDynamicMax: 128 << 20, VcpusMax: 1, VcpusAtStartup: 1}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := vms.StartVM(ctx, &pb.StartVMRequest{Id: cr.Vm.Id, Wait: true})
	if err != nil || st.Task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("start: %v %v", st, err)
	}
	vm, err := vms.GetVM(ctx, &pb.GetVMRequest{Id: cr.Vm.Id})
	if err != nil {
		t.Fatal(err)
	}
	hc, err := simhost.Dial(ctx, simDir)
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	if err := hc.SetGuestBehaviour(ctx, xenctrl.Domid(vm.Vm.Domid), sim.GuestBehaviour{IgnoreShutdownRequests: true}); err != nil {
		t.Fatal(err)
	}
	sr, err := vms.ShutdownVM(ctx, &pb.ShutdownVMRequest{Id: cr.Vm.Id, Timeout: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	tasks := pb.NewTaskServiceClient(dialUnix(t, sock))
	// Wait (bounded) until the task runs, so that the stop interrupts it.
	for i := 0; ; i++ {
		g, err := tasks.GetTask(ctx, &pb.GetTaskRequest{Id: sr.Task.Id})
		if err != nil {
			t.Fatal(err)
		}
		if g.Task.State == pb.TaskState_TASK_STATE_RUNNING {
			break
		}
		if g.Task.State != pb.TaskState_TASK_STATE_PENDING || i == 1000 {
			t.Fatalf("shutdown task never ran: %v", g.Task)
		}
		time.Sleep(10 * time.Millisecond)
	}
	d.stop(t)

	startDaemon(t, args...)
	tasks = pb.NewTaskServiceClient(dialUnix(t, sock))
	g, err := tasks.GetTask(ctx, &pb.GetTaskRequest{Id: sr.Task.Id})
	if err != nil {
		t.Fatal(err)
	}
	if g.Task.State != pb.TaskState_TASK_STATE_INTERRUPTED || g.Task.Error.GetCode() != "ABORTED" || g.Task.Error.GetMessage() == "" {
		t.Errorf("task after drain and restart: %v", g.Task)
	}
	vms = pb.NewVMServiceClient(dialUnix(t, sock))
	after, err := vms.GetVM(ctx, &pb.GetVMRequest{Id: cr.Vm.Id})
	if err != nil {
		t.Fatal(err)
	}
	if after.Vm.PowerState != pb.PowerState_POWER_STATE_RUNNING || after.Vm.Domid != vm.Vm.Domid {
		t.Errorf("VM after restart: %v (was domid %d)", after.Vm, vm.Vm.Domid)
	}
}

// TestBinarySIGTERM runs the real binary and checks that SIGTERM stops it
// with exit status 0 and removes its socket.
func TestBinarySIGTERM(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemon binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "xenopsd-ng")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sock := filepath.Join(dir, "api.sock")
	state := filepath.Join(dir, "state")
	t.Cleanup(func() { stopSimHost(t, filepath.Join(state, "sim")) })
	var logs strings.Builder
	cmd := exec.Command(bin, "--backend=sim", "--socket", sock, "--state-dir", state, "--log-format", "json")
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	reaped := false // set once exited has been received from
	t.Cleanup(func() {
		if !reaped {
			cmd.Process.Kill()
			<-exited
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-exited:
			reaped = true
			t.Fatalf("daemon exited at start-up: %v\n%s", err, logs.String())
		case <-ctx.Done():
			t.Fatalf("no socket: %v\n%s", ctx.Err(), logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	h, err := pb.NewHostServiceClient(dialUnix(t, sock)).GetHost(ctx, &pb.GetHostRequest{})
	if err != nil || h.Host.Backend != pb.Backend_BACKEND_SIM {
		t.Fatalf("GetHost: %v %v", h, err)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		reaped = true
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, logs.String())
		}
	case <-ctx.Done():
		t.Fatalf("daemon ignored SIGTERM\n%s", logs.String())
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left: %v", err)
	}
	if !strings.Contains(logs.String(), `"msg":"xenopsd-ng stopped"`) {
		t.Errorf("logs lack the stop record:\n%s", logs.String())
	}
}
