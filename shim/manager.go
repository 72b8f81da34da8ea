// Package shim is containerd-shim-pyisolate-v1, the containerd shim v2 of
// pyisolate-oci (runtime type io.containerd.pyisolate.v1), built on
// containerd's pkg/shim like containerd's runc shim: a manager (start,
// delete, info) and a task service over ttrpc. Containers run through the
// runtime package (libcontainer in process), not through a runc binary.
//
// Compatibility: containerd 1.6 and 1.7 read the output of "start" as a
// plain ttrpc address (1.7 also as JSON version 2) and restore shims from
// <bundle>/address; containerd 2.x accepts a plain address too and then
// speaks task API v2 to the shim. pkg/shim of containerd 2.4 instead reads a
// protobuf bootstrap request on stdin and prints a protobuf reply, which the
// old daemons cannot use, so "start" is implemented here (Main) with
// pkg/shim's socket helpers, and everything else (serving, "delete",
// "-info", "-v") is pkg/shim's. The task service is registered as both
// containerd.task.v2.Task and containerd.task.v3.Task.
//
// Reaping: pkg/shim's reaper (wait4(-1) on SIGCHLD) would steal the exit
// statuses that libcontainer waits for in process, so the shim runs with
// NoReaper: every child is waited for by whoever started it (libcontainer
// for container processes, exec.Cmd for logging binaries). libcontainer
// starts container inits with CLONE_PARENT, so they are the shim's own
// children and no subreaper is needed (NoSubreaper).
package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/api/types"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	cdshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
)

// RuntimeName is the containerd runtime type the shim implements.
const RuntimeName = "io.containerd.pyisolate.v1"

// StateRootBase is where the shim keeps container state: one runtime root
// per containerd namespace, <StateRootBase>/<namespace>.
const StateRootBase = "/run/pyisolate-containerd"

// Version is the shim's version, reported by Info.
var Version = "0.1.0"

func stateRoot(ns string) string { return filepath.Join(StateRootBase, ns) }

type manager struct{ name string }

func (m *manager) Name() string { return m.name }

// Start is not reached: Main handles the "start" action itself (see the
// package comment).
func (m *manager) Start(ctx context.Context, params *bootapi.BootstrapParams) (*bootapi.BootstrapResult, error) {
	return nil, errors.New("pyisolate shim: start is handled before pkg/shim")
}

// Stop cleans up after a shim that died ("delete" action): it kills and
// deletes the container, unmounts the rootfs and reports the exit.
func (m *manager) Stop(ctx context.Context, id string) (cdshim.StopStatus, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return cdshim.StopStatus{}, err
	}
	bundle := ""
	if o, ok := ctx.Value(cdshim.OptsKey{}).(cdshim.Opts); ok {
		bundle = o.BundlePath
	}
	if bundle == "" {
		if bundle, err = os.Getwd(); err != nil {
			return cdshim.StopStatus{}, err
		}
	}
	rt := &runtime.Runtime{Root: stateRoot(ns)}
	if other := foreignBundle(rt, id, bundle); other != "" {
		// Not this shim's container: one of the same id that another
		// containerd (or a dead one) made from another bundle.
		log.G(ctx).WithField("bundle", other).Warn("pyisolate: container of this id belongs to another bundle; left alone")
	} else if err := rt.Delete(ctx, id, true); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("pyisolate: delete container")
	}
	endAbandonedGroups(ctx, stateRoot(ns))
	if err := mount.UnmountRecursive(filepath.Join(bundle, "rootfs"), 0); err != nil {
		log.G(ctx).WithError(err).Warn("pyisolate: unmount rootfs")
	}
	pid := 0
	if data, err := os.ReadFile(filepath.Join(bundle, initPidFile)); err == nil {
		pid, _ = strconv.Atoi(strings.TrimSpace(string(data)))
	}
	return cdshim.StopStatus{Pid: pid, ExitStatus: 128 + int(unix.SIGKILL), ExitedAt: time.Now()}, nil
}

// Info describes the runtime ("-info").
func (m *manager) Info(ctx context.Context, optionsR io.Reader) (*types.RuntimeInfo, error) {
	_, _ = io.Copy(io.Discard, optionsR)
	return &types.RuntimeInfo{
		Name:    m.name,
		Version: &types.RuntimeVersion{Version: Version},
	}, nil
}

// errorf prints an error of the shim binary on stderr.
func errorf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "containerd-shim-pyisolate-v1: "+format+"\n", a...)
}

// foreignBundle returns the bundle of container id under rt when it is not
// bundle, "" when they match or the container has no readable state.
func foreignBundle(rt *runtime.Runtime, id, bundle string) string {
	c, err := rt.Load(id)
	if err != nil {
		return ""
	}
	st, err := c.State()
	if err != nil || st.Bundle == "" || filepath.Clean(st.Bundle) == filepath.Clean(bundle) {
		return ""
	}
	return st.Bundle
}
