package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/runtime/detect"
	"github.com/pyisolate/pyisolate-oci/runtime/warm"
	"github.com/pyisolate/pyisolate-oci/sandbox"
	"github.com/pyisolate/pyisolate-oci/spec"
	"github.com/pyisolate/pyisolate-oci/tensoripc"
)

// exitRuntime is the exit status of `run` when the runtime itself fails
// (not the container's process), as docker and podman use it.
const exitRuntime = 125

func init() {
	register("run", "run an extension bundle sandboxed, in the foreground", runMain)
	register("ps", "list containers", psMain)
	register("kill", "send a signal to a container", killMain)
	register("delete", "delete a container and everything it holds", deleteMain)
}

// newFlagSet returns a flag set whose Usage prints the verb's usage and
// flags on stdout; parse errors are left to parseFlags.
func newFlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(os.Stdout, "Usage: pyisolate %s %s\n", name, usage)
		printDefaults(fs)
	}
	return fs
}

// printDefaults prints the flags of fs on stdout.
func printDefaults(fs *flag.FlagSet) {
	fs.SetOutput(os.Stdout)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// parseFlags parses args into fs. It returns -1 to go on, or the exit status:
// 0 after -h or --help (the usage once, on stdout), exitUsage after a bad
// flag (one line on stderr, no usage).
func parseFlags(fs *flag.FlagSet, args []string) int {
	// The flag package calls Usage itself on -h and on every error; the
	// usage is printed here instead, once, and only when asked for.
	usage := fs.Usage
	fs.Usage = func() {}
	err := fs.Parse(args)
	fs.Usage = usage
	switch {
	case err == nil:
		return -1
	case errors.Is(err, flag.ErrHelp):
		usage()
		return 0
	}
	return fail(exitUsage, "%s: %v (see 'pyisolate %s -h')", fs.Name(), err, fs.Name())
}

// usageError reports a wrong number of arguments in one line.
func usageError(fs *flag.FlagSet, format string, a ...any) int {
	return fail(exitUsage, "%s: %s (see 'pyisolate %s -h')", fs.Name(), fmt.Sprintf(format, a...), fs.Name())
}

func runMain(args []string) int {
	fs := newFlagSet("run", "[--group G] [--root DIR] [--id ID] [--shm-retention D] [--policy P] BUNDLE [-- CMD...]\n\n"+
		"Runs the bundle's extension in the foreground with stdio attached and exits with\n"+
		"its status (128+N when killed by signal N, 137 when out of memory); 2 means bad\n"+
		"input, 125 a runtime failure. The container is deleted afterwards. Members of one\n"+
		"group share a /dev/shm tmpfs and a socket directory (/run/pyisolate). A bundle\n"+
		"whose config.json sets process.terminal needs stdin to be a terminal.")
	group := fs.String("group", "", groupFlagHelp)
	root := fs.String("root", runtime.DefaultStateRoot(), rootFlagHelp)
	id := fs.String("id", "", idFlagHelp+" (default: the extension name and a random suffix)")
	retention := fs.Duration("shm-retention", 0, "how long an exited member's shared-memory segments are kept (default 30s; set by the run that creates the group: a group that exists with another retention is refused)")
	policyName := fs.String("policy", string(spec.DefaultPolicy), "policy for a plain bundle (no manifest): hardened refuses privileged requests and applies its floors, faithful runs it as runc would")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	rest := fs.Args()
	if len(rest) == 0 {
		return usageError(fs, "no bundle given")
	}
	policy, err := spec.ParsePolicy(*policyName)
	if err != nil {
		return usageError(fs, "--policy: %v", err)
	}
	if *retention < 0 {
		return usageError(fs, "--shm-retention must not be negative")
	}
	if code := checkIDFlags("run", *id, *group); code >= 0 {
		return code
	}
	bundle, cmd := rest[0], rest[1:]
	if len(cmd) > 0 && cmd[0] == "--" {
		cmd = cmd[1:]
	}
	return runBundle(context.Background(), runRequest{
		Bundle: bundle, Group: *group, Root: *root, ID: *id, Command: cmd, Retention: *retention, Policy: policy,
	})
}

// rootFlagHelp is the help of the --root flags, whose default follows the
// user (runtime.DefaultStateRoot).
const rootFlagHelp = "state directory of the runtime (default for root: " + runtime.DefaultRoot +
	"; for other users $XDG_RUNTIME_DIR/pyisolate, a directory only they can enter)"

// Help of the --id and --group flags, which say the rules checkIDFlags
// applies.
var (
	idFlagHelp    = fmt.Sprintf("container id: 1 to %d letters, digits and _+-., not . or ..", runtime.MaxIDLength)
	groupFlagHelp = fmt.Sprintf("isolation group, overriding the manifest's: 1 to %d letters, digits and ._-, "+
		"not starting with . or -", spec.MaxNameLength)
)

// checkIDFlags checks a --id and a --group flag (either may be empty: not
// given) before anything is done. It returns -1 to go on, or exitUsage after
// one line naming the flag and the rule.
func checkIDFlags(verb, id, group string) int {
	if id != "" {
		if err := runtime.ValidateID(id); err != nil {
			return fail(exitUsage, "%s: --id: %v", verb, err)
		}
	}
	if group != "" {
		if err := spec.CheckName(group); err != nil {
			return fail(exitUsage, "%s: --group: %v", verb, err)
		}
	}
	return -1
}

// checkIDArg checks the container ID argument of kill and delete.
func checkIDArg(verb, id string) int {
	if err := runtime.ValidateID(id); err != nil {
		return fail(exitUsage, "%s: ID: %v", verb, err)
	}
	return -1
}

// runRequest is what `pyisolate run` was asked.
type runRequest struct {
	Bundle, Group, Root, ID string
	// Command replaces the process args when not empty.
	Command []string
	// Retention is the group's segment retention, when this run creates
	// it; a group that exists with another one is refused (zero: any).
	Retention time.Duration
	// Policy is the level for a plain bundle.
	Policy spec.Policy
}

// runBundle runs one bundle and returns the exit status for the CLI.
func runBundle(ctx context.Context, req runRequest) int {
	if os.Getenv(timingEnv) != "" {
		stop := startTiming()
		defer stop()
	}
	bundle, err := filepath.Abs(req.Bundle)
	if err != nil {
		return fail(exitUsage, "run: bundle %q: %v", req.Bundle, err)
	}
	ld, err := sandbox.Load(bundle)
	if err != nil {
		return fail(exitUsage, "run: %v", err)
	}
	m, plain := ld.Manifest, ld.Config
	if code := checkBundle(ctx, req.Root, bundle, m, plain); code >= 0 {
		return code
	}
	runtime.Phase("bundle loaded and checked")
	id := req.ID
	if id == "" {
		name := filepath.Base(bundle)
		if m != nil {
			name = m.Name
		}
		id = newID(name)
	}
	r := sandbox.NewRuntime(req.Root)
	// Containers of runs that died are deleted first, then the id is
	// reserved before anything is made for it: a busy id fails here, and
	// nothing of the container that holds it is touched.
	if _, err := r.ReclaimOrphans(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "pyisolate: warning: %v\n", err)
	}
	res, err := r.Reserve(ctx, id, runtime.OwnerRun)
	if err != nil {
		return fail(exitRuntime, "run: %v", err)
	}
	defer res.Release() // last: after the container is deleted and the group left
	runtime.Phase("orphans reclaimed, id reserved")
	c, err := sandbox.Prepare(ctx, sandbox.Request{
		Bundle: bundle, ID: id, Runtime: r, Loaded: ld, Group: req.Group, Policy: req.Policy,
		Groups: &sandbox.RunGroups{Root: req.Root, Retention: req.Retention, Warn: func(msg string) {
			fmt.Fprintln(os.Stderr, "pyisolate: warning: "+msg)
		}}, HostEnv: os.Environ(),
	})
	if err != nil {
		_ = r.Delete(ctx, id, true) // the empty rootfs, if made
		if sandbox.IsUserError(err) {
			return fail(exitUsage, "run: %v", err)
		}
		return fail(exitRuntime, "run: %v", err)
	}
	defer c.Release(context.WithoutCancel(ctx))
	s, g := c.Spec, c.Group
	if d := spec.DegradedList(s); len(d) > 0 {
		model := s.Annotations[spec.AnnotationRestriction]
		why := ""
		if runtime.Rootless() {
			model += ", rootless"
			if slices.Contains(d, string(spec.DropCgroupLimits)) {
				why = " (memory, pids and CPU limits are not enforced: no delegated cgroup v2 subtree; 'pyisolate detect' says how to get one)"
			}
		}
		fmt.Fprintf(os.Stderr, "pyisolate: warning: degraded sandbox (restriction model %s): dropped %s%s\n",
			model, strings.Join(d, ", "), why)
	}
	if len(req.Command) > 0 {
		if s.Process == nil {
			s.Process = &specs.Process{Cwd: "/"}
		}
		s.Process.Args = req.Command
	}
	// The extension dies with its runner, as under bwrap --die-with-parent;
	// what it leaves is reclaimed by the next run, ps or delete.
	opts := runtime.CreateOptions{Bundle: bundle, Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, DieWithParent: true}
	if g != nil {
		// Attribute segments to the container while it runs, and reclaim
		// those of exited members once their lease ends.
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		warn := func(p tensoripc.Pressure) { fmt.Fprintln(os.Stderr, "pyisolate: warning: "+p.Message) }
		go func() { _ = g.Domain.WatchPressure(wctx, warn) }()
		opts.Started = func(pid int) {
			if err := g.Join(ctx, id, pid); err != nil {
				fmt.Fprintf(os.Stderr, "pyisolate: warning: %v\n", err)
			}
		}
	}
	st, warmed, err := runWarm(ctx, r, id, bundle, c, opts)
	if !warmed && err == nil {
		var term *userTerminal
		if term, err = attachTerminal(s, &opts); err != nil {
			return fail(exitUsage, "run: %v", err)
		}
		st, err = r.Run(ctx, id, s, opts)
		term.Close()
	}
	if err != nil {
		return fail(exitRuntime, "run: %v", err)
	}
	if st.OOMKilled {
		limit := "none"
		if s.Linux != nil && s.Linux.Resources != nil && s.Linux.Resources.Memory != nil &&
			s.Linux.Resources.Memory.Limit != nil {
			limit = tensoripc.HumanBytes(*s.Linux.Resources.Memory.Limit)
		}
		fail(0, "container %s was killed: out of memory (limit %s)", id, limit)
		return 137
	}
	if st.Signal == unix.SIGBUS && g != nil {
		// torch filling a segment of a full tmpfs dies of SIGBUS, not ENOSPC.
		why, _ := g.Domain.ExplainSIGBUS(ctx)
		fail(0, "container %s was killed by SIGBUS: %s", id, why)
	}
	return st.Code
}

