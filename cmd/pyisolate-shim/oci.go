package main

// The OCI command-line face: started as pyisolate-runc (a link to this
// binary), pyisolate speaks runc's command line, so that the clients that
// drive an OCI runtime by its CLI — Docker (a runtime by path), Podman
// (--runtime), CRI-O, containerd's own runc shim (io.containerd.runc.v2 with
// BinaryName) — can use it. Every verb is a short-lived process: a
// container made by `create` outlives it, as runc's do; its state lives
// under --root (default /run/pyisolate-runc) and `delete` ends it, with its
// isolation group membership.
//
// Extension bundles (a pyisolate manifest) become the sandbox, plain ones
// follow the node's policy (--policy, default hardened; PYISOLATE_POLICY in
// the environment sets the default), as in the other faces: all of it is
// package sandbox's.
//
// Errors are one line on stderr and, with --log, a log line in the file
// (--log-format json writes runc's {"level","msg","time"} lines, from which
// Docker and containerd's runc shim take the last error); the exit status
// is 1, as runc's.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// OCIName is the binary name under which the program speaks runc's command
// line.
const OCIName = "pyisolate-runc"

// ociDefaultRootName is the state directory's name under /run (root) or
// $XDG_RUNTIME_DIR (rootless).
const ociDefaultRootName = "pyisolate-runc"

// ociPolicyEnv, when set, is the default of --policy.
const ociPolicyEnv = "PYISOLATE_POLICY"

// ociDefaultRoot is the default --root: /run/pyisolate-runc as root,
// $XDG_RUNTIME_DIR/pyisolate-runc rootless (also as root of a user
// namespace, as rootless Podman runs it; see runtime.Rootless) (as runc's /run/runc and
// $XDG_RUNTIME_DIR/runc), /tmp/pyisolate-runc-<uid> without one (the
// runtime refuses it when another user made it).
func ociDefaultRoot() string {
	return runtime.DefaultStateRootFor(os.Geteuid(), runtime.Rootless(), os.Getenv("XDG_RUNTIME_DIR"), ociDefaultRootName)
}

// ociGlobal holds the global flags, given before the verb.
type ociGlobal struct {
	root       string
	log        string
	logFormat  string
	debug      bool
	systemd    bool
	policy     spec.Policy
	policyName string
}

// ociVerb is one verb of the face.
type ociVerb struct {
	summary string
	run     func(g *ociGlobal, args []string) error
}

// ociVerbs are the verbs; oci_*.go files fill it in init.
var ociVerbs = map[string]ociVerb{}

// errOCIExit carries an exit status that is not an error (a process's, from
// run or exec) out of a verb.
type errOCIExit int

func (e errOCIExit) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// ociMain runs the face with args (without the program name) and returns
// the exit status.
func ociMain(args []string) int {
	g := &ociGlobal{}
	fs := flag.NewFlagSet(OCIName, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&g.root, "root", ociDefaultRoot(), "state directory")
	fs.StringVar(&g.log, "log", "", "log file (default stderr)")
	fs.StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	fs.BoolVar(&g.debug, "debug", false, "log debug messages")
	fs.BoolVar(&g.systemd, "systemd-cgroup", false, "use the systemd cgroup driver (cgroupsPath slice:prefix:name)")
	defPolicy := os.Getenv(ociPolicyEnv)
	if defPolicy == "" {
		defPolicy = string(spec.DefaultPolicy)
	}
	fs.StringVar(&g.policyName, "policy", defPolicy, "policy for plain bundles: hardened or faithful (default from $"+ociPolicyEnv+", else hardened)")
	// Accepted for runc compatibility, without effect.
	fs.String("rootless", "auto", "accepted for runc compatibility (rootless mode follows the caller's uid)")
	fs.String("criu", "", "accepted for runc compatibility (checkpoint/restore is not supported)")
	help := false
	fs.BoolVar(&help, "help", false, "")
	fs.BoolVar(&help, "h", false, "")
	version := false
	fs.BoolVar(&version, "version", false, "")
	fs.BoolVar(&version, "v", false, "")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", OCIName, err)
		return 1
	}
	if err := g.setupLog(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", OCIName, err)
		return 1
	}
	rest := fs.Args()
	logrus.WithField("args", append([]string{OCIName}, args...)).Debug("command")
	switch {
	case version:
		return ociVersion()
	case help || len(rest) == 0 || rest[0] == "help":
		ociUsage(os.Stdout, fs)
		return 0
	}
	v, ok := ociVerbs[rest[0]]
	if !ok {
		return g.fail(fmt.Errorf("no such command %q (see '%s help')", rest[0], OCIName))
	}
	p, err := spec.ParsePolicy(g.policyName)
	if err != nil {
		return g.fail(fmt.Errorf("--policy: %w", err))
	}
	g.policy = p
	if !filepath.IsAbs(g.root) {
		abs, err := filepath.Abs(g.root)
		if err != nil {
			return g.fail(fmt.Errorf("--root: %w", err))
		}
		g.root = abs
	}
	if err := v.run(g, rest[1:]); err != nil {
		var code errOCIExit
		if errors.As(err, &code) {
			return int(code)
		}
		return g.fail(err)
	}
	return 0
}

