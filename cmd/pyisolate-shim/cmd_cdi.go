package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/pyisolate/pyisolate-oci/gpu"
)

// exitNoGPU is the exit status of `cdi generate` on a machine without the
// NVIDIA driver (NVML cannot be loaded or does not answer), or whose GPUs
// lack device nodes: nothing was written, and an installer may go on.
const exitNoGPU = 3

// cdiNVML is the NVML library `cdi generate` uses: nil for the driver's;
// tests set go-nvml's mocks.
var cdiNVML nvml.Interface

func init() {
	register("cdi", "CDI specs for NVIDIA GPUs, generated in process (cdi generate)", cdiMain)
}

const cdiUsage = `Usage: pyisolate cdi generate [--output FILE] [--format yaml|json] [--device-name-strategy S]...
                              [--driver-root DIR] [--dev-root DIR] [--target-root DIR]
                              [--mode MODE] [--nvidia-cdi-hook-path PATH|none] [--verbose]

Writes the CDI spec of this machine's NVIDIA GPUs (kind nvidia.com/gpu: one
device per GPU and name strategy, MIG devices, "all", the driver's device
nodes, libraries and binaries) with nvidia-container-toolkit's nvcdi library,
in process: no nvidia-ctk needed. Without --output the spec goes to stdout.
The spec's content is what 'nvidia-ctk cdi generate' writes with the same
options, except that the OCI hooks are left out when nvidia-cdi-hook is not
installed (a warning says so).

Exit status: 0 written; 2 bad flag; 3 no NVIDIA driver (NVML missing or not
answering) or GPUs without device nodes, with the remedy; 1 anything else.
`

// cdiStrings is a repeatable string flag whose default is replaced, not
// appended to, by the first value given.
type cdiStrings struct {
	vals []string
	set  bool
}

func (l *cdiStrings) String() string { return strings.Join(l.vals, ",") }

func (l *cdiStrings) Set(v string) error {
	if !l.set {
		l.vals, l.set = nil, true
	}
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			l.vals = append(l.vals, s)
		}
	}
	return nil
}

func cdiMain(args []string) int {
	if len(args) == 0 {
		return fail(exitUsage, "cdi: want a verb: generate (see 'pyisolate cdi -h')")
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Fprint(os.Stdout, cdiUsage)
		return 0
	case "generate":
		return cdiGenerate(context.Background(), args[1:], os.Stdout, os.Stderr)
	}
	return fail(exitUsage, "cdi: unknown verb %q (generate)", args[0])
}

// cdiGenerate is "pyisolate cdi generate" with its outputs given.
func cdiGenerate(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("cdi generate", strings.TrimPrefix(cdiUsage, "Usage: pyisolate cdi generate "))
	output := fs.String("output", "", "spec file to write (.yaml or .json; the directory is created); default stdout")
	format := fs.String("format", "", "yaml or json (default: from --output's extension, else yaml)")
	strategies := &cdiStrings{vals: gpu.DefaultNameStrategies}
	fs.Var(strategies, "device-name-strategy", "device names: index (nvidia.com/gpu=0), uuid (=GPU-...), type-index (=gpu0); repeatable (default index,uuid)")
	driverRoot := fs.String("driver-root", "/", "where the driver's libraries and binaries are")
	devRoot := fs.String("dev-root", "", "where dev/nvidia* are (default: the driver root)")
	targetRoot := fs.String("target-root", "", "what the driver root is on the machine that reads the spec (an installer seeing the host at /host: --driver-root /host --target-root /)")
	mode := fs.String("mode", "auto", "nvcdi discovery mode: "+strings.Join(gpu.Modes, ", "))
	hookPath := fs.String("nvidia-cdi-hook-path", "", "nvidia-cdi-hook for the spec's OCI hooks, or none (default: found on PATH; hooks left out when missing)")
	verbose := fs.Bool("verbose", false, "print nvcdi's log (what it found and did not find) on stderr")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		return usageError(fs, "unexpected argument %q", fs.Arg(0))
	}
	f := strings.ToLower(*format)
	if f == "" {
		f = gpu.FormatYAML
		if strings.HasSuffix(strings.ToLower(*output), ".json") {
			f = gpu.FormatJSON
		}
	}
	if *output != "" {
		ext := strings.ToLower(*output)
		if (f == gpu.FormatJSON && !strings.HasSuffix(ext, ".json")) ||
			(f == gpu.FormatYAML && !strings.HasSuffix(ext, ".yaml")) {
			return usageError(fs, "--output %q: the extension must match --format %s (.yaml or .json; not .yml, which the CDI writer does not know)", *output, f)
		}
	}
	opts := gpu.Options{
		DriverRoot: *driverRoot, DevRoot: *devRoot, TargetRoot: *targetRoot,
		NameStrategies: strategies.vals, Format: f, Mode: *mode, HookPath: *hookPath, NVML: cdiNVML,
	}
	if *verbose {
		opts.Log = func(line string) { fmt.Fprintln(stderr, "nvcdi "+line) }
	}
	s, err := gpu.Generate(ctx, opts)
	var noDriver *gpu.NoDriverError
	var noNodes *gpu.MissingNodesError
	switch {
	case errors.As(err, &noDriver) || errors.As(err, &noNodes):
		fmt.Fprintf(stderr, "pyisolate: cdi generate: %v\n", err)
		return exitNoGPU
	case err != nil && gpu.IsOptionError(err):
		return usageError(fs, "%v", err)
	case err != nil:
		fmt.Fprintf(stderr, "pyisolate: cdi generate: %v\n", err)
		return 1
	}
	for _, w := range s.Warnings {
		fmt.Fprintf(stderr, "pyisolate: cdi generate: warning: %s\n", w)
	}
	if *output == "" {
		data, err := s.Bytes()
		if err == nil {
			_, err = stdout.Write(data)
		}
		if err != nil {
			fmt.Fprintf(stderr, "pyisolate: cdi generate: %v\n", err)
			return 1
		}
		return 0
	}
	if err := s.Save(*output); err != nil {
		fmt.Fprintf(stderr, "pyisolate: cdi generate: %v\n", err)
		return 1
	}
	fmt.Fprintf(stderr, "pyisolate: cdi generate: wrote %s: %d devices (%s), driver %s\n",
		*output, len(s.Devices), strings.Join(s.Devices, " "), orDash(s.DriverVersion))
	return 0
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
