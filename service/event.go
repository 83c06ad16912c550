package service

import (
	"context"
	"errors"

	pb "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

type eventServer struct {
	*Server
	pb.UnimplementedEventServiceServer
}

var _ pb.EventServiceServer = eventServer{}

// errSend marks a failure to send on the stream (the client went away), so
// that it is returned as it is rather than as a core error.
type errSend struct{ err error }

func (e errSend) Error() string { return e.err.Error() }
func (e errSend) Unwrap() error { return e.err }

func (s eventServer) Watch(req *pb.WatchRequest, stream pb.EventService_WatchServer) error {
	ctx := stream.Context()
	err := s.m.Watch(ctx, req.GetAfterRevision(), domain.WatchOptions{TaskProgress: req.GetTaskProgress()}, func(e domain.Event) error {
		resp, err := EventToPB(e)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
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
	return s.fail(ctx, "Watch", err)
}
