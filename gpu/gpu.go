// Package gpu writes Container Device Interface (CDI) specs for the
// machine's NVIDIA GPUs in process, with nvidia-container-toolkit's nvcdi
// library (github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi), the code
// `nvidia-ctk cdi generate` runs. No nvidia-ctk binary is needed.
//
// Generate asks NVML (libnvidia-ml.so.1 of the driver, or an nvml.Interface
// such as go-nvml's mocks) for the GPUs, lets nvcdi find the driver's device
// nodes, libraries and binaries under a driver root, and builds the spec with
// the choices nvidia-ctk makes by default: kind nvidia.com/gpu, devices named
// by index and by UUID, an "all" device, common edits for the driver's
// files, the oldest CDI version that holds the spec, file mode 0644. The
// result is what hooks.InjectCDI reads from /etc/cdi and /var/run/cdi.
//
// Beyond nvidia-ctk, Generate refuses a spec that would silently give a
// container no GPU: a GPU whose /dev/nvidiaN node is missing, or no
// /dev/nvidiactl, is an error naming the nodes (nvcdi only logs them). And
// the spec's OCI hooks name nvidia-cdi-hook (a program of
// nvidia-container-toolkit-base); when that program is not on the machine
// Generate leaves the hooks out, with a warning, rather than write a spec
// every container would fail on.
package gpu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi"
	nvspec "github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi/spec"
	"github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi/transform"
	transformroot "github.com/NVIDIA/nvidia-container-toolkit/pkg/nvcdi/transform/root"
	"golang.org/x/sys/unix"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"
)

const (
	// Vendor and Class make the spec's kind, nvidia.com/gpu, as nvidia-ctk's.
	Vendor = "nvidia.com"
	// Class is the CDI class of full GPUs and MIG devices.
	Class = "gpu"
	// Kind is the CDI kind of the generated devices.
	Kind = Vendor + "/" + Class

	// FormatYAML and FormatJSON are the spec file formats.
	FormatYAML = nvspec.FormatYAML
	// FormatJSON is the JSON spec format.
	FormatJSON = nvspec.FormatJSON

	// HookProgram is the program the spec's OCI hooks run.
	HookProgram = "nvidia-cdi-hook"
	// NoHooks as Options.HookPath leaves every OCI hook out of the spec.
	NoHooks = "none"

	// DefaultSpecPath is where `pyisolate install` writes the spec: the
	// dynamic CDI directory, which containerd, CRI-O, podman and pyisolate
	// read, under a name of its own so that a spec written by NVIDIA's tools
	// is never overwritten.
	DefaultSpecPath = "/var/run/cdi/pyisolate-nvidia.yaml"
)

// DefaultNameStrategies are the device name strategies nvidia-ctk uses by
// default: nvidia.com/gpu=0 and nvidia.com/gpu=GPU-<uuid> for each GPU.
var DefaultNameStrategies = []string{nvcdi.DeviceNameStrategyIndex, nvcdi.DeviceNameStrategyUUID}

// NameStrategies are the device name strategies Generate accepts.
var NameStrategies = []string{nvcdi.DeviceNameStrategyIndex, nvcdi.DeviceNameStrategyUUID, nvcdi.DeviceNameStrategyTypeIndex}

// Modes are the discovery modes Generate accepts (nvcdi's spec-generating
// modes for GPUs; auto picks nvml, csv for Tegra or wsl).
var Modes = []string{string(nvcdi.ModeAuto), string(nvcdi.ModeNvml), string(nvcdi.ModeWsl), string(nvcdi.ModeCSV), string(nvcdi.ModeManagement)}

