package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/containerd/v2/core/mount"
	cdruntime "github.com/containerd/containerd/v2/core/runtime"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/protobuf"
	cdshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/ttrpc"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/pyisolate/pyisolate-oci/runtime"
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

	mu         sync.Mutex
	containers map[string]*container

	hostOnce sync.Once
	host     spec.Host
	hostErr  error

	gmu    sync.Mutex
	groups map[string]*shimGroup
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
	c      *runtime.Container
	// mu orders events: Start and Exec-start hold it while they publish,
	// the exit watchers take it before they publish an exit.
	mu    sync.Mutex
	init  *proc
	execs map[string]*proc
}

// proc is a process of a task (its init or an exec).
type proc struct {
	execID string // empty for the init
	stdio  stdioPaths
	io     *procIO
	spec   *specs.Process // exec processes, until started
	rp     *runtime.Process

	pid     int
	started bool

	exited   chan struct{}
	status   int
	exitedAt time.Time
}

func newProc(execID string, stdio stdioPaths) *proc {
	return &proc{execID: execID, stdio: stdio, exited: make(chan struct{})}
}

func (p *proc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
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
		rt:         &runtime.Runtime{Root: stateRoot(ns)},
		events:     make(chan any, 128),
		shutdown:   sd,
		publisher:  publisher,
		containers: map[string]*container{},
		groups:     map[string]*shimGroup{},
	}
	go s.forward(ctx, publisher)
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

func (s *service) forward(ctx context.Context, publisher cdshim.Publisher) {
	ctx = context.WithoutCancel(ctx)
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
		case <-s.shutdown.Done():
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
func (s *service) getProcess(id, execID string) (*container, *proc, error) {
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
func (c *container) getProc(execID string) (*proc, error) {
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

// hostProfile detects the host once per shim process.
func (s *service) hostProfile(ctx context.Context) (spec.Host, error) {
	s.hostOnce.Do(func() {
		prof, err := runtime.Detect(ctx)
		if err != nil {
			s.hostErr = fmt.Errorf("detect host: %w", err)
			return
		}
		s.host = prof.SpecHost()
	})
	return s.host, s.hostErr
}

// plainHost is the host as spec.Harden needs it, without runtime.Detect's
// namespace probes (tens of milliseconds per shim): Harden adds no user
// namespace, so only the no-caps model (no CAP_SYS_ADMIN: no namespaces at
// all) and seccomp support matter.
func plainHost() spec.Host {
	h := spec.Host{Restriction: spec.RestrictionNone, Seccomp: runtime.SeccompEnabled}
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return h
	}
	status := string(data)
	if !strings.Contains(status, "\nSeccomp:") {
		h.Seccomp = false
	}
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err == nil && caps&(1<<unix.CAP_SYS_ADMIN) == 0 {
				h.Restriction = spec.RestrictionNoCaps
			}
		}
	}
	return h
}

// invalid marks an error in the caller's bundle, spec or manifest.
func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrInvalidArgument}, a...)...)
}