// runWarm starts an extension whose manifest has a preload list from its
// group's template (package warm) and waits for it. warmed is false when
// the extension must start cold: no preload list, or a template could not
// serve it, which is said on stderr.
func runWarm(ctx context.Context, r *runtime.Runtime, id, bundle string, c *sandbox.Container, opts runtime.CreateOptions) (st runtime.ExitStatus, warmed bool, err error) {
	if c.Manifest == nil || len(c.Manifest.Preload) == 0 {
		return st, false, nil
	}
	st, err = warm.Run(ctx, r, id, c.Spec, warm.Options{
		Manifest: c.Manifest, Group: c.GroupName, Bundle: bundle,
		Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Started: opts.Started,
		Log: func(msg string) { fmt.Fprintln(os.Stderr, "pyisolate: "+msg) },
	})
	if warm.IsNotUsed(err) {
		fmt.Fprintf(os.Stderr, "pyisolate: %v; starting cold\n", err)
		return st, false, nil
	}
	return st, true, err
}

// checkBundle refuses, for run, what LoadBundle cannot judge alone, before
// anything is made: a plain bundle asking for a terminal when stdin is none,
// a host where no sandbox can be made (unsandboxable), limits of manifest m
// too large for this host (the group's tmpfs is made of limits.shm_size).
// It returns -1 to go on, or the exit status after one line.
func checkBundle(ctx context.Context, root, bundle string, m *spec.Manifest, plain *specs.Spec) int {
	if m == nil {
		if code := checkTerminal(bundle, plain); code >= 0 {
			return code
		}
	}
	// Detection caches the profile under root: the bundle's own errors
	// come first.
	prof, err := detect.Cached(ctx, root)
	if err != nil {
		return fail(exitRuntime, "run: detect host: %v", err)
	}
	if err := unsandboxable(prof, os.Geteuid()); err != nil {
		return fail(exitRuntime, "run: %v", err)
	}
	if m == nil {
		return -1
	}
	if err := spec.CheckHostLimits(m.Limits, prof.SpecHost()); err != nil {
		return fail(exitUsage, "run: %v", err)
	}
	if prof.Rootless && prof.Restriction.ForbidsUserNamespaces() {
		// Without root every namespace hangs off a user namespace: there
		// is nothing to degrade to.
		return fail(exitRuntime, "run: rootless, and user namespaces are blocked here (restriction model %s: %s): "+
			"a sandbox needs them without root; remedy: %s", prof.Restriction, prof.RestrictionReason, prof.Remedy)
	}
	return -1
}