// Options are the inputs of Generate; the zero value describes this machine.
type Options struct {
	// DriverRoot is where the driver's libraries and binaries are looked
	// for (default "/").
	DriverRoot string
	// DevRoot is where dev/nvidia* are looked for (default DriverRoot).
	DevRoot string
	// TargetRoot, when set, is what DriverRoot (and DevRoot) are on the
	// machine that reads the spec: an installer that sees the host's root at
	// /host sets DriverRoot "/host" and TargetRoot "/", and the spec names
	// host paths. Empty keeps the paths as found.
	TargetRoot string
	// NameStrategies name the devices: index, uuid, type-index (default
	// DefaultNameStrategies). Each GPU gets one device per strategy.
	NameStrategies []string
	// Format is FormatYAML (default) or FormatJSON.
	Format string
	// Mode is the nvcdi discovery mode, one of Modes (default auto).
	Mode string
	// HookPath is the nvidia-cdi-hook program the spec's hooks run, as a
	// path on the target machine. Empty finds it (PATH and the usual
	// directories under DriverRoot) and leaves the hooks out when it is not
	// there; NoHooks always leaves them out.
	HookPath string
	// NVML is the NVML library; nil loads libnvidia-ml.so.1 from DriverRoot
	// (tests pass go-nvml's mocks).
	NVML nvml.Interface
	// Log receives nvcdi's log lines ("warning: ...", "info: ..."); nil
	// drops them.
	Log func(line string)
}

// GPU is one GPU NVML lists.
type GPU struct {
	// Index is NVML's index (nvidia-smi's order).
	Index int `json:"index"`
	// UUID is the GPU's UUID (GPU-...).
	UUID string `json:"uuid"`
	// Name is the model.
	Name string `json:"name"`
	// Node is the device node, /dev/nvidia<minor>.
	Node string `json:"node"`
	// MIG is true when MIG mode is enabled: the GPU itself is not a device
	// of the spec, its MIG devices are.
	MIG bool `json:"mig,omitempty"`
}

// Spec is a generated CDI spec.
type Spec struct {
	// Raw is the spec.
	Raw *cdispecs.Spec
	// Devices are the spec's fully qualified device names, in spec order.
	Devices []string
	// GPUs are the GPUs NVML listed (empty in modes without NVML).
	GPUs []GPU
	// DriverVersion is the driver's version as NVML reports it.
	DriverVersion string
	// HookPath is the nvidia-cdi-hook the hooks run; empty when the spec has
	// no hooks.
	HookPath string
	// Warnings say what Generate changed or could not do, one sentence
	// each.
	Warnings []string

	inner nvspec.Interface
}

// NoDriverError is returned by Generate when NVML cannot be used: no
// NVIDIA driver library (a machine without NVIDIA GPUs), or a driver that
// does not answer.
type NoDriverError struct {
	// Root is the driver root searched.
	Root string
	// Return is NVML's answer to nvmlInit.
	Return nvml.Return
}

// Error says what is missing and what to do.
func (e *NoDriverError) Error() string {
	if e.Return == nvml.ERROR_LIBRARY_NOT_FOUND {
		return fmt.Sprintf("no NVIDIA driver: NVML (libnvidia-ml.so.1) not found under driver root %s; "+
			"install and load the NVIDIA driver (on a machine without NVIDIA GPUs there is nothing to generate; "+
			"leave `gpus` out of manifests), or point --driver-root at the driver's files", e.Root)
	}
	return fmt.Sprintf("NVIDIA driver does not answer: nvmlInit: %v; check the driver with nvidia-smi "+
		"(a driver/library version mismatch needs a reboot or reloading the nvidia modules)", e.Return)
}

// MissingNodesError is returned by Generate when GPUs have no device node:
// nvcdi writes such a GPU's device without it, and a container given that
// device would see no GPU.
type MissingNodesError struct {
	// Nodes are the missing device nodes.
	Nodes []string
}

// Error names the nodes and how to create them.
func (e *MissingNodesError) Error() string {
	return fmt.Sprintf("NVIDIA device nodes missing: %s; create them with `nvidia-modprobe -u -c=0` "+
		"(one -c=N per GPU minor) or by running nvidia-smi once as root, then generate again",
		strings.Join(e.Nodes, ", "))
}

// OptionError is a bad Options field; Field is named as the flag of
// `pyisolate cdi generate` that sets it.
type OptionError struct {
	// Field is the option, Value what it was given, Want what it takes.
	Field, Value, Want string
}

