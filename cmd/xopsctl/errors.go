package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/xenopsd-ng/xenopsd-ng/api/xenopsd/v1"
)

// describeError turns an error into the one line xopsctl prints: for a
// gRPC status, its canonical code, the server's message and, for
// INVALID_ARGUMENT, the field the server named.
func describeError(err error, socket string) string {
	var te *taskError
	if errors.As(err, &te) {
		return te.Error()
	}
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.DeadlineExceeded) {
			return "timed out (raise --timeout): " + err.Error()
		}
		return err.Error()
	}
	msg := fmt.Sprintf("%s: %s", codeName(st.Code()), st.Message())
	if fields := badFields(st); len(fields) > 0 {
		msg += " (field " + strings.Join(fields, ", ") + ")"
	}
	switch st.Code() {
	case codes.Unavailable:
		msg += fmt.Sprintf(" [daemon at %s; is it running?]", socket)
	case codes.DeadlineExceeded:
		msg += " [raise --timeout]"
	}
	return msg
}

// badFields lists the fields named by a google.rpc.BadRequest detail.
func badFields(st *status.Status) []string {
	var out []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField())
			}
		}
	}
	return out
}

// codeName is the canonical upper-case name of a gRPC code, e.g. NOT_FOUND.
func codeName(c codes.Code) string {
	switch c {
	case codes.OK:
		return "OK"
	case codes.Canceled:
		return "CANCELLED"
	case codes.InvalidArgument:
		return "INVALID_ARGUMENT"
	case codes.DeadlineExceeded:
		return "DEADLINE_EXCEEDED"
	case codes.NotFound:
		return "NOT_FOUND"
	case codes.AlreadyExists:
		return "ALREADY_EXISTS"
	case codes.PermissionDenied:
		return "PERMISSION_DENIED"
	case codes.ResourceExhausted:
		return "RESOURCE_EXHAUSTED"
	case codes.FailedPrecondition:
		return "FAILED_PRECONDITION"
	case codes.Aborted:
		return "ABORTED"
	case codes.OutOfRange:
		return "OUT_OF_RANGE"
	case codes.Unimplemented:
		return "UNIMPLEMENTED"
	case codes.Internal:
		return "INTERNAL"
	case codes.Unavailable:
		return "UNAVAILABLE"
	case codes.DataLoss:
		return "DATA_LOSS"
	case codes.Unauthenticated:
		return "UNAUTHENTICATED"
	}
	return "UNKNOWN"
}

// taskError is a task that ended without succeeding.
type taskError struct{ task *apiv1.Task }

func (e *taskError) Error() string {
	t := e.task
	msg := fmt.Sprintf("task %s (%s of VM %s) %s", t.GetId(), t.GetOp(), t.GetVmId(), stateName(t.GetState()))
	if te := t.GetError(); te != nil {
		msg += ": " + te.GetCode() + ": " + te.GetMessage()
		if te.GetField() != "" {
			msg += " (field " + te.GetField() + ")"
		}
	}
	return msg
}
