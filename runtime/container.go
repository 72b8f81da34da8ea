package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	goruntime "runtime"
	"sync"
	"syscall"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// DefaultRoot is the state directory of a runtime run as root when
// Runtime.Root is empty (DefaultStateRoot says which applies). Every
// container keeps its libcontainer state in <Root>/<id>; empty root
// filesystems made by EmptyRootfs live in <Root>/rootfs/<id>.
const DefaultRoot = "/run/pyisolate"

// DefaultCgroupParent is the cgroup under which a container gets its own
// cgroup (<parent>/<id>) when its spec names none and the cgroupfs driver is
// used.
const DefaultCgroupParent = "/pyisolate"

// SeccompEnabled reports whether seccomp support is compiled into this
// binary. libcontainer only has it with cgo and the "seccomp" build tag
// (libseccomp); without it, a spec with a seccomp section fails at Create.
const SeccompEnabled = seccomp.Enabled

// isReservedID reports whether name is a directory of the state root that
// is not a container: the empty root filesystems, the isolation groups, the
// id reservations, the staged bind sources and the warm-start templates.
func isReservedID(name string) bool {
	return name == rootfsDir || name == GroupsDir || name == locksDir || name == bindsDir || name == WarmDir
}

// WarmDir is the subdirectory of the state root holding warm-start
// templates' directories (package runtime/warm); it is also a reserved
// container id.
const WarmDir = "warm"

// errNoDevices says that the binary lacks libcontainer's device cgroup
// backend (see container_devices.go).
var errNoDevices = errors.New("this binary was built without the device cgroup backend " +
	"(github.com/opencontainers/cgroups/devices, see runtime/container_devices.go): device rules cannot be applied")

// GroupsDir is the subdirectory of the state root holding the isolation
// groups (package runtime/group); it is also a reserved container id.
const GroupsDir = "groups"

// rootfsDir is the subdirectory of the state root holding empty root
// filesystems; it is also a reserved container id.
const rootfsDir = "rootfs"

// ErrNotOwner is returned by Wait for a container or process this Runtime
// value did not start (one obtained with Load): only the parent process can
// collect an exit status.
var ErrNotOwner = errors.New("exit status unavailable: the process was not started by this process")

// Runtime creates and manages containers whose state lives under Root. The
// zero value uses DefaultStateRoot. A Runtime is safe for concurrent use.
type Runtime struct {
	// Root is the state directory. Empty means DefaultStateRoot: DefaultRoot
	// as root, $XDG_RUNTIME_DIR/pyisolate rootless.
	Root string
	// ReleaseGroup, when set, removes a reclaimed container (see Reserve and
	// ReclaimOrphans) from its isolation group: package group's
	// ReleaseMember, which this package cannot import.
	ReleaseGroup func(ctx context.Context, root, group, id string) error
}

