package main

// The bubblewrap face: started as "bwrap" (a symlink that `pyisolate install
// --bwrap-shim DIR` makes, with DIR first on PATH), the binary reads the
// bwrap command line pyisolate builds (build_bwrap_command in
// pyisolate/_internal/sandbox.py, and the probes of sandbox_detect.py) and
// runs the command in the runtime's sandbox instead, through the sandbox core
// (sandbox.PrepareExplicit). It never runs bwrap, so a real bwrap later on
// PATH is never reached, and it never runs itself again but as the
// container's init.
//
// What it honours as bwrap does: the mounts in argument order onto an empty
// root, --setenv and --clearenv in order, the command's exit status (128+N
// when a signal N killed it), stdio passed as they are, death by the
// signals bwrap dies of (the sandbox is killed with it). What it adds, as
// for every extension: namespaces never fewer than asked (pid, ipc, uts,
// mount, cgroup and user always; network unless shared), every capability
// dropped, no_new_privileges, the default seccomp profile, masked /proc and
// /sys paths, a read-only root, the default limits, the path policy of
// spec.CheckExplicit, and the sandbox killed with its parent. See README.md,
// "Using pyisolate-oci with pyisolate".

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/sandbox"
	"github.com/pyisolate/pyisolate-oci/spec"
	"github.com/pyisolate/pyisolate-oci/tensoripc"
)

// BwrapName is the binary name under which the program is the bubblewrap
// face.
const BwrapName = "bwrap"

// BwrapRootEnv names the environment variable that sets the face's state
// root (default: runtime.DefaultStateRoot); a bwrap command line has no room
// for a flag of ours. It is not passed on to the sandbox.
const BwrapRootEnv = "PYISOLATE_ROOT"

// bwrapExitFailure is bwrap's exit status for its own failures: a bad
// option, a mount it cannot make, a command it cannot run.
const bwrapExitFailure = 1

// bwrapFatalSignals are the signals whose default action ends bwrap (it
// handles none of them): the face dies of them too, after killing and
// deleting the sandbox.
var bwrapFatalSignals = []os.Signal{
	unix.SIGHUP, unix.SIGINT, unix.SIGQUIT, unix.SIGTERM, unix.SIGUSR1, unix.SIGUSR2, unix.SIGALRM,
}

// bwrapRequest is a parsed bwrap command line.
type bwrapRequest struct {
	// sandbox is the request for the core; its Env is the command's whole
	// environment after --clearenv and --setenv.
	sandbox spec.Explicit
	// dieWithParent is --die-with-parent: the face dies (and the sandbox
	// with it) when its parent does. The sandbox always dies with the face.
	dieWithParent bool
	// help and version are --help and --version.
	help, version bool
}

// bwrapUsage is the face's --help.
const bwrapUsage = `usage: bwrap [OPTIONS...] [--] COMMAND [ARGS...]

pyisolate-oci's bubblewrap face: the command runs in pyisolate-oci's sandbox
(capabilities dropped, no_new_privileges, seccomp, limits, read-only root).
Options (bwrap's forms; any other is refused):
    --help                       Print this help
    --version                    Print version
    --unshare-user, --unshare-user-try, --unshare-pid, --unshare-ipc,
    --unshare-uts, --unshare-cgroup, --unshare-cgroup-try, --unshare-all
                                 Accepted: these namespaces are always new
    --unshare-net                New network namespace (loopback only)
    --share-net                  Keep the host's network (with --unshare-all)
    --new-session                Accepted: the command never has a controlling terminal
    --die-with-parent            Kill the sandbox when the caller of bwrap dies
    --bind SRC DEST              Bind mount the host path SRC on DEST
    --ro-bind SRC DEST           Bind mount the host path SRC read-only on DEST
    --dev-bind SRC DEST          Bind a GPU device node (/dev/nvidia*, /dev/dri)
    --proc /proc                 Mount a new procfs
    --dev /dev                   Mount a minimal /dev
    --tmpfs DEST                 Mount a new tmpfs on DEST
    --dir DEST                   Create a directory at DEST
    --setenv VAR VALUE           Set an environment variable
    --clearenv                   Unset all environment variables
State root: $` + BwrapRootEnv + ` (default /run/pyisolate as root, $XDG_RUNTIME_DIR/pyisolate otherwise).
`

