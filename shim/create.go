package shim

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/runtime/warm"
	"github.com/pyisolate/pyisolate-oci/sandbox"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// Create a new container (its init waits for Start).
func (s *service) Create(ctx context.Context, r *taskAPI.CreateTaskRequest) (_ *taskAPI.CreateTaskResponse, retErr error) {
	if r.Checkpoint != "" || r.ParentCheckpoint != "" {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "pyisolate: checkpoint/restore is not supported")
	}
	s.mu.Lock()
	if _, ok := s.containers[r.ID]; ok {
		s.mu.Unlock()
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "container %s already exists", r.ID)
	}
	// Reserve the id while creating.
	s.containers[r.ID] = nil
	s.mu.Unlock()
	defer func() {
		if retErr != nil {
			s.mu.Lock()
			delete(s.containers, r.ID)
			s.mu.Unlock()
		}
	}()

	// The id is taken on disk before anything is made for it: a live process
	// sharing this state root (another shim, or a `pyisolate run`) that holds
	// it is refused without touching its container.
	res, _, err := s.rt.Lock(r.ID, runtime.OwnerShim)
	if err != nil {
		if errors.Is(err, runtime.ErrIDInUse) {
			return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "pyisolate: %v", err)
		}
		return nil, errgrpc.ToGRPC(err)
	}
	defer func() {
		if retErr != nil {
			res.Release()
		}
	}()
	if err := removeStale(ctx, s.rt, r.ID); err != nil {
		return nil, err
	}
	c := &container{id: r.ID, bundle: r.Bundle, execs: map[string]*execProcess{}, res: res}
	if len(r.Rootfs) > 0 {
		rootfs := filepath.Join(r.Bundle, "rootfs")
		if err := os.MkdirAll(rootfs, 0o711); err != nil {
			return nil, errgrpc.ToGRPC(err)
		}
		var mounts []mount.Mount
		for _, m := range r.Rootfs {
			mounts = append(mounts, mount.Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
		}
		if err := mount.All(mounts, rootfs); err != nil {
			return nil, toGRPC(fmt.Errorf("mount rootfs: %w", err))
		}
		c.mountedRootfs = rootfs
		defer func() {
			if retErr != nil {
				_ = mount.UnmountRecursive(rootfs, 0)
			}
		}()
	}
	node, err := policyFromOptions(r.Options)
	if err != nil {
		return nil, errgrpc.ToGRPC(invalid("pyisolate: %v", err))
	}
	prep, err := sandbox.Prepare(ctx, sandbox.Request{
		Bundle: r.Bundle, ID: r.ID, Runtime: s.rt, Policy: node, Groups: s.groups, ClientProcess: true,
	})
	if err != nil {
		if sandbox.IsUserError(err) {
			return nil, errgrpc.ToGRPC(invalid("pyisolate: %v", err))
		}
		return nil, toGRPC(err)
	}
	defer func() {
		if retErr != nil {
			prep.Release(context.WithoutCancel(ctx))
		}
	}()
	sp, group := prep.Spec, prep.GroupName
	c.group, c.prep = group, prep
	if f := sp.Annotations[spec.AnnotationFloors]; f != "" {
		log.G(ctx).WithField("id", r.ID).Infof("policy %s applied its floors: %s", prep.Policy, f)
	}
	if d := spec.DegradedList(sp); len(d) > 0 {
		log.G(ctx).WithField("id", r.ID).Warnf("sandbox degraded on this host (%s): %v", prep.Host.Restriction, d)
	}
	stdio := stdioPaths{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}
	if r.Terminal != sp.Process.Terminal {
		return nil, errgrpc.ToGRPC(invalid("pyisolate: the request's terminal (%v) and the spec's process.terminal (%v) differ", r.Terminal, sp.Process.Terminal))
	}
	pio, err := newProcIO(ctx, r.ID, s.ns, stdio)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	opts := runtime.CreateOptions{Bundle: r.Bundle}
	if pio.Stdin != nil {
		opts.Stdin = pio.Stdin
	}
	if pio.Stdout != nil {
		opts.Stdout = pio.Stdout
	}
	if pio.Stderr != nil {
		opts.Stderr = pio.Stderr
	}
	rc, err := s.createWarm(ctx, r.ID, r.Bundle, prep, pio)
	if rc == nil && err == nil {
		rc, err = s.rt.Create(ctx, r.ID, sp, opts)
	}
	if err == nil && rc.Console() != nil {
		pio.attachConsole(rc.Console())
	}
	pio.CloseChildEnds()
	if err != nil {
		pio.Close()
		return nil, toGRPC(err)
	}
	st, err := rc.State()
	if err != nil {
		_ = rc.Delete(context.WithoutCancel(ctx), true)
		pio.Close()
		return nil, toGRPC(err)
	}
	c.c = rc
	c.policy = prep.Policy
	c.init = &initProcess{proc: newProc("", stdio), s: s, c: c}
	c.init.io = pio
	c.init.pid = st.InitPID
	_ = os.WriteFile(filepath.Join(r.Bundle, initPidFile), []byte(strconv.Itoa(st.InitPID)), 0o644)
	if c.group != "" {
		if err := s.groups.Register(ctx, c.group, r.ID, st.InitPID); err != nil {
			log.G(ctx).WithError(err).Warn("register group member")
		}
	}

	s.mu.Lock()
	s.containers[r.ID] = c
	s.mu.Unlock()

	s.send(&eventstypes.TaskCreate{
		ContainerID: r.ID,
		Bundle:      r.Bundle,
		Rootfs:      r.Rootfs,
		IO:          &eventstypes.TaskIO{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal},
		Checkpoint:  r.Checkpoint,
		Pid:         uint32(st.InitPID),
	})
	go c.init.watch()
	return &taskAPI.CreateTaskResponse{Pid: uint32(st.InitPID)}, nil
}