// CreateOptions are the per-container inputs of Create that are not in the
// OCI spec.
type CreateOptions struct {
	// Bundle is the absolute path of the OCI bundle. Relative paths in the
	// spec (root.path, bind mount sources) are resolved against it, and it
	// is reported by State. It may be empty when every spec path is absolute.
	Bundle string
	// Stdin, Stdout and Stderr are the container init's standard streams.
	// *os.File values are passed to the container as they are (no copying);
	// other readers and writers are connected through pipes. Nil means
	// /dev/null.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// Systemd selects the systemd cgroup driver instead of cgroupfs. The
	// spec's cgroupsPath must then be "slice:prefix:name" or empty.
	Systemd bool
	// NoPivot uses MS_MOVE and chroot instead of pivot_root, for root
	// filesystems on a ramdisk.
	NoPivot bool
	// Started, when set, is called by Run with the host pid of the
	// container's init once the user process runs (to register it with its
	// isolation group).
	Started func(initPID int)
	// DieWithParent makes the kernel kill the container's init (and with it
	// every process of its PID namespace) with SIGKILL when the process that
	// called Run dies, as bwrap's --die-with-parent does. Only Run honours
	// it: it keeps the OS thread that forked the init alive until the
	// container exits (the parent-death signal follows that thread).
	DieWithParent bool
	// NoSignalForwarding keeps Run from passing the signals it receives on
	// to the container's init: the caller handles them (the bwrap face dies
	// of them, as bwrap does, after cancelling Run's context, which kills
	// the container).
	NoSignalForwarding bool
	// RootfsDirs are directories (absolute paths inside the container) that
	// Create makes in an empty root filesystem (EmptyRootfs) before the
	// mounts, beneath the rootfs without following symlinks out of it:
	// bwrap's --dir on a root that is read-only once the container runs.
	RootfsDirs []string
	// PinSources lists bind mount sources (absolute, symlink-free paths that
	// the caller checked) that must be bound as the very objects checked:
	// see pin.go. Those a spec built by spec.Build records
	// (spec.PinnedPaths) are pinned too. Running as root, a rootfs that the
	// container's root (a user namespace's unprivileged host uid) may be
	// unable to walk to is pinned as well.
	PinSources []string
	// Console, when set, lets Run start a spec whose process.terminal is
	// true: Run calls it with the master side of the process's terminal
	// once the container is created, before its process starts. The callee
	// connects it to the user and closes it after Run returned (deleting
	// the container does not close it). Create ignores it.
	Console func(*Console)
	// ConsoleSocket, when set, is where the master side of the init's
	// terminal (process.terminal) goes instead: libcontainer's init sends
	// it over this unix socket with SCM_RIGHTS, as `runc create
	// --console-socket` does, and the container then has no Console here.
	// The caller keeps and closes its copy.
	ConsoleSocket *os.File
	// ExtraFiles are passed to the init as file descriptors 3, 4, ... (runc
	// --preserve-fds).
	ExtraFiles []*os.File
}

// Stdio are the standard streams of a process run by Exec. *os.File values
// are passed as they are; nil means /dev/null.
type Stdio struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	// ConsoleSocket, when set, receives the master side of the process's
	// terminal (process.terminal) instead of the caller (see
	// CreateOptions.ConsoleSocket); Process.Console is then nil.
	ConsoleSocket *os.File
	// ExtraFiles are passed to the process as file descriptors 3, 4, ...
	ExtraFiles []*os.File
}

// ExitStatus is how a container process ended.
type ExitStatus struct {
	// Code follows the shell convention: the exit code, or 128+n when the
	// process was killed by signal n (137 for SIGKILL).
	Code int
	// Signal is the signal that killed the process, or 0 when it exited.
	Signal syscall.Signal
	// OOMKilled reports that the kernel's OOM killer killed a process of the
	// container while this process ran (memory limit reached).
	OOMKilled bool
}

// String describes the status in words.
func (e ExitStatus) String() string {
	var s string
	if e.Signal != 0 {
		s = fmt.Sprintf("killed by signal %d (%s)", int(e.Signal), unix.SignalName(e.Signal))
	} else {
		s = fmt.Sprintf("exited with code %d", e.Code)
	}
	if e.OOMKilled {
		s += ", out of memory"
	}
	return s
}

// StateRoot returns the state directory: Root, or DefaultStateRoot when
// Root is empty.
func (r *Runtime) StateRoot() string { return r.root() }

func (r *Runtime) root() string {
	if r == nil || r.Root == "" {
		return DefaultStateRoot()
	}
	return r.Root
}

// Container is a container created by Create or found by Load.
type Container struct {
	rt *Runtime
	lc *libcontainer.Container
	// init is the container's init process when this process created it
	// (or adopted it); nil for a loaded container.
	init *Process
	// start, for a container whose init was adopted (AdoptProcess), lets
	// it run in place of libcontainer's exec; nil otherwise.
	start func(ctx context.Context) error
}

// ID returns the container id.
func (c *Container) ID() string { return c.lc.ID() }

// MaxIDLength is the longest container id (and isolation group name) the
// runtime accepts, in bytes. An id is a path component of the state root, of
// the empty rootfs directory and of the cgroup path; 128 keeps every name
// made from it (such as a systemd scope) well under the 255-byte limit of a
// file name.
const MaxIDLength = 128

