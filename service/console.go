package service

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/console"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// ConsoleLogs reads guest console logs by VM name, removes a deleted VM's,
// renames a renamed VM's and clears an earlier VM's before a start;
// *console.Logs implements it.
type ConsoleLogs interface {
	Stream(ctx context.Context, name string, opts console.Options, send func(console.Chunk) error) error
	Remove(name string) error
	Rename(from, to string) error
	RemoveStale(name string, created time.Time) error
}

// StreamConsole streams the VM's console log (see the proto). The VM is
// resolved once, by id or name; following ends when the VM has no domain.
func (s vmServer) StreamConsole(req *pb.StreamConsoleRequest, stream pb.VMService_StreamConsoleServer) error {
	ctx := stream.Context()
	if err := requireID("id", req.GetId()); err != nil {
		return err
	}
	if s.opts.Console == nil {
		return newStatus(codes.FailedPrecondition, "", "this daemon serves no console logs (no console log directory configured)")
	}
	vm, err := s.m.GetVM(ctx, req.GetId())
	if err != nil {
		return s.fail(ctx, "StreamConsole", err)
	}
	id := vm.ID
	opts := console.Options{
		Follow:    req.GetFollow(),
		TailBytes: req.GetTailBytes(),
		Offset:    req.GetOffset(),
		NotBefore: vm.CreatedAt, // an earlier VM's log of the same name is not this one's
		Alive: func(ctx context.Context) (bool, error) {
			vm, err := s.m.GetVM(ctx, id)
			if domain.CodeOf(err) == domain.CodeNotFound {
				return false, nil // deleted
			}
			if err != nil {
				return false, err
			}
			return hasDomain(vm), nil
		},
	}
	err = s.opts.Console.Stream(ctx, vm.Spec.Name, opts, func(c console.Chunk) error {
		next := c.Offset + uint64(len(c.Data))
		if err := stream.Send(&pb.StreamConsoleResponse{Data: c.Data, Offset: c.Offset, NextOffset: next, Restarted: c.Restarted}); err != nil {
			return errSend{err}
		}
		return nil
	})
	var se errSend
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return se.err
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		return ToStatus(context.Cause(ctx))
	}
	return s.fail(ctx, "StreamConsole", err)
}

// hasDomain reports whether the VM has a domain whose console can grow.
func hasDomain(vm domain.VM) bool {
	return vm.Domid != 0 || vm.Power == domain.Running || vm.Power == domain.Paused
}
