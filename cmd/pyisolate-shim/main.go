// Command pyisolate-shim is the one binary of pyisolate-oci. Its behaviour is
// chosen by the name it was started under:
//
//   - containerd-shim-pyisolate-v1: a containerd shim v2 (runtime type
//     io.containerd.pyisolate.v1);
//   - bwrap: the bubblewrap face (bwrap.go), which runs a bwrap command line
//     as pyisolate builds it in the runtime's sandbox;
//   - pyisolate-runc: runc's command line (create, start, state, kill,
//     delete, exec, ...), for Docker, Podman, CRI-O and containerd's runc
//     shim (oci.go);
//   - anything else (pyisolate): the command-line interface, which runs
//     bundles directly without containerd.
//
// Started as "<binary> init" it is the container's init process (libcontainer's
// re-exec entry); that path runs before any flag parsing.
package main

import (
	"fmt"
	"github.com/pyisolate/pyisolate-oci/runtime/warm"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// ShimName is the binary name under which the program acts as a containerd shim.
const ShimName = "containerd-shim-pyisolate-v1"

// exitUsage is the exit status for bad input: a bad flag, manifest or bundle.
const exitUsage = 2

// command is one CLI verb.
type command struct {
	// summary is the one-line help text.
	summary string
	// run executes the verb with the arguments after its name and returns the
	// process exit status.
	run func(args []string) int
}

// commands holds the CLI verbs; each cmd_*.go file registers its own in init.
var commands = map[string]command{}

func register(name, summary string, run func(args []string) int) {
	if _, dup := commands[name]; dup {
		panic("duplicate command " + name)
	}
	commands[name] = command{summary: summary, run: run}
}

func main() {
	name := filepath.Base(os.Args[0])
	// "bwrap init ..." is a bwrap command line running a program called
	// init, unless libcontainer started it (its init pipe is set).
	if len(os.Args) > 1 && os.Args[1] == warm.FilterHelperArg {
		warm.FilterHelper() // never returns
	}
	if len(os.Args) > 1 && os.Args[1] == "init" && (name != BwrapName || os.Getenv("_LIBCONTAINER_INITPIPE") != "") {
		containerInit() // never returns
	}
	switch name {
	case ShimName:
		os.Exit(shimMain())
	case BwrapName:
		os.Exit(bwrapMain(os.Args[1:]))
	case OCIName:
		os.Exit(ociMain(os.Args[1:]))
	}
	os.Exit(cliMain(os.Args[1:]))
}

func cliMain(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(os.Stdout)
		return 0
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "pyisolate: unknown command %q (see 'pyisolate help')\n", args[0])
		return exitUsage
	}
	return c.run(args[1:])
}

func usage(w *os.File) {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	b.WriteString("pyisolate: run Python extensions as sandboxed OCI containers\n\nUsage: pyisolate COMMAND [ARGS...]\n\nCommands:\n")
	width := 0
	for _, n := range names {
		width = max(width, len(n))
	}
	for _, n := range names {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, n, commands[n].summary)
	}
	b.WriteString("\nStarted as " + ShimName + " the binary is a containerd shim v2.\n")
	fmt.Fprint(w, b.String())
}

// fail prints one error line prefixed with the program name and returns code.
func fail(code int, format string, a ...any) int {
	fmt.Fprintf(os.Stderr, "pyisolate: "+format+"\n", a...)
	return code
}