// ValidateID checks a container id: 1 to MaxIDLength letters, digits, '_',
// '+', '-' and '.', neither "." nor "..", and not a name the state root
// reserves. Its errors are one line naming the rule broken.
func ValidateID(id string) error { return checkID(id) }

// checkID refuses ids libcontainer refuses, ids too long to be a file name
// with room to spare, and the reserved ones.
func checkID(id string) error {
	if err := CheckName("container id", id); err != nil {
		return err
	}
	if isReservedID(id) {
		return fmt.Errorf("container id %q is reserved", id)
	}
	return nil
}

// checkName checks an id or group name (what says which in errors).
// CheckName checks a container id or another name that becomes a file
// name under the state root (an isolation group's): what names it in the
// error.
func CheckName(what, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%s is empty", what)
	case len(id) > MaxIDLength:
		return fmt.Errorf("%s is %d characters long, at most %d are allowed", what, len(id), MaxIDLength)
	case id == "." || id == "..":
		return fmt.Errorf("%s %q is not allowed", what, id)
	}
	for _, ch := range id {
		switch {
		case ch >= 'a' && ch <= 'z', ch >= 'A' && ch <= 'Z', ch >= '0' && ch <= '9',
			ch == '_', ch == '+', ch == '-', ch == '.':
		default:
			return fmt.Errorf("%s %q contains %q: only letters, digits and _+-. are allowed", what, id, ch)
		}
	}
	return nil
}

// ensureRoot creates the state root. It is 0711 rather than libcontainer's
// 0700 so that a container in a user namespace (whose root is an unprivileged
// host uid) can reach its root filesystem under <Root>/rootfs; the state
// directories inside stay unlistable. A rootless runtime's root is 0700 and
// must be the caller's own (see EnsureRootlessDir): its containers run as
// the caller.
func (r *Runtime) ensureRoot() error {
	root := r.root()
	if Rootless() {
		return EnsureRootlessDir(root)
	}
	if err := os.MkdirAll(root, 0o711); err != nil {
		return fmt.Errorf("create state root: %w", err)
	}
	return nil
}

// Load finds an existing container by id. The returned Container can be
// inspected, signalled and deleted, but Wait returns ErrNotOwner for it.
func (r *Runtime) Load(id string) (*Container, error) {
	if err := checkID(id); err != nil {
		return nil, fmt.Errorf("load container: %w", err)
	}
	lc, err := libcontainer.Load(r.root(), id)
	if err != nil {
		return nil, fmt.Errorf("load container %s: %w", id, err)
	}
	return &Container{rt: r, lc: lc}, nil
}

