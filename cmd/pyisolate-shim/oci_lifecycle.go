package main

// The OCI face's lifecycle verbs: create, start, run, exec, kill, delete.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/containerd/console"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/runtime/warm"
	"github.com/pyisolate/pyisolate-oci/sandbox"
	"github.com/pyisolate/pyisolate-oci/spec"
)

func init() {
	ociVerbs["create"] = ociVerb{"create a container (its init waits for start)", ociCreate}
	ociVerbs["start"] = ociVerb{"run the user process of a created container", ociStart}
	ociVerbs["run"] = ociVerb{"create and start a container", ociRun}
	ociVerbs["exec"] = ociVerb{"run another process in a running container", ociExec}
	ociVerbs["kill"] = ociVerb{"send a signal to a container's init (or, with --all, to all its processes)", ociKill}
	ociVerbs["delete"] = ociVerb{"delete a container and everything it holds", ociDelete}
}

// ociCreateFlags are the flags of create and run.
type ociCreateFlags struct {
	bundle, pidFile, consoleSocket, pidfdSocket string
	noPivot, noNewKeyring, detach, keep         bool
	preserveFds                                 int
}

func (o *ociCreateFlags) register(fs interface {
	StringVar(*string, string, string, string)
	BoolVar(*bool, string, bool, string)
	IntVar(*int, string, int, string)
}) {
	fs.StringVar(&o.bundle, "bundle", "", "path to the bundle (default: the current directory)")
	fs.StringVar(&o.bundle, "b", "", "path to the bundle")
	fs.StringVar(&o.pidFile, "pid-file", "", "file to write the init's host pid to")
	fs.StringVar(&o.consoleSocket, "console-socket", "", "unix socket that receives the master side of the terminal")
	fs.StringVar(&o.pidfdSocket, "pidfd-socket", "", "not supported")
	fs.BoolVar(&o.noPivot, "no-pivot", false, "do not use pivot_root (a rootfs on a ramdisk)")
	fs.BoolVar(&o.noNewKeyring, "no-new-keyring", false, "accepted for runc compatibility")
	fs.IntVar(&o.preserveFds, "preserve-fds", 0, "pass N more file descriptors (3 and up) to the container")
}

// ociPrepared is a container prepared by the core, not yet created.
type ociPrepared struct {
	id      string
	r       *runtime.Runtime
	res     *runtime.Reservation
	prep    *sandbox.Container
	opts    runtime.CreateOptions
	console *os.File
}

// prepare reserves id and has the core prepare the bundle: extension
// bundles become the sandbox, plain ones follow the node's policy.
func (g *ociGlobal) prepare(ctx context.Context, id string, o *ociCreateFlags, detach bool) (*ociPrepared, error) {
	if err := runtime.ValidateID(id); err != nil {
		return nil, err
	}
	if o.pidfdSocket != "" {
		return nil, errors.New("--pidfd-socket is not supported by " + OCIName)
	}
	if o.preserveFds < 0 {
		return nil, errors.New("--preserve-fds: must not be negative")
	}
	bundle := o.bundle
	if bundle == "" {
		bundle = "."
	}
	bundle, err := filepath.Abs(bundle)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	r := sandbox.NewRuntime(g.root)
	res, err := r.Reserve(ctx, id, runtime.OwnerOCI)
	if err != nil {
		if errors.Is(err, libcontainer.ErrExist) {
			return nil, fmt.Errorf("container with id exists: %s", id)
		}
		return nil, err
	}
	p := &ociPrepared{id: id, r: r, res: res}
	p.prep, err = sandbox.Prepare(ctx, sandbox.Request{
		Bundle: bundle, ID: id, Runtime: r, Policy: g.policy, ClientProcess: true,
		Groups: &sandbox.RunGroups{Root: g.root, Warn: func(msg string) { warn("%s", msg) }},
	})
	if err != nil {
		p.abort(ctx)
		return nil, err
	}
	s := p.prep.Spec
	if d := spec.DegradedList(s); len(d) > 0 {
		warn("degraded sandbox (restriction model %s): dropped %s", s.Annotations[spec.AnnotationRestriction], strings.Join(d, ", "))
	}
	if f := s.Annotations[spec.AnnotationFloors]; f != "" {
		debugf("policy %s applied its floors: %s", p.prep.Policy, f)
	}
	if msg := warm.ColdFace(OCIName, p.prep.Manifest); msg != "" {
		warn("%s", msg)
	}
	switch {
	case s.Process.Terminal && detach && o.consoleSocket == "":
		p.abort(ctx)
		return nil, errors.New("cannot allocate tty if runc will detach without setting console socket")
	case !s.Process.Terminal && o.consoleSocket != "":
		p.abort(ctx)
		return nil, errors.New("cannot use console socket if runc will not detach or allocate tty")
	}
	p.opts = runtime.CreateOptions{
		Bundle: bundle, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr,
		Systemd: g.systemd, NoPivot: o.noPivot, ExtraFiles: preservedFiles(o.preserveFds),
	}
	if o.consoleSocket != "" {
		if p.console, err = dialConsoleSocket(o.consoleSocket); err != nil {
			p.abort(ctx)
			return nil, err
		}
		p.opts.ConsoleSocket = p.console
	}
	return p, nil
}

