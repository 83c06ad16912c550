package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"sigs.k8s.io/yaml"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/tests/e2e/harness"
)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// TestLifecycle drives the real daemon with the real xopsctl through
// create → start → pause → unpause → shutdown → start → destroy → delete,
// checking the VM's power state (vm get -o json) and the simulated
// hypervisor's domains after every step.
func TestLifecycle(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	sim := d.Sim()

	host := cli(t, d, "host", "info")
	if !strings.Contains(host, "backend:") || !strings.Contains(host, "sim") {
		t.Errorf("host info does not say the backend is sim:\n%s", host)
	}

	id := strings.TrimSpace(cli(t, d, "vm", "create", "--name", "web1", "--memory", "256M", "--vcpus", "2", "--type", "pvh"))
	if !uuidRE.MatchString(id) {
		t.Fatalf("vm create printed %q, want the new VM's id", id)
	}
	vm := cliVM(t, d, "web1")
	if vm.GetId() != id || vm.GetPowerState() != apiv1.PowerState_POWER_STATE_HALTED {
		t.Fatalf("after create: %s, want %s halted", describeVM(vm), id)
	}
	s := vm.GetSpec()
	if s.GetMemoryStaticMax() != 256<<20 || s.GetVcpusMax() != 2 || s.GetVcpusAtStartup() != 2 ||
		s.GetType() != apiv1.DomainType_DOMAIN_TYPE_PVH {
		t.Errorf("spec not as created: %v", s)
	}
	if n := len(guestDomains(t, sim)); n != 0 {
		t.Fatalf("a halted VM has %d domains on the host", n)
	}
	h := handleOf(t, id)

	// expect checks the VM's power state through the CLI and its domain on
	// the sim host; it returns the domid.
	expect := func(step string, want apiv1.PowerState) uint32 {
		t.Helper()
		vm := cliVM(t, d, id)
		if vm.GetPowerState() != want {
			t.Fatalf("after %s: %s, want %s", step, describeVM(vm), power(want))
		}
		doms := guestDomains(t, sim)
		if want == apiv1.PowerState_POWER_STATE_HALTED {
			if vm.GetDomid() != 0 {
				t.Errorf("after %s: halted VM reports domid %d", step, vm.GetDomid())
			}
			// A destroyed domain is released asynchronously (dying first).
			eventually(t, 10*time.Second, func() string {
				if di, ok := guestDomains(t, sim)[h]; ok {
					return step + ": the domain of a halted VM is still on the host: domid " + strconv.Itoa(int(di.Domid))
				}
				return ""
			})
			return 0
		}
		di, ok := doms[h]
		if !ok {
			t.Fatalf("after %s: no domain with the VM's handle on the host (%d domains)", step, len(doms))
		}
		if uint32(di.Domid) != vm.GetDomid() {
			t.Errorf("after %s: VM says domid %d, host has domid %d", step, vm.GetDomid(), di.Domid)
		}
		if len(doms) != 1 {
			t.Errorf("after %s: %d guest domains on the host, want 1", step, len(doms))
		}
		if paused := want == apiv1.PowerState_POWER_STATE_PAUSED; di.Paused != paused || di.Shutdown || di.Dying {
			t.Errorf("after %s: domain paused=%t shutdown=%t dying=%t, want paused=%t", step, di.Paused, di.Shutdown, di.Dying, paused)
		}
		if di.MaxPages*4096 < 256<<20 {
			t.Errorf("after %s: domain max_pages %d is below the VM's 256M", step, di.MaxPages)
		}
		return vm.GetDomid()
	}

	out := cli(t, d, "vm", "start", "web1")
	if !strings.Contains(out, "succeeded") {
		t.Errorf("vm start printed %q, want a line saying it succeeded", out)
	}
	domid := expect("start", apiv1.PowerState_POWER_STATE_RUNNING)
	if domid == 0 {
		t.Fatal("running VM has domid 0")
	}
	cli(t, d, "vm", "pause", id)
	if got := expect("pause", apiv1.PowerState_POWER_STATE_PAUSED); got != domid {
		t.Errorf("pause changed the domid from %d to %d", domid, got)
	}
	cli(t, d, "vm", "unpause", "web1")
	expect("unpause", apiv1.PowerState_POWER_STATE_RUNNING)
	// The simulated guest acknowledges the clean shutdown request.
	cli(t, d, "vm", "shutdown", "web1", "--timeout", "30s")
	expect("shutdown", apiv1.PowerState_POWER_STATE_HALTED)
	cli(t, d, "vm", "start", id)
	expect("second start", apiv1.PowerState_POWER_STATE_RUNNING)
	cli(t, d, "vm", "destroy", "web1")
	expect("destroy", apiv1.PowerState_POWER_STATE_HALTED)

	// Every lifecycle task is recorded and succeeded, in order.
	tasks := &apiv1.ListTasksResponse{}
	if err := protojson.Unmarshal([]byte(cli(t, d, "task", "list", "--vm", "web1", "-o", "json")), tasks); err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks.GetTasks() {
		if tk.GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED || tk.GetVmId() != id {
			t.Errorf("task %s %s of %s: %v, want succeeded", tk.GetId(), tk.GetOp(), tk.GetVmId(), tk.GetState())
		}
	}
	if got, want := strings.Join(sortedByCreate(tasks.GetTasks()), " "), "start pause unpause shutdown start destroy"; got != want {
		t.Errorf("tasks of web1 = %q, want %q", got, want)
	}

	// The API takes a name wherever it takes a VM id, ListTasks included.
	byName, err := newAPI(d.Conn()).task.ListTasks(testCtx(t, 30*time.Second), &apiv1.ListTasksRequest{VmId: "web1"})
	if err != nil || len(byName.GetTasks()) != len(tasks.GetTasks()) {
		t.Errorf("ListTasks{vm_id: name}: %d tasks, %v; want %d", len(byName.GetTasks()), err, len(tasks.GetTasks()))
	}

	cli(t, d, "vm", "delete", "web1")
	r := d.CLI("vm", "get", id)
	if r.Code != 1 || !strings.Contains(r.Stderr, "NOT_FOUND") {
		t.Errorf("vm get after delete: exit %d, stderr %q; want exit 1 and NOT_FOUND", r.Code, r.Stderr)
	}
	if out := cli(t, d, "vm", "list"); strings.Contains(out, id) {
		t.Errorf("vm list still shows the deleted VM:\n%s", out)
	}
}