// createWarm creates an extension whose manifest has a preload list from
// its group's template (package runtime/warm): a created container whose
// init is forked from the template, started and waited for as any other.
// It returns nil and no error when the extension must start cold (said in
// the log).
func (s *service) createWarm(ctx context.Context, id, bundle string, prep *sandbox.Container, pio *procIO) (*runtime.Container, error) {
	if prep.Manifest == nil || len(prep.Manifest.Preload) == 0 {
		return nil, nil
	}
	lg := log.G(ctx).WithField("id", id)
	rc, err := warm.Create(ctx, s.rt, id, prep.Spec, warm.Options{
		Manifest: prep.Manifest, Group: prep.GroupName, Bundle: bundle,
		Stdin: pio.Stdin, Stdout: pio.Stdout, Stderr: pio.Stderr,
		Log: func(msg string) { lg.Warn(msg) },
	})
	if warm.IsNotUsed(err) {
		lg.Warnf("%v; starting cold", err)
		return nil, nil
	}
	return rc, err
}

// removeStale clears what a dead shim left of container id under rt's root
// (a stopped or never-started container, a creation cut short), so that
// containerd, which knows no task of that id, can create it again. A running
// container of that id is not touched: another containerd shares this
// namespace's state root, and creating is refused with the reason.
func removeStale(ctx context.Context, rt *runtime.Runtime, id string) error {
	_, serr := os.Lstat(filepath.Join(rt.Root, id))
	_, rerr := os.Lstat(filepath.Join(rt.Root, "rootfs", id))
	if serr != nil && rerr != nil {
		return nil
	}
	if c, err := rt.Load(id); err == nil {
		if st, err := c.State(); err == nil && (st.Status == runtime.StatusRunning || st.Status == runtime.StatusPaused) {
			return errgrpc.ToGRPCf(errdefs.ErrAlreadyExists,
				"pyisolate: container %s is %s (init pid %d) under %s, unknown to this containerd: another containerd uses namespace state root %s",
				id, st.Status, st.InitPID, filepath.Join(rt.Root, id), rt.Root)
		}
	}
	log.G(ctx).WithField("id", id).Warn("pyisolate: removing the state a dead shim left of this container")
	if err := rt.Delete(ctx, id, true); err != nil {
		return toGRPC(fmt.Errorf("remove stale state of container %s: %w", id, err))
	}
	return nil
}