// buildSpec turns the bundle containerd wrote into the spec the container
// runs with: the sandbox built from the pyisolate manifest when the bundle
// has one (pyisolate.json or io.pyisolate.* annotations), else the caller's
// spec hardened by spec.Harden.
func (s *service) buildSpec(ctx context.Context, id, bundle string, node spec.Policy) (_ *specs.Spec, group string, retErr error) {
	m, plain, err := spec.LoadBundle(bundle)
	if err != nil {
		// A plain container that only names its isolation group (to share
		// the group's shim) has no manifest to decode.
		var gerr error
		if plain, gerr = groupOnlyBundle(bundle); gerr != nil || plain == nil {
			return nil, "", invalid("pyisolate: %v", err)
		}
		m = nil
	}
	if plain == nil {
		return nil, "", invalid("pyisolate: bundle %s has no %s", bundle, spec.ConfigFile)
	}
	if m == nil {
		policy, err := node.Tighten(plain.Annotations[spec.AnnotationPolicy])
		if err != nil {
			return nil, "", invalid("pyisolate: %v", err)
		}
		host := plainHost()
		out, err := spec.ApplyPolicy(plain, policy, host, runtime.PolicyHostChecks())
		if err != nil {
			return nil, "", invalid("pyisolate: %v", err)
		}
		if f := out.Annotations[spec.AnnotationFloors]; f != "" {
			log.G(ctx).WithField("id", id).Infof("policy %s applied its floors: %s", policy, f)
		}
		if d := spec.DegradedList(out); len(d) > 0 {
			log.G(ctx).WithField("id", id).Warnf("sandbox degraded on this host (%s): %v", host.Restriction, d)
		}
		return out, "", nil
	}
	if err := spec.CheckExtensionRequest(plain, runtime.PolicyHostChecks()); err != nil {
		return nil, "", invalid("pyisolate: %v", err)
	}
	host, err := s.hostProfile(ctx)
	if err != nil {
		return nil, "", err
	}
	// Before the group's tmpfs is made of limits.shm_size.
	if err := spec.CheckHostLimits(m.Limits, host); err != nil {
		return nil, "", invalid("pyisolate: %v", err)
	}
	rootfs := ""
	if plain.Root != nil && plain.Root.Path != "" {
		rootfs = plain.Root.Path
		if !filepath.IsAbs(rootfs) {
			rootfs = filepath.Join(bundle, rootfs)
		}
	}
	if rootfs == "" || isEmptyDir(rootfs) {
		// A host-files extension: the whole filesystem comes from binds.
		if rootfs, err = s.rt.EmptyRootfs(id); err != nil {
			return nil, "", err
		}
	}
	group = m.Group
	if group == "" {
		group = m.Name
	}
	g, err := s.joinGroup(ctx, group, id, m)
	if err != nil {
		return nil, "", err
	}
	defer func() {
		if retErr != nil {
			s.leaveGroup(context.WithoutCancel(ctx), group, id)
		}
	}()
	opts := spec.Options{ID: id, Rootfs: rootfs, ShmDir: g.ShmDir(), SocketDir: g.SocketDir()}
	if plain.Process != nil {
		opts.HostEnv = plain.Process.Env
	}
	if plain.Linux != nil {
		opts.CgroupsPath = plain.Linux.CgroupsPath
	}
	out, err := spec.Build(m, host, opts)
	if err != nil {
		return nil, "", invalid("pyisolate: manifest: %v", err)
	}
	if plain.Process != nil {
		if len(plain.Process.Args) > 0 {
			out.Process.Args = plain.Process.Args
		}
		out.Process.Terminal = plain.Process.Terminal
		out.Process.ConsoleSize = plain.Process.ConsoleSize
	}
	for k, v := range plain.Annotations {
		if _, ok := out.Annotations[k]; !ok {
			out.Annotations[k] = v
		}
	}
	if err := injectDevices(ctx, out, g, id); err != nil {
		return nil, "", err
	}
	if d := spec.DegradedList(out); len(d) > 0 {
		log.G(ctx).WithField("id", id).Warnf("sandbox degraded on this host (%s): %v", host.Restriction, d)
	}
	return out, group, nil
}

// groupOnlyBundle returns the config of a bundle without pyisolate.json
// whose only pyisolate annotation is io.pyisolate.group, or nil.
func groupOnlyBundle(bundle string) (*specs.Spec, error) {
	if _, err := os.Lstat(filepath.Join(bundle, spec.ManifestFile)); err == nil {
		return nil, nil
	}
	data, err := os.ReadFile(filepath.Join(bundle, spec.ConfigFile))
	if err != nil {
		return nil, err
	}
	var s specs.Spec
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, err
	}
	if s.Annotations[spec.AnnotationFieldGroup] == "" {
		return nil, nil
	}
	for k := range s.Annotations {
		if strings.HasPrefix(k, spec.AnnotationPrefix) && !strings.HasPrefix(k, spec.AnnotationOutPrefix) &&
			k != spec.AnnotationFieldGroup && k != spec.AnnotationDegraded {
			return nil, nil
		}
	}
	return &s, nil
}