// bwrapMain is the face's entry point: it returns the exit status, or dies
// of the signal that ended it.
func bwrapMain(args []string) int {
	req, err := parseBwrapArgs(args, os.Environ())
	if err != nil {
		return bwrapFail("%v", err)
	}
	switch {
	case req.help:
		fmt.Fprint(os.Stdout, bwrapUsage)
		return 0
	case req.version:
		fmt.Fprintln(os.Stdout, "bubblewrap 0.8.0 (pyisolate-oci bwrap face)")
		return 0
	}
	if req.dieWithParent {
		// bwrap makes itself die with its parent too; the face is told with
		// SIGTERM, so that it can kill and delete the sandbox first.
		_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGTERM), 0, 0, 0)
	}
	code, sig := bwrapRun(req)
	if sig != 0 {
		// Die of it, as bwrap would: the caller sees the signal.
		signal.Reset(sig)
		_ = unix.Kill(os.Getpid(), sig)
		time.Sleep(time.Second)
		return 128 + int(sig)
	}
	return code
}

// bwrapFail prints one line as bwrap does and returns its failure status.
func bwrapFail(format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "bwrap: "+format+"\n", a...)
	return bwrapExitFailure
}

// parseBwrapArgs reads a bwrap command line (without argv[0]) as bwrap does:
// options until the first argument that does not start with "-", or "--";
// the rest is the command. Unknown options and missing arguments are
// errors in bwrap's words. env is the environment the command inherits
// (less BwrapRootEnv) before --clearenv and --setenv.
func parseBwrapArgs(args, env []string) (*bwrapRequest, error) {
	req := &bwrapRequest{}
	r := &req.sandbox
	r.Name = BwrapName
	r.Env = envWithout(env, BwrapRootEnv)
	unshareNet, unshareAll, shareNet := false, false, false
	i := 0
	need := func(opt string, n int) ([]string, error) {
		if i+n >= len(args) {
			if n == 1 {
				return nil, fmt.Errorf("%s takes an argument", opt)
			}
			return nil, fmt.Errorf("%s takes two arguments", opt)
		}
		v := args[i+1 : i+1+n]
		i += n
		return v, nil
	}
	mount := func(opt string, kind spec.MountKind, n int) error {
		v, err := need(opt, n)
		if err != nil {
			return err
		}
		m := spec.ExplicitMount{Kind: kind, Dest: v[len(v)-1]}
		if n == 2 {
			m.Source = v[0]
		}
		r.Mounts = append(r.Mounts, m)
		return nil
	}
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if !strings.HasPrefix(a, "-") {
			break
		}
		var err error
		switch a {
		case "--help":
			req.help = true
			return req, nil
		case "--version":
			req.version = true
			return req, nil
		case "--unshare-user", "--unshare-user-try", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
			"--unshare-cgroup", "--unshare-cgroup-try":
			// Always new in the runtime's sandbox: never fewer than asked.
		case "--unshare-all":
			unshareAll = true
		case "--unshare-net":
			unshareNet = true
		case "--share-net":
			shareNet = true
		case "--new-session":
			// The container's init is always a new session leader
			// (setsid): no controlling terminal to inject input into.
		case "--die-with-parent":
			req.dieWithParent = true
		case "--clearenv":
			r.Env = nil
		case "--setenv":
			var v []string
			if v, err = need(a, 2); err == nil {
				r.Env = append(envWithout(r.Env, v[0]), v[0]+"="+v[1])
			}
		case "--bind":
			err = mount(a, spec.MountBind, 2)
		case "--ro-bind":
			err = mount(a, spec.MountROBind, 2)
		case "--dev-bind":
			err = mount(a, spec.MountDevBind, 2)
		case "--proc":
			err = mount(a, spec.MountProc, 1)
		case "--dev":
			err = mount(a, spec.MountDev, 1)
		case "--tmpfs":
			err = mount(a, spec.MountTmpfs, 1)
		case "--dir":
			err = mount(a, spec.MountDir, 1)
		default:
			return nil, fmt.Errorf("Unknown option %s", a)
		}
		if err != nil {
			return nil, err
		}
	}
	if shareNet && !unshareAll {
		return nil, errors.New("--share-net must be used with --unshare-all")
	}
	r.Network = !(unshareNet || (unshareAll && !shareNet))
	r.Args = args[i:]
	if len(r.Args) == 0 {
		return nil, errors.New("No command specified (usage: bwrap [OPTIONS...] [--] COMMAND [ARGS...])")
	}
	return req, nil
}

// envWithout returns env less the entries of key.
func envWithout(env []string, key string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k != key {
			out = append(out, kv)
		}
	}
	return out
}