func sortedByCreate(tasks []*apiv1.Task) []string {
	ts := append([]*apiv1.Task(nil), tasks...)
	// Stable insertion sort on create_time (ids are not ordered).
	for i := 1; i < len(ts); i++ {
		for j := i; j > 0 && ts[j].GetCreateTime().AsTime().Before(ts[j-1].GetCreateTime().AsTime()); j-- {
			ts[j], ts[j-1] = ts[j-1], ts[j]
		}
	}
	ops := make([]string, len(ts))
	for i, tk := range ts {
		ops[i] = tk.GetOp()
	}
	return ops
}

// TestCLIOutputsAndSpecFile covers vm create -f (YAML and JSON), --request-id
// idempotency, --no-wait with task wait, the table/json/yaml outputs and
// events watch through the CLI.
func TestCLIOutputsAndSpecFile(t *testing.T) {
	d := harness.StartDaemon(t, binaries(t))
	dir := t.TempDir()

	yamlSpec := filepath.Join(dir, "db.yaml")
	if err := os.WriteFile(yamlSpec, []byte(`name: db1
type: DOMAIN_TYPE_PV
memory_static_max: 536870912
memory_dynamic_min: 268435456
memory_dynamic_max: 536870912
vcpus_max: 4
vcpus_at_startup: 2
cmdline: console=hvc0
platform:
  tsc_mode: "default"
xenstore_data:
  vm-data/role: database
on_crash: LIFECYCLE_ACTION_PRESERVE
`), 0o644); err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(cli(t, d, "vm", "create", "-f", yamlSpec))
	vm := cliVM(t, d, id)
	s := vm.GetSpec()
	if s.GetName() != "db1" || s.GetType() != apiv1.DomainType_DOMAIN_TYPE_PV || s.GetMemoryDynamicMin() != 256<<20 ||
		s.GetVcpusMax() != 4 || s.GetVcpusAtStartup() != 2 || s.GetPlatform()["tsc_mode"] != "default" ||
		s.GetXenstoreData()["vm-data/role"] != "database" || s.GetOnCrash() != apiv1.LifecycleAction_LIFECYCLE_ACTION_PRESERVE {
		t.Errorf("spec from YAML not kept: %v", s)
	}

	// JSON spec with a flag overriding the name, and idempotent create.
	jsonSpec := filepath.Join(dir, "w.json")
	if err := os.WriteFile(jsonSpec, []byte(`{"name":"ignored","type":"DOMAIN_TYPE_PVH","memoryStaticMax":"134217728",
		"memoryDynamicMin":"134217728","memoryDynamicMax":"134217728","vcpusMax":1,"vcpusAtStartup":1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	a := strings.TrimSpace(cli(t, d, "vm", "create", "-f", jsonSpec, "--name", "w1", "--request-id", "req-w1"))
	b := strings.TrimSpace(cli(t, d, "vm", "create", "-f", jsonSpec, "--name", "w1", "--request-id", "req-w1"))
	if a != b {
		t.Errorf("create with the same --request-id made two VMs: %s and %s", a, b)
	}
	if got := cliVM(t, d, "w1").GetId(); got != a {
		t.Errorf("w1 is %s, want %s", got, a)
	}

	// YAML output is the same document as JSON.
	y := cli(t, d, "vm", "get", "db1", "-o", "yaml")
	j, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatalf("-o yaml is not YAML: %v\n%s", err, y)
	}
	fromYAML := &apiv1.VM{}
	if err := protojson.Unmarshal(j, fromYAML); err != nil || fromYAML.GetId() != id {
		t.Errorf("-o yaml does not decode to the VM: %v\n%s", err, y)
	}

	// Table output: aligned columns with both VMs.
	table := cli(t, d, "vm", "list")
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID") || !strings.Contains(table, "db1") || !strings.Contains(table, "w1") {
		t.Errorf("vm list table:\n%s", table)
	}
	if col := strings.Index(lines[0], "NAME"); col < 0 || !(strings.Index(lines[1], "db1") == col || strings.Index(lines[1], "w1") == col) {
		t.Errorf("vm list columns are not aligned:\n%s", table)
	}

	// --no-wait prints the task id; task wait follows it to the end.
	rev := listRevision(t, d)
	taskID := strings.TrimSpace(cli(t, d, "vm", "start", "w1", "--no-wait", "--paused"))
	if taskID == "" || strings.Contains(taskID, " ") {
		t.Fatalf("vm start --no-wait printed %q, want a task id", taskID)
	}
	wait := d.CLI("task", "wait", taskID, "-o", "json")
	if wait.Code != 0 {
		t.Fatalf("task wait: exit %d: %s", wait.Code, wait.Stderr)
	}
	tk := &apiv1.Task{}
	if err := protojson.Unmarshal([]byte(wait.Stdout), tk); err != nil || tk.GetState() != apiv1.TaskState_TASK_STATE_SUCCEEDED {
		t.Errorf("task wait -o json: %v %v\n%s", err, tk.GetState(), wait.Stdout)
	}
	if got := cliVM(t, d, "w1").GetPowerState(); got != apiv1.PowerState_POWER_STATE_PAUSED {
		t.Errorf("after start --paused: %v", got)
	}
	if out := cli(t, d, "task", "get", taskID); !strings.Contains(out, "succeeded") {
		t.Errorf("task get table:\n%s", out)
	}

	// events watch replays what happened since rev, as JSON lines.
	ev := d.CLI("events", "watch", "--after", strconv.FormatUint(rev, 10), "--count", "2", "-o", "json")
	if ev.Code != 0 {
		t.Fatalf("events watch: exit %d: %s", ev.Code, ev.Stderr)
	}
	evLines := strings.Split(strings.TrimSpace(ev.Stdout), "\n")
	if len(evLines) != 2 {
		t.Fatalf("events watch --count 2 printed %d lines:\n%s", len(evLines), ev.Stdout)
	}
	for i, l := range evLines {
		wr := &apiv1.WatchResponse{}
		if err := protojson.Unmarshal([]byte(l), wr); err != nil || wr.GetEvent().GetRevision() != rev+uint64(i)+1 {
			t.Errorf("event line %d: %v, revision %d, want %d: %s", i, err, wr.GetEvent().GetRevision(), rev+uint64(i)+1, l)
		}
	}

	// The task failed: exit status 1 and the task's error on stderr.
	r := d.CLI("vm", "pause", "db1") // db1 is halted
	if r.Code != 1 || !strings.Contains(r.Stderr, "FAILED_PRECONDITION") {
		t.Errorf("pause of a halted VM: exit %d, stderr %q; want 1 and FAILED_PRECONDITION", r.Code, r.Stderr)
	}
	cli(t, d, "vm", "destroy", "w1")
}

func listRevision(t *testing.T, d *harness.Daemon) uint64 {
	t.Helper()
	l := &apiv1.ListVMsResponse{}
	if err := protojson.Unmarshal([]byte(cli(t, d, "vm", "list", "-o", "json")), l); err != nil {
		t.Fatal(err)
	}
	return l.GetRevision()
}