func isEmptyDir(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) == 0
}

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
	c := &container{id: r.ID, bundle: r.Bundle, execs: map[string]*proc{}, res: res}
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
			return nil, errgrpc.ToGRPCf(errdefs.ErrUnknown, "mount rootfs: %v", err)
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
	sp, group, err := s.buildSpec(ctx, r.ID, r.Bundle, node)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
	}
	if group != "" {
		c.group = group
		defer func() {
			if retErr != nil {
				s.leaveGroup(context.WithoutCancel(ctx), group, r.ID)
			}
		}()
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
	rc, err := s.rt.Create(ctx, r.ID, sp, opts)
	if err == nil && rc.Console() != nil {
		pio.attachConsole(rc.Console())
	}
	pio.CloseChildEnds()
	if err != nil {
		pio.Close()
		return nil, errgrpc.ToGRPCf(errdefs.ErrUnknown, "pyisolate: %v", err)
	}
	st, err := rc.State()
	if err != nil {
		_ = rc.Delete(context.WithoutCancel(ctx), true)
		pio.Close()
		return nil, errgrpc.ToGRPC(err)
	}
	c.c = rc
	c.policy = spec.Policy(sp.Annotations[spec.AnnotationPolicyOut])
	c.init = newProc("", stdio)
	c.init.io = pio
	c.init.pid = st.InitPID
	_ = os.WriteFile(filepath.Join(r.Bundle, initPidFile), []byte(strconv.Itoa(st.InitPID)), 0o644)
	if c.group != "" {
		s.registerMember(ctx, c.group, r.ID, st.InitPID)
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
	go s.watchInit(c)
	return &taskAPI.CreateTaskResponse{Pid: uint32(st.InitPID)}, nil
}

// watchInit waits for the container's init to exit and publishes the exit,
// after the exits of the container's exec processes (which die with the
// init's pid namespace).
func (s *service) watchInit(c *container) {
	st, err := c.c.Wait(context.Background())
	exitedAt := time.Now()
	c.init.io.shutdownConsole()
	code := st.Code
	if err != nil {
		log.G(s.ctx).WithError(err).WithField("id", c.id).Error("wait for container init")
		code = 255
	}
	c.mu.Lock()
	var running []*proc
	for _, p := range c.execs {
		if p.started && !p.hasExited() {
			running = append(running, p)
		}
	}
	c.mu.Unlock()
	deadline := time.After(3 * time.Second)
wait:
	for _, p := range running {
		select {
		case <-p.exited:
		case <-deadline:
			break wait
		}
	}
	s.explainSIGBUS(c, "", st)
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.init
	p.status, p.exitedAt = code, exitedAt
	close(p.exited)
	if st.OOMKilled {
		s.send(&eventstypes.TaskOOM{ContainerID: c.id})
	}
	s.send(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          c.id,
		Pid:         uint32(p.pid),
		ExitStatus:  uint32(code),
		ExitedAt:    protobuf.ToTimestamp(exitedAt),
	})
}

// watchExec waits for an exec process to exit and publishes it.
func (s *service) watchExec(c *container, p *proc) {
	st, err := p.rp.Wait(context.Background())
	exitedAt := time.Now()
	p.io.shutdownConsole()
	code := st.Code
	if err != nil {
		log.G(s.ctx).WithError(err).WithField("id", c.id).WithField("exec", p.execID).Error("wait for exec process")
		code = 255
	}
	s.explainSIGBUS(c, p.execID, st)
	c.mu.Lock()
	defer c.mu.Unlock()
	p.status, p.exitedAt = code, exitedAt
	close(p.exited)
	if st.OOMKilled {
		s.send(&eventstypes.TaskOOM{ContainerID: c.id})
	}
	s.send(&eventstypes.TaskExit{
		ContainerID: c.id,
		ID:          p.execID,
		Pid:         uint32(p.pid),
		ExitStatus:  uint32(code),
		ExitedAt:    protobuf.ToTimestamp(exitedAt),
	})
}

