package shim

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"
)

// invalid marks an error in the caller's bundle, spec or manifest.
func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrInvalidArgument}, a...)...)
}

// classed is an error with the errdefs class containerd sees: its message
// is the error's own, prefixed "pyisolate: ", and errors.Is finds both the
// class and everything the error wraps.
type classed struct {
	class error
	err   error
}

func (e classed) Error() string   { return "pyisolate: " + e.err.Error() }
func (e classed) Unwrap() []error { return []error{e.class, e.err} }

// errClass is the errdefs class of a runtime error: the class it already has,
// else the one its libcontainer or system cause means, else unknown.
func errClass(err error) error {
	for _, c := range []error{
		errdefs.ErrInvalidArgument, errdefs.ErrNotFound, errdefs.ErrAlreadyExists,
		errdefs.ErrFailedPrecondition, errdefs.ErrNotImplemented, errdefs.ErrUnavailable,
		errdefs.ErrPermissionDenied, errdefs.ErrResourceExhausted,
	} {
		if errors.Is(err, c) {
			return nil // classed already
		}
	}
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return nil // errgrpc maps these itself
	case errors.Is(err, libcontainer.ErrNotExist), errors.Is(err, os.ErrNotExist):
		return errdefs.ErrNotFound
	case errors.Is(err, libcontainer.ErrInvalidID):
		return errdefs.ErrInvalidArgument
	case errors.Is(err, libcontainer.ErrExist):
		return errdefs.ErrAlreadyExists
	case errors.Is(err, libcontainer.ErrNotRunning), errors.Is(err, libcontainer.ErrPaused),
		errors.Is(err, libcontainer.ErrRunning), errors.Is(err, libcontainer.ErrNotPaused):
		return errdefs.ErrFailedPrecondition
	case errors.Is(err, os.ErrPermission):
		return errdefs.ErrPermissionDenied
	case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.ENOMEM):
		return errdefs.ErrResourceExhausted
	}
	return errdefs.ErrUnknown
}

// toGRPC turns a runtime error into the ttrpc error containerd receives,
// keeping (or giving) its errdefs class rather than flattening it into a
// message.
func toGRPC(err error) error {
	if err == nil {
		return nil
	}
	if c := errClass(err); c != nil {
		err = classed{class: c, err: err}
	}
	return errgrpc.ToGRPC(err)
}

// checkKillError says "process already finished" (not found) for a signal to
// a process that is gone; other errors keep their class (toGRPC).
func checkKillError(err error) error {
	if errors.Is(err, libcontainer.ErrNotRunning) || errors.Is(err, unix.ESRCH) || errors.Is(err, os.ErrProcessDone) {
		return errgrpc.ToGRPC(fmt.Errorf("process already finished: %w", errdefs.ErrNotFound))
	}
	return toGRPC(err)
}
