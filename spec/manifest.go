package spec

// ManifestFile is the name of the manifest file at the root of a bundle.
const ManifestFile = "pyisolate.json"

// ExecutionModel says how an extension relates to its host.
type ExecutionModel string

const (
	// HostCoupled extensions inherit the host's environment (minus what the
	// sandbox forbids) and share torch with it. This is the default.
	HostCoupled ExecutionModel = "host-coupled"
	// Sealed extensions get a cleared environment with a short allow list.
	Sealed ExecutionModel = "sealed"
)

// Manifest is the pyisolate sandbox request of one extension. Field names
// follow pyisolate's ExtensionConfig.
type Manifest struct {
	// Name is the extension's name: letters, digits, '.', '_' and '-'.
	Name string `json:"name"`
	// ModulePath is the absolute host path of the extension's module
	// (the node pack directory), bound read-only at the same path.
	ModulePath string `json:"module_path"`
	// Venv is the absolute host path of the extension's virtual environment,
	// bound read-only at the same path. Optional.
	Venv string `json:"venv,omitempty"`
	// Python is the absolute path of the interpreter inside the sandbox.
	// Defaults to /usr/bin/python3, or <venv>/bin/python when Venv is set.
	Python string `json:"python,omitempty"`
	// ShareTorch asks for torch tensors to be shared with the host through the
	// group's /dev/shm.
	ShareTorch bool `json:"share_torch,omitempty"`
	// ShareCUDAIPC asks for CUDA IPC with the host (same GPUs, shared IPC
	// namespace).
	ShareCUDAIPC bool `json:"share_cuda_ipc,omitempty"`
	// ExecutionModel is host-coupled (default) or sealed.
	ExecutionModel ExecutionModel `json:"execution_model,omitempty"`
	// Sandbox holds the filesystem and network requests.
	Sandbox Sandbox `json:"sandbox"`
	// Env is extra environment for the extension process.
	Env map[string]string `json:"env,omitempty"`
	// Group is the isolation group the extension joins. Defaults to Name.
	Group string `json:"group,omitempty"`
	// Limits are the cgroup and shared-memory limits.
	Limits Limits `json:"limits"`
	// GPUs are fully qualified CDI device names, such as nvidia.com/gpu=0.
	GPUs []string `json:"gpus,omitempty"`
	// Command is the process to run, in the module's parent directory.
	// Defaults to [Python, "-m", <module directory name>].
	Command []string `json:"command,omitempty"`
	// Preload asks for warm starts: modules (dotted names, such as "torch"
	// or "numpy.linalg") a template of the group imports once, and from
	// which members with the same interpreter, venv and list are forked
	// instead of starting a new interpreter (`pyisolate run` and the
	// containerd shim; package runtime/warm). Where a template cannot serve, the member starts cold
	// and the run says why.
	Preload []string `json:"preload,omitempty"`
}

// Sandbox is the filesystem and network part of a manifest.
type Sandbox struct {
	// Network gives the extension the host's network. False (default) means
	// a private network namespace with loopback only.
	Network bool `json:"network,omitempty"`
	// WritablePaths are absolute host paths bound read-write at the same path.
	WritablePaths []string `json:"writable_paths,omitempty"`
	// ReadonlyPaths are absolute host paths bound read-only at the same path.
	ReadonlyPaths []string `json:"readonly_paths,omitempty"`
}

// Limits are resource limits of an extension. A limit left out (or zero)
// gets the sandbox's default from Build, which records the defaults it
// applied in the io.pyisolate.out.defaults annotation; a limit the manifest
// sets is kept as it is.
type Limits struct {
	// Memory is the memory limit in bytes (number, or string with a unit:
	// "512Mi", "2G"). Zero: DefaultMemory of the host (half its memory).
	Memory ByteSize `json:"memory,omitempty"`
	// Pids is the maximum number of processes. Zero: DefaultPids.
	Pids int64 `json:"pids,omitempty"`
	// CPUs is the CPU quota in cores (1.5 = one and a half). Zero means no
	// quota; the CPU weight is DefaultCPUShares either way.
	CPUs float64 `json:"cpus,omitempty"`
	// ShmSize is the size of the group's /dev/shm tmpfs. Zero: the group's
	// default (runtime side: half the free memory, at most 1 GiB). At most
	// the host's memory.
	ShmSize ByteSize `json:"shm_size,omitempty"`
	// TmpSize is the size of the private /tmp tmpfs. Zero: DefaultTmpSize
	// or the memory limit, whichever is smaller. At most the host's memory.
	TmpSize ByteSize `json:"tmp_size,omitempty"`
}

// ByteSize is a size in bytes. In JSON it is a non-negative integer or a
// string with a binary (Ki, Mi, Gi, Ti) or decimal (k, K, M, G, T) unit.
type ByteSize int64