// Start the container's process, or an exec process.
func (s *service) Start(ctx context.Context, r *taskAPI.StartRequest) (*taskAPI.StartResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.started {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "process already started")
	}
	if r.ExecID == "" {
		if c.init.hasExited() {
			return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s has exited", c.id)
		}
		if err := c.c.Start(ctx); err != nil {
			return nil, errgrpc.ToGRPCf(errdefs.ErrUnknown, "pyisolate: %v", err)
		}
		p.started = true
		s.send(&eventstypes.TaskStart{ContainerID: c.id, Pid: uint32(p.pid)})
		return &taskAPI.StartResponse{Pid: uint32(p.pid)}, nil
	}
	if c.init.hasExited() {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s has exited", c.id)
	}
	pio, err := newProcIO(ctx, c.id+"-"+p.execID, s.ns, p.stdio)
	if err != nil {
		return nil, errgrpc.ToGRPC(err)
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
		return nil, errgrpc.ToGRPCf(errdefs.ErrUnknown, "pyisolate: %v", err)
	}
	p.io, p.rp, p.pid, p.started = pio, rp, rp.Pid(), true
	s.send(&eventstypes.TaskExecStarted{ContainerID: c.id, ExecID: p.execID, Pid: uint32(p.pid)})
	go s.watchExec(c, p)
	return &taskAPI.StartResponse{Pid: uint32(p.pid)}, nil
}

// Delete the container (after its init exited) or an exec process.
func (s *service) Delete(ctx context.Context, r *taskAPI.DeleteRequest) (*taskAPI.DeleteResponse, error) {
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.ExecID != "" {
		if p.started && !p.hasExited() {
			return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "exec %s is still running", r.ExecID)
		}
		c.mu.Lock()
		delete(c.execs, r.ExecID)
		c.mu.Unlock()
		if p.io != nil {
			p.io.Wait(2 * time.Second)
			p.io.Close()
		}
		return deleteResponse(p), nil
	}
	if p.started && !p.hasExited() {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s is still running", r.ID)
	}
	// A created, never started container is killed by Delete.
	if err := c.c.Delete(ctx, true); err != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrUnknown, "pyisolate: %v", err)
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
	_ = os.Remove(filepath.Join(c.bundle, initPidFile))
	if c.group != "" {
		s.leaveGroup(ctx, c.group, c.id)
	}
	c.res.Release()
	s.mu.Lock()
	delete(s.containers, r.ID)
	s.mu.Unlock()
	resp := deleteResponse(p)
	s.send(&eventstypes.TaskDelete{
		ContainerID: c.id,
		ID:          c.id,
		Pid:         resp.Pid,
		ExitStatus:  resp.ExitStatus,
		ExitedAt:    resp.ExitedAt,
	})
	return resp, nil
}