// Error names the option, its value and what it takes.
func (e *OptionError) Error() string {
	return fmt.Sprintf("%s %q: want %s", e.Field, e.Value, e.Want)
}

// IsOptionError reports whether err is (or wraps) an *OptionError.
func IsOptionError(err error) bool {
	var o *OptionError
	return errors.As(err, &o)
}

// withDefaults fills the zero fields and checks the others, one error per
// bad field.
func (o Options) withDefaults() (Options, error) {
	if o.DriverRoot == "" {
		o.DriverRoot = "/"
	}
	if o.DevRoot == "" {
		o.DevRoot = o.DriverRoot
	}
	for _, f := range []struct{ name, path string }{{"driver-root", o.DriverRoot}, {"dev-root", o.DevRoot}, {"target-root", o.TargetRoot}} {
		if f.path != "" && !filepath.IsAbs(f.path) {
			return o, &OptionError{Field: f.name, Value: f.path, Want: "an absolute path"}
		}
	}
	if len(o.NameStrategies) == 0 {
		o.NameStrategies = DefaultNameStrategies
	}
	for _, s := range o.NameStrategies {
		if !slices.Contains(NameStrategies, s) {
			return o, &OptionError{Field: "device-name-strategy", Value: s, Want: "one of " + strings.Join(NameStrategies, ", ")}
		}
	}
	if o.Format == "" {
		o.Format = FormatYAML
	}
	o.Format = strings.ToLower(o.Format)
	if o.Format != FormatYAML && o.Format != FormatJSON {
		return o, &OptionError{Field: "format", Value: o.Format, Want: "yaml or json"}
	}
	if o.Mode == "" {
		o.Mode = string(nvcdi.ModeAuto)
	}
	if !slices.Contains(Modes, o.Mode) {
		return o, &OptionError{Field: "mode", Value: o.Mode, Want: "one of " + strings.Join(Modes, ", ")}
	}
	if o.HookPath != "" && o.HookPath != NoHooks && !filepath.IsAbs(o.HookPath) {
		return o, &OptionError{Field: "nvidia-cdi-hook-path", Value: o.HookPath, Want: "an absolute path or " + NoHooks}
	}
	return o, nil
}

