package e2e

import (
	"context"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
	"github.com/xenopsd-ng/xenopsd-ng/xenctrl"
)

// cli runs xopsctl and fails the test unless it exits 0.
func cli(t *testing.T, d *harness.Daemon, args ...string) string {
	t.Helper()
	r := d.CLI(args...)
	if r.Code != 0 {
		t.Fatalf("xopsctl %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), r.Code, r.Stdout, r.Stderr)
	}
	return r.Stdout
}

// cliVM reads a VM through `xopsctl vm get REF -o json`, decoding the
// API's protobuf JSON mapping.
func cliVM(t *testing.T, d *harness.Daemon, ref string) *apiv1.VM {
	t.Helper()
	out := cli(t, d, "vm", "get", ref, "-o", "json")
	vm := &apiv1.VM{}
	if err := protojson.Unmarshal([]byte(out), vm); err != nil {
		t.Fatalf("vm get -o json printed something that is not a VM: %v\n%s", err, out)
	}
	return vm
}

// handleOf is the 16-byte domain handle of a VM UUID.
func handleOf(t *testing.T, uuid string) xenctrl.Handle {
	t.Helper()
	var h xenctrl.Handle
	b, err := hex.DecodeString(strings.ReplaceAll(uuid, "-", ""))
	if err != nil || len(b) != 16 {
		t.Fatalf("VM id %q is not a UUID", uuid)
	}
	copy(h[:], b)
	return h
}

// guestDomains lists the sim host's domains other than dom0, keyed by
// handle; it fails the test if two live domains share a handle.
func guestDomains(t *testing.T, hv xenctrl.Hypervisor) map[xenctrl.Handle]xenctrl.DomainInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	list, err := hv.ListDomains(ctx)
	if err != nil {
		t.Fatalf("sim host ListDomains: %v", err)
	}
	out := make(map[xenctrl.Handle]xenctrl.DomainInfo)
	for _, di := range list {
		if di.Domid == 0 {
			continue
		}
		if prev, dup := out[di.Handle]; dup {
			t.Fatalf("two domains with handle %x: %d and %d", di.Handle, prev.Domid, di.Domid)
		}
		out[di.Handle] = di
	}
	return out
}

// eventually polls cond every 50ms until it returns "" or limit passes; then
// it fails the test with cond's last complaint. Used only for things that
// happen asynchronously by design (a dying domain being released); never to
// assert on timing.
func eventually(t *testing.T, limit time.Duration, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		msg := cond()
		if msg == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still not true after %v: %s", limit, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// api bundles the gRPC stubs for one connection.
type api struct {
	vm    apiv1.VMServiceClient
	task  apiv1.TaskServiceClient
	event apiv1.EventServiceClient
	host  apiv1.HostServiceClient
}

func newAPI(conn *grpc.ClientConn) *api {
	return &api{
		vm: apiv1.NewVMServiceClient(conn), task: apiv1.NewTaskServiceClient(conn),
		event: apiv1.NewEventServiceClient(conn), host: apiv1.NewHostServiceClient(conn),
	}
}

// testCtx is a context bounded by limit and by the test's own deadline.
func testCtx(t *testing.T, limit time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	t.Cleanup(cancel)
	return ctx
}

func spec(name string, mem uint64) *apiv1.VMSpec {
	return &apiv1.VMSpec{
		Name: name, Type: apiv1.DomainType_DOMAIN_TYPE_PVH,
		MemoryStaticMax: mem, MemoryDynamicMin: mem, MemoryDynamicMax: mem,
		VcpusMax: 1, VcpusAtStartup: 1,
	}
}

func mustSucceed(t *testing.T, what string, task *apiv1.Task, err error) *apiv1.Task {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if task.GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Fatalf("%s: task %s ended %v: %v", what, task.GetId(), task.GetState(), task.GetError())
	}
	return task
}

func power(s apiv1.PowerState) string { return strings.TrimPrefix(s.String(), "POWER_STATE_") }

func describeVM(vm *apiv1.VM) string {
	return fmt.Sprintf("%s (%s) %s domid %d", vm.GetSpec().GetName(), vm.GetId(), power(vm.GetPowerState()), vm.GetDomid())
}