// abort undoes prepare: the group left, what was made for the id removed,
// the id released.
func (p *ociPrepared) abort(ctx context.Context) {
	ctx = context.WithoutCancel(ctx)
	if p.prep != nil {
		p.prep.Release(ctx)
	}
	_ = p.r.Delete(ctx, p.id, true)
	p.res.Release()
	if p.console != nil {
		p.console.Close()
	}
}

// created finishes a container that outlives this command: its init's pid
// registered with its group (so that its segments are attributed to it and
// the group lives while it does) and written to pidFile. The id's
// reservation is dropped with this process; the lock file stays, naming the
// OCI face, which no orphan reclaim touches.
func (p *ociPrepared) created(ctx context.Context, c *runtime.Container, pidFile string) error {
	if p.console != nil {
		p.console.Close()
	}
	st, err := c.State()
	if err != nil {
		return err
	}
	if g := p.prep.Group; g != nil {
		if err := g.Join(ctx, p.id, st.InitPID); err != nil {
			warn("%v", err)
		}
	}
	if pidFile != "" {
		if err := writePidFile(pidFile, st.InitPID); err != nil {
			return err
		}
	}
	return nil
}

// dialConsoleSocket connects to a --console-socket and returns the
// connection as a file, which libcontainer's init sends the terminal over.
func dialConsoleSocket(path string) (*os.File, error) {
	conn, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("--console-socket: %w", err)
	}
	defer conn.Close()
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, errors.New("--console-socket: not a unix socket")
	}
	f, err := uc.File()
	if err != nil {
		return nil, fmt.Errorf("--console-socket: %w", err)
	}
	return f, nil
}

// preservedFiles returns the n descriptors after stderr, for --preserve-fds.
func preservedFiles(n int) []*os.File {
	var fs []*os.File
	for i := 0; i < n; i++ {
		fd := uintptr(3 + i)
		fs = append(fs, os.NewFile(fd, "preserved-fd-"+strconv.Itoa(3+i)))
	}
	return fs
}

// writePidFile writes pid to path atomically (a temporary file renamed), as
// runc does: readers never see a partial file.
func writePidFile(path string, pid int) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	tmp := filepath.Join(filepath.Dir(abs), "."+filepath.Base(abs)+".tmp")
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("pid file: %w", err)
	}
	if err := os.Rename(tmp, abs); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("pid file: %w", err)
	}
	return nil
}

func ociCreate(g *ociGlobal, args []string) error {
	fs := ociFlags("create")
	var o ociCreateFlags
	o.register(fs)
	pos, err := parseOCIFlags(fs, args, 0)
	if err != nil {
		return err
	}
	if err := needArgs("create", pos, 1, true); err != nil {
		return err
	}
	ctx := ociContext()
	p, err := g.prepare(ctx, pos[0], &o, true)
	if err != nil {
		return err
	}
	c, err := p.r.Create(ctx, p.id, p.prep.Spec, p.opts)
	if err != nil {
		p.abort(ctx)
		return err
	}
	if err := p.created(ctx, c, o.pidFile); err != nil {
		_ = c.Delete(context.WithoutCancel(ctx), true)
		p.abort(ctx)
		return err
	}
	return nil
}

