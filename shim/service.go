package shim

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	cdruntime "github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	cdshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/sandbox"
	"github.com/pyisolate/pyisolate-oci/spec"
)

var empty = &emptypb.Empty{}

// initPidFile is written into the bundle with the host pid of the
// container's init, for the "delete" action after a shim died.
const initPidFile = "init.pid"

// service is the task service: containerd's task API (v3 message types; the
// v2 API, which containerd 1.6/1.7 speak, is served by v2Service on the same
// value) over the runtime package. One service serves every container of the
// shim's group.
type service struct {
	ctx       context.Context
	ns        string
	rt        *runtime.Runtime
	events    chan any
	shutdown  shutdown.Service
	publisher cdshim.Publisher
	// stopEvents tells the forwarder that the shim is shutting down;
	// eventsDone is closed once it has published every queued event (see
	// forward).
	stopEvents, eventsDone chan struct{}

	mu         sync.Mutex
	containers map[string]*container

	hostOnce sync.Once
	host     spec.Host
	hostErr  error

	// groups are the isolation groups of the members this shim serves.
	groups *sandbox.SharedGroups
}

// container is one task: its init process and its exec processes.
type container struct {
	id, bundle string
	// mountedRootfs is <bundle>/rootfs when the shim mounted the request's
	// rootfs mounts there.
	mountedRootfs string
	// group is the isolation group of a manifest container ("" for a
	// plain one).
	group string
	// res holds the container's id (runtime.Runtime.Lock) until Delete.
	res *runtime.Reservation
	// policy is the level a plain container runs under; "" for an
	// extension (the manifest's sandbox).
	policy spec.Policy
	// prep is what the sandbox core prepared; released at Delete.
	prep *sandbox.Container
	c    *runtime.Container
	// mu orders events: Start and Exec-start hold it while they publish,
	// the exit watchers take it before they publish an exit.
	mu    sync.Mutex
	init  *initProcess
	execs map[string]*execProcess
}

// newService makes the task service and starts its event forwarder.
func newService(ctx context.Context, publisher cdshim.Publisher, sd shutdown.Service) (*service, error) {
	ns, err := namespaces.NamespaceRequired(ctx)
	if err != nil {
		return nil, err
	}
	s := &service{
		ctx:        ctx,
		ns:         ns,
		rt:         sandbox.NewRuntime(stateRoot(ns)),
		events:     make(chan any, 128),
		stopEvents: make(chan struct{}),
		eventsDone: make(chan struct{}),
		shutdown:   sd,
		publisher:  publisher,
		containers: map[string]*container{},
		groups: sandbox.NewSharedGroups(ctx, stateRoot(ns), func(group, msg string) {
			log.G(ctx).WithField("group", group).Warn(msg)
		}),
	}
	go s.forward(ctx, publisher)
	// The shim process exits once the shutdown callbacks have returned:
	// this one holds it until the last events (a Delete's /tasks/delete
	// just before containerd's Shutdown) are published, or the shutdown's
	// own deadline passes.
	sd.RegisterCallback(func(cctx context.Context) error {
		close(s.stopEvents)
		select {
		case <-s.eventsDone:
		case <-cctx.Done():
		}
		return nil
	})
	if address, err := cdshim.ReadAddress("address"); err == nil {
		sd.RegisterCallback(func(context.Context) error { return cdshim.RemoveSocket(address) })
	}
	return s, nil
}

// RegisterTTRPC registers the task service as containerd.task.v2.Task and
// containerd.task.v3.Task (identical messages).
func (s *service) RegisterTTRPC(server *ttrpc.Server) error {
	taskAPI.RegisterTTRPCTaskService(server, s)
	registerV2(server, s)
	return nil
}

func (s *service) send(evt any) {
	select {
	case s.events <- evt:
	case <-s.shutdown.Done():
	}
}

// forward publishes the queued events in order until the shim shuts down,
// then publishes what is left and closes eventsDone.
func (s *service) forward(ctx context.Context, publisher cdshim.Publisher) {
	ctx = context.WithoutCancel(ctx)
	defer close(s.eventsDone)
	defer publisher.Close()
	publish := func(e any) {
		if err := publisher.Publish(ctx, cdruntime.GetTopic(e), e); err != nil {
			log.G(ctx).WithError(err).Error("post event")
		}
	}
	for {
		select {
		case e := <-s.events:
			publish(e)
		case <-s.stopEvents:
			for {
				select {
				case e := <-s.events:
					publish(e)
				default:
					return
				}
			}
		}
	}
}

// getProcess returns container id and its process execID (the init when
// execID is empty).
func (s *service) getProcess(id, execID string) (*container, process, error) {
	c, err := s.getContainer(id)
	if err != nil {
		return nil, nil, err
	}
	p, err := c.getProc(execID)
	if err != nil {
		return nil, nil, err
	}
	return c, p, nil
}

func (s *service) getContainer(id string) (*container, error) {
	s.mu.Lock()
	c := s.containers[id]
	s.mu.Unlock()
	if c == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "container %s not created", id)
	}
	return c, nil
}

// getProc returns the init (execID empty) or an exec process of c.
func (c *container) getProc(execID string) (process, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if execID == "" {
		return c.init, nil
	}
	p := c.execs[execID]
	if p == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "exec %s of container %s not found", execID, c.id)
	}
	return p, nil
}

// forget drops a deleted container: its pid file, its group membership, its
// id reservation and its entry.
func (s *service) forget(ctx context.Context, c *container) {
	_ = os.Remove(filepath.Join(c.bundle, initPidFile))
	c.prep.Release(ctx)
	c.res.Release()
	s.mu.Lock()
	delete(s.containers, c.id)
	s.mu.Unlock()
}

