package service

import (
	"context"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// Manager is what the API needs from the VM lifecycle core; *domain.Manager
// implements it. Every error should be a *domain.Error (others are reported
// as INTERNAL, or CANCELLED / DEADLINE_EXCEEDED for context errors).
type Manager interface {
	Host(ctx context.Context) (domain.HostInfo, error)

	CreateVM(ctx context.Context, spec domain.Spec, requestID string) (domain.VM, error)
	GetVM(ctx context.Context, ref string) (domain.VM, error)
	ListVMs(ctx context.Context) ([]domain.VM, uint64, error)
	UpdateVM(ctx context.Context, ref string, spec domain.Spec) (domain.VM, error)
	DeleteVM(ctx context.Context, ref string) error

	Start(ctx context.Context, ref string, paused bool) (domain.Task, error)
	Pause(ctx context.Context, ref string) (domain.Task, error)
	Unpause(ctx context.Context, ref string) (domain.Task, error)
	Shutdown(ctx context.Context, ref string, opts domain.ShutdownOptions) (domain.Task, error)
	Suspend(ctx context.Context, ref string, opts domain.SuspendOptions) (domain.Task, error)
	Resume(ctx context.Context, ref string) (domain.Task, error)
	Reboot(ctx context.Context, ref string, opts domain.ShutdownOptions) (domain.Task, error)
	Destroy(ctx context.Context, ref string) (domain.Task, error)

	AddDisk(ctx context.Context, ref string, disk domain.Disk) (domain.Task, error)
	RemoveDisk(ctx context.Context, ref, device string, force bool) (domain.Task, error)
	AddNIC(ctx context.Context, ref string, nic domain.NIC) (domain.Task, error)
	RemoveNIC(ctx context.Context, ref, mac string, force bool) (domain.Task, error)
	DeviceStates(ctx context.Context, ref string) ([]domain.DeviceState, error)

	GetTask(ctx context.Context, id string) (domain.Task, error)
	ListTasks(ctx context.Context, vmID string) ([]domain.Task, error)
	CancelTask(ctx context.Context, id string) (domain.Task, error)
	WaitTask(ctx context.Context, id string) (domain.Task, error)

	Watch(ctx context.Context, after uint64, opts domain.WatchOptions, send func(domain.Event) error) error
}