// load finds container id under the face's root.
func (g *ociGlobal) load(id string) (*runtime.Runtime, *runtime.Container, error) {
	if id == "" {
		return nil, nil, errors.New("container id cannot be empty")
	}
	r := sandbox.NewRuntime(g.root)
	c, err := r.Load(id)
	if err != nil {
		if errors.Is(err, libcontainer.ErrNotExist) {
			return nil, nil, fmt.Errorf("container %s does not exist", id)
		}
		return nil, nil, err
	}
	return r, c, nil
}

func ociStart(g *ociGlobal, args []string) error {
	c, err := ociLoadOne(g, "start", args)
	if err != nil {
		return err
	}
	st, err := c.State()
	if err != nil {
		return err
	}
	switch st.Status {
	case runtime.StatusCreated:
		return c.Start(ociContext())
	case runtime.StatusStopped:
		return errors.New("cannot start a container that has stopped")
	case runtime.StatusRunning:
		return errors.New("cannot start an already running container")
	}
	return fmt.Errorf("cannot start a container in the %s state", st.Status)
}

func ociRun(g *ociGlobal, args []string) error {
	fs := ociFlags("run")
	var o ociCreateFlags
	o.register(fs)
	fs.BoolVar(&o.detach, "detach", false, "detach from the container's process")
	fs.BoolVar(&o.detach, "d", false, "detach from the container's process")
	fs.BoolVar(&o.keep, "keep", false, "not supported: the container is deleted when it exits")
	pos, err := parseOCIFlags(fs, args, 0)
	if err != nil {
		return err
	}
	if err := needArgs("run", pos, 1, true); err != nil {
		return err
	}
	if o.keep {
		return errors.New("--keep is not supported by " + OCIName)
	}
	ctx := ociContext()
	p, err := g.prepare(ctx, pos[0], &o, o.detach)
	if err != nil {
		return err
	}
	if o.detach {
		c, err := p.r.Create(ctx, p.id, p.prep.Spec, p.opts)
		if err != nil {
			p.abort(ctx)
			return err
		}
		if err == nil {
			err = c.Start(ctx)
		}
		if err == nil {
			err = p.created(ctx, c, o.pidFile)
		}
		if err != nil {
			_ = c.Delete(context.WithoutCancel(ctx), true)
			p.abort(ctx)
		}
		return err
	}
	// In the foreground the container is this command's: deleted, and its
	// group left, when it exits.
	defer p.abort(ctx)
	s := p.prep.Spec
	var term *userTerminal
	if s.Process.Terminal && p.console == nil {
		if term, err = attachTerminal(s, &p.opts); err != nil {
			return err
		}
	}
	p.opts.Started = func(pid int) {
		if grp := p.prep.Group; grp != nil {
			if err := grp.Join(ctx, p.id, pid); err != nil {
				warn("%v", err)
			}
		}
		if o.pidFile != "" {
			if err := writePidFile(o.pidFile, pid); err != nil {
				warn("%v", err)
			}
		}
	}
	st, err := p.r.Run(ctx, p.id, s, p.opts)
	term.Close()
	if err != nil {
		return err
	}
	return errOCIExit(st.Code)
}