// Start the container's process, or an exec process.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := p.start(ctx); err != nil {
		return nil, err
	}
	return &taskAPI.StartResponse{Pid: uint32(p.base().pid)}, nil
}

// Delete the container (after its init exited) or an exec process.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	return p.remove(ctx)
}

// Exec adds an exec process to a running container; Start runs it.
func (s *service) Exec(ctx context.Context, r *taskAPI.ExecProcessRequest) (*emptypb.Empty, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	if r.Spec == nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "exec %s: no process spec", r.ExecID)
	}
	var ps specs.Process
	if err := json.Unmarshal(r.Spec.GetValue(), &ps); err != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrInvalidArgument, "exec %s: process spec: %v", r.ExecID, err)
	}
	if r.Terminal != ps.Terminal {
		return nil, errgrpc.ToGRPC(invalid("pyisolate: exec %s: the request's terminal (%v) and the spec's process.terminal (%v) differ", r.ExecID, r.Terminal, ps.Terminal))
	}
	run, err := execSpec(ps, c.policy)
	if err != nil {
		return nil, errgrpc.ToGRPC(invalid("pyisolate: exec %s: %v", r.ExecID, err))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[r.ExecID]; ok || r.ExecID == "" {
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "exec %q already exists", r.ExecID)
	}
	if c.init.hasExited() {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s has exited", c.id)
	}
	p := &execProcess{
		proc: newProc(r.ExecID, stdioPaths{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal}),
		s:    s, c: c, spec: run,
	}
	c.execs[r.ExecID] = p
	s.send(&eventstypes.TaskExecAdded{ContainerID: c.id, ExecID: r.ExecID})
	return empty, nil
}

// State of the container's init or an exec process.
func (s *service) State(ctx context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	paused := p.base().state() == statusRunning && p.paused()
	return p.base().stateResponse(r.ID, c.bundle, paused), nil
}

// Pids lists the processes of the container.
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	pids, err := c.c.Processes()
	if err != nil {
		return nil, toGRPC(err)
	}
	resp := &taskAPI.PidsResponse{}
	for _, pid := range pids {
		resp.Processes = append(resp.Processes, &task.ProcessInfo{Pid: uint32(pid)})
	}
	return resp, nil
}

// Kill signals the init (with all, every process of the container) or an
// exec process.
func (s *service) Kill(ctx context.Context, r *taskAPI.KillRequest) (*emptypb.Empty, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if err := p.kill(syscall.Signal(r.Signal), r.All); err != nil {
		return nil, err
	}
	return empty, nil
}

// Wait for a process to exit.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, pr, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	p := pr.base()
	select {
	case <-p.exited:
	case <-ctx.Done():
		return nil, errgrpc.ToGRPC(ctx.Err())
	}
	return &taskAPI.WaitResponse{
		ExitStatus: uint32(p.status),
		ExitedAt:   protobuf.ToTimestamp(p.exitedAt),
	}, nil
}

// CloseIO closes a process's stdin.
func (s *service) CloseIO(ctx context.Context, r *taskAPI.CloseIORequest) (*emptypb.Empty, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	pio := p.base().io
	c.mu.Unlock()
	if r.Stdin && pio != nil {
		pio.CloseStdin()
	}
	return empty, nil
}

// ResizePty resizes a process's terminal.
func (s *service) ResizePty(ctx context.Context, r *taskAPI.ResizePtyRequest) (*emptypb.Empty, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	pio := p.base().io // an exec's is set when it starts
	c.mu.Unlock()
	if err := pio.resizeConsole(r.Width, r.Height); err != nil {
		return nil, toGRPC(err)
	}
	return empty, nil
}

// Pause is not supported.
func (s *service) Pause(ctx context.Context, r *taskAPI.PauseRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "pyisolate: pause is not supported")
}

// Resume is not supported.
func (s *service) Resume(ctx context.Context, r *taskAPI.ResumeRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "pyisolate: resume is not supported")
}

// Checkpoint is not supported.
func (s *service) Checkpoint(ctx context.Context, r *taskAPI.CheckpointTaskRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "pyisolate: checkpoint is not supported")
}

// Update of resources is not supported: the sandbox's limits come from the
// manifest.
func (s *service) Update(ctx context.Context, r *taskAPI.UpdateTaskRequest) (*emptypb.Empty, error) {
	return nil, errgrpc.ToGRPCf(errdefs.ErrNotImplemented, "pyisolate: updating a running container's resources is not supported; limits come from the manifest")
}

// Stats returns the container's cgroup metrics.
func (s *service) Stats(ctx context.Context, r *taskAPI.StatsRequest) (*taskAPI.StatsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	st, err := c.c.Stats()
	if err != nil {
		return nil, toGRPC(err)
	}
	a, err := metricsAny(st)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	return &taskAPI.StatsResponse{Stats: a}, nil
}

// Connect returns the shim's and the task's pids.
func (s *service) Connect(ctx context.Context, r *taskAPI.ConnectRequest) (*taskAPI.ConnectResponse, error) {
	var pid int
	s.mu.Lock()
	if c := s.containers[r.ID]; c != nil {
		pid = c.init.pid
	}
	s.mu.Unlock()
	return &taskAPI.ConnectResponse{ShimPid: uint32(os.Getpid()), TaskPid: uint32(pid)}, nil
}

// Shutdown ends the shim once it serves no container.
func (s *service) Shutdown(ctx context.Context, r *taskAPI.ShutdownRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.containers) > 0 {
		return empty, nil
	}
	s.shutdown.Shutdown()
	return empty, nil
}
