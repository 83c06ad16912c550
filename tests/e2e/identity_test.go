package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/simhost"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
	"github.com/xenopsd-ng/xenopsd-ng/xenstore"
)

// TestIdentityAndOwnership checks, on the daemon and the CLI, the defects
// outside testers found: a VM name that is another VM's id (so that
// `vm delete X` picked a VM other than the one named X), caller keys
// overwriting the daemon's own xenstore nodes (control/shutdown powered the
// guest off, vm re-pointed the domain), keys xenstored refuses accepted and
// failing the start as INTERNAL, a new VM reading a deleted VM's console
// log by reusing its name, invalid UTF-8 answered as INTERNAL, a request_id
// reused with another spec returning the old VM, NIC MACs left empty, and a
// relative --socket.
func TestIdentityAndOwnership(t *testing.T) {
	bins := binaries(t)
	d := harness.StartDaemon(t, bins)
	c := newAPI(d.Conn())
	simc := d.Sim()
	ctx := testCtx(t, 3*time.Minute)

	t.Run("a name is never an id", func(t *testing.T) {
		victim := strings.TrimSpace(cli(t, d, "vm", "create", "--name", "victim", "--memory", "64M"))
		for _, name := range []string{victim, strings.ToUpper(victim)} {
			r := d.CLI("vm", "create", "--name", name, "--memory", "64M")
			if r.Code != 1 || !strings.Contains(r.Stderr, "INVALID_ARGUMENT") || !strings.Contains(r.Stderr, "spec.name") {
				t.Errorf("create named %s: exit %d, stderr %q; want INVALID_ARGUMENT on spec.name", name, r.Code, r.Stderr)
			}
		}
		cli(t, d, "vm", "delete", victim)
		if r := d.CLI("vm", "get", victim); r.Code != 1 || !strings.Contains(r.Stderr, "NOT_FOUND") {
			t.Errorf("get %s after deleting it: exit %d, stdout %q, stderr %q", victim, r.Code, r.Stdout, r.Stderr)
		}
	})

	t.Run("the daemon's xenstore keys are not the caller's", func(t *testing.T) {
		withData := func(field string, m map[string]string) *apiv1.VMSpec {
			s := spec("keys", 64<<20)
			if field == "platform" {
				s.Platform = m
			} else {
				s.XenstoreData = m
			}
			return s
		}
		cases := []struct {
			name  string
			spec  *apiv1.VMSpec
			field string
		}{
			{"control/shutdown", withData("", map[string]string{"control/shutdown": "poweroff"}), "spec.xenstore_data"},
			{"vm", withData("", map[string]string{"vm": "/vm/00000000-0000-4000-8000-000000000001"}), "spec.xenstore_data"},
			{"name", withData("", map[string]string{"name": "other"}), "spec.xenstore_data"},
			{"domid", withData("", map[string]string{"domid": "0"}), "spec.xenstore_data"},
			{"store ring", withData("", map[string]string{"store/ring-ref": "1"}), "spec.xenstore_data"},
			{"console port", withData("", map[string]string{"console/port": "1"}), "spec.xenstore_data"},
			{"memory target", withData("", map[string]string{"memory/target": "1"}), "spec.xenstore_data"},
			{"device", withData("", map[string]string{"device/vif/0/state": "4"}), "spec.xenstore_data"},
			{"key with a dot", withData("", map[string]string{"vm-data/a.b": "1"}), "spec.xenstore_data"},
			{"key with //", withData("", map[string]string{"vm-data//a": "1"}), "spec.xenstore_data"},
			{"value too long", withData("", map[string]string{"vm-data/a": strings.Repeat("v", 4097)}), "spec.xenstore_data[vm-data/a]"},
			{"unknown platform key", withData("platform", map[string]string{"viridian": "true"}), "spec.platform"},
			{"bad tsc_mode", withData("platform", map[string]string{"tsc_mode": "sometimes"}), "spec.platform[tsc_mode]"},
		}
		before := snapshot(t, c, simc)
		for _, tc := range cases {
			_, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: tc.spec})
			t.Run(tc.name, func(t *testing.T) { checkStatus(t, err, codes.InvalidArgument, tc.field) })
			if err == nil {
				c.vm.DeleteVM(ctx, &apiv1.DeleteVMRequest{Id: "keys"})
			}
		}
		if after := snapshot(t, c, simc); after != before {
			t.Errorf("state changed:\nbefore: %s\nafter:  %s", before, after)
		}

		// What is accepted lands where it should and the guest runs.
		s := spec("keys", 64<<20)
		s.XenstoreData = map[string]string{"vm-data/role": "db", "data/greeting": "hello"}
		s.Platform = map[string]string{"tsc_mode": "native"}
		if _, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: s}); err != nil {
			t.Fatal(err)
		}
		r, err := c.vm.StartVM(ctx, &apiv1.StartVMRequest{Id: "keys", Wait: true})
		mustSucceed(t, "start keys", r.GetTask(), err)
		vm := cliVM(t, d, "keys")
		xs, err := xenstore.Dial(ctx, simc.XenstoredPath())
		if err != nil {
			t.Fatal(err)
		}
		defer xs.Close()
		dom := fmt.Sprintf("/local/domain/%d", vm.GetDomid())
		for path, want := range map[string]string{
			dom + "/vm-data/role": "db", dom + "/data/greeting": "hello", dom + "/platform/tsc_mode": "native",
			dom + "/name": "keys", dom + "/vm": "/vm/" + vm.GetId(), dom + "/control/shutdown": "",
		} {
			if got, err := xs.Read(ctx, path); err != nil || string(got) != want {
				t.Errorf("%s = %q, %v; want %q", path, got, err, want)
			}
		}
		if power(vm.GetPowerState()) != "RUNNING" {
			t.Errorf("VM keys is %s", describeVM(vm))
		}
	})

	t.Run("a console log belongs to its VM", func(t *testing.T) {
		logPath := filepath.Join(d.SimDir, simhost.ConsoleDir, "guest-con-reuse.log")
		cli(t, d, "vm", "create", "--name", "con-reuse", "--memory", "64M")
		cli(t, d, "vm", "start", "con-reuse")
		eventually(t, time.Minute, func() string {
			b, _ := os.ReadFile(logPath)
			if !strings.Contains(string(b), simhost.BootMarker) {
				return "no boot marker in " + logPath
			}
			return ""
		})
		cli(t, d, "vm", "shutdown", "con-reuse")
		if got := cli(t, d, "vm", "console", "con-reuse"); !strings.Contains(got, simhost.BootMarker) {
			t.Fatalf("halted VM's console: %q", got)
		}
		cli(t, d, "vm", "delete", "con-reuse")
		if _, err := os.Stat(logPath); !os.IsNotExist(err) {
			t.Errorf("the deleted VM's console log is still there (%v)", err)
		}
		cli(t, d, "vm", "create", "--name", "con-reuse", "--memory", "64M")
		r := d.CLI("vm", "console", "con-reuse")
		if r.Code != 1 || !strings.Contains(r.Stderr, "NOT_FOUND") || strings.Contains(r.Stdout, simhost.BootMarker) {
			t.Errorf("console of a new VM reusing a deleted VM's name: exit %d, stdout %q, stderr %q; want NOT_FOUND and nothing of the old VM",
				r.Code, r.Stdout, r.Stderr)
		}

		// Renamed, a VM keeps its log; a new VM under the old name has none.
		cli(t, d, "vm", "start", "con-reuse")
		cli(t, d, "vm", "shutdown", "con-reuse")
		vm := cliVM(t, d, "con-reuse")
		vm.Spec.Name = "con-renamed"
		if _, err := c.vm.UpdateVM(ctx, &apiv1.UpdateVMRequest{Id: vm.GetId(), Spec: vm.GetSpec()}); err != nil {
			t.Fatal(err)
		}
		if got := cli(t, d, "vm", "console", "con-renamed"); !strings.Contains(got, simhost.BootMarker) {
			t.Errorf("console of the renamed VM: %q", got)
		}
		cli(t, d, "vm", "create", "--name", "con-reuse", "--memory", "64M")
		if r := d.CLI("vm", "console", "con-reuse"); r.Code != 1 || strings.Contains(r.Stdout, simhost.BootMarker) {
			t.Errorf("console of a new VM under a renamed VM's old name: exit %d, stdout %q, stderr %q", r.Code, r.Stdout, r.Stderr)
		}
	})

	t.Run("malformed requests are INVALID_ARGUMENT", func(t *testing.T) {
		field := func(num protowire.Number, v []byte) []byte {
			return protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
		}
		conn := d.Conn()
		for _, tc := range []struct {
			method string
			req    []byte
			want   string
		}{
			{"/xenopsd.v1.VMService/CreateVM", field(1, field(2, []byte("web\xff"))), "UTF-8"}, // spec.name
			{"/xenopsd.v1.VMService/GetVM", field(1, []byte("\xc3\x28")), "UTF-8"},             // id
			{"/xenopsd.v1.VMService/DeleteVM", []byte{0x0a, 0x7f, 'x'}, "malformed request"},   // truncated
		} {
			var out []byte
			err := conn.Invoke(ctx, tc.method, &tc.req, &out, grpc.ForceCodec(rawCodec{}))
			if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), tc.want) {
				t.Errorf("%s with %x: %v %q, want INVALID_ARGUMENT mentioning %q", tc.method, tc.req, st.Code(), st.Message(), tc.want)
			}
		}
	})

	t.Run("request_id with another spec", func(t *testing.T) {
		first, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec("req-a", 64<<20), RequestId: "e2e-req-1"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec("req-b", 64<<20), RequestId: "e2e-req-1"})
		if status.Code(err) != codes.AlreadyExists || errorInfoField(err) != "request_id" {
			t.Errorf("request_id reused with another spec: %v; want ALREADY_EXISTS on request_id", err)
		}
		again, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: spec("req-a", 64<<20), RequestId: "e2e-req-1"})
		if err != nil || again.GetVm().GetId() != first.GetVm().GetId() {
			t.Errorf("retry with the same spec: %v, %v; want VM %s", again.GetVm().GetId(), err, first.GetVm().GetId())
		}
	})

	t.Run("relative --socket", func(t *testing.T) {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(cctx, bins.CLI, "--socket", filepath.Base(d.Socket), "host", "info")
		cmd.Dir = filepath.Dir(d.Socket)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("xopsctl --socket %s (in %s): %v\n%s", filepath.Base(d.Socket), cmd.Dir, err, out)
		}
	})

	t.Run("empty MACs are generated and kept", func(t *testing.T) {
		s := spec("macs", 64<<20)
		s.Nics = []*apiv1.NIC{{Bridge: "xenbr0"}, {Bridge: "xenbr0"}}
		resp, err := c.vm.CreateVM(ctx, &apiv1.CreateVMRequest{Spec: s})
		if err != nil {
			t.Fatal(err)
		}
		macRE := regexp.MustCompile(`^00:16:3e:[0-7][0-9a-f](:[0-9a-f]{2}){2}$`)
		nics := resp.GetVm().GetSpec().GetNics()
		if len(nics) != 2 || !macRE.MatchString(nics[0].GetMac()) || !macRE.MatchString(nics[1].GetMac()) || nics[0].GetMac() == nics[1].GetMac() {
			t.Fatalf("NICs after create: %v", nics)
		}
		d.Stop()
		d.Start()
		got := cliVM(t, d, "macs").GetSpec().GetNics()
		for i := range nics {
			if got[i].GetMac() != nics[i].GetMac() {
				t.Errorf("nic %d MAC %q after a restart, was %q", i, got[i].GetMac(), nics[i].GetMac())
			}
		}
	})
}

// rawCodec sends bytes as they are: what the protobuf library would refuse
// to marshal (invalid UTF-8 in a string).
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// errorInfoField is the "field" metadata of the status's ErrorInfo.
func errorInfoField(err error) string {
	for _, det := range status.Convert(err).Details() {
		if info, ok := det.(*errdetails.ErrorInfo); ok {
			return info.GetMetadata()["field"]
		}
	}
	return ""
}