// sandboxCwd is bwrap's choice of working directory: the caller's own when
// the sandbox shows the same directory there (the last mount holding it is
// a bind of the same path, or is it), else /.
func sandboxCwd(r *spec.Explicit, cwd string) string {
	if cwd == "" || !filepath.IsAbs(cwd) {
		return "/"
	}
	for i := len(r.Mounts) - 1; i >= 0; i-- {
		m := r.Mounts[i]
		dest := filepath.Clean(m.Dest)
		if cwd != dest && !strings.HasPrefix(cwd, strings.TrimSuffix(dest, "/")+"/") {
			continue
		}
		switch m.Kind {
		case spec.MountBind, spec.MountROBind:
			rel, _ := filepath.Rel(dest, cwd)
			if fi, err := os.Stat(filepath.Join(m.Source, rel)); err == nil && fi.IsDir() {
				return cwd
			}
		case spec.MountDir, spec.MountTmpfs, spec.MountDev, spec.MountProc:
			if cwd == dest {
				return cwd
			}
		}
		return "/"
	}
	return "/"
}

// bwrapRun runs the request's command in a sandbox and returns its exit
// status, or the signal the face must die of (sandbox killed and deleted).
func bwrapRun(req *bwrapRequest) (code int, died syscall.Signal) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, bwrapFatalSignals...)
	defer signal.Stop(sigc)
	caught := make(chan syscall.Signal, 1)
	go func() {
		select {
		case s := <-sigc:
			caught <- s.(syscall.Signal)
			cancel() // Run kills the sandbox and deletes it
		case <-ctx.Done():
		}
	}()
	signalled := func() syscall.Signal {
		select {
		case s := <-caught:
			return s
		default:
			return 0
		}
	}

	r := &req.sandbox
	wd, _ := os.Getwd()
	r.Cwd = sandboxCwd(r, wd)
	r.Env = append(envWithout(r.Env, "PWD"), "PWD="+r.Cwd)
	if h, err := os.Hostname(); err == nil {
		r.Hostname = h
	}
	root := os.Getenv(BwrapRootEnv)
	if root == "" {
		root = runtime.DefaultStateRoot()
	}
	rt := sandbox.NewRuntime(root)
	if _, err := rt.ReclaimOrphans(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "bwrap: warning: %v\n", err)
	}
	id := bwrapID()
	res, err := rt.Reserve(ctx, id, runtime.OwnerRun)
	if err != nil {
		return bwrapFail("%v", err), signalled()
	}
	defer res.Release()
	c, err := sandbox.PrepareExplicit(ctx, sandbox.ExplicitRequest{
		ID: id, Runtime: rt, Sandbox: r, UID: os.Getuid(), GID: os.Getgid(),
	})
	if err != nil {
		_ = rt.Delete(context.WithoutCancel(ctx), id, true) // the empty rootfs, if made
		return bwrapFail("%v", err), signalled()
	}
	s := c.Spec
	if d := spec.DegradedList(s); len(d) > 0 {
		fmt.Fprintf(os.Stderr, "bwrap: warning: degraded sandbox (pyisolate-oci, restriction model %s%s): dropped %s\n",
			s.Annotations[spec.AnnotationRestriction], map[bool]string{true: ", rootless"}[runtime.Rootless()], strings.Join(d, ", "))
	}
	opts := runtime.CreateOptions{DieWithParent: true, NoSignalForwarding: true, RootfsDirs: c.RootfsDirs}
	// Passed as they are (no copying), as bwrap passes them; a closed one
	// becomes /dev/null.
	if isOpen(os.Stdin) {
		opts.Stdin = os.Stdin
	}
	if isOpen(os.Stdout) {
		opts.Stdout = os.Stdout
	}
	if isOpen(os.Stderr) {
		opts.Stderr = os.Stderr
	}
	st, err := rt.Run(ctx, id, s, opts)
	if sig := signalled(); sig != 0 {
		return 0, sig
	}
	if err != nil {
		return bwrapFail("%v", err), 0
	}
	if st.OOMKilled {
		limit := "none"
		if l := s.Linux; l != nil && l.Resources != nil && l.Resources.Memory != nil && l.Resources.Memory.Limit != nil {
			limit = tensoripc.HumanBytes(*l.Resources.Memory.Limit)
		}
		fmt.Fprintf(os.Stderr, "bwrap: the sandbox was killed: out of memory (limit %s)\n", limit)
	}
	return st.Code, 0
}

// isOpen reports whether f's descriptor is open: a caller may start bwrap
// with a standard stream closed.
func isOpen(f *os.File) bool {
	var st unix.Stat_t
	return unix.Fstat(int(f.Fd()), &st) == nil
}

// bwrapID is a fresh container id for one bwrap command.
func bwrapID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "bwrap-" + hex.EncodeToString(b[:])
}