// setupLog sends logrus (the face's messages and libcontainer's) to --log
// in --log-format, as runc does.
func (g *ociGlobal) setupLog() error {
	logrus.SetLevel(logrus.InfoLevel)
	if g.debug {
		logrus.SetLevel(logrus.DebugLevel)
	}
	switch g.logFormat {
	case "json":
		logrus.SetFormatter(&logrus.JSONFormatter{})
	case "text", "":
		logrus.SetFormatter(&logrus.TextFormatter{DisableColors: true})
	default:
		return fmt.Errorf("--log-format: unknown format %q (want text or json)", g.logFormat)
	}
	logrus.SetOutput(os.Stderr)
	if g.log != "" {
		f, err := os.OpenFile(g.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND|os.O_SYNC, 0o644)
		if err != nil {
			return fmt.Errorf("--log: %w", err)
		}
		logrus.SetOutput(f)
	}
	return nil
}

// fail logs err at error level (the line Docker and containerd show) and,
// when the log is a file, prints it on stderr too (what Podman and people
// read); it returns runc's exit status for errors, 1.
func (g *ociGlobal) fail(err error) int {
	msg := err.Error()
	logrus.Error(msg)
	if g.log != "" {
		fmt.Fprintln(os.Stderr, msg)
	}
	return 1
}

// warn logs a warning.
func warn(format string, a ...any) { logrus.Warnf(format, a...) }

// debugf logs a message at debug level.
func debugf(format string, a ...any) { logrus.Debugf(format, a...) }

func ociVersion() int {
	v := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		v = bi.Main.Version
	}
	fmt.Printf("%s (pyisolate-oci) version %s\nspec: %s\n", OCIName, v, specs.Version)
	return 0
}

func ociUsage(w io.Writer, fs *flag.FlagSet) {
	names := make([]string, 0, len(ociVerbs))
	for n := range ociVerbs {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "%s: pyisolate-oci's runc-compatible command line\n\nUsage: %s [GLOBAL FLAGS] COMMAND [FLAGS] [ARGS...]\n\nCommands:\n", OCIName, OCIName)
	for _, n := range names {
		fmt.Fprintf(&b, "  %-10s  %s\n", n, ociVerbs[n].summary)
	}
	b.WriteString("\nGlobal flags:\n")
	fmt.Fprint(w, b.String())
	fs.SetOutput(w)
	fs.PrintDefaults()
	fs.SetOutput(io.Discard)
}

// ociFlags returns a flag set for verb name.
func ociFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseOCIFlags parses args into fs, allowing flags after positional
// arguments as runc's CLI library does, unless stopAfter positionals have
// been seen (exec: what follows the ID is the command). It returns the
// positional arguments.
func parseOCIFlags(fs *flag.FlagSet, args []string, stopAfter int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprintf(os.Stdout, "Usage: %s %s [FLAGS] ARGS\n", OCIName, fs.Name())
				fs.SetOutput(os.Stdout)
				fs.PrintDefaults()
				return nil, errOCIExit(0)
			}
			return nil, fmt.Errorf("%s: %w", fs.Name(), err)
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if rest[0] == "--" && len(pos) == 0 {
			return rest[1:], nil
		}
		pos = append(pos, rest[0])
		if stopAfter > 0 && len(pos) >= stopAfter {
			return append(pos, rest[1:]...), nil
		}
		args = rest[1:]
		if len(args) > 0 && args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
	}
}

// needArgs checks the number of positional arguments as runc does.
func needArgs(verb string, args []string, n int, exact bool) error {
	switch {
	case exact && len(args) != n:
		return fmt.Errorf("%s: %q requires exactly %d argument(s)", verb, verb, n)
	case !exact && len(args) < n:
		return fmt.Errorf("%s: %q requires a minimum of %d argument(s)", verb, verb, n)
	}
	return nil
}

// ctx is the verbs' context.
func ociContext() context.Context { return context.Background() }
