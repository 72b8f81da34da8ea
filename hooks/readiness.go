package hooks

import (
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// GenerateCommand is the command that writes a CDI spec for the machine's
// NVIDIA GPUs (devices nvidia.com/gpu=0, =UUID and =all, the driver's
// libraries and binaries as mounts) with nvidia-container-toolkit's library,
// in pyisolate's own process (package gpu). `pyisolate install` writes the
// same spec to /var/run/cdi and refreshes it.
const GenerateCommand = "pyisolate cdi generate --output=/etc/cdi/nvidia.yaml"

// NvidiaCTKGenerate is NVIDIA's command for the same spec, for machines
// that have nvidia-container-toolkit installed.
const NvidiaCTKGenerate = "nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml"

// NvidiaGPUKind is the CDI kind of NVIDIA GPUs.
const NvidiaGPUKind = "nvidia.com/gpu"

// ReadinessOptions are the inputs of Readiness; the zero value reads the
// machine.
type ReadinessOptions struct {
	// SpecDirs are the CDI spec directories; empty means DefaultSpecDirs.
	SpecDirs []string
	// ProcDriver is the driver's /proc directory (default
	// /proc/driver/nvidia).
	ProcDriver string
	// DevDir is where device nodes are looked for (default /dev).
	DevDir string
	// LookPath finds nvidia-ctk (default exec.LookPath).
	LookPath func(string) (string, error)
	// Generate, when set, returns the devices `pyisolate cdi generate`
	// would write now (package gpu); Readiness compares them with the
	// specs' and reports its error. It is called only with a driver.
	Generate func(context.Context) ([]string, error)
}

// CUDAReport is the CUDA IPC readiness of the machine, for `pyisolate
// detect`.
type CUDAReport struct {
	// Driver is true when the NVIDIA kernel driver is loaded
	// (/proc/driver/nvidia/version exists).
	Driver bool `json:"driver"`
	// DriverVersion is the first line of /proc/driver/nvidia/version.
	DriverVersion string `json:"driver_version,omitempty"`
	// DeviceNodes are the /dev/nvidia* nodes present.
	DeviceNodes []string `json:"device_nodes,omitempty"`
	// GPUs are the GPUs the driver lists.
	GPUs []GPUInfo `json:"gpus,omitempty"`
	// SpecDirs are the CDI spec directories searched.
	SpecDirs []string `json:"cdi_spec_dirs"`
	// CDIDevices are the nvidia.com/gpu devices the CDI specs define.
	CDIDevices []string `json:"cdi_devices,omitempty"`
	// CDIErrors are the CDI spec files that do not load, "path: error".
	CDIErrors []string `json:"cdi_errors,omitempty"`
	// NvidiaCTK is the path of nvidia-ctk, empty when not on PATH.
	NvidiaCTK string `json:"nvidia_ctk,omitempty"`
	// Generated are the devices `pyisolate cdi generate` would write now.
	Generated []string `json:"generated_devices,omitempty"`
	// GenerateError is why `pyisolate cdi generate` would fail.
	GenerateError string `json:"generate_error,omitempty"`
	// Ready is true when GPUs can be given to containers through CDI: the
	// driver, its device nodes and nvidia.com/gpu CDI devices are there and
	// no spec file is broken.
	Ready bool `json:"ready"`
	// Problems say what is missing, one sentence each.
	Problems []string `json:"problems,omitempty"`
	// Remedies say what to do, in the same order as Problems.
	Remedies []string `json:"remedies,omitempty"`
}

// Readiness inspects the machine for GPU containers and CUDA IPC: the NVIDIA
// driver (/proc/driver/nvidia/version), its device nodes (/dev/nvidia*), the
// GPUs it lists, the nvidia.com/gpu devices of the CDI specs and nvidia-ctk
// on PATH, with a remedy for each problem. It never fails: what it cannot
// read is a problem in the report. `pyisolate detect` prints it.
func Readiness(ctx context.Context, opts ReadinessOptions) CUDAReport {
	procDriver := opts.ProcDriver
	if procDriver == "" {
		procDriver = procDriverNvidia
	}
	devDir := opts.DevDir
	if devDir == "" {
		devDir = "/dev"
	}
	look := opts.LookPath
	if look == nil {
		look = exec.LookPath
	}
	dirs := CDIOptions{SpecDirs: opts.SpecDirs}.specDirs()
	r := CUDAReport{SpecDirs: dirs}
	problem := func(p, remedy string) {
		r.Problems = append(r.Problems, p)
		r.Remedies = append(r.Remedies, remedy)
	}

	if data, err := os.ReadFile(filepath.Join(procDriver, "version")); err == nil {
		r.Driver = true
		r.DriverVersion = strings.TrimSpace(strings.SplitN(string(data), "\n", 2)[0])
	}
	r.DeviceNodes, _ = filepath.Glob(filepath.Join(devDir, "nvidia*"))
	infos, _ := filepath.Glob(filepath.Join(procDriver, "gpus", "*", "information"))
	for _, f := range infos {
		r.GPUs = append(r.GPUs, parseGPUInformation(f))
	}
	if p, err := look("nvidia-ctk"); err == nil {
		r.NvidiaCTK = p
	}
	if ctx.Err() == nil {
		cache, _ := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
		for _, d := range cache.ListDevices() {
			if strings.HasPrefix(d, NvidiaGPUKind+"=") {
				r.CDIDevices = append(r.CDIDevices, d)
			}
		}
		errs := cache.GetErrors()
		for _, p := range slices.Sorted(maps.Keys(errs)) {
			for _, e := range errs[p] {
				r.CDIErrors = append(r.CDIErrors, fmt.Sprintf("%s: %v", p, e))
			}
		}
	}

	generate := "run `" + GenerateCommand + "` (or `pyisolate install`, which keeps /var/run/cdi/pyisolate-nvidia.yaml current)"
	if r.Driver && len(r.DeviceNodes) > 0 && opts.Generate != nil && ctx.Err() == nil {
		devs, err := opts.Generate(ctx)
		if err != nil {
			r.GenerateError = err.Error()
		}
		r.Generated = devs
	}
	switch {
	case !r.Driver:
		problem("no NVIDIA driver: "+filepath.Join(procDriver, "version")+" does not exist",
			"install the NVIDIA driver for the GPU and load it (modprobe nvidia); on a machine without NVIDIA GPUs, leave `gpus` out of manifests")
	case len(r.DeviceNodes) == 0:
		problem("the NVIDIA driver is loaded but there are no "+filepath.Join(devDir, "nvidia*")+" device nodes",
			"create them with `nvidia-modprobe -u -c=0` (or run nvidia-smi once as root)")
	}
	if len(r.CDIErrors) > 0 {
		problem("CDI spec files do not load: "+strings.Join(r.CDIErrors, "; "),
			"fix or remove the files named; to regenerate NVIDIA's, "+generate)
	}
	if len(r.CDIDevices) == 0 {
		if r.Driver {
			problem("no CDI spec in "+strings.Join(dirs, ", ")+" defines "+NvidiaGPUKind+" devices", generate)
		}
	} else if !r.Driver {
		problem("CDI specs define "+NvidiaGPUKind+" devices but the driver is not loaded (a stale spec?)",
			"load the NVIDIA driver, or remove the stale spec and "+generate+" once it is")
	}
	if r.GenerateError != "" {
		problem("`pyisolate cdi generate` fails: "+r.GenerateError, "fix what the error names, then "+generate)
	} else if len(r.CDIDevices) > 0 && len(r.Generated) > 0 {
		if missing := without(r.Generated, r.CDIDevices); len(missing) > 0 {
			problem("CDI specs lack devices this machine has: "+strings.Join(missing, ", ")+" (the driver or the GPUs changed since the spec was written)", generate)
		}
		if gone := without(r.CDIDevices, r.Generated); len(gone) > 0 {
			problem("CDI specs define devices this machine does not have: "+strings.Join(gone, ", ")+" (a stale spec?)", generate)
		}
	}
	r.Ready = r.Driver && len(r.DeviceNodes) > 0 && len(r.CDIDevices) > 0 && len(r.CDIErrors) == 0
	return r
}

// String prints the report as `pyisolate detect` shows it: one line per
// finding, then the problems with their remedies.
func (r CUDAReport) String() string {
	var b strings.Builder
	state := "not ready"
	if r.Ready {
		state = "ready"
	}
	fmt.Fprintf(&b, "CUDA IPC / GPUs: %s\n", state)
	if r.Driver {
		fmt.Fprintf(&b, "  driver: %s\n", r.DriverVersion)
	} else {
		b.WriteString("  driver: none\n")
	}
	for _, g := range r.GPUs {
		fmt.Fprintf(&b, "  gpu %s: %s %s (minor %d)\n", g.BusID, g.Model, g.UUID, g.Minor)
	}
	fmt.Fprintf(&b, "  device nodes: %s\n", orNone(r.DeviceNodes))
	fmt.Fprintf(&b, "  CDI devices (%s): %s\n", strings.Join(r.SpecDirs, ", "), orNone(r.CDIDevices))
	ctk := r.NvidiaCTK
	if ctk == "" {
		ctk = "not on PATH"
	}
	fmt.Fprintf(&b, "  nvidia-ctk: %s\n", ctk)
	if len(r.Generated) > 0 {
		fmt.Fprintf(&b, "  pyisolate cdi generate would write: %s\n", strings.Join(r.Generated, ", "))
	}
	for i, p := range r.Problems {
		fmt.Fprintf(&b, "  problem: %s\n    remedy: %s\n", p, r.Remedies[i])
	}
	return b.String()
}

// without returns the elements of xs that are not in ys.
func without(xs, ys []string) []string {
	var out []string
	for _, x := range xs {
		if !slices.Contains(ys, x) {
			out = append(out, x)
		}
	}
	return out
}

func orNone(xs []string) string {
	if len(xs) == 0 {
		return "none"
	}
	return strings.Join(xs, ", ")
}

// statDevice returns the device numbers of a device node.
func statDevice(p string) (major, minor int64, ok bool) {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0, 0, false
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR && st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return 0, 0, false
	}
	return int64(unix.Major(uint64(st.Rdev))), int64(unix.Minor(uint64(st.Rdev))), true
}