func ociExec(g *ociGlobal, args []string) error {
	fs := ociFlags("exec")
	var (
		process, pidFile, consoleSocket, cwd, user, apparmor, label string
		detach, tty, noNewPrivs, ignorePaused                       bool
		preserveFds                                                 int
		env, caps, gids                                             multiFlag
	)
	fs.StringVar(&process, "process", "", "path to a process.json (OCI process)")
	fs.StringVar(&process, "p", "", "path to a process.json")
	fs.StringVar(&pidFile, "pid-file", "", "file to write the process's host pid to")
	fs.StringVar(&consoleSocket, "console-socket", "", "unix socket that receives the master side of the terminal")
	fs.StringVar(&cwd, "cwd", "", "working directory in the container")
	fs.StringVar(&user, "user", "", "UID[:GID]")
	fs.StringVar(&user, "u", "", "UID[:GID]")
	fs.StringVar(&apparmor, "apparmor", "", "AppArmor profile")
	fs.StringVar(&label, "process-label", "", "SELinux label")
	fs.BoolVar(&detach, "detach", false, "detach from the process")
	fs.BoolVar(&detach, "d", false, "detach from the process")
	fs.BoolVar(&tty, "tty", false, "allocate a terminal")
	fs.BoolVar(&tty, "t", false, "allocate a terminal")
	fs.BoolVar(&noNewPrivs, "no-new-privs", false, "set no_new_privileges")
	fs.BoolVar(&ignorePaused, "ignore-paused", false, "exec in a paused container")
	fs.IntVar(&preserveFds, "preserve-fds", 0, "pass N more file descriptors (3 and up)")
	fs.Var(&env, "env", "KEY=VALUE (repeatable)")
	fs.Var(&env, "e", "KEY=VALUE (repeatable)")
	fs.Var(&caps, "cap", "add a capability (repeatable)")
	fs.Var(&caps, "c", "add a capability (repeatable)")
	fs.Var(&gids, "additional-gids", "additional gid (repeatable)")
	fs.Var(&gids, "g", "additional gid (repeatable)")
	pos, err := parseOCIFlags(fs, args, 1)
	if err != nil {
		return err
	}
	if err := needArgs("exec", pos, 1, false); err != nil {
		return err
	}
	if process == "" && len(pos) < 2 {
		return errors.New("exec: a process (--process or arguments after the id) is required")
	}
	_, c, err := g.load(pos[0])
	if err != nil {
		return err
	}
	st, err := c.State()
	if err != nil {
		return err
	}
	switch {
	case st.Status == runtime.StatusStopped:
		return errors.New("cannot exec in a stopped container")
	case st.Status == runtime.StatusPaused && !ignorePaused:
		return errors.New("cannot exec in a paused container (use --ignore-paused to override)")
	}
	var ps specs.Process
	if process != "" {
		data, err := os.ReadFile(process)
		if err != nil {
			return fmt.Errorf("exec: --process: %w", err)
		}
		if err := json.Unmarshal(data, &ps); err != nil {
			return fmt.Errorf("exec: --process %s: %w", process, err)
		}
	} else {
		ps = execBase(st)
		ps.Args = pos[1:]
		ps.Env = append(ps.Env, env...)
		ps.Terminal = tty
		if cwd != "" {
			ps.Cwd = cwd
		}
		if user != "" {
			if err := parseUser(user, &ps.User); err != nil {
				return err
			}
		}
		for _, gid := range gids {
			n, err := strconv.ParseUint(gid, 10, 32)
			if err != nil {
				return fmt.Errorf("exec: --additional-gids %q: %w", gid, err)
			}
			ps.User.AdditionalGids = append(ps.User.AdditionalGids, uint32(n))
		}
		if len(caps) > 0 {
			ps.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
		}
		ps.NoNewPrivileges = ps.NoNewPrivileges || noNewPrivs
		if apparmor != "" {
			ps.ApparmorProfile = apparmor
		}
		if label != "" {
			ps.SelinuxLabel = label
		}
	}
	run, err := sandbox.ExecSpec(ps, sandbox.RecordedOf(st))
	if err != nil {
		return fmt.Errorf("exec: %w", err)
	}
	switch {
	case run.Terminal && detach && consoleSocket == "":
		return errors.New("cannot allocate tty if runc will detach without setting console socket")
	case !run.Terminal && consoleSocket != "":
		return errors.New("cannot use console socket if runc will not detach or allocate tty")
	}
	stdio := runtime.Stdio{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, ExtraFiles: preservedFiles(preserveFds)}
	if consoleSocket != "" {
		f, err := dialConsoleSocket(consoleSocket)
		if err != nil {
			return err
		}
		defer f.Close()
		stdio.ConsoleSocket = f
	}
	var term *userTerminal
	if run.Terminal && consoleSocket == "" {
		user, err := console.ConsoleFromFile(os.Stdin)
		if err != nil {
			return fmt.Errorf("exec: --tty: stdin is not a terminal: %w", err)
		}
		if ws, err := user.Size(); err == nil && ws.Width > 0 && ws.Height > 0 {
			run.ConsoleSize = &specs.Box{Width: uint(ws.Width), Height: uint(ws.Height)}
		}
		term = &userTerminal{user: user, out: os.Stdout, copied: make(chan struct{})}
	}
	ctx := ociContext()
	sigc := make(chan os.Signal, 8)
	if !detach {
		signal.Notify(sigc, forwardedExecSignals...)
		defer signal.Stop(sigc)
	}
	proc, err := c.Exec(ctx, run, stdio)
	if err != nil {
		return err
	}
	if pidFile != "" {
		if err := writePidFile(pidFile, proc.Pid()); err != nil {
			_ = proc.Signal(unix.SIGKILL)
			return err
		}
	}
	if detach {
		return nil
	}
	if term != nil && proc.Console() != nil {
		term.attach(proc.Console())
	}
	go func() {
		for sig := range sigc {
			_ = proc.Signal(sig.(unix.Signal))
		}
	}()
	es, err := proc.Wait(ctx)
	term.Close()
	if err != nil {
		return err
	}
	return errOCIExit(es.Code)
}