// Generate builds the CDI spec for the GPUs of the machine (or of
// opts.NVML). A machine without the NVIDIA driver gets a *NoDriverError,
// GPUs without device nodes a *MissingNodesError, bad options an error
// naming the option.
func Generate(ctx context.Context, opts Options) (*Spec, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	log := &logger{sink: o.Log}
	out := &Spec{}

	lib := o.NVML
	if lib == nil && o.Mode != string(nvcdi.ModeManagement) && o.Mode != string(nvcdi.ModeCSV) && !isWSL(o.DevRoot) {
		lib = nvml.New(nvml.WithLibraryPath(findNVML(o.DriverRoot)))
	}
	if lib != nil {
		if err := inventory(lib, o, out); err != nil {
			return nil, err
		}
		if missing := missingNodes(o.DevRoot, out.GPUs); len(missing) > 0 {
			return nil, &MissingNodesError{Nodes: missing}
		}
	}

	hookPath, found := resolveHook(o.HookPath, o.DriverRoot, o.TargetRoot)
	var cdiOpts []nvcdi.Option
	switch {
	case o.HookPath == NoHooks:
		cdiOpts = append(cdiOpts, nvcdi.WithDisabledHooks(nvcdi.AllHooks))
	case !found:
		cdiOpts = append(cdiOpts, nvcdi.WithDisabledHooks(nvcdi.AllHooks))
		out.Warnings = append(out.Warnings, fmt.Sprintf("%s not found (package nvidia-container-toolkit-base): the spec has no OCI hooks "+
			"(no ldcache update, CUDA compat or symlinks in containers; pyisolate's sandbox binds the host's /usr and /lib, "+
			"where the driver's libraries are, so extensions still find them)", HookProgram))
	default:
		out.HookPath = hookPath
		cdiOpts = append(cdiOpts, nvcdi.WithNVIDIACDIHookPath(hookPath))
	}

	var namers []nvcdi.DeviceNamer
	for _, s := range o.NameStrategies {
		n, err := nvcdi.NewDeviceNamer(s)
		if err != nil {
			return nil, fmt.Errorf("device name strategy %q: %w", s, err)
		}
		namers = append(namers, n)
	}
	cdiOpts = append(cdiOpts,
		nvcdi.WithLogger(log),
		nvcdi.WithDriverRoot(o.DriverRoot),
		nvcdi.WithDevRoot(o.DevRoot),
		nvcdi.WithDeviceNamers(namers...),
		nvcdi.WithMode(o.Mode),
	)
	if lib != nil {
		cdiOpts = append(cdiOpts, nvcdi.WithNvmlLib(lib))
	}
	cdilib, err := nvcdi.New(cdiOpts...)
	if err != nil {
		return nil, fmt.Errorf("nvcdi: %w", err)
	}
	devices, err := cdilib.GetDeviceSpecsByID("all")
	if err != nil {
		return nil, fmt.Errorf("CDI devices: %w", err)
	}
	common, err := cdilib.GetCommonEdits()
	if err != nil {
		return nil, fmt.Errorf("CDI edits common to all devices: %w", err)
	}
	inner, err := nvspec.New(
		nvspec.WithVendor(Vendor),
		nvspec.WithClass(Class),
		nvspec.WithEdits(*common.ContainerEdits),
		nvspec.WithFormat(o.Format),
		nvspec.WithPermissions(0o644),
		nvspec.WithMergedDeviceOptions(transform.WithName("all"), transform.WithSkipIfExists(true)),
		nvspec.WithDeviceSpecs(devices),
	)
	if err != nil {
		return nil, fmt.Errorf("CDI spec: %w", err)
	}
	if o.TargetRoot != "" {
		t := transformroot.NewDriverTransformer(
			transformroot.WithDriverRoot(o.DriverRoot),
			transformroot.WithTargetDriverRoot(o.TargetRoot),
			transformroot.WithDevRoot(o.DevRoot),
			transformroot.WithTargetDevRoot(o.TargetRoot),
		)
		if err := t.Transform(inner.Raw()); err != nil {
			return nil, fmt.Errorf("CDI spec paths from %s to %s: %w", o.DriverRoot, o.TargetRoot, err)
		}
	}
	out.inner = inner
	out.Raw = inner.Raw()
	for _, d := range out.Raw.Devices {
		out.Devices = append(out.Devices, Kind+"="+d.Name)
	}
	if len(out.Raw.Devices) == 0 {
		return nil, errors.New("no GPU found: NVML lists no device (or every GPU is in MIG mode without MIG devices)")
	}
	return out, nil
}

// Bytes returns the spec file's content, as nvidia-ctk writes it (the CDI
// library's writer, the oldest CDI version that holds the spec).
func (s *Spec) Bytes() ([]byte, error) {
	var b bytes.Buffer
	if _, err := s.inner.WriteTo(&b); err != nil {
		return nil, fmt.Errorf("write CDI spec: %w", err)
	}
	return b.Bytes(), nil
}

// Save writes the spec to path (the directory is created), replacing the
// file atomically, mode 0644. The extension (.yaml or .json) must match the
// spec's format.
func (s *Spec) Save(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("CDI spec directory: %w", err)
	}
	if err := s.inner.Save(path); err != nil {
		return fmt.Errorf("save CDI spec %s: %w", path, err)
	}
	return nil
}

