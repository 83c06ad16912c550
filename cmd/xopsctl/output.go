package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/internal/bytesize"
)

// printMessage writes m as the API's protobuf JSON mapping (-o json) or as
// the same document in YAML (-o yaml).
func (a *app) printMessage(m proto.Message) error {
	return writeMessage(a.stdout, a.output, m, true)
}

func writeMessage(w io.Writer, format string, m proto.Message, multiline bool) error {
	b, err := protojson.Marshal(m)
	if err != nil {
		return fmt.Errorf("encoding %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	// protojson varies its whitespace on purpose; re-format it so the
	// output is stable and readable.
	var buf bytes.Buffer
	if multiline {
		err = json.Indent(&buf, b, "", "  ")
	} else {
		err = json.Compact(&buf, b)
	}
	if err != nil {
		return fmt.Errorf("formatting %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	b = buf.Bytes()
	if format == "yaml" {
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return fmt.Errorf("encoding %s as YAML: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
		_, err = w.Write(y)
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// table writes aligned columns.
func (a *app) table(header []string, rows [][]string) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}

// fields writes "key: value" lines with aligned values.
func (a *app) fields(kv [][2]string) error {
	tw := tabwriter.NewWriter(a.stdout, 0, 4, 1, ' ', 0)
	for _, p := range kv {
		fmt.Fprintf(tw, "%s:\t%s\n", p[0], p[1])
	}
	return tw.Flush()
}

// enumName strips an enum value's type prefix and lower-cases it:
// POWER_STATE_RUNNING -> running.
func enumName(full, prefix string) string {
	return strings.ToLower(strings.TrimPrefix(full, prefix))
}

func stateName(s apiv1.TaskState) string  { return enumName(s.String(), "TASK_STATE_") }
func powerName(s apiv1.PowerState) string { return enumName(s.String(), "POWER_STATE_") }

// vmPower is the VM's power state as shown: a paused VM whose guest
// suspended itself says so.
func vmPower(vm *apiv1.VM) string {
	if vm.GetDomainSuspended() {
		return powerName(vm.GetPowerState()) + " (guest suspended)"
	}
	return powerName(vm.GetPowerState())
}
func typeName(t apiv1.DomainType) string { return enumName(t.String(), "DOMAIN_TYPE_") }
func actionName(x apiv1.LifecycleAction) string {
	if x == apiv1.LifecycleAction_LIFECYCLE_ACTION_UNSPECIFIED {
		return "default"
	}
	return enumName(x.String(), "LIFECYCLE_ACTION_")
}

func fmtTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func domidString(vm *apiv1.VM) string {
	if vm.GetDomid() == 0 {
		return "-"
	}
	return strconv.FormatUint(uint64(vm.GetDomid()), 10)
}

func vmRow(vm *apiv1.VM) []string {
	s := vm.GetSpec()
	return []string{
		vm.GetId(), dash(s.GetName()), typeName(s.GetType()), vmPower(vm),
		domidString(vm), bytesize.Format(s.GetMemoryStaticMax()),
		fmt.Sprintf("%d/%d", s.GetVcpusAtStartup(), s.GetVcpusMax()), dash(vm.GetProblem()),
	}
}

var vmHeader = []string{"ID", "NAME", "TYPE", "POWER", "DOMID", "MEMORY", "VCPUS", "PROBLEM"}

func (a *app) printVMDetail(vm *apiv1.VM) error {
	s := vm.GetSpec()
	kv := [][2]string{
		{"id", vm.GetId()},
		{"name", s.GetName()},
		{"type", typeName(s.GetType())},
		{"power", vmPower(vm)},
		{"domid", domidString(vm)},
		{"memory", fmt.Sprintf("static-max %s, dynamic %s..%s", bytesize.Format(s.GetMemoryStaticMax()),
			bytesize.Format(s.GetMemoryDynamicMin()), bytesize.Format(s.GetMemoryDynamicMax()))},
		{"vcpus", fmt.Sprintf("%d at startup, %d max", s.GetVcpusAtStartup(), s.GetVcpusMax())},
	}
	if s.GetKernel() != "" {
		kv = append(kv, [2]string{"kernel", s.GetKernel()})
	}
	if s.GetRamdisk() != "" {
		kv = append(kv, [2]string{"ramdisk", s.GetRamdisk()})
	}
	if s.GetCmdline() != "" {
		kv = append(kv, [2]string{"cmdline", s.GetCmdline()})
	}
	kv = append(kv,
		[2]string{"on-poweroff/reboot/crash", fmt.Sprintf("%s/%s/%s", actionName(s.GetOnPoweroff()),
			actionName(s.GetOnReboot()), actionName(s.GetOnCrash()))},
	)
	if len(s.GetPlatform()) > 0 {
		kv = append(kv, [2]string{"platform", sortedMap(s.GetPlatform())})
	}
	if len(s.GetXenstoreData()) > 0 {
		kv = append(kv, [2]string{"xenstore-data", sortedMap(s.GetXenstoreData())})
	}
	for i, d := range s.GetDisks() {
		kv = append(kv, [2]string{fmt.Sprintf("disk[%d]", i), fmt.Sprintf("%s %s %s %s cdrom=%t",
			d.GetDevice(), d.GetPath(), enumName(d.GetMode().String(), "DISK_MODE_"), enumName(d.GetFormat().String(), "DISK_FORMAT_"), d.GetCdrom())})
	}
	for i, n := range s.GetNics() {
		kv = append(kv, [2]string{fmt.Sprintf("nic[%d]", i), fmt.Sprintf("%s bridge=%s mtu=%d",
			dash(n.GetMac()), dash(n.GetBridge()), n.GetMtu())})
	}
	kv = append(kv, pluggedRows(vm)...)
	if vm.GetProblem() != "" {
		kv = append(kv, [2]string{"problem", vm.GetProblem()})
	}
	kv = append(kv,
		[2]string{"created", fmtTime(vm.GetCreateTime())},
		[2]string{"updated", fmtTime(vm.GetUpdateTime())},
		[2]string{"generation", strconv.FormatUint(vm.GetGeneration(), 10)},
	)
	return a.fields(kv)
}

func sortedMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, " ")
}

var taskHeader = []string{"ID", "VM", "OP", "STATE", "PROGRESS", "UPDATED", "ERROR"}

func taskRow(t *apiv1.Task) []string {
	errText := "-"
	if e := t.GetError(); e != nil {
		errText = e.GetCode() + ": " + e.GetMessage()
	}
	return []string{
		t.GetId(), t.GetVmId(), t.GetOp(), stateName(t.GetState()),
		fmt.Sprintf("%.0f%%", t.GetProgress()*100), fmtTime(t.GetUpdateTime()), errText,
	}
}
