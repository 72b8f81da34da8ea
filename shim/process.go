package shim

import (
	"context"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/sandbox"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// process is one process of a task, as containerd's runc shim models it:
// the container's init or an exec process. The task RPCs find the process
// and call it; each kind keeps its own rules. The caller holds the
// container's mu around start, kill and paused.
type process interface {
	// base is the state every process has.
	base() *proc
	// start runs a created process.
	start(ctx context.Context) error
	// kill signals it; all (the init only) signals every process of the
	// container.
	kill(sig syscall.Signal, all bool) error
	// remove deletes it once it exited (an init that never started is
	// killed first) and says how it ended.
	remove(ctx context.Context) (*taskAPI.DeleteResponse, error)
	// paused reports whether it is frozen.
	paused() bool
}

// processStatus is where a process is in its life: created → running →
// stopped, or created → stopped when it dies before Start.
type processStatus int

const (
	statusCreated processStatus = iota
	statusRunning
	statusStopped
)

// proc is the state every process of a task has.
type proc struct {
	execID string // empty for the init
	stdio  stdioPaths
	io     *procIO

	pid     int
	started bool

	exited   chan struct{}
	status   int
	exitedAt time.Time
}

func newProc(execID string, stdio stdioPaths) *proc {
	return &proc{execID: execID, stdio: stdio, exited: make(chan struct{})}
}

func (p *proc) base() *proc { return p }

func (p *proc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// state is the process's place in its state machine.
func (p *proc) state() processStatus {
	switch {
	case p.hasExited():
		return statusStopped
	case !p.started:
		return statusCreated
	}
	return statusRunning
}

// startable refuses to start a process twice or one whose container's init
// has exited.
func (p *proc) startable(init *proc, id string) error {
	if p.started {
		return errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "process already started")
	}
	if init.hasExited() {
		return errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s has exited", id)
	}
	return nil
}

// stateResponse fills the parts of a State answer that the process knows;
// paused tells a running process that is frozen.
func (p *proc) stateResponse(id, bundle string, paused bool) *taskAPI.StateResponse {
	resp := &taskAPI.StateResponse{
		ID:       id,
		Bundle:   bundle,
		Pid:      uint32(p.pid),
		Stdin:    p.stdio.Stdin,
		Stdout:   p.stdio.Stdout,
		Stderr:   p.stdio.Stderr,
		Terminal: p.stdio.Terminal,
		ExecID:   p.execID,
	}
	switch p.state() {
	case statusStopped:
		resp.Status = task.Status_STOPPED
		resp.ExitStatus = uint32(p.status)
		resp.ExitedAt = protobuf.ToTimestamp(p.exitedAt)
	case statusCreated:
		resp.Status = task.Status_CREATED
	default:
		resp.Status = task.Status_RUNNING
		if paused {
			resp.Status = task.Status_PAUSED
		}
	}
	return resp
}

// deleteResponse says how p ended: its exit, or SIGKILL now for a process
// deleted before it exited.
func (p *proc) deleteResponse() *taskAPI.DeleteResponse {
	resp := &taskAPI.DeleteResponse{Pid: uint32(p.pid)}
	if p.hasExited() {
		resp.ExitStatus = uint32(p.status)
		resp.ExitedAt = protobuf.ToTimestamp(p.exitedAt)
	} else {
		resp.ExitStatus = 128 + uint32(unix.SIGKILL)
		resp.ExitedAt = protobuf.ToTimestamp(time.Now())
	}
	return resp
}

// initProcess is the container's init.
type initProcess struct {
	*proc
	s *service
	c *container
}

func (p *initProcess) start(ctx context.Context) error {
	if err := p.startable(p.proc, p.c.id); err != nil {
		return err
	}
	if err := p.c.c.Start(ctx); err != nil {
		return toGRPC(err)
	}
	p.started = true
	p.s.send(&eventstypes.TaskStart{ContainerID: p.c.id, Pid: uint32(p.pid)})
	return nil
}

func (p *initProcess) kill(sig syscall.Signal, all bool) error {
	if p.hasExited() && !all {
		return errgrpc.ToGRPCf(errdefs.ErrNotFound, "process already finished")
	}
	if err := p.c.c.Signal(sig, all); err != nil {
		if p.hasExited() && all {
			return nil
		}
		return checkKillError(err)
	}
	return nil
}

func (p *initProcess) remove(ctx context.Context) (*taskAPI.DeleteResponse, error) {
	s, c := p.s, p.c
	if p.started && !p.hasExited() {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s is still running", c.id)
	}
	// A created, never started container is killed by Delete.
	if err := c.c.Delete(ctx, true); err != nil {
		return nil, toGRPC(err)
	}
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
	}
	if p.io != nil {
		p.io.Wait(2 * time.Second)
		p.io.Close()
	}
	if c.mountedRootfs != "" {
		if err := mount.UnmountRecursive(c.mountedRootfs, 0); err != nil {
			log.G(ctx).WithError(err).Warn("unmount rootfs")
		}
	}
	s.forget(ctx, c)
	resp := p.deleteResponse()
	s.send(&eventstypes.TaskDelete{
		ContainerID: c.id,
		ID:          c.id,
		Pid:         resp.Pid,
		ExitStatus:  resp.ExitStatus,
		ExitedAt:    resp.ExitedAt,
	})
	return resp, nil
}