// forwardedExecSignals are passed on to a foreground exec's process.
var forwardedExecSignals = []os.Signal{
	unix.SIGINT, unix.SIGTERM, unix.SIGHUP, unix.SIGQUIT, unix.SIGUSR1, unix.SIGUSR2,
}

// execBase is the process an exec without --process starts from, as runc
// takes it from the bundle's config.json: its environment, user, working
// directory, capabilities and no_new_privileges. A bundle without one (an
// extension's, whose sandbox was built from its manifest) starts from a
// plain PATH in / (and a process without an environment gets that PATH).
func execBase(st runtime.State) specs.Process {
	base := specs.Process{Cwd: "/", Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}}
	if st.Bundle == "" {
		return base
	}
	s, err := spec.ReadConfig(filepath.Join(st.Bundle, spec.ConfigFile))
	if err != nil || s == nil || s.Process == nil {
		return base
	}
	p := *s.Process
	p.Args, p.Terminal, p.ConsoleSize = nil, false, nil
	if p.Cwd == "" {
		p.Cwd = "/"
	}
	if len(p.Env) == 0 {
		p.Env = base.Env
	}
	return p
}

// parseUser reads UID[:GID].
func parseUser(s string, u *specs.User) error {
	us, gs, hasG := strings.Cut(s, ":")
	uid, err := strconv.ParseUint(us, 10, 32)
	if err != nil {
		return fmt.Errorf("exec: --user %q: want UID[:GID]", s)
	}
	u.UID = uint32(uid)
	if hasG {
		gid, err := strconv.ParseUint(gs, 10, 32)
		if err != nil {
			return fmt.Errorf("exec: --user %q: want UID[:GID]", s)
		}
		u.GID = uint32(gid)
	}
	return nil
}

// multiFlag is a repeatable string flag.
type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func ociKill(g *ociGlobal, args []string) error {
	fs := ociFlags("kill")
	var all bool
	fs.BoolVar(&all, "all", false, "signal every process of the container")
	fs.BoolVar(&all, "a", false, "signal every process of the container")
	pos, err := parseOCIFlags(fs, args, 0)
	if err != nil {
		return err
	}
	if err := needArgs("kill", pos, 1, false); err != nil {
		return err
	}
	if len(pos) > 2 {
		return errors.New(`kill: "kill" requires a maximum of 2 arguments`)
	}
	sig := unix.SIGTERM
	if len(pos) == 2 {
		if sig, err = parseSignal(pos[1]); err != nil {
			return err
		}
		if sig == 0 {
			return errors.New("kill: signal 0 is not supported")
		}
	}
	_, c, err := g.load(pos[0])
	if err != nil {
		return err
	}
	return c.Signal(sig, all)
}

func ociDelete(g *ociGlobal, args []string) error {
	fs := ociFlags("delete")
	var force bool
	fs.BoolVar(&force, "force", false, "kill the container first if it runs")
	fs.BoolVar(&force, "f", false, "kill the container first if it runs")
	pos, err := parseOCIFlags(fs, args, 0)
	if err != nil {
		return err
	}
	if err := needArgs("delete", pos, 1, true); err != nil {
		return err
	}
	id := pos[0]
	if err := runtime.ValidateID(id); err != nil {
		return err
	}
	ctx := ociContext()
	r, c, err := g.load(id)
	if err != nil {
		// A creation cut short leaves a directory without state:
		// runtime.Delete removes what there is.
		if derr := sandbox.NewRuntime(g.root).Delete(ctx, id, true); derr == nil || force {
			return nil
		}
		return err
	}
	st, err := c.State()
	if err != nil {
		return err
	}
	switch st.Status {
	case runtime.StatusRunning, runtime.StatusPaused:
		if !force {
			return fmt.Errorf("cannot delete container %s that is not stopped: %s", id, st.Status)
		}
		if st.Status == runtime.StatusPaused {
			// Frozen processes die of SIGKILL only once thawed.
			_ = c.Resume()
		}
	}
	return sandbox.Delete(ctx, r, id, force)
}