// inventory asks NVML for the driver version and the GPUs.
func inventory(lib nvml.Interface, o Options, out *Spec) error {
	if r := lib.Init(); r != nvml.SUCCESS {
		return &NoDriverError{Root: o.DriverRoot, Return: r}
	}
	defer lib.Shutdown()
	v, r := lib.SystemGetDriverVersion()
	if r != nvml.SUCCESS {
		return fmt.Errorf("NVML driver version: %v", r)
	}
	out.DriverVersion = v
	n, r := lib.DeviceGetCount()
	if r != nvml.SUCCESS {
		return fmt.Errorf("NVML device count: %v", r)
	}
	for i := range n {
		d, r := lib.DeviceGetHandleByIndex(i)
		if r != nvml.SUCCESS {
			return fmt.Errorf("NVML device %d: %v", i, r)
		}
		g := GPU{Index: i}
		if g.UUID, r = d.GetUUID(); r != nvml.SUCCESS {
			return fmt.Errorf("NVML device %d UUID: %v", i, r)
		}
		g.Name, _ = d.GetName()
		minor, r := d.GetMinorNumber()
		if r != nvml.SUCCESS {
			return fmt.Errorf("NVML device %d minor number: %v", i, r)
		}
		g.Node = "/dev/nvidia" + strconv.Itoa(minor)
		if cur, _, r := d.GetMigMode(); r == nvml.SUCCESS && cur == nvml.DEVICE_MIG_ENABLE {
			g.MIG = true
		}
		out.GPUs = append(out.GPUs, g)
	}
	return nil
}

// missingNodes returns the device nodes of the GPUs (and /dev/nvidiactl)
// that are not character devices under devRoot.
func missingNodes(devRoot string, gpus []GPU) []string {
	if len(gpus) == 0 {
		return nil
	}
	var missing []string
	for _, n := range append([]string{"/dev/nvidiactl"}, nodesOf(gpus)...) {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(devRoot, n), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR {
			missing = append(missing, filepath.Join(devRoot, n))
		}
	}
	return missing
}

func nodesOf(gpus []GPU) []string {
	var out []string
	for _, g := range gpus {
		out = append(out, g.Node)
	}
	return out
}

// hookDirs are where nvidia-cdi-hook is looked for under a driver root that
// is not this machine's root (PATH cannot be used there): the package's
// directory and the GPU operator's.
var hookDirs = []string{"/usr/bin", "/usr/local/bin", "/usr/local/nvidia/toolkit"}

// resolveHook returns the nvidia-cdi-hook path for the spec and whether the
// program is there. An explicit path is taken as given.
func resolveHook(explicit, driverRoot, targetRoot string) (string, bool) {
	if explicit != "" {
		return explicit, explicit != NoHooks
	}
	if targetRoot == "" {
		targetRoot = driverRoot
	}
	if filepath.Clean(driverRoot) == "/" {
		if p, err := exec.LookPath(HookProgram); err == nil {
			if abs, err := filepath.Abs(p); err == nil {
				return abs, true
			}
		}
	}
	for _, d := range hookDirs {
		p := filepath.Join(driverRoot, d, HookProgram)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return filepath.Join(targetRoot, d, HookProgram), true
		}
	}
	return "", false
}

// nvmlDirs are where libnvidia-ml.so.1 is looked for under a driver root
// other than "/" (for "/" the dynamic loader's own search is used).
var nvmlDirs = []string{"/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu", "/lib64"}

// findNVML returns the NVML library to load for driverRoot.
func findNVML(driverRoot string) string {
	const name = "libnvidia-ml.so.1"
	if filepath.Clean(driverRoot) == "/" {
		return name
	}
	for _, d := range nvmlDirs {
		if p := filepath.Join(driverRoot, d, name); fileExists(p) {
			return p
		}
	}
	return filepath.Join(driverRoot, "usr/lib", name)
}

// isWSL reports whether devRoot has WSL's /dev/dxg (no NVML device nodes,
// nvcdi's wsl mode).
func isWSL(devRoot string) bool { return fileExists(filepath.Join(devRoot, "dev/dxg")) }

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// logger adapts nvcdi's logger interface to Options.Log.
type logger struct{ sink func(string) }

func (l *logger) log(level, format string, a ...any) {
	if l.sink != nil {
		l.sink(level + ": " + fmt.Sprintf(format, a...))
	}
}

func (l *logger) Debugf(f string, a ...any)   {}
func (l *logger) Tracef(f string, a ...any)   {}
func (l *logger) Infof(f string, a ...any)    { l.log("info", f, a...) }
func (l *logger) Warningf(f string, a ...any) { l.log("warning", f, a...) }
func (l *logger) Errorf(f string, a ...any)   { l.log("error", f, a...) }
