package service

import (
	"cmp"
	"context"
	"slices"
	"strings"

	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

type vmServer struct {
	*Server
	pb.UnimplementedVMServiceServer
}

var _ pb.VMServiceServer = vmServer{}

// requireID rejects an empty (or blank) VM or task reference.
func requireID(field, id string) error {
	if strings.TrimSpace(id) == "" {
		return invalidField(field, "required")
	}
	return nil
}

func (s vmServer) CreateVM(ctx context.Context, req *pb.CreateVMRequest) (*pb.CreateVMResponse, error) {
	spec, err := SpecFromPB(req.GetSpec(), "spec")
	if err != nil {
		return nil, err
	}
	vm, err := s.m.CreateVM(ctx, spec, req.GetRequestId())
	if err != nil {
		return nil, s.fail(ctx, "CreateVM", err)
	}
	return &pb.CreateVMResponse{Vm: VMToPB(vm)}, nil
}

func (s vmServer) GetVM(ctx context.Context, req *pb.GetVMRequest) (*pb.GetVMResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, err
	}
	vm, err := s.m.GetVM(ctx, req.GetId())
	if err != nil {
		return nil, s.fail(ctx, "GetVM", err)
	}
	out := VMToPB(vm)
	if len(vm.Devices) > 0 {
		// The devices' live state; the VM's plugged devices may have
		// changed since GetVM, so the states' own records are shown.
		states, err := s.m.DeviceStates(ctx, vm.ID)
		if err != nil {
			return nil, s.fail(ctx, "GetVM", err)
		}
		out.Devices = deviceStatesToPB(states)
	}
	return &pb.GetVMResponse{Vm: out}, nil
}

// ListVMs answers one page of VMs in id order (ids never change, so a VM
// that exists while the pages are read is listed exactly once); see page.go.
func (s vmServer) ListVMs(ctx context.Context, req *pb.ListVMsRequest) (*pb.ListVMsResponse, error) {
	size, err := pageSize(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after := ""
	if tok := req.GetPageToken(); tok != "" {
		key, err := decodeToken(tok, tokenVMs, "", 1)
		if err != nil {
			return nil, err
		}
		after = key[0]
	}
	vms, rev, err := s.m.ListVMs(ctx)
	if err != nil {
		return nil, s.fail(ctx, "ListVMs", err)
	}
	slices.SortFunc(vms, func(a, b domain.VM) int { return strings.Compare(a.ID, b.ID) })
	first, _ := slices.BinarySearchFunc(vms, after, func(vm domain.VM, id string) int {
		return cmp.Or(strings.Compare(vm.ID, id), -1) // the token's VM itself was on the last page
	})
	out := &pb.ListVMsResponse{Revision: rev}
	var more bool
	if out.Vms, more = takePage(vms[first:], size, VMToPB); more {
		out.NextPageToken = encodeToken(tokenVMs, "", out.Vms[len(out.Vms)-1].GetId())
	}
	return out, nil
}

func (s vmServer) UpdateVM(ctx context.Context, req *pb.UpdateVMRequest) (*pb.UpdateVMResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, err
	}
	spec, err := SpecFromPB(req.GetSpec(), "spec")
	if err != nil {
		return nil, err
	}
	old, err := s.m.GetVM(ctx, req.GetId())
	if err != nil {
		return nil, s.fail(ctx, "UpdateVM", err)
	}
	vm, err := s.m.UpdateVM(ctx, old.ID, spec)
	if err != nil {
		return nil, s.fail(ctx, "UpdateVM", err)
	}
	if s.opts.Console != nil && vm.Spec.Name != old.Spec.Name {
		// The log follows the VM: a later VM taking the old name starts
		// without one. A failure is logged; StreamConsole's age check
		// still keeps the log from that later VM.
		if err := s.opts.Console.Rename(old.Spec.Name, vm.Spec.Name); err != nil {
			s.log.WarnContext(ctx, "rename the console log of a renamed VM", "vm", vm.ID, "from", old.Spec.Name, "to", vm.Spec.Name, "err", err)
		}
	}
	return &pb.UpdateVMResponse{Vm: VMToPB(vm)}, nil
}

