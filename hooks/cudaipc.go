package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	pspec "github.com/pyisolate/pyisolate-oci/spec"
)

// Environment variables CUDAIPCSettings writes.
const (
	// EnvEnableCUDAIPC tells pyisolate's Python side that CUDA tensors may
	// cross as CUDA IPC handles.
	EnvEnableCUDAIPC = "PYISOLATE_ENABLE_CUDA_IPC"
	// EnvCUDAVisibleDevices selects and orders the GPUs the CUDA runtime
	// enumerates.
	EnvCUDAVisibleDevices = "CUDA_VISIBLE_DEVICES"
	// EnvCUDADeviceOrder makes CUDA enumerate by PCI bus id, the same in
	// every member, instead of fastest first.
	EnvCUDADeviceOrder = "CUDA_DEVICE_ORDER"
	// EnvNvidiaVisibleDevices is the legacy nvidia-container-runtime hook's
	// selection; CDI specs from nvidia-ctk set it to "void".
	EnvNvidiaVisibleDevices = "NVIDIA_VISIBLE_DEVICES"
)

// procDriverNvidia is where the NVIDIA driver describes its GPUs; a variable
// so that tests can point it at a fake tree.
var procDriverNvidia = "/proc/driver/nvidia"

// gpuNodeRE matches the per-GPU device nodes of the NVIDIA driver
// (/dev/nvidia0, /dev/nvidia1, ...; not nvidiactl, nvidia-uvm, ...).
var gpuNodeRE = regexp.MustCompile(`^/dev/nvidia([0-9]+)$`)

// GPUNode is one GPU device node of a spec, as CUDA IPC compares them.
type GPUNode struct {
	// Path is the node inside the container, such as /dev/nvidia0.
	Path string
	// Major and Minor are the device numbers (Minor is N of /dev/nvidiaN).
	Major, Minor int64
	// UUID is the GPU's UUID (GPU-...) when the driver or the CDI device
	// name gives it, else empty.
	UUID string
}

// String prints the node as path (major:minor) [uuid].
func (n GPUNode) String() string {
	s := fmt.Sprintf("%s (%d:%d)", n.Path, n.Major, n.Minor)
	if n.UUID != "" {
		s += " " + n.UUID
	}
	return s
}

