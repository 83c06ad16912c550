package domain

import (
	"errors"
	"fmt"
)

// Code classifies an Error; the API layer maps it onto a gRPC status code.
type Code int

const (
	CodeInternal Code = iota
	CodeInvalidArgument
	CodeNotFound
	CodeAlreadyExists
	CodeFailedPrecondition // e.g. wrong power state
	CodeResourceExhausted  // e.g. host memory
	CodeCancelled
	CodeDeadlineExceeded
	CodeUnavailable
	CodeAborted // e.g. interrupted by a daemon restart
)

// Error is an error the caller can act on: what kind, which field of the
// request (for CodeInvalidArgument), and a message that says what and why.
type Error struct {
	Code    Code
	Field   string // request field at fault, e.g. "spec.memory_static_max"
	Message string
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s", e.Field, e.Message)
	}
	return e.Message
}

// Errorf makes an *Error.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// InvalidField makes a CodeInvalidArgument error naming the field.
func InvalidField(field, format string, args ...any) *Error {
	return &Error{Code: CodeInvalidArgument, Field: field, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns err's Code, CodeInternal if it is not an *Error.
func CodeOf(err error) Code {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
