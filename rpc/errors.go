package rpc

import (
	"context"
	"errors"
	"fmt"

	"github.com/loft-ipc/loft"
)

// Code is the category of an RPC error. The values and their meanings are
// those of gRPC's status codes, so a code survives a trip through a gRPC
// gateway unchanged. A Code is itself an error, which makes
// errors.Is(err, rpc.NotFound) work on any error returned by a call.
type Code uint32

// The codes. OK is never the code of an *Error.
const (
	OK                 Code = 0  // not an error
	Canceled           Code = 1  // the caller cancelled the call
	Unknown            Code = 2  // the handler returned an error without a code
	InvalidArgument    Code = 3  // the arguments could not be decoded, or the handler said they were wrong
	DeadlineExceeded   Code = 4  // the deadline passed before the call completed
	NotFound           Code = 5  // no such method (or the handler said something was not found)
	AlreadyExists      Code = 6  // the handler said so
	PermissionDenied   Code = 7  // the handler said so
	ResourceExhausted  Code = 8  // a limit was hit: calls in flight, message size
	FailedPrecondition Code = 9  // the handler said so
	Aborted            Code = 10 // the handler said so
	OutOfRange         Code = 11 // the handler said so
	Unimplemented      Code = 12 // the service does not implement this (wrong codec, unknown envelope)
	Internal           Code = 13 // the handler panicked, or the reply could not be encoded or decoded
	Unavailable        Code = 14 // no server, or the server died or left with the call pending
	DataLoss           Code = 15 // the handler said so
	Unauthenticated    Code = 16 // the handler said so
)

var codeNames = [...]string{
	"ok", "canceled", "unknown", "invalid argument", "deadline exceeded", "not found",
	"already exists", "permission denied", "resource exhausted", "failed precondition",
	"aborted", "out of range", "unimplemented", "internal", "unavailable", "data loss",
	"unauthenticated",
}

// String returns the code's name in lower case, as in "not found".
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("code %d", uint32(c))
}

// Error makes a Code usable as an error value to match with errors.Is.
func (c Code) Error() string { return "rpc: " + c.String() }

// Error is the error of a failed call: a code, a message, and on the client
// side where it came from. It is returned as *Error. Errors that happened
// locally (the server died, the context ended, a limit was hit) wrap their
// cause, so errors.Is(err, loft.ErrPeerGone) and
// errors.Is(err, context.DeadlineExceeded) work; errors that came from the
// server carry only the code and the message the server sent.
type Error struct {
	Code    Code
	Message string
	// Service and Method name the call, when known (client side).
	Service, Method string
	// Err is the local cause, or nil for an error sent by the server.
	Err error
}

// Errorf returns an *Error with the given code and a formatted message, for
// a handler to return: the client receives the code and the message.
func Errorf(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) Error() string {
	where := ""
	if e.Service != "" {
		where = " " + e.Service + "." + e.Method
	}
	msg := e.Message
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	if msg == "" {
		return fmt.Sprintf("rpc%s: %s", where, e.Code.String())
	}
	return fmt.Sprintf("rpc%s: %s: %s", where, e.Code.String(), msg)
}

// Unwrap returns the local cause, if any.
func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is e's Code, or the context error that matches
// the code Canceled or DeadlineExceeded (so that a deadline that passed on
// the server still matches context.DeadlineExceeded on the client).
func (e *Error) Is(target error) bool {
	switch t := target.(type) {
	case Code:
		return e.Code == t
	case *Error:
		return e.Code == t.Code && (t.Message == "" || t.Message == e.Message)
	}
	switch target {
	case context.Canceled:
		return e.Code == Canceled
	case context.DeadlineExceeded:
		return e.Code == DeadlineExceeded
	}
	return false
}

// CodeOf returns the code of err: OK for nil, the code of an *Error in its
// chain, Canceled or DeadlineExceeded for context errors, Unavailable for
// errors wrapping loft.ErrPeerGone, and Unknown for anything else.
func CodeOf(err error) Code {
	if err == nil {
		return OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	switch {
	case errors.Is(err, context.Canceled):
		return Canceled
	case errors.Is(err, context.DeadlineExceeded):
		return DeadlineExceeded
	case errors.Is(err, loft.ErrPeerGone), errors.Is(err, loft.ErrClosed):
		return Unavailable
	case errors.Is(err, loft.ErrTooLarge):
		return ResourceExhausted
	}
	return Unknown
}

// ErrClientClosed is the cause of calls failed because their Client was
// closed.
var ErrClientClosed = errors.New("rpc: client closed")

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("rpc: server closed")

// ErrBadEnvelope is the cause of errors about a malformed envelope.
var ErrBadEnvelope = errors.New("rpc: malformed envelope")

// localError wraps a local cause with the code CodeOf gives it.
func localError(service, method string, err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		if e.Service == "" {
			c := *e
			c.Service, c.Method = service, method
			return &c
		}
		return e
	}
	return &Error{Code: CodeOf(err), Service: service, Method: method, Err: err}
}