// unsandboxable returns why no sandbox can be made on host p for a runtime
// running as euid, or nil. run refuses such a host before it makes anything,
// with the reason and the remedy, rather than fail later on a mount or a
// cgroup, and it never runs an extension unsandboxed:
//   - restriction model no-caps (a container without CAP_SYS_ADMIN, such as
//     Docker's default): neither the runtime nor a user namespace of its can
//     mount, so there is no namespace, no private filesystem, no cgroup;
//   - read-only cgroups with the runtime as root (a container with
//     CAP_SYS_ADMIN that is not privileged): the sandbox could be made, but
//     none of its memory, pids and CPU limits. A rootless runtime
//     (euid != 0) is not refused: libcontainer skips the cgroups it cannot
//     write to, and detect warns about the missing limits.
func unsandboxable(p *detect.Profile, euid int) error {
	switch {
	case p.Restriction == spec.RestrictionNoCaps:
		return fmt.Errorf("no sandbox can be made here: restriction model %s (%s): without CAP_SYS_ADMIN "+
			"and without user namespaces the runtime can create no mount, namespace or cgroup, and it does "+
			"not run extensions unsandboxed; remedy: %s", p.Restriction, p.RestrictionReason, p.Remedy)
	case p.CgroupReadOnly && euid == 0:
		return fmt.Errorf("no sandbox can be made here: %s; remedy: %s", detect.CgroupReadOnlyWarning, detect.CgroupReadOnlyRemedy)
	}
	return nil
}