func (p *initProcess) paused() bool {
	st, err := p.c.c.State()
	return err == nil && st.Status == runtime.StatusPaused
}

// watch waits for the init to exit and publishes the exit, after the exits
// of the container's exec processes (which die with the init's PID
// namespace).
func (p *initProcess) watch() {
	c := p.c
	st, err := c.c.Wait(context.Background())
	at := time.Now()
	p.io.shutdownConsole()
	c.mu.Lock()
	var running []*proc
	for _, e := range c.execs {
		if e.started && !e.hasExited() {
			running = append(running, e.proc)
		}
	}
	c.mu.Unlock()
	deadline := time.After(3 * time.Second)
wait:
	for _, e := range running {
		select {
		case <-e.exited:
		case <-deadline:
			break wait
		}
	}
	p.s.exited(c, p.proc, st, err, at)
}

// execProcess is a process added to a running container by Exec.
type execProcess struct {
	*proc
	s    *service
	c    *container
	spec *specs.Process // until started
	rp   *runtime.Process
}

func (p *execProcess) start(ctx context.Context) error {
	c := p.c
	if err := p.startable(c.init.proc, c.id); err != nil {
		return err
	}
	pio, err := newProcIO(ctx, c.id+"-"+p.execID, p.s.ns, p.stdio)
	if err != nil {
		return toGRPC(err)
	}
	var stdio runtime.Stdio
	if pio.Stdin != nil {
		stdio.Stdin = pio.Stdin
	}
	if pio.Stdout != nil {
		stdio.Stdout = pio.Stdout
	}
	if pio.Stderr != nil {
		stdio.Stderr = pio.Stderr
	}
	rp, err := c.c.Exec(ctx, p.spec, stdio)
	if err == nil && rp.Console() != nil {
		pio.attachConsole(rp.Console())
	}
	pio.CloseChildEnds()
	if err != nil {
		pio.Close()
		if c.init.hasExited() || unix.Kill(c.init.pid, 0) == unix.ESRCH {
			// The init died between the check and the exec (its
			// namespaces are gone): say so, not which file was missing.
			return errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s has exited", c.id)
		}
		return toGRPC(err)
	}
	p.io, p.rp, p.pid, p.started = pio, rp, rp.Pid(), true
	p.s.send(&eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.execID, Pid: uint32(p.pid)})
	go p.watch()
	return nil
}

func (p *execProcess) kill(sig syscall.Signal, _ bool) error {
	if !p.started || p.hasExited() {
		return errgrpc.ToGRPCf(errdefs.ErrNotFound, "process already finished")
	}
	if err := p.rp.Signal(sig); err != nil {
		return checkKillError(err)
	}
	return nil
}

func (p *execProcess) remove(context.Context) (*taskAPI.DeleteResponse, error) {
	if p.started && !p.hasExited() {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %s is still running", p.execID)
	}
	p.c.mu.Lock()
	delete(p.c.execs, p.execID)
	p.c.mu.Unlock()
	if p.io != nil {
		p.io.Wait(2 * time.Second)
		p.io.Close()
	}
	return p.deleteResponse(), nil
}

func (p *execProcess) paused() bool { return false }

// watch waits for the exec process to exit and publishes it.
func (p *execProcess) watch() {
	st, err := p.rp.Wait(context.Background())
	at := time.Now()
	p.io.shutdownConsole()
	p.s.exited(p.c, p.proc, st, err, at)
}

// exited records how p (of c) ended at at and publishes it: an OOM event
// first when the kernel killed it for memory, then the exit. A wait error
// is logged and reported as status 255.
func (s *service) exited(c *container, p *proc, st runtime.ExitStatus, err error, at time.Time) {
	code := st.Code
	if err != nil {
		log.G(s.ctx).WithError(err).WithField("id", c.id).WithField("exec", p.execID).Error("wait for process")
		code = 255
	}
	s.explainSIGBUS(c, p.execID, st)
	c.mu.Lock()
	defer c.mu.Unlock()
	p.status, p.exitedAt = code, at
	close(p.exited)
	if st.OOMKilled {
		s.send(&eventstypes.TaskOOM{ContainerID: c.id})
	}
	id := p.execID
	if id == "" {
		id = c.id
	}
	s.send(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          id,
		Pid:         uint32(p.pid),
		ExitStatus:  uint32(code),
		ExitedAt:    protobuf.ToTimestamp(at),
	})
}

// execSpec is the process an Exec request runs in a container of policy
// ("" for an extension): sandbox.ExecSpec's rule.
func execSpec(ps specs.Process, policy spec.Policy) (*specs.Process, error) {
	return sandbox.ExecSpec(ps, sandbox.Recorded{Policy: policy})
}