// CUDAIPCSettings gives a share_cuda_ipc member of an isolation group what
// CUDA IPC between containers needs. Call it after InjectCDI, on the host's
// spec and on every extension's spec of the group.
//
// What CUDA IPC across containers needs, and why:
//
//   - The same PID namespace. cudaIpcOpenMemHandle in a process of another
//     PID namespace than the exporter fails with "invalid device context";
//     with a shared PID namespace it works. Measured by Harshal Patil with
//     two Kubernetes pods toggling hostIPC, hostPID and privileged one at a
//     time (github.com/harche/cuda-ipc-debugging, shared-volume-example/
//     README.md: "HostPID is REQUIRED ... HostPID Only Disabled: FAILED,
//     invalid device context"; write-up at
//     harche.github.io/2025/10/15/kubernetes-cuda-ipc-permissions.html:
//     shareProcessNamespace is the safer substitute for hostPID), and in
//     vLLM's A/B test of two Docker containers on H100s
//     (github.com/vllm-project/vllm/pull/55906: isolated PID namespaces give
//     "invalid device context" and UCX falls back to TCP; --pid=container:X
//     gives CUDA IPC zero-copy). So the members join one PID namespace.
//   - The IPC namespace is not what legacy CUDA IPC memory handles need (the
//     same measurements: hostIPC disabled alone still works) but shared
//     IPC is what NVIDIA documents for NVLink/P2P between containers
//     (NCCL's troubleshooting guide, "NVLink and Docker/Kubernetes":
//     processes must share an IPC namespace), what MPS clients need
//     (github.com/NVIDIA/nvidia-docker/issues/1396: segfault without
//     --ipc=host under MPS) and what Docker users are told to use for
//     CUDA IPC (--ipc=host, github.com/pytorch/pytorch/issues/1158,
//     triton-inference-server/client#134). The group shares one, as the
//     design says.
//   - The same physical GPU, visible in both containers. When the members
//     see different GPUs cudaIpcOpenMemHandle fails with "invalid argument"
//     (cuda-ipc-debugging: the "privileged needed" result was the device
//     plugin giving each pod a different GPU). torch's CUDA IPC reductions
//     (torch.multiprocessing.reductions.rebuild_cuda_tensor) also send the
//     exporter's device ordinal, so the GPUs must be enumerated in the same
//     order: same device nodes in the same order, CUDA_VISIBLE_DEVICES by
//     UUID (ordinals differ between containers that see different sets) and
//     CUDA_DEVICE_ORDER=PCI_BUS_ID.
//   - The same /dev/shm: torch keeps the reference count of every shared
//     CUDA storage in a file-backed shared memory block it names in the
//     handle (torch/multiprocessing/reductions.py, ref_counter_handle); the
//     group's shm, bound in every member, gives that. The exporter must keep
//     the tensor alive while the importer uses it (pyisolate's TensorKeeper).
//
// The group's namespaces are named by groupIPCNamespace, a path such as
// /proc/PID/ns/ipc of the group's first member or holder process. The PID
// namespace is its sibling (/proc/PID/ns/pid, or a "pid" file beside an
// "ipc" file in a directory of bind-mounted namespaces). An empty path leaves
// the spec creating new namespaces: the group's first member, which the
// others then join. Joining another container's PID namespace means the
// members die with that namespace's init; the group is one unit anyway.
//
// The environment: PYISOLATE_ENABLE_CUDA_IPC=1, CUDA_DEVICE_ORDER=PCI_BUS_ID
// and CUDA_VISIBLE_DEVICES set to the UUIDs of the spec's GPU device nodes in
// their order, from the CDI device names (nvidia.com/gpu=GPU-...) or the
// driver's /proc/driver/nvidia/gpus/*/information. When the UUIDs are not
// known an inherited CUDA_VISIBLE_DEVICES (a host ordinal that is wrong
// inside the container) is removed, so CUDA sees exactly the injected nodes.
// NVIDIA_VISIBLE_DEVICES is set to the same UUIDs unless it is absent or
// "void"/"none" (CDI's marker that keeps the legacy hook away).
func CUDAIPCSettings(s *specs.Spec, groupIPCNamespace string) error {
	if s == nil {
		return errors.New("CUDA IPC settings: nil spec")
	}
	if s.Linux == nil {
		return errors.New("CUDA IPC settings: the spec has no linux section")
	}
	if s.Process == nil {
		return errors.New("CUDA IPC settings: the spec has no process")
	}
	if groupIPCNamespace != "" {
		if !filepath.IsAbs(groupIPCNamespace) {
			return fmt.Errorf("CUDA IPC settings: group IPC namespace %q is not an absolute path", groupIPCNamespace)
		}
		setNamespacePath(s, specs.IPCNamespace, groupIPCNamespace)
		pidNS, err := pidNamespaceFor(groupIPCNamespace)
		if err != nil {
			return fmt.Errorf("CUDA IPC settings: %w", err)
		}
		setNamespacePath(s, specs.PIDNamespace, pidNS)
	}
	nodes := GPUNodes(s)
	setEnv(s, EnvEnableCUDAIPC, "1")
	setEnv(s, EnvCUDADeviceOrder, "PCI_BUS_ID")
	uuids := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if n.UUID == "" {
			uuids = nil
			break
		}
		uuids = append(uuids, n.UUID)
	}
	if len(nodes) > 0 && uuids != nil {
		list := strings.Join(uuids, ",")
		setEnv(s, EnvCUDAVisibleDevices, list)
		if v, ok := getEnv(s, EnvNvidiaVisibleDevices); ok && v != "void" && v != "none" && v != "" {
			setEnv(s, EnvNvidiaVisibleDevices, list)
		}
	} else {
		unsetEnv(s, EnvCUDAVisibleDevices)
	}
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[pspec.AnnotationShareCUDAIPC] = "true"
	return nil
}

// pidNamespaceFor returns the PID namespace beside an IPC namespace path.
func pidNamespaceFor(ipcPath string) (string, error) {
	if path.Base(ipcPath) != "ipc" {
		return "", fmt.Errorf("group IPC namespace %q: not a path ending in /ipc, so its PID namespace (CUDA IPC needs both) cannot be found beside it", ipcPath)
	}
	return path.Join(path.Dir(ipcPath), "pid"), nil
}

// setNamespacePath makes the spec join the namespace at p, adding the entry
// when the spec has none of that type.
func setNamespacePath(s *specs.Spec, t specs.LinuxNamespaceType, p string) {
	for i := range s.Linux.Namespaces {
		if s.Linux.Namespaces[i].Type == t {
			s.Linux.Namespaces[i].Path = p
			return
		}
	}
	s.Linux.Namespaces = append(s.Linux.Namespaces, specs.LinuxNamespace{Type: t, Path: p})
}