// newID makes a container id from name (reduced to the characters ids
// allow, and cut to leave room for the suffix within runtime.MaxIDLength)
// and a random suffix.
func newID(name string) string {
	name = strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-', r == '.':
			return r
		}
		return '_'
	}, name)
	name = strings.TrimLeft(name, ".")
	if name == "" {
		name = "pyisolate"
	}
	name = name[:min(len(name), runtime.MaxIDLength-9)] // "-" and 8 hex digits
	var b [4]byte
	_, _ = rand.Read(b[:])
	return name + "-" + hex.EncodeToString(b[:])
}

func psMain(args []string) int {
	fs := newFlagSet("ps", "[--root DIR] [--json]")
	root := fs.String("root", runtime.DefaultStateRoot(), rootFlagHelp)
	asJSON := fs.Bool("json", false, "print JSON")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	r := sandbox.NewRuntime(*root)
	if _, err := r.ReclaimOrphans(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "pyisolate: warning: %v\n", err)
	}
	list, err := r.List()
	if err != nil {
		return fail(1, "ps: %v", err)
	}
	if *asJSON {
		if list == nil {
			list = []runtime.State{}
		}
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(list); err != nil {
			return fail(1, "ps: %v", err)
		}
		return 0
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "ID\tSTATUS\tPID\tCREATED\tBUNDLE")
	for _, st := range list {
		pid, created := "-", "-"
		if st.InitPID > 0 {
			pid = strconv.Itoa(st.InitPID)
		}
		if !st.Created.IsZero() {
			created = st.Created.Local().Format(time.DateTime)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", st.ID, st.Status, pid, created, st.Bundle)
	}
	if err := w.Flush(); err != nil {
		return fail(1, "ps: %v", err)
	}
	return 0
}