// List returns the state of every container under Root, sorted by id.
// Directories without a readable state (a creation cut short) are reported
// with status "unknown" so that they can be deleted.
func (r *Runtime) List() ([]State, error) {
	ents, err := os.ReadDir(r.root())
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("list containers: %w", err)
	}
	var out []State
	for _, e := range ents {
		if !e.IsDir() || isReservedID(e.Name()) {
			continue
		}
		c, err := r.Load(e.Name())
		if err != nil {
			if errors.Is(err, libcontainer.ErrNotExist) {
				out = append(out, State{ID: e.Name(), Status: StatusUnknown})
			}
			continue
		}
		st, err := c.State()
		if err != nil {
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

// Start makes the init of a created container exec the spec's process.
func (c *Container) Start(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("start container %s: %w", c.ID(), err)
	}
	if c.start != nil {
		return c.startAdopted(ctx)
	}
	// RLIMIT_AS is set now, just before the init execs (rlimit_as.go):
	// set at create, it held the idle init for as long as the client waited
	// to start it, and a thread the Go runtime made meanwhile could not get
	// its stack.
	x, err := c.rt.readExtraState(c.ID())
	if err != nil {
		return fmt.Errorf("start container %s: %w", c.ID(), err)
	}
	if x.RlimitAS != nil {
		if err := setRlimitAS(c.InitPID(), x.RlimitAS); err != nil {
			return fmt.Errorf("start container %s: %w", c.ID(), err)
		}
	}
	if err := c.lc.Exec(); err != nil {
		return fmt.Errorf("start container %s: %w", c.ID(), err)
	}
	return nil
}

// Wait waits for the container's init to exit and returns how it ended. It
// may be called many times and from many goroutines. ctx bounds the wait
// only; the container keeps running when ctx ends.
func (c *Container) Wait(ctx context.Context) (ExitStatus, error) {
	if c.init == nil {
		return ExitStatus{}, fmt.Errorf("wait for container %s: %w", c.ID(), ErrNotOwner)
	}
	st, err := c.init.Wait(ctx)
	if err != nil {
		return st, fmt.Errorf("wait for container %s: %w", c.ID(), err)
	}
	return st, nil
}

// Signal sends sig to the container's init or, with all, to every process of
// the container.
func (c *Container) Signal(sig syscall.Signal, all bool) error {
	if err := c.signal(sig, all); err != nil {
		return fmt.Errorf("signal %s to container %s: %w", unix.SignalName(sig), c.ID(), err)
	}
	return nil
}

func (c *Container) signal(sig syscall.Signal, all bool) error {
	cfg := c.lc.Config()
	if !all || (sig == unix.SIGKILL) {
		// SIGKILL of a PID namespace's init kills the whole namespace;
		// without a private one libcontainer kills the whole cgroup.
		return c.lc.Signal(sig)
	}
	pids, err := c.lc.Processes()
	if err != nil {
		return err
	}
	if len(pids) == 0 && cfg.Namespaces.IsPrivate(configs.NEWPID) {
		return libcontainer.ErrNotRunning
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, sig); err != nil && !errors.Is(err, unix.ESRCH) {
			return err
		}
	}
	return nil
}

// Delete removes the container: with force it first kills every process of
// it; without force a running container is refused. It then removes its
// cgroups, its state directory and its empty rootfs (if EmptyRootfs made
// one), so that nothing of it is left.
func (c *Container) Delete(ctx context.Context, force bool) error {
	if err := c.delete(ctx, force); err != nil {
		return fmt.Errorf("delete container %s: %w", c.ID(), err)
	}
	return nil
}

func (c *Container) delete(ctx context.Context, force bool) error {
	status, err := c.lc.Status()
	if err != nil {
		return err
	}
	switch status {
	case libcontainer.Stopped:
	case libcontainer.Created:
		force = true
	default:
		if !force {
			return fmt.Errorf("container is %s (use force)", status)
		}
	}
	if force && status != libcontainer.Stopped {
		if err := c.lc.Signal(unix.SIGKILL); err != nil && !errors.Is(err, libcontainer.ErrNotRunning) {
			return err
		}
		if err := c.waitGone(ctx); err != nil {
			return err
		}
	} else if c.init != nil {
		// Stopped but maybe not reaped yet.
		if _, err := c.init.Wait(ctx); err != nil && !errors.Is(err, ErrNotOwner) {
			return err
		}
	}
	if err := c.lc.Destroy(); err != nil {
		return err
	}
	if err := c.rt.removeBinds(c.ID()); err != nil {
		return err
	}
	return c.rt.removeRootfs(c.ID())
}

// waitGone waits until the init of the container has exited after a kill.
func (c *Container) waitGone(ctx context.Context) error {
	if c.init != nil {
		_, err := c.init.Wait(ctx)
		return err
	}
	st, err := c.lc.State()
	if err != nil {
		return err
	}
	return waitPidExit(ctx, st.InitProcessPid, func() bool {
		s, err := c.lc.Status()
		return err == nil && s == libcontainer.Stopped
	})
}