// GPUNodes returns the NVIDIA GPU device nodes (/dev/nvidiaN) of a spec in
// their order: device entries, then bind mounts of device nodes (what
// InjectCDI makes in a user namespace). UUIDs come from the CDI device
// names recorded by InjectCDI when those name GPUs by UUID, else from the
// driver's /proc/driver/nvidia/gpus/*/information by minor number.
func GPUNodes(s *specs.Spec) []GPUNode {
	if s == nil {
		return nil
	}
	var nodes []GPUNode
	seen := map[string]bool{}
	if s.Linux != nil {
		for _, d := range s.Linux.Devices {
			if gpuNodeRE.MatchString(d.Path) && !seen[d.Path] {
				seen[d.Path] = true
				nodes = append(nodes, GPUNode{Path: d.Path, Major: d.Major, Minor: d.Minor})
			}
		}
	}
	for _, m := range s.Mounts {
		sub := gpuNodeRE.FindStringSubmatch(m.Destination)
		if sub == nil || seen[m.Destination] {
			continue
		}
		seen[m.Destination] = true
		n := GPUNode{Path: m.Destination}
		if major, minor, ok := statDevice(m.Source); ok {
			n.Major, n.Minor = major, minor
		} else {
			n.Minor, _ = strconv.ParseInt(sub[1], 10, 64)
		}
		nodes = append(nodes, n)
	}
	byMinor := driverUUIDs()
	named := cdiUUIDs(s)
	for i := range nodes {
		if u, ok := byMinor[nodes[i].Minor]; ok {
			nodes[i].UUID = u
		} else if len(named) == len(nodes) {
			nodes[i].UUID = named[i]
		}
	}
	return nodes
}

// cdiUUIDs returns the GPU UUIDs named by the injected CDI devices
// (nvidia.com/gpu=GPU-..., MIG-...), in order.
func cdiUUIDs(s *specs.Spec) []string {
	var out []string
	for _, d := range InjectedDevices(s) {
		_, name, ok := strings.Cut(d, "=")
		if ok && (strings.HasPrefix(name, "GPU-") || strings.HasPrefix(name, "MIG-")) {
			out = append(out, name)
		}
	}
	return out
}

// driverUUIDs reads the GPU UUID of every device minor from the driver's
// /proc/driver/nvidia/gpus/<bus id>/information files.
func driverUUIDs() map[int64]string {
	out := map[int64]string{}
	infos, _ := filepath.Glob(filepath.Join(procDriverNvidia, "gpus", "*", "information"))
	for _, f := range infos {
		info := parseGPUInformation(f)
		if info.UUID != "" && info.Minor >= 0 {
			out[info.Minor] = info.UUID
		}
	}
	return out
}

// GPUInfo is what the NVIDIA driver says about one GPU.
type GPUInfo struct {
	// BusID is the PCI bus id, the directory name under
	// /proc/driver/nvidia/gpus.
	BusID string `json:"bus_id"`
	// Model is the product name.
	Model string `json:"model,omitempty"`
	// UUID is the GPU UUID (GPU-...).
	UUID string `json:"uuid,omitempty"`
	// Minor is N of /dev/nvidiaN; -1 when unknown.
	Minor int64 `json:"minor"`
}

// parseGPUInformation reads one /proc/driver/nvidia/gpus/*/information file
// ("Model:", "GPU UUID:", "Device Minor:" lines).
func parseGPUInformation(file string) GPUInfo {
	info := GPUInfo{BusID: filepath.Base(filepath.Dir(file)), Minor: -1}
	data, err := os.ReadFile(file)
	if err != nil {
		return info
	}
	for _, line := range strings.Split(string(data), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "Model":
			info.Model = v
		case "GPU UUID":
			info.UUID = v
		case "Device Minor":
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				info.Minor = n
			}
		}
	}
	return info
}

