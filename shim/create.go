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

	eventstypes "github.com/containerd/containerd/api/events"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

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

// built is what buildSpec makes of a bundle.
type built struct {
	spec *specs.Spec
	// group is the isolation group of an extension, "" for a plain
	// container.
	group string
	// policy is the level a plain container runs under, "" for an
	// extension.
	policy spec.Policy
}

// buildSpec turns the bundle containerd wrote into the spec the container
// runs with: the sandbox built from the pyisolate manifest when the bundle
// has one (pyisolate.json or io.pyisolate.* annotations), else the caller's
// spec hardened by spec.Harden.
func (s *service) buildSpec(ctx context.Context, id, bundle string, node spec.Policy) (_ built, retErr error) {
	var group string
	m, plain, err := spec.LoadBundle(bundle)
	if err != nil {
		// A plain container that only names its isolation group (to share
		// the group's shim) has no manifest to decode.
		var gerr error
		if plain, gerr = groupOnlyBundle(bundle); gerr != nil || plain == nil {
			return built{}, invalid("pyisolate: %v", err)
		}
		m = nil
	}
	if plain == nil {
		return built{}, invalid("pyisolate: bundle %s has no %s", bundle, spec.ConfigFile)
	}
	if m == nil {
		policy, err := node.Tighten(plain.Annotations[spec.AnnotationPolicy])
		if err != nil {
			return built{}, invalid("pyisolate: %v", err)
		}
		host := plainHost()
		out, err := spec.ApplyPolicy(plain, policy, host, runtime.PolicyHostChecks())
		if err != nil {
			return built{}, invalid("pyisolate: %v", err)
		}
		if f := out.Annotations[spec.AnnotationFloors]; f != "" {
			log.G(ctx).WithField("id", id).Infof("policy %s applied its floors: %s", policy, f)
		}
		if d := spec.DegradedList(out); len(d) > 0 {
			log.G(ctx).WithField("id", id).Warnf("sandbox degraded on this host (%s): %v", host.Restriction, d)
		}
		return built{spec: out, policy: policy}, nil
	}
	if err := spec.CheckExtensionRequest(plain, runtime.PolicyHostChecks()); err != nil {
		return built{}, invalid("pyisolate: %v", err)
	}
	host, err := s.hostProfile(ctx)
	if err != nil {
		return built{}, err
	}
	// Before the group's tmpfs is made of limits.shm_size.
	if err := spec.CheckHostLimits(m.Limits, host); err != nil {
		return built{}, invalid("pyisolate: %v", err)
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
			return built{}, err
		}
	}
	group = m.Group
	if group == "" {
		group = m.Name
	}
	g, err := s.joinGroup(ctx, group, id, m)
	if err != nil {
		return built{}, err
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
		return built{}, invalid("pyisolate: manifest: %v", err)
	}
	if plain.Process != nil {
		if len(plain.Process.Args) > 0 {
			out.Process.Args = plain.Process.Args
		}
		out.Process.Terminal = plain.Process.Terminal
		out.Process.ConsoleSize = plain.Process.ConsoleSize
	}
	for k, v := range plain.Annotations {
		// The runtime's outputs are the runtime's to write.
		if strings.HasPrefix(k, spec.AnnotationOutPrefix) || k == spec.AnnotationDegraded {
			continue
		}
		if _, ok := out.Annotations[k]; !ok {
			out.Annotations[k] = v
		}
	}
	if err := injectDevices(ctx, out, g, id); err != nil {
		return built{}, err
	}
	if d := spec.DegradedList(out); len(d) > 0 {
		log.G(ctx).WithField("id", id).Warnf("sandbox degraded on this host (%s): %v", host.Restriction, d)
	}
	return built{spec: out, group: group}, nil
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
	b, err := s.buildSpec(ctx, r.ID, r.Bundle, node)
	if err != nil {
		return nil, toGRPC(err)
	}
	sp, group := b.spec, b.group
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
		return nil, toGRPC(err)
	}
	st, err := rc.State()
	if err != nil {
		_ = rc.Delete(context.WithoutCancel(ctx), true)
		pio.Close()
		return nil, toGRPC(err)
	}
	c.c = rc
	c.policy = b.policy
	c.init = &initProcess{proc: newProc("", stdio), s: s, c: c}
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
	go c.init.watch()
	return &taskAPI.CreateTaskResponse{Pid: uint32(st.InitPID)}, nil
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