func (s vmServer) DeleteVM(ctx context.Context, req *pb.DeleteVMRequest) (*pb.DeleteVMResponse, error) {
	if err := requireID("id", req.GetId()); err != nil {
		return nil, err
	}
	vm, err := s.m.GetVM(ctx, req.GetId())
	if err != nil {
		return nil, s.fail(ctx, "DeleteVM", err)
	}
	if err := s.m.DeleteVM(ctx, vm.ID); err != nil {
		return nil, s.fail(ctx, "DeleteVM", err)
	}
	s.removeConsoleLog(ctx, vm)
	return &pb.DeleteVMResponse{}, nil
}

// removeStaleConsoleLog removes an earlier VM's log under the name of the
// VM ref before its domain is built, so that its guest starts a log of its
// own. Errors are logged: the start does not depend on it, and the console
// is then refused rather than mixed (see console.Options.NotBefore).
func (s vmServer) removeStaleConsoleLog(ctx context.Context, ref string) {
	if s.opts.Console == nil {
		return
	}
	vm, err := s.m.GetVM(ctx, ref)
	if err != nil {
		return // Start reports it
	}
	if err := s.opts.Console.RemoveStale(vm.Spec.Name, vm.CreatedAt); err != nil {
		s.log.WarnContext(ctx, "remove an earlier VM's console log", "vm", vm.ID, "name", vm.Spec.Name, "err", err)
	}
}

// removeConsoleLog deletes a deleted VM's console log, so that a later VM
// of the same name does not read it. A failure is logged, not returned: the
// VM is gone, and StreamConsole refuses a log older than the VM reading it.
func (s vmServer) removeConsoleLog(ctx context.Context, vm domain.VM) {
	if s.opts.Console == nil {
		return
	}
	if err := s.opts.Console.Remove(vm.Spec.Name); err != nil {
		s.log.WarnContext(ctx, "remove the console log of a deleted VM", "vm", vm.ID, "name", vm.Spec.Name, "err", err)
	}
}

// lifecycle runs one lifecycle call: validate the id, queue the operation,
// and with wait, wait for the task to finish. The task outcome is in the
// returned task; the error is about the call itself.
func (s vmServer) lifecycle(ctx context.Context, method, id string, wait bool, op func() (domain.Task, error)) (*pb.Task, error) {
	if err := requireID("id", id); err != nil {
		return nil, err
	}
	t, err := op()
	if err != nil {
		return nil, s.fail(ctx, method, err)
	}
	if wait && !t.State.Done() {
		if t, err = s.m.WaitTask(ctx, t.ID); err != nil {
			return nil, s.fail(ctx, method, err)
		}
	}
	return TaskToPB(t), nil
}

// shutdownOptions validates the timeout/force pair of Shutdown and Reboot.
// An unset timeout stays 0: the core's default.
func shutdownOptions(timeout *durationpb.Duration, force bool) (domain.ShutdownOptions, error) {
	opts := domain.ShutdownOptions{Force: force}
	if timeout != nil {
		if err := timeout.CheckValid(); err != nil {
			return opts, invalidField("timeout", err.Error())
		}
		d := timeout.AsDuration()
		if d < 0 {
			return opts, invalidField("timeout", "must not be negative, got "+d.String())
		}
		opts.Timeout = d
	}
	return opts, nil
}

func (s vmServer) StartVM(ctx context.Context, req *pb.StartVMRequest) (*pb.StartVMResponse, error) {
	t, err := s.lifecycle(ctx, "StartVM", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		s.removeStaleConsoleLog(ctx, req.GetId())
		return s.m.Start(ctx, req.GetId(), req.GetPaused())
	})
	if err != nil {
		return nil, err
	}
	return &pb.StartVMResponse{Task: t}, nil
}

func (s vmServer) PauseVM(ctx context.Context, req *pb.PauseVMRequest) (*pb.PauseVMResponse, error) {
	t, err := s.lifecycle(ctx, "PauseVM", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.Pause(ctx, req.GetId())
	})
	if err != nil {
		return nil, err
	}
	return &pb.PauseVMResponse{Task: t}, nil
}

func (s vmServer) UnpauseVM(ctx context.Context, req *pb.UnpauseVMRequest) (*pb.UnpauseVMResponse, error) {
	t, err := s.lifecycle(ctx, "UnpauseVM", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.Unpause(ctx, req.GetId())
	})
	if err != nil {
		return nil, err
	}
	return &pb.UnpauseVMResponse{Task: t}, nil
}

