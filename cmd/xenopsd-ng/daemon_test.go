package main

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/internal/testcert"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
)

// TestMain lets the test binary act as `xenopsd-ng sim-host`, which the sim
// backend starts through os.Executable().
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "sim-host" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stderr))
	}
	os.Exit(m.Run())
}

// daemon is one in-process run of runDaemon.
type daemon struct {
	cancel context.CancelFunc
	done   chan error
	addrs  []string
}

func startDaemon(t *testing.T, args ...string) *daemon {
	t.Helper()
	cfg, err := parseFlags(args, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	d := &daemon{cancel: cancel, done: make(chan error, 1)}
	ready := make(chan []string, 1)
	go func() { d.done <- runDaemon(ctx, cfg, log, func(a []string) { ready <- a }) }()
	select {
	case d.addrs = <-ready:
	case err := <-d.done:
		cancel()
		t.Fatalf("daemon exited during start-up: %v", err)
	case <-time.After(2 * time.Minute):
		cancel()
		t.Fatal("daemon did not come up within 2 minutes")
	}
	t.Cleanup(func() { d.stop(t) })
	return d
}

// stop cancels the daemon (as SIGTERM does) and waits for a clean return.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if d.cancel == nil {
		return
	}
	d.cancel()
	d.cancel = nil
	select {
	case err := <-d.done:
		if err != nil {
			t.Errorf("daemon stopped with %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Error("daemon did not stop within 2 minutes")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func stopSimHost(t *testing.T, dir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := simhost.Dial(ctx, dir)
	if err != nil {
		return // not running
	}
	defer c.Close()
	if err := c.Stop(ctx); err != nil {
		t.Errorf("stop sim host: %v", err)
	}
}

func dialUnix(t *testing.T, path string) *grpc.ClientConn {
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestDaemonOnSimulator(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "api.sock")
	state := filepath.Join(dir, "state")
	simDir := filepath.Join(state, "sim")
	t.Cleanup(func() { stopSimHost(t, simDir) })
	ca := testcert.NewCA(t, dir)
	server, client := ca.Server(t, "daemon"), ca.Client(t, "operator")
	args := []string{"--backend=sim", "--socket", sock, "--state-dir", state, "--workers", "4",
		"--listen", "127.0.0.1:0", "--tls-cert", server.CertFile, "--tls-key", server.KeyFile, "--tls-client-ca", ca.File}
	d := startDaemon(t, args...)
	if len(d.addrs) != 2 || d.addrs[0] != sock {
		t.Fatalf("serving %q", d.addrs)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn := dialUnix(t, sock)

	hc, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "xenopsd.v1.VMService"})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hc, err)
	}
	checkReflection(t, ctx, conn)

	host, err := pb.NewHostServiceClient(conn).GetHost(ctx, &pb.GetHostRequest{})
	if err != nil {
		t.Fatal(err)
	}
	h := host.Host
	if h.Backend != pb.Backend_BACKEND_SIM || h.HypervisorVersionMajor != 4 || h.HypervisorVersionMinor != 17 ||
		h.TotalMemoryBytes == 0 || h.FreeMemoryBytes > h.TotalMemoryBytes || h.NrCpus == 0 || h.DaemonVersion == "" {
		t.Errorf("host = %v", h)
	}

	vms := pb.NewVMServiceClient(conn)
	spec := &pb.VMSpec{Name: "alpha", Type: pb.DomainType_DOMAIN_TYPE_PVH, MemoryStaticMax: 256 << 20,
		MemoryDynamicMin: 256 << 20, MemoryDynamicMax: 256 << 20, VcpusMax: 1, VcpusAtStartup: 1}
	cr, err := vms.CreateVM(ctx, &pb.CreateVMRequest{Spec: spec, RequestId: "create-alpha"})
	if err != nil {
		t.Fatal(err)
	}
	id := cr.Vm.Id
	if cr.Vm.PowerState != pb.PowerState_POWER_STATE_HALTED || cr.Vm.Spec.Uuid != id || id == "" {
		t.Errorf("created %v", cr.Vm)
	}
	again, err := vms.CreateVM(ctx, &pb.CreateVMRequest{Spec: spec, RequestId: "create-alpha"})
	if err != nil || again.Vm.Id != id {
		t.Errorf("retried create: %v, %v (want id %s)", again, err, id)
	}
	// Core validation reaches the client with the field named.
	bad := &pb.VMSpec{Name: "beta", Type: pb.DomainType_DOMAIN_TYPE_PVH, MemoryStaticMax: 256 << 20,
		MemoryDynamicMin: 512 << 20, MemoryDynamicMax: 256 << 20, VcpusMax: 1, VcpusAtStartup: 1}
	_, err = vms.CreateVM(ctx, &pb.CreateVMRequest{Spec: bad})
	if f := badField(err); status.Code(err) != codes.InvalidArgument || f != "spec.memory_dynamic_min" {
		t.Errorf("dynamic_min > static_max: %v (field %q)", err, f)
	}

	expect := func(want pb.PowerState) *pb.VM {
		t.Helper()
		g, err := vms.GetVM(ctx, &pb.GetVMRequest{Id: "alpha"})
		if err != nil {
			t.Fatal(err)
		}
		if g.Vm.PowerState != want {
			t.Fatalf("power state %v, want %v (vm %v)", g.Vm.PowerState, want, g.Vm)
		}
		return g.Vm
	}
	succeeded := func(task *pb.Task, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if task.State != pb.TaskState_TASK_STATE_SUCCEEDED {
			t.Fatalf("task %v", task)
		}
	}
	st, err := vms.StartVM(ctx, &pb.StartVMRequest{Id: "alpha", Wait: true})
	succeeded(st.GetTask(), err)
	running := expect(pb.PowerState_POWER_STATE_RUNNING)
	if running.Domid == 0 {
		t.Errorf("running VM without a domid: %v", running)
	}
	pr, err := vms.PauseVM(ctx, &pb.PauseVMRequest{Id: id, Wait: true})
	succeeded(pr.GetTask(), err)
	expect(pb.PowerState_POWER_STATE_PAUSED)
	_, err = vms.DeleteVM(ctx, &pb.DeleteVMRequest{Id: id})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("delete of a paused VM: %v", err)
	}
	ur, err := vms.UnpauseVM(ctx, &pb.UnpauseVMRequest{Id: id, Wait: true})
	succeeded(ur.GetTask(), err)
	expect(pb.PowerState_POWER_STATE_RUNNING)

	// TLS listener: works with the CA and a client certificate it signed,
	// refuses a client without a certificate and plaintext.
	tlsConn, err := grpc.NewClient(d.addrs[1], grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: ca.Pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{client.TLS(t)}})))
	if err != nil {
		t.Fatal(err)
	}
	defer tlsConn.Close()
	if _, err := pb.NewHostServiceClient(tlsConn).GetHost(ctx, &pb.GetHostRequest{}); err != nil {
		t.Errorf("GetHost over TLS: %v", err)
	}
	for name, creds := range map[string]credentials.TransportCredentials{
		"plaintext":                 insecure.NewCredentials(),
		"TLS without a client cert": credentials.NewTLS(&tls.Config{RootCAs: ca.Pool, ServerName: "127.0.0.1"}),
	} {
		c, err := grpc.NewClient(d.addrs[1], grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		defer pcancel()
		if _, err := pb.NewHostServiceClient(c).GetHost(pctx, &pb.GetHostRequest{}); err == nil {
			t.Errorf("%s call on the TLS listener succeeded", name)
		}
	}

	// Restart (as after SIGTERM): the running VM and its domain are still there.
	d.stop(t)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after a clean stop: %v", err)
	}
	startDaemon(t, "--backend=sim", "--socket", sock, "--state-dir", state, "--workers", "4")
	conn = dialUnix(t, sock)
	vms = pb.NewVMServiceClient(conn)
	after := expect(pb.PowerState_POWER_STATE_RUNNING)
	if after.Domid != running.Domid {
		t.Errorf("domid %d after restart, was %d", after.Domid, running.Domid)
	}
	// Events from the start: every change of alpha, in revision order.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	stream, err := pb.NewEventServiceClient(conn).Watch(wctx, &pb.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if first.GetEvent().GetRevision() != 1 && first.GetResync() == nil {
		t.Errorf("first event from revision 0: %v", first)
	}
	dr, err := vms.DestroyVM(ctx, &pb.DestroyVMRequest{Id: id, Wait: true})
	succeeded(dr.GetTask(), err)
	expect(pb.PowerState_POWER_STATE_HALTED)
	if _, err := vms.DeleteVM(ctx, &pb.DeleteVMRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	for last := first.GetEvent().GetRevision(); ; {
		r, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		e := r.GetEvent()
		if e.GetRevision() <= last && last != 0 {
			t.Fatalf("revision %d after %d", e.GetRevision(), last)
		}
		last = e.GetRevision()
		if e.GetVmDeleted().GetId() == id {
			break
		}
	}
}

func checkReflection(t *testing.T, ctx context.Context, conn *grpc.ClientConn) {
	t.Helper()
	s, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer s.CloseSend()
	if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, svc := range r.GetListServicesResponse().GetService() {
		have[svc.Name] = true
	}
	for _, want := range []string{"xenopsd.v1.HostService", "xenopsd.v1.VMService", "xenopsd.v1.TaskService",
		"xenopsd.v1.EventService", "grpc.health.v1.Health"} {
		if !have[want] {
			t.Errorf("reflection does not list %s (has %v)", want, have)
		}
	}
}

func badField(err error) string {
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok && len(br.FieldViolations) > 0 {
			return br.FieldViolations[0].Field
		}
	}
	return ""
}