func deleteResponse(p *proc) *taskAPI.DeleteResponse {
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
	switch c.policy {
	case "":
		// An extension: containerd builds the exec spec from the container's
		// original process; the sandbox's dropped capabilities and
		// no_new_privileges apply to exec processes too (nil capabilities:
		// the container's).
		ps.Capabilities = nil
		ps.NoNewPrivileges = true
		ps.ApparmorProfile = ""
	case spec.PolicyHardened:
		// An exec process enters the container from the host: the policy
		// checks its capabilities as it checked the init's, and its floor
		// applies.
		if err := spec.CheckProcessPolicy(&ps, c.policy); err != nil {
			return nil, errgrpc.ToGRPC(invalid("pyisolate: exec %s: %v", r.ExecID, err))
		}
		ps.NoNewPrivileges = true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.execs[r.ExecID]; ok || r.ExecID == "" {
		return nil, errgrpc.ToGRPCf(errdefs.ErrAlreadyExists, "exec %q already exists", r.ExecID)
	}
	if c.init.hasExited() {
		return nil, errgrpc.ToGRPCf(errdefs.ErrFailedPrecondition, "container %s has exited", c.id)
	}
	p := newProc(r.ExecID, stdioPaths{Stdin: r.Stdin, Stdout: r.Stdout, Stderr: r.Stderr, Terminal: r.Terminal})
	p.spec = &ps
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
	resp := &taskAPI.StateResponse{
		ID:       r.ID,
		Bundle:   c.bundle,
		Pid:      uint32(p.pid),
		Stdin:    p.stdio.Stdin,
		Stdout:   p.stdio.Stdout,
		Stderr:   p.stdio.Stderr,
		Terminal: p.stdio.Terminal,
		ExecID:   r.ExecID,
	}
	switch {
	case p.hasExited():
		resp.Status = task.Status_STOPPED
		resp.ExitStatus = uint32(p.status)
		resp.ExitedAt = protobuf.ToTimestamp(p.exitedAt)
	case !p.started:
		resp.Status = task.Status_CREATED
	default:
		resp.Status = task.Status_RUNNING
		if r.ExecID == "" {
			if st, err := c.c.State(); err == nil && st.Status == runtime.StatusPaused {
				resp.Status = task.Status_PAUSED
			}
		}
	}
	return resp, nil
}

// Pids lists the processes of the container.
func (s *service) Pids(ctx context.Context, r *taskAPI.PidsRequest) (*taskAPI.PidsResponse, error) {
	c, err := s.getContainer(r.ID)
	if err != nil {
		return nil, err
	}
	pids, err := c.c.Processes()
	if err != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrUnknown, "pyisolate: %v", err)
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
	c, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	sig := syscall.Signal(r.Signal)
	if r.ExecID != "" {
		if !p.started || p.hasExited() {
			return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "process already finished")
		}
		if err := p.rp.Signal(sig); err != nil {
			return nil, errgrpc.ToGRPC(checkKillError(err))
		}
		return empty, nil
	}
	if p.hasExited() && !r.All {
		return nil, errgrpc.ToGRPCf(errdefs.ErrNotFound, "process already finished")
	}
	if err := c.c.Signal(sig, r.All); err != nil {
		if p.hasExited() && r.All {
			return empty, nil
		}
		return nil, errgrpc.ToGRPC(checkKillError(err))
	}
	return empty, nil
}

func checkKillError(err error) error {
	if errors.Is(err, libcontainer.ErrNotRunning) || errors.Is(err, unix.ESRCH) || errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("process already finished: %w", errdefs.ErrNotFound)
	}
	return fmt.Errorf("pyisolate: %w", err)
}

// Wait for a process to exit.
func (s *service) Wait(ctx context.Context, r *taskAPI.WaitRequest) (*taskAPI.WaitResponse, error) {
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
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
	_, p, err := s.getProcess(r.ID, r.ExecID)
	if err != nil {
		return nil, err
	}
	if r.Stdin && p.io != nil {
		p.io.CloseStdin()
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
	pio := p.io // an exec's is set when it starts
	c.mu.Unlock()
	if err := pio.resizeConsole(r.Width, r.Height); err != nil {
		return nil, errgrpc.ToGRPCf(errdefs.ErrUnknown, "pyisolate: %v", err)
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
		return nil, errgrpc.ToGRPCf(errdefs.ErrUnknown, "pyisolate: %v", err)
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
		return errgrpc.ToGRPCf(errdefs.ErrUnknown, "pyisolate: remove stale state of container %s: %v", id, err)
	}
	return nil
}