func (s vmServer) ShutdownVM(ctx context.Context, req *pb.ShutdownVMRequest) (*pb.ShutdownVMResponse, error) {
	opts, err := shutdownOptions(req.GetTimeout(), req.GetForce())
	if err != nil {
		return nil, err
	}
	t, err := s.lifecycle(ctx, "ShutdownVM", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.Shutdown(ctx, req.GetId(), opts)
	})
	if err != nil {
		return nil, err
	}
	return &pb.ShutdownVMResponse{Task: t}, nil
}

func (s vmServer) RebootVM(ctx context.Context, req *pb.RebootVMRequest) (*pb.RebootVMResponse, error) {
	opts, err := shutdownOptions(req.GetTimeout(), req.GetForce())
	if err != nil {
		return nil, err
	}
	t, err := s.lifecycle(ctx, "RebootVM", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.Reboot(ctx, req.GetId(), opts)
	})
	if err != nil {
		return nil, err
	}
	return &pb.RebootVMResponse{Task: t}, nil
}

func (s vmServer) SuspendVM(ctx context.Context, req *pb.SuspendVMRequest) (*pb.SuspendVMResponse, error) {
	var opts domain.SuspendOptions
	if timeout := req.GetTimeout(); timeout != nil {
		if err := timeout.CheckValid(); err != nil {
			return nil, invalidField("timeout", err.Error())
		}
		if d := timeout.AsDuration(); d < 0 {
			return nil, invalidField("timeout", "must not be negative, got "+d.String())
		} else {
			opts.Timeout = d
		}
	}
	t, err := s.lifecycle(ctx, "SuspendVM", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.Suspend(ctx, req.GetId(), opts)
	})
	if err != nil {
		return nil, err
	}
	return &pb.SuspendVMResponse{Task: t}, nil
}

func (s vmServer) ResumeVM(ctx context.Context, req *pb.ResumeVMRequest) (*pb.ResumeVMResponse, error) {
	t, err := s.lifecycle(ctx, "ResumeVM", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.Resume(ctx, req.GetId())
	})
	if err != nil {
		return nil, err
	}
	return &pb.ResumeVMResponse{Task: t}, nil
}

func (s vmServer) DestroyVM(ctx context.Context, req *pb.DestroyVMRequest) (*pb.DestroyVMResponse, error) {
	t, err := s.lifecycle(ctx, "DestroyVM", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.Destroy(ctx, req.GetId())
	})
	if err != nil {
		return nil, err
	}
	return &pb.DestroyVMResponse{Task: t}, nil
}

func (s vmServer) AddDisk(ctx context.Context, req *pb.AddDiskRequest) (*pb.AddDiskResponse, error) {
	disk, err := DiskFromPB(req.GetDisk(), "disk")
	if err != nil {
		return nil, err
	}
	t, err := s.lifecycle(ctx, "AddDisk", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.AddDisk(ctx, req.GetId(), disk)
	})
	if err != nil {
		return nil, err
	}
	return &pb.AddDiskResponse{Task: t}, nil
}

func (s vmServer) RemoveDisk(ctx context.Context, req *pb.RemoveDiskRequest) (*pb.RemoveDiskResponse, error) {
	t, err := s.lifecycle(ctx, "RemoveDisk", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.RemoveDisk(ctx, req.GetId(), req.GetDevice(), req.GetForce())
	})
	if err != nil {
		return nil, err
	}
	return &pb.RemoveDiskResponse{Task: t}, nil
}

func (s vmServer) AddNIC(ctx context.Context, req *pb.AddNICRequest) (*pb.AddNICResponse, error) {
	nic, err := NICFromPB(req.GetNic(), "nic")
	if err != nil {
		return nil, err
	}
	t, err := s.lifecycle(ctx, "AddNIC", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.AddNIC(ctx, req.GetId(), nic)
	})
	if err != nil {
		return nil, err
	}
	return &pb.AddNICResponse{Task: t}, nil
}

func (s vmServer) RemoveNIC(ctx context.Context, req *pb.RemoveNICRequest) (*pb.RemoveNICResponse, error) {
	t, err := s.lifecycle(ctx, "RemoveNIC", req.GetId(), req.GetWait(), func() (domain.Task, error) {
		return s.m.RemoveNIC(ctx, req.GetId(), req.GetMac(), req.GetForce())
	})
	if err != nil {
		return nil, err
	}
	return &pb.RemoveNICResponse{Task: t}, nil
}
