package service

import (
	"fmt"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/devices"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// This file is the one place where API (protobuf) and core (domain) types
// meet. Conversions from the API validate enum values, which the core cannot
// see once they are converted, and name the offending field.

var (
	domainTypes = map[pb.DomainType]domain.Type{
		pb.DomainType_DOMAIN_TYPE_UNSPECIFIED: domain.TypeUnspecified,
		pb.DomainType_DOMAIN_TYPE_PV:          domain.TypePV,
		pb.DomainType_DOMAIN_TYPE_PVH:         domain.TypePVH,
		pb.DomainType_DOMAIN_TYPE_HVM:         domain.TypeHVM,
	}
	actions = map[pb.LifecycleAction]domain.Action{
		pb.LifecycleAction_LIFECYCLE_ACTION_UNSPECIFIED: domain.ActionUnspecified,
		pb.LifecycleAction_LIFECYCLE_ACTION_DESTROY:     domain.ActionDestroy,
		pb.LifecycleAction_LIFECYCLE_ACTION_RESTART:     domain.ActionRestart,
		pb.LifecycleAction_LIFECYCLE_ACTION_PRESERVE:    domain.ActionPreserve,
	}
	diskModes = map[pb.DiskMode]domain.DiskMode{
		pb.DiskMode_DISK_MODE_UNSPECIFIED: domain.DiskModeUnspecified,
		pb.DiskMode_DISK_MODE_RO:          domain.DiskRO,
		pb.DiskMode_DISK_MODE_RW:          domain.DiskRW,
	}
	diskFormats = map[pb.DiskFormat]domain.DiskFormat{
		pb.DiskFormat_DISK_FORMAT_UNSPECIFIED: domain.DiskFormatUnspecified,
		pb.DiskFormat_DISK_FORMAT_RAW:         domain.DiskRaw,
		pb.DiskFormat_DISK_FORMAT_QCOW2:       domain.DiskQCOW2,
	}
	powerStates = map[domain.PowerState]pb.PowerState{
		domain.PowerUnspecified: pb.PowerState_POWER_STATE_UNSPECIFIED,
		domain.Halted:           pb.PowerState_POWER_STATE_HALTED,
		domain.Running:          pb.PowerState_POWER_STATE_RUNNING,
		domain.Paused:           pb.PowerState_POWER_STATE_PAUSED,
		domain.Suspended:        pb.PowerState_POWER_STATE_SUSPENDED,
	}
	taskStates = map[domain.TaskState]pb.TaskState{
		domain.TaskUnspecified: pb.TaskState_TASK_STATE_UNSPECIFIED,
		domain.TaskPending:     pb.TaskState_TASK_STATE_PENDING,
		domain.TaskRunning:     pb.TaskState_TASK_STATE_RUNNING,
		domain.TaskSucceeded:   pb.TaskState_TASK_STATE_SUCCEEDED,
		domain.TaskFailed:      pb.TaskState_TASK_STATE_FAILED,
		domain.TaskCancelled:   pb.TaskState_TASK_STATE_CANCELLED,
		domain.TaskInterrupted: pb.TaskState_TASK_STATE_INTERRUPTED,
	}
)

func invert[K, V comparable](m map[K]V) map[V]K {
	r := make(map[V]K, len(m))
	for k, v := range m {
		r[v] = k
	}
	return r
}

var (
	domainTypesPB = invert(domainTypes)
	actionsPB     = invert(actions)
	diskModesPB   = invert(diskModes)
	diskFormatsPB = invert(diskFormats)
)

// enumFromPB converts an API enum value; values the API does not define
// (a newer client, or a bad one) are INVALID_ARGUMENT naming the field.
func enumFromPB[P ~int32, D any](m map[P]D, v P, field string) (D, error) {
	d, ok := m[v]
	if !ok {
		var zero D
		return zero, invalidField(field, fmt.Sprintf("unknown value %d", int32(v)))
	}
	return d, nil
}

// SpecFromPB converts an API VMSpec; field names in errors are prefixed with
// prefix (e.g. "spec"). A nil spec is INVALID_ARGUMENT.
func SpecFromPB(s *pb.VMSpec, prefix string) (domain.Spec, error) {
	if s == nil {
		return domain.Spec{}, invalidField(prefix, "required")
	}
	f := func(name string) string { return prefix + "." + name }
	spec := domain.Spec{
		UUID:             s.GetUuid(),
		Name:             s.GetName(),
		MemoryStaticMax:  s.GetMemoryStaticMax(),
		MemoryDynamicMin: s.GetMemoryDynamicMin(),
		MemoryDynamicMax: s.GetMemoryDynamicMax(),
		VCPUsMax:         s.GetVcpusMax(),
		VCPUsAtStartup:   s.GetVcpusAtStartup(),
		Kernel:           s.GetKernel(),
		Ramdisk:          s.GetRamdisk(),
		Cmdline:          s.GetCmdline(),
		Platform:         copyMap(s.GetPlatform()),
		XenstoreData:     copyMap(s.GetXenstoreData()),
	}
	var err error
	if spec.Type, err = enumFromPB(domainTypes, s.GetType(), f("type")); err != nil {
		return domain.Spec{}, err
	}
	if spec.OnPoweroff, err = enumFromPB(actions, s.GetOnPoweroff(), f("on_poweroff")); err != nil {
		return domain.Spec{}, err
	}
	if spec.OnReboot, err = enumFromPB(actions, s.GetOnReboot(), f("on_reboot")); err != nil {
		return domain.Spec{}, err
	}
	if spec.OnCrash, err = enumFromPB(actions, s.GetOnCrash(), f("on_crash")); err != nil {
		return domain.Spec{}, err
	}
	for i, d := range s.GetDisks() {
		disk, err := DiskFromPB(d, fmt.Sprintf("%s[%d]", f("disks"), i))
		if err != nil {
			return domain.Spec{}, err
		}
		spec.Disks = append(spec.Disks, disk)
	}
	for i, n := range s.GetNics() {
		nic, err := NICFromPB(n, fmt.Sprintf("%s[%d]", f("nics"), i))
		if err != nil {
			return domain.Spec{}, err
		}
		spec.NICs = append(spec.NICs, nic)
	}
	return spec, nil
}

// DiskFromPB converts an API disk (at field) to the core's.
func DiskFromPB(d *pb.Disk, field string) (domain.Disk, error) {
	if d == nil {
		return domain.Disk{}, invalidField(field, "null disk")
	}
	mode, err := enumFromPB(diskModes, d.GetMode(), field+".mode")
	if err != nil {
		return domain.Disk{}, err
	}
	format, err := enumFromPB(diskFormats, d.GetFormat(), field+".format")
	if err != nil {
		return domain.Disk{}, err
	}
	return domain.Disk{Device: d.GetDevice(), Path: d.GetPath(), Mode: mode, CDROM: d.GetCdrom(), Format: format}, nil
}

// NICFromPB converts an API NIC (at field) to the core's.
func NICFromPB(n *pb.NIC, field string) (domain.NIC, error) {
	if n == nil {
		return domain.NIC{}, invalidField(field, "null nic")
	}
	return domain.NIC{MAC: n.GetMac(), Bridge: n.GetBridge(), MTU: n.GetMtu()}, nil
}

// SpecToPB converts a core spec to the API.
func SpecToPB(s domain.Spec) *pb.VMSpec {
	out := &pb.VMSpec{
		Uuid:             s.UUID,
		Name:             s.Name,
		Type:             domainTypesPB[s.Type],
		MemoryStaticMax:  s.MemoryStaticMax,
		MemoryDynamicMin: s.MemoryDynamicMin,
		MemoryDynamicMax: s.MemoryDynamicMax,
		VcpusMax:         s.VCPUsMax,
		VcpusAtStartup:   s.VCPUsAtStartup,
		Kernel:           s.Kernel,
		Ramdisk:          s.Ramdisk,
		Cmdline:          s.Cmdline,
		Platform:         copyMap(s.Platform),
		XenstoreData:     copyMap(s.XenstoreData),
		OnPoweroff:       actionsPB[s.OnPoweroff],
		OnReboot:         actionsPB[s.OnReboot],
		OnCrash:          actionsPB[s.OnCrash],
	}
	for _, d := range s.Disks {
		out.Disks = append(out.Disks, &pb.Disk{Device: d.Device, Path: d.Path, Mode: diskModesPB[d.Mode], Cdrom: d.CDROM, Format: diskFormatsPB[d.Format]})
	}
	for _, n := range s.NICs {
		out.Nics = append(out.Nics, &pb.NIC{Mac: n.MAC, Bridge: n.Bridge, Mtu: n.MTU})
	}
	return out
}

// VMToPB converts a core VM to the API.
func VMToPB(v domain.VM) *pb.VM {
	return &pb.VM{
		Id:              v.ID,
		Spec:            SpecToPB(v.Spec),
		PowerState:      powerStates[v.Power],
		Domid:           v.Domid,
		Problem:         v.Problem,
		CreateTime:      timeToPB(v.CreatedAt),
		UpdateTime:      timeToPB(v.UpdatedAt),
		Generation:      v.Generation,
		DomainSuspended: v.DomainSuspended,
		Devices:         devicesToPB(v.Devices),
	}
}

func devicesToPB(recs []devices.Record) []*pb.PluggedDevice {
	var out []*pb.PluggedDevice
	for _, r := range recs {
		out = append(out, deviceToPB(r))
	}
	return out
}

func deviceStatesToPB(states []domain.DeviceState) []*pb.PluggedDevice {
	var out []*pb.PluggedDevice
	for _, s := range states {
		d := deviceToPB(s.Record)
		d.BackendState, d.FrontendState, d.Error = stateName(s.Backend), stateName(s.Frontend), s.Error
		d.Counters, d.CountersError = countersToPB(s.Counters), s.CountersError
		out = append(out, d)
	}
	return out
}

// countersToPB converts a device's counters; nil stays nil (none read).
func countersToPB(c *devices.Counters) *pb.DeviceCounters {
	if c == nil {
		return nil
	}
	return &pb.DeviceCounters{
		ReadRequests: c.ReadRequests, WriteRequests: c.WriteRequests,
		ReadBytes: c.ReadBytes, WriteBytes: c.WriteBytes, OutOfRequests: c.OutOfRequests,
		RxBytes: c.RxBytes, TxBytes: c.TxBytes, RxPackets: c.RxPackets, TxPackets: c.TxPackets,
		RxErrors: c.RxErrors, TxErrors: c.TxErrors, RxDrops: c.RxDrops, TxDrops: c.TxDrops,
	}
}

// stateName is a XenbusState's name ("" when unknown: never read).
func stateName(s devices.State) string {
	if s == devices.StateUnknown {
		return ""
	}
	return s.String()
}

func deviceToPB(r devices.Record) *pb.PluggedDevice {
	d := &pb.PluggedDevice{
		Device: r.Device, Devid: uint32(r.DevID), Path: r.Path, ReadOnly: r.ReadOnly,
		LoopDevice: r.Disk.Loop, Vif: r.VIF, Bridge: r.Bridge, Mac: r.MAC, QemuPid: uint32(r.QEMU.Pid),
	}
	switch {
	case r.Format == devices.FormatQCOW2:
		d.Format = pb.DiskFormat_DISK_FORMAT_QCOW2
	case r.Kind == devices.KindVBD:
		d.Format = pb.DiskFormat_DISK_FORMAT_RAW
	}
	switch r.Kind {
	case devices.KindVBD:
		d.Kind = pb.DeviceKind_DEVICE_KIND_DISK
	case devices.KindVIF:
		d.Kind = pb.DeviceKind_DEVICE_KIND_NIC
	}
	return d
}

// TaskToPB converts a core task to the API.
func TaskToPB(t domain.Task) *pb.Task {
	out := &pb.Task{
		Id:         t.ID,
		VmId:       t.VMID,
		Op:         t.Op,
		State:      taskStates[t.State],
		Progress:   t.Progress,
		CreateTime: timeToPB(t.CreatedAt),
		UpdateTime: timeToPB(t.UpdatedAt),
	}
	if t.Err != nil {
		out.Error = &pb.TaskError{Code: CodeName(GRPCCode(t.Err.Code)), Message: t.Err.Message, Field: t.Err.Field}
	}
	return out
}

// EventToPB converts a core event to a Watch response.
func EventToPB(e domain.Event) (*pb.WatchResponse, error) {
	if e.Kind == domain.EventResync {
		return &pb.WatchResponse{Kind: &pb.WatchResponse_Resync{Resync: &pb.Resync{HeadRevision: e.Revision}}}, nil
	}
	ev := &pb.Event{Revision: e.Revision, Time: timeToPB(e.Time)}
	switch {
	case e.Kind == domain.EventVMChanged && e.VM != nil:
		ev.Change = &pb.Event_VmChanged{VmChanged: VMToPB(*e.VM)}
	case e.Kind == domain.EventVMDeleted:
		ev.Change = &pb.Event_VmDeleted{VmDeleted: &pb.VMDeleted{Id: e.VMID}}
	case e.Kind == domain.EventTaskChanged && e.Task != nil:
		ev.Change = &pb.Event_TaskChanged{TaskChanged: TaskToPB(*e.Task)}
	case e.Kind == domain.EventTaskProgress && e.Progress != nil:
		p := e.Progress
		ev.Change = &pb.Event_TaskProgress{TaskProgress: &pb.TaskProgress{TaskId: p.TaskID, VmId: p.VMID, Progress: p.Progress}}
	default:
		return nil, fmt.Errorf("event %d: kind %d without its payload", e.Revision, e.Kind)
	}
	return &pb.WatchResponse{Kind: &pb.WatchResponse_Event{Event: ev}}, nil
}

// HostToPB converts the core's host snapshot; version is the daemon's.
func HostToPB(h domain.HostInfo, version string) *pb.Host {
	out := &pb.Host{
		DaemonVersion:          version,
		HypervisorVersion:      h.Version(),
		HypervisorVersionMajor: uint32(max(h.VersionMajor, 0)),
		HypervisorVersionMinor: uint32(max(h.VersionMinor, 0)),
		Backend:                BackendToPB(h.Backend),
		TotalMemoryBytes:       h.TotalMemory,
		FreeMemoryBytes:        h.FreeMemory,
		NrCpus:                 h.NrCPUs,
		CpuKhz:                 h.CPUkHz,
		ThreadsPerCore:         h.ThreadsPerCore,
		CoresPerSocket:         h.CoresPerSocket,
		NrNodes:                h.NrNodes,
		Capabilities:           slices.Clone(h.Capabilities),
	}
	return out
}

// BackendToPB maps a xenctrl.Hypervisor Kind() onto the API enum.
func BackendToPB(kind string) pb.Backend {
	switch kind {
	case "sim":
		return pb.Backend_BACKEND_SIM
	case "xen":
		return pb.Backend_BACKEND_XEN
	}
	return pb.Backend_BACKEND_UNSPECIFIED
}

func timeToPB(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func copyMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