// CheckCUDAIPCGroup verifies that two members of a group, the host and an
// extension, can use CUDA IPC between them: both enable it, both see the same
// GPU device nodes in the same order with the same CUDA_VISIBLE_DEVICES, and
// both are in the same IPC and PID namespaces: either the same namespace
// path, or the host creating its namespace (no path) and the extension
// joining one by path (which process that path names cannot be checked from
// the specs). The error names every difference.
func CheckCUDAIPCGroup(host, ext *specs.Spec) error {
	if host == nil || ext == nil {
		return errors.New("CUDA IPC group check: nil spec")
	}
	var errs []error
	for _, m := range []struct {
		role string
		s    *specs.Spec
	}{{"host", host}, {"extension", ext}} {
		if v, _ := getEnv(m.s, EnvEnableCUDAIPC); v != "1" {
			errs = append(errs, fmt.Errorf("%s: %s is not 1 (CUDA IPC not enabled)", m.role, EnvEnableCUDAIPC))
		}
	}
	hn, en := GPUNodes(host), GPUNodes(ext)
	if !slices.EqualFunc(hn, en, func(a, b GPUNode) bool {
		return a.Path == b.Path && a.Major == b.Major && a.Minor == b.Minor && a.UUID == b.UUID
	}) {
		errs = append(errs, fmt.Errorf("GPU devices differ (CUDA IPC needs the same GPUs in the same order): host has %s, extension has %s",
			listNodes(hn), listNodes(en)))
	}
	hv, _ := getEnv(host, EnvCUDAVisibleDevices)
	ev, _ := getEnv(ext, EnvCUDAVisibleDevices)
	if hv != ev {
		errs = append(errs, fmt.Errorf("%s differs: host %q, extension %q", EnvCUDAVisibleDevices, hv, ev))
	}
	for _, t := range []specs.LinuxNamespaceType{specs.IPCNamespace, specs.PIDNamespace} {
		if err := sameNamespace(t, host, ext); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("CUDA IPC group check: %w", errors.Join(errs...))
	}
	return nil
}

// sameNamespace checks that host and extension end up in the same namespace
// of type t.
func sameNamespace(t specs.LinuxNamespaceType, host, ext *specs.Spec) error {
	describe := func(ns specs.LinuxNamespace, ok bool) string {
		switch {
		case !ok:
			return "the runtime's own (no namespace entry)"
		case ns.Path == "":
			return "a new one"
		default:
			return ns.Path
		}
	}
	hns, hok := namespace(host, t)
	ens, eok := namespace(ext, t)
	switch {
	case hok == eok && hns.Path == ens.Path && (ens.Path != "" || !eok):
		return nil // the same path, or both in the runtime's namespace
	case hok && hns.Path == "" && eok && ens.Path != "":
		return nil // the host creates it, the extension joins
	}
	return fmt.Errorf("%s namespace differs: host in %s, extension in %s", t, describe(hns, hok), describe(ens, eok))
}

func listNodes(ns []GPUNode) string {
	if len(ns) == 0 {
		return "none"
	}
	parts := make([]string, len(ns))
	for i, n := range ns {
		parts[i] = n.String()
	}
	return "[" + strings.Join(parts, ", ") + "]"
}

// getEnv returns the value of k in the spec's process environment.
func getEnv(s *specs.Spec, k string) (string, bool) {
	if s == nil || s.Process == nil {
		return "", false
	}
	for i := len(s.Process.Env) - 1; i >= 0; i-- {
		if name, v, ok := strings.Cut(s.Process.Env[i], "="); ok && name == k {
			return v, true
		}
	}
	return "", false
}

// setEnv sets k=v in the spec's process environment, replacing every earlier
// value.
func setEnv(s *specs.Spec, k, v string) {
	unsetEnv(s, k)
	s.Process.Env = append(s.Process.Env, k+"="+v)
}

// unsetEnv removes k from the spec's process environment.
func unsetEnv(s *specs.Spec, k string) {
	if s.Process == nil {
		return
	}
	s.Process.Env = slices.DeleteFunc(s.Process.Env, func(e string) bool {
		name, _, _ := strings.Cut(e, "=")
		return name == k
	})
}

// InjectDevices is what a runtime does to an isolation group member's spec
// between building it and creating the container: InjectCDI with opts, then, when the spec asks for CUDA IPC (the manifest's
// share_cuda_ipc) and the member is in a group, CUDAIPCSettings with the
// namespace path groupIPCNamespace returns. A nil groupIPCNamespace (no
// group) skips CUDA IPC. IsUserError tells the caller's errors apart.
func InjectDevices(ctx context.Context, s *specs.Spec, opts CDIOptions, groupIPCNamespace func() string) error {
	if _, err := InjectCDI(ctx, s, opts); err != nil {
		return err
	}
	if s.Annotations[pspec.AnnotationShareCUDAIPC] != "true" || groupIPCNamespace == nil {
		return nil
	}
	return CUDAIPCSettings(s, groupIPCNamespace())
}

// IsUserError reports whether err (from InjectCDI or InjectDevices) is the
// user's to fix: an unknown device or a CDI spec file that does not load.
func IsUserError(err error) bool {
	var unknown *UnknownDeviceError
	var bad *SpecFileError
	return errors.As(err, &unknown) || errors.As(err, &bad)
}
