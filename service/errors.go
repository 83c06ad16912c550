package service

import (
	"context"
	"errors"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/xenopsd-ng/xenopsd-ng/domain"
)

// ErrorDomain is the google.rpc.ErrorInfo domain of every error the API returns.
const ErrorDomain = "xenopsd-ng"

// grpcCodes maps core error codes onto canonical gRPC codes.
var grpcCodes = map[domain.Code]codes.Code{
	domain.CodeInternal:           codes.Internal,
	domain.CodeInvalidArgument:    codes.InvalidArgument,
	domain.CodeNotFound:           codes.NotFound,
	domain.CodeAlreadyExists:      codes.AlreadyExists,
	domain.CodeFailedPrecondition: codes.FailedPrecondition,
	domain.CodeResourceExhausted:  codes.ResourceExhausted,
	domain.CodeCancelled:          codes.Canceled,
	domain.CodeDeadlineExceeded:   codes.DeadlineExceeded,
	domain.CodeUnavailable:        codes.Unavailable,
	domain.CodeAborted:            codes.Aborted,
}

// canonicalNames are the google.rpc.Code names (UPPER_SNAKE), used in
// ErrorInfo.reason and TaskError.code.
var canonicalNames = map[codes.Code]string{
	codes.OK:                 "OK",
	codes.Canceled:           "CANCELLED",
	codes.Unknown:            "UNKNOWN",
	codes.InvalidArgument:    "INVALID_ARGUMENT",
	codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
	codes.NotFound:           "NOT_FOUND",
	codes.AlreadyExists:      "ALREADY_EXISTS",
	codes.PermissionDenied:   "PERMISSION_DENIED",
	codes.ResourceExhausted:  "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION",
	codes.Aborted:            "ABORTED",
	codes.OutOfRange:         "OUT_OF_RANGE",
	codes.Unimplemented:      "UNIMPLEMENTED",
	codes.Internal:           "INTERNAL",
	codes.Unavailable:        "UNAVAILABLE",
	codes.DataLoss:           "DATA_LOSS",
	codes.Unauthenticated:    "UNAUTHENTICATED",
}

// GRPCCode returns the gRPC code for a core error code.
func GRPCCode(c domain.Code) codes.Code {
	if gc, ok := grpcCodes[c]; ok {
		return gc
	}
	return codes.Internal
}

// CodeName returns the canonical google.rpc.Code name of c, e.g. "NOT_FOUND".
func CodeName(c codes.Code) string {
	if n, ok := canonicalNames[c]; ok {
		return n
	}
	return "UNKNOWN"
}

// ToStatus converts an error from the core into a gRPC status error with
// google.rpc details. A *domain.Error keeps its code, message and field;
// context errors become CANCELLED / DEADLINE_EXCEEDED; anything else is
// INTERNAL. An error that already is a gRPC status is returned unchanged.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	var de *domain.Error
	switch {
	case errors.As(err, &de):
		return newStatus(GRPCCode(de.Code), de.Field, de.Message)
	case errors.Is(err, context.Canceled):
		return newStatus(codes.Canceled, "", err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return newStatus(codes.DeadlineExceeded, "", err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return newStatus(codes.Internal, "", err.Error())
}

// invalidField is the INVALID_ARGUMENT status for a bad request field.
func invalidField(field, msg string) error {
	return newStatus(codes.InvalidArgument, field, msg)
}

// newStatus builds a status whose message names the field (if any) and whose
// details are a BadRequest (for INVALID_ARGUMENT with a field) and an
// ErrorInfo (always; metadata "field" when there is one).
func newStatus(c codes.Code, field, msg string) error {
	text := msg
	if field != "" {
		text = field + ": " + msg
	}
	st := status.New(c, text)
	info := &errdetails.ErrorInfo{Reason: CodeName(c), Domain: ErrorDomain}
	var details []protoadapt.MessageV1
	if field != "" {
		info.Metadata = map[string]string{"field": field}
		if c == codes.InvalidArgument {
			details = append(details, &errdetails.BadRequest{
				FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: field, Description: msg}},
			})
		}
	}
	details = append(details, info)
	withDetails, err := st.WithDetails(details...)
	if err != nil {
		// Only fails for unmarshalable details, which these are not.
		return st.Err()
	}
	return withDetails.Err()
}