// Delete deletes container id like Container.Delete. It also cleans up after
// a creation that was cut short (a SIGKILLed `pyisolate run` during Create):
// a state directory without state, leftover processes and cgroups at the
// default cgroup path, and the empty rootfs.
func (r *Runtime) Delete(ctx context.Context, id string, force bool) error {
	if err := checkID(id); err != nil {
		return fmt.Errorf("delete container: %w", err)
	}
	defer r.dropStaleLock(id)
	c, err := r.Load(id)
	if err == nil {
		return c.Delete(ctx, force)
	}
	if !errors.Is(err, libcontainer.ErrNotExist) {
		return err
	}
	stateDir := filepath.Join(r.root(), id)
	_, serr := os.Stat(stateDir)
	_, rerr := os.Stat(r.EmptyRootfsPath(id))
	leftover := removeDefaultCgroups(id)
	if serr != nil && rerr != nil && !leftover {
		return fmt.Errorf("delete container %s: %w", id, os.ErrNotExist)
	}
	if err := os.RemoveAll(stateDir); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	if err := r.removeBinds(id); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	if err := r.removeRootfs(id); err != nil {
		return fmt.Errorf("delete container %s: %w", id, err)
	}
	return nil
}

// forwardedSignals are the signals Run passes on to the container's init.
var forwardedSignals = []os.Signal{
	unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2,
}

// ForwardSignals passes the signals Run passes on, received by this process
// from now on, to the init of c, and kills it when ctx ends, until the
// returned stop is called: for a caller that starts and waits for a
// container itself (a warm start, package runtime/warm) as Run would.
func ForwardSignals(ctx context.Context, c *Container) (stop func()) {
	sigc := make(chan os.Signal, 8)
	signal.Notify(sigc, forwardedSignals...)
	stopForward := c.forward(ctx, sigc)
	return func() {
		signal.Stop(sigc)
		stopForward()
	}
}

// forward passes the signals sigc receives to c's init, and SIGKILL when
// ctx ends, until the returned stop is called.
func (c *Container) forward(ctx context.Context, sigc <-chan os.Signal) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case sig := <-sigc:
				_ = c.lc.Signal(sig)
			case <-ctx.Done():
				_ = c.lc.Signal(unix.SIGKILL)
				return
			case <-done:
				return
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// Run creates, starts and waits for container id, forwarding SIGINT,
// SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 received by this process to
// the container's init, and deletes the container afterwards, also on error.
// When ctx ends the container is killed. A process with a terminal needs
// opts.Console (or opts.ConsoleSocket).
func (r *Runtime) Run(ctx context.Context, id string, s *specs.Spec, opts CreateOptions) (st ExitStatus, err error) {
	if s != nil && s.Process != nil && s.Process.Terminal && opts.Console == nil && opts.ConsoleSocket == nil {
		return ExitStatus{}, fmt.Errorf("run container %s: process.terminal needs CreateOptions.Console (or use Create and Container.Console)", id)
	}
	if opts.DieWithParent {
		// The container's init is killed when the thread that forked it
		// exits: keep this goroutine on one OS thread, which Go then neither
		// ends nor lends to another goroutine, until the container is gone.
		goruntime.LockOSThread()
		defer goruntime.UnlockOSThread()
	}
	sigc := make(chan os.Signal, 8)
	if !opts.NoSignalForwarding {
		signal.Notify(sigc, forwardedSignals...)
		defer signal.Stop(sigc)
	}

	c, err := r.Create(ctx, id, s, opts)
	if err != nil {
		return ExitStatus{}, err
	}
	defer func() {
		if derr := c.Delete(context.WithoutCancel(ctx), true); derr != nil && err == nil {
			err = derr
		}
		Phase("delete (cgroups, state, rootfs)")
	}()
	if cons := c.Console(); cons != nil && opts.Console != nil {
		opts.Console(cons)
	}
	defer c.forward(ctx, sigc)()

	if err := c.Start(ctx); err != nil {
		return ExitStatus{}, err
	}
	Phase("start: capabilities, seccomp, exec")
	if opts.Started != nil {
		if st, err := c.State(); err == nil && st.InitPID > 0 {
			opts.Started(st.InitPID)
		}
	}
	st, err = c.init.Wait(context.WithoutCancel(ctx))
	Phase("the process ran and was reaped")
	return st, err
}