func killMain(args []string) int {
	fs := newFlagSet("kill", "[--root DIR] [--all] ID [SIGNAL]\n\n"+
		"SIGNAL is a name (TERM, SIGTERM) or a number; default TERM. Signal 0 sends\n"+
		"nothing: it checks that the container's init is alive (exit 0, else 1).")
	root := fs.String("root", runtime.DefaultStateRoot(), rootFlagHelp)
	all := fs.Bool("all", false, "signal every process of the container, not only its init")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() < 1 || fs.NArg() > 2 {
		return usageError(fs, "want ID and an optional SIGNAL")
	}
	if code := checkIDArg("kill", fs.Arg(0)); code >= 0 {
		return code
	}
	sig := unix.SIGTERM
	if fs.NArg() == 2 {
		var err error
		if sig, err = parseSignal(fs.Arg(1)); err != nil {
			return fail(exitUsage, "kill: %v", err)
		}
	}
	c, err := sandbox.NewRuntime(*root).Load(fs.Arg(0))
	if err != nil {
		return fail(1, "kill: %v", err)
	}
	if sig == 0 {
		return checkAlive(c)
	}
	if err := c.Signal(sig, *all); err != nil {
		return fail(1, "kill: %v", err)
	}
	return 0
}

// checkAlive is `kill ID 0`: exit 0 when the container's init is alive
// (created, running or paused), else 1 with a message.
func checkAlive(c *runtime.Container) int {
	st, err := c.State()
	if err != nil {
		return fail(1, "kill: %v", err)
	}
	if st.Status == runtime.StatusStopped || st.InitPID <= 0 {
		return fail(1, "kill: container %s is not running (%s)", c.ID(), st.Status)
	}
	return 0
}

// parseSignal reads a signal name (KILL, SIGKILL, kill) or number; 0 is
// the liveness check of kill(1)'s -0.
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n < 0 || n > 64 {
			return 0, fmt.Errorf("signal %q out of range", s)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

func deleteMain(args []string) int {
	fs := newFlagSet("delete", "[--root DIR] [--force] ID\n\nRemoves a stopped container; with --force also a running one (killed first).")
	root := fs.String("root", runtime.DefaultStateRoot(), rootFlagHelp)
	force := fs.Bool("force", false, "kill the container first if it is running")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() != 1 {
		return usageError(fs, "want one container ID")
	}
	if code := checkIDArg("delete", fs.Arg(0)); code >= 0 {
		return code
	}
	ctx := context.Background()
	r := sandbox.NewRuntime(*root)
	id := fs.Arg(0)
	reclaimed, err := r.ReclaimOrphans(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pyisolate: warning: %v\n", err)
	}
	if slices.Contains(reclaimed, id) {
		return 0 // its runner died: deleted with everything it held
	}
	// The `run` that would have left the group is gone (killed, or the
	// container was detached from it): sandbox.Delete leaves for it, and
	// ends the group when no member is alive, so its shared memory is not
	// left mounted.
	if err := sandbox.Delete(ctx, r, id, *force); err != nil {
		return fail(1, "delete: %v", err)
	}
	return 0
}
