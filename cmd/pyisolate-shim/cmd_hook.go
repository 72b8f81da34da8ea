package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/pyisolate/pyisolate-oci/hooks"
)

func init() {
	register("hook", "CDI and group shm for runc/crun bundles (hook cdi|shm)", hookMain)
}

const hookUsage = `Usage: pyisolate hook cdi [--bundle DIR] [--spec-dir DIR]... [--device NAME]...
       pyisolate hook shm --dir SHMDIR [--bundle DIR]

For users of runc or crun without pyisolate's runtime.

With --bundle the verb prepares the bundle before 'runc create' by rewriting
DIR/config.json (the edits must be in the config when the runtime reads it):
  cdi  injects the CDI devices of the cdi.k8s.io/* annotations and --device
       (device nodes, device cgroup rules, mounts, env, hooks) from the CDI
       spec dirs (default /etc/cdi, /var/run/cdi);
  shm  binds the group's shared memory directory SHMDIR at /dev/shm.

Without --bundle the verb is an OCI hook (createRuntime): it reads the
container state from stdin and fails the create, with the command to run,
when the bundle was not prepared.
`

func hookMain(args []string) int {
	if len(args) == 0 {
		return fail(exitUsage, "hook: want a hook: cdi or shm (see 'pyisolate hook -h')")
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stdout, hookUsage)
		return 0
	}
	switch args[0] {
	case "cdi":
		return hookCDI(args[1:])
	case "shm":
		return hookShm(args[1:])
	}
	return fail(exitUsage, "hook: unknown hook %q (cdi or shm)", args[0])
}

// hookStrings is a repeatable string flag.
type hookStrings []string

func (l *hookStrings) String() string { return strings.Join(*l, ",") }

func (l *hookStrings) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func hookFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("hook "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprint(os.Stdout, hookUsage+"\n")
		printDefaults(fs)
	}
	return fs
}

func hookCDI(args []string) int {
	fs := hookFlags("cdi")
	bundle := fs.String("bundle", "", "bundle directory whose config.json to rewrite before create")
	var dirs, devices hookStrings
	fs.Var(&dirs, "spec-dir", "CDI spec directory, lowest priority first (repeatable; default /etc/cdi, /var/run/cdi)")
	fs.Var(&devices, "device", "fully qualified CDI device to inject besides the annotations' (repeatable)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "hook cdi: unexpected argument %q", fs.Arg(0))
	}
	opts := hooks.CDIOptions{SpecDirs: dirs, Devices: devices}
	ctx := context.Background()
	if *bundle != "" {
		devs, err := hooks.InjectCDIBundle(ctx, *bundle, opts)
		if err != nil {
			return fail(1, "hook cdi: %v", err)
		}
		if len(devs) > 0 {
			fmt.Fprintf(os.Stderr, "pyisolate: hook cdi: %s: injected %s\n", *bundle, strings.Join(devs, ", "))
		}
		return 0
	}
	st, err := hooks.ReadState(os.Stdin)
	if err != nil {
		return fail(exitUsage, "hook cdi: %v", err)
	}
	s, err := hooks.LoadBundleSpec(st.Bundle)
	if err != nil {
		return fail(1, "hook cdi: container %s: %v", st.ID, err)
	}
	if err := hooks.VerifyCDIInjected(s, opts, st.Bundle); err != nil {
		return fail(1, "hook cdi: container %s: %v", st.ID, err)
	}
	return 0
}

func hookShm(args []string) int {
	fs := hookFlags("shm")
	bundle := fs.String("bundle", "", "bundle directory whose config.json to rewrite before create")
	dir := fs.String("dir", "", "the group's shared memory directory on the host (required)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "hook shm: unexpected argument %q", fs.Arg(0))
	}
	if *dir == "" {
		return fail(exitUsage, "hook shm: --dir is required")
	}
	if *bundle != "" {
		if err := hooks.BindGroupShmBundle(*bundle, *dir); err != nil {
			return fail(1, "hook shm: %v", err)
		}
		return 0
	}
	st, err := hooks.ReadState(os.Stdin)
	if err != nil {
		return fail(exitUsage, "hook shm: %v", err)
	}
	s, err := hooks.LoadBundleSpec(st.Bundle)
	if err != nil {
		return fail(1, "hook shm: container %s: %v", st.ID, err)
	}
	if err := hooks.VerifyGroupShm(s, *dir, st.Bundle); err != nil {
		return fail(1, "hook shm: container %s: %v", st.ID, err)
	}
	return 0
}
