package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Paths inside the sandbox that the builder owns.
const (
	// ShmMount is where the group's shared memory appears in every member.
	ShmMount = "/dev/shm"
	// SocketMount is where the group's socket directory appears.
	SocketMount = "/run/pyisolate"
	// DefaultPython is the interpreter used when the manifest names none.
	DefaultPython = "/usr/bin/python3"
	// TorchTempDir is where torch's shm manager makes its directory
	// (torch-shm-dir-XXXXXX, holding manager.sock) in members with
	// share_torch: inside the group's socket directory, so that the
	// manager_path a sender puts in a TensorRef exists in every member. It is
	// passed as TEMPDIR, which torch reads (c10's temporary directory: TMPDIR,
	// TMP, TEMP, then TEMPDIR) and Python's tempfile, the shell and libc do
	// not: everything else keeps the private /tmp.
	TorchTempDir = SocketMount
)

// Annotations the builder writes on the specs it produces.
const (
	// AnnotationDegraded lists, comma separated, what a degraded spec dropped.
	// It is absent from a full spec.
	AnnotationDegraded = "io.pyisolate.degraded"
	// AnnotationRestriction records the restriction model the spec was built for.
	AnnotationRestriction = "io.pyisolate.out.restriction"
	// AnnotationGroup records the isolation group of the container.
	AnnotationGroup = "io.pyisolate.out.group"
	// AnnotationName records the extension name.
	AnnotationName = "io.pyisolate.out.name"
	// AnnotationCDIDevices carries the manifest's gpus as a CDI device
	// annotation (comma-separated fully qualified names), in the
	// cdi.k8s.io/ namespace that CDI's annotation helpers read.
	AnnotationCDIDevices = "cdi.k8s.io/pyisolate-gpus"
	// AnnotationShareCUDAIPC marks a member that asked for CUDA IPC.
	AnnotationShareCUDAIPC = "io.pyisolate.out.share-cuda-ipc"
	// AnnotationUserPaths lists, as a JSON array, the bind sources that the
	// manifest named (UserPaths): the runtime binds them as the objects that
	// were checked, never by name again (see PinnedPaths).
	AnnotationUserPaths = "io.pyisolate.out.user-paths"
	// AnnotationDefaults lists, comma separated, the limits Build took from
	// the sandbox's defaults because the manifest left them out, each as
	// field=value ("limits.memory=12052Mi,limits.pids=2048,cpu.shares=1024,
	// limits.tmp_size=1Gi"). See DefaultsList.
	AnnotationDefaults = "io.pyisolate.out.defaults"
)

// The sandbox's default limits, for a manifest that leaves a limit out (or
// sets it to 0). What a manifest sets is kept as it is.
const (
	// DefaultPids is the default process limit (Podman's default
	// pids-limit): far above what a Python extension needs, far below
	// what a fork bomb makes.
	DefaultPids = 2048
	// DefaultCPUShares is the CPU weight of every sandbox: cpu.shares 1024
	// on cgroup v1 (the kernel's default), cpu.weight 100 on v2 (as
	// libcontainer converts it), so that siblings under /pyisolate share
	// the CPU evenly. limits.cpus adds a quota on top.
	DefaultCPUShares = 1024
	// DefaultTmpSize is the size of the private /tmp tmpfs when the memory
	// limit is larger (or unknown) and limits.tmp_size is left out.
	DefaultTmpSize ByteSize = 1 << 30
	// DefaultPrivateShmSize is the size of a private /dev/shm, made when
	// the container is in no group (spec previews), without shm_size.
	DefaultPrivateShmSize ByteSize = 64 << 20
)

// DefaultMemory is the default memory limit on host h: half of its memory,
// rounded down to a MiB; 0 (no default) when h.MemTotal is unknown.
func DefaultMemory(h Host) ByteSize {
	if h.MemTotal <= 0 {
		return 0
	}
	return ByteSize(h.MemTotal / 2 &^ (1<<20 - 1))
}

// CheckHostLimits checks the limits that only make sense against the host:
// a tmpfs (limits.shm_size, limits.tmp_size) larger than the host's memory
// is refused, since it would let the sandbox fill the machine's memory. An
// unknown host memory (h.MemTotal 0) caps nothing. Errors are *FieldError
// naming the field and the cap. Build calls it; callers that act on
// shm_size before building (creating the group's tmpfs) call it first.
func CheckHostLimits(l Limits, h Host) error {
	if h.MemTotal <= 0 {
		return nil
	}
	memory := ByteSize(h.MemTotal)
	for _, f := range []struct {
		field string
		size  ByteSize
	}{{"limits.shm_size", l.ShmSize}, {"limits.tmp_size", l.TmpSize}} {
		if f.size > memory {
			return fieldErr(f.field, "%s is larger than this host's memory (%s): at most %s is allowed",
				f.size, humanSize(memory), humanSize(memory))
		}
	}
	return nil
}

// humanSize writes a size rounded to one decimal of its largest binary
// unit ("23.5Gi"), or exactly when it is a whole number of it.
func humanSize(b ByteSize) string {
	for _, u := range []sizeUnit{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}} {
		if int64(b) >= u.factor {
			if int64(b)%u.factor == 0 {
				return fmt.Sprintf("%d%s", int64(b)/u.factor, u.suffix)
			}
			return fmt.Sprintf("%.1f%s", float64(b)/float64(u.factor), u.suffix)
		}
	}
	return fmt.Sprintf("%d", int64(b))
}

// DefaultsList returns the entries of a spec's AnnotationDefaults
// ("limits.pids=2048", ...), nil when no default was applied.
func DefaultsList(s *specs.Spec) []string {
	v := s.Annotations[AnnotationDefaults]
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// Default ID mapping: container ids 0..65535 map to host ids starting here.
// Every member of a group maps to the same host ids, so members can open each
// other's shared-memory segments (torch creates them with mode 0600).
const (
	DefaultIDMapBase = 100000
	DefaultIDMapSize = 65536
	// NobodyID is the host uid and gid a process runs as when the host
	// forbids user namespaces.
	NobodyID = 65534
)

// SystemPaths are the host directories bound read-only into every sandbox,
// when they exist on the host.
var SystemPaths = []string{"/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/opt"}

// EtcAllowList are the /etc entries bound read-only, when they exist.
var EtcAllowList = []string{
	"/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
	"/etc/ssl", "/etc/ca-certificates", "/etc/passwd", "/etc/group",
	"/etc/nsswitch.conf", "/etc/hosts", "/etc/resolv.conf", "/etc/localtime",
}

// SealedEnvAllowList are the variables a sealed extension keeps from its
// environment (besides the PYISOLATE_* ones the builder sets and the
// manifest's env). PATH is not among them: sealed extensions get DefaultPath.
var SealedEnvAllowList = []string{"LANG", "LC_ALL", "LC_CTYPE", "TZ", "TERM"}

// DefaultPath is PATH inside the sandbox unless the caller gives one.
const DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ErrUnsupported is returned by Build on platforms that cannot run Linux
// containers.
var ErrUnsupported = errors.New("this platform cannot run Linux containers (restriction model: unsupported)")

// Options are the inputs of Build that come from the runtime rather than the
// manifest.
type Options struct {
	// ID is the container id.
	ID string
	// Rootfs is the absolute host path of the root filesystem: the bundle's
	// rootfs, or an empty directory the runtime made (bwrap style).
	Rootfs string
	// ShmDir is the host directory of the group's shared memory, bound at
	// /dev/shm. Empty gives the container a private tmpfs there.
	ShmDir string
	// SocketDir is the host directory of the group's sockets, bound at
	// /run/pyisolate. Empty binds nothing.
	SocketDir string
	// IPCNamespace is the path of the group's IPC namespace to join (for CUDA
	// IPC), such as /proc/PID/ns/ipc. Empty creates a new one.
	IPCNamespace string
	// HostEnv is the environment a host-coupled extension inherits, as
	// KEY=VALUE strings. Sealed extensions keep only SealedEnvAllowList of it.
	HostEnv []string
	// CgroupsPath is the cgroup of the container. Empty gives /pyisolate/<ID>.
	CgroupsPath string
	// IDMapBase and IDMapSize set the user namespace mapping. Zero gives
	// DefaultIDMapBase and DefaultIDMapSize.
	IDMapBase, IDMapSize uint32
	// UIDMappings and GIDMappings, when set, replace that single mapping:
	// a rootless runtime maps container id 0 to the caller's own id (and
	// more ids to its /etc/subuid range when newuidmap is there); see
	// runtime.RootlessIDMappings.
	UIDMappings, GIDMappings []specs.LinuxIDMapping
}

// Degradation names one part of the sandbox that a restricted host makes the
// builder drop.
type Degradation string

// The degradations Build may apply.
const (
	// DropUserNamespace: no user namespace; the process runs as host uid and
	// gid 65534 (nobody) instead of a mapped id.
	DropUserNamespace Degradation = "user-namespace"
	// DropNamespaces: no mount, pid, ipc, uts, cgroup or network namespace,
	// so no private filesystem view and no network isolation.
	DropNamespaces Degradation = "namespaces"
	// DropCgroupLimits: no memory, pids or CPU limits.
	DropCgroupLimits Degradation = "cgroup-limits"
	// DropSeccomp: no seccomp filter (the kernel or build lacks it).
	DropSeccomp Degradation = "seccomp"
)

// Degradations returns what a spec built for restriction model r drops,
// besides seccomp (which depends on Host.Seccomp). It is nil for
// RestrictionNone.
func Degradations(r Restriction) []Degradation {
	switch r {
	case RestrictionAppArmor, RestrictionSysctl, RestrictionSELinux:
		// The runtime is privileged: only the user namespace is refused.
		return []Degradation{DropUserNamespace}
	case RestrictionNoCaps:
		// Without CAP_SYS_ADMIN and without user namespaces no namespace
		// and no cgroup can be made.
		return []Degradation{DropUserNamespace, DropNamespaces, DropCgroupLimits}
	}
	return nil
}

// HostDegradations returns everything a spec built for host h drops: those of
// its restriction model (Degradations), the cgroup limits of a rootless host
// without a delegated cgroup v2 subtree, and seccomp where the kernel or the
// binary lacks it. It is nil for a full sandbox.
func HostDegradations(h Host) []Degradation {
	drop := Degradations(h.Restriction)
	if h.Rootless && !h.CgroupDelegated && !slices.Contains(drop, DropCgroupLimits) {
		drop = append(drop, DropCgroupLimits)
	}
	if !h.Seccomp {
		drop = append(drop, DropSeccomp)
	}
	return drop
}

// Build turns a validated manifest into the OCI runtime spec of its sandbox
// for host h. It is a pure function: it reads no files. Paths in m must be
// the resolved paths CheckPaths returns.
//
// What was dropped for a restricted host is listed in the spec's
// io.pyisolate.degraded annotation.
func Build(m *Manifest, h Host, o Options) (*specs.Spec, error) {
	if m == nil {
		return nil, errors.New("build spec: no manifest")
	}
	if h.Restriction == RestrictionUnsupported {
		return nil, ErrUnsupported
	}
	if !filepath.IsAbs(o.Rootfs) {
		return nil, fmt.Errorf("build spec: rootfs %q is not an absolute path", o.Rootfs)
	}
	if err := CheckHostLimits(m.Limits, h); err != nil {
		return nil, err
	}
	b := &builder{m: m, h: h, o: o, drop: HostDegradations(h)}
	s := &specs.Spec{
		Version:     specs.Version,
		Root:        &specs.Root{Path: o.Rootfs, Readonly: true},
		Hostname:    m.Name,
		Annotations: map[string]string{},
	}
	if b.dropped(DropNamespaces) {
		s.Hostname = ""
	}
	s.Process = b.process()
	s.Mounts = b.mounts()
	s.Linux = b.linux(s)
	s.Annotations[AnnotationRestriction] = string(h.Restriction)
	s.Annotations[AnnotationGroup] = m.groupName()
	s.Annotations[AnnotationName] = m.Name
	if len(m.GPUs) > 0 {
		// Resolved at create time by the CDI hook, like the cdi.k8s.io/*
		// annotations containerd's CRI sets.
		s.Annotations[AnnotationCDIDevices] = strings.Join(m.GPUs, ",")
	}
	if m.ShareCUDAIPC {
		s.Annotations[AnnotationShareCUDAIPC] = "true"
	}
	if paths, err := json.Marshal(UserPaths(m)); err == nil {
		s.Annotations[AnnotationUserPaths] = string(paths)
	}
	b.annotate(s)
	return s, nil
}

// annotate records on s the defaults the builder applied and what it
// dropped (AnnotationDefaults, AnnotationDegraded).
func (b *builder) annotate(s *specs.Spec) {
	if len(b.defaults) > 0 {
		// In a fixed order, whatever order the builder met them in.
		order := []string{"limits.memory", "limits.pids", "cpu.shares", "limits.tmp_size"}
		slices.SortStableFunc(b.defaults, func(x, y string) int {
			kx, _, _ := strings.Cut(x, "=")
			ky, _, _ := strings.Cut(y, "=")
			return slices.Index(order, kx) - slices.Index(order, ky)
		})
		s.Annotations[AnnotationDefaults] = strings.Join(b.defaults, ",")
	}
	if len(b.drop) > 0 {
		names := make([]string, len(b.drop))
		for i, d := range b.drop {
			names[i] = string(d)
		}
		s.Annotations[AnnotationDegraded] = strings.Join(names, ",")
	}
}

// DegradedList returns the degradations recorded in a spec built by Build.
func DegradedList(s *specs.Spec) []string {
	v := s.Annotations[AnnotationDegraded]
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// groupName is the manifest's group, defaulting to its name.
func (m *Manifest) groupName() string {
	if m.Group != "" {
		return m.Group
	}
	return m.Name
}

// python is the manifest's interpreter with its default applied.
func (m *Manifest) python() string {
	switch {
	case m.Python != "":
		return m.Python
	case m.Venv != "":
		return path.Join(m.Venv, "bin", "python")
	}
	return DefaultPython
}

type builder struct {
	m    *Manifest
	h    Host
	o    Options
	drop []Degradation
	// defaults are the limits taken from defaults, as field=value, for
	// AnnotationDefaults.
	defaults []string
}

// useDefault records that field got its default value.
func (b *builder) useDefault(field, value string) {
	b.defaults = append(b.defaults, field+"="+value)
}

// memoryLimit is the memory limit the sandbox gets: the manifest's, else
// the host's default; 0 when there is none.
func (b *builder) memoryLimit() ByteSize {
	if b.m.Limits.Memory > 0 {
		return b.m.Limits.Memory
	}
	return DefaultMemory(b.h)
}

// tmpSize is the size of the private /tmp: limits.tmp_size, else the
// smaller of DefaultTmpSize and the memory limit (tmpfs pages count against
// the memory cgroup of the process that writes them).
func (b *builder) tmpSize() ByteSize {
	if b.m.Limits.TmpSize > 0 {
		return b.m.Limits.TmpSize
	}
	size := DefaultTmpSize
	if mem := b.memoryLimit(); mem > 0 && mem < size && !b.dropped(DropCgroupLimits) {
		size = mem
	}
	b.useDefault("limits.tmp_size", size.String())
	return size
}

func (b *builder) dropped(d Degradation) bool { return slices.Contains(b.drop, d) }

func (b *builder) process() *specs.Process {
	m := b.m
	p := &specs.Process{
		Args: m.Command,
		Env:  b.env(),
		// The module's parent, so that `python -m <module>` and the
		// module's own relative imports work with any command.
		Cwd:     path.Dir(m.ModulePath),
		Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
	}
	if len(p.Args) == 0 {
		p.Args = []string{m.python(), "-m", path.Base(m.ModulePath)}
	}
	b.harden(p)
	return p
}

// harden applies to p what every sandboxed process gets: no_new_privileges,
// every capability dropped, and host uid and gid 65534 (nobody) when there
// is no user namespace.
func (b *builder) harden(p *specs.Process) {
	p.NoNewPrivileges = true
	// Empty, non-nil sets: every capability dropped.
	p.Capabilities = &specs.LinuxCapabilities{
		Bounding: []string{}, Effective: []string{}, Permitted: []string{},
	}
	if b.dropped(DropUserNamespace) {
		p.User = specs.User{UID: NobodyID, GID: NobodyID}
	}
}

// env builds the process environment: the inherited part (all of HostEnv for
// host-coupled, the allow list for sealed), then pyisolate's variables, then
// the manifest's env, later entries replacing earlier ones.
func (b *builder) env() []string {
	m := b.m
	vars := map[string]string{"PATH": DefaultPath}
	for _, kv := range b.o.HostEnv {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		if m.ExecutionModel == Sealed && !slices.Contains(SealedEnvAllowList, k) {
			continue
		}
		vars[k] = v
	}
	vars["HOME"] = "/tmp"
	vars["TMPDIR"] = "/tmp"
	if m.ShareTorch && b.o.SocketDir != "" {
		// torch takes TMPDIR, TMP and TEMP before TEMPDIR: none of them may
		// be set (inherited ones name host paths anyway). Python, mktemp and
		// libc fall back to the private /tmp without them. A manifest's env
		// still sets them, below, when the user wants another directory.
		for _, k := range []string{"TMPDIR", "TMP", "TEMP"} {
			delete(vars, k)
		}
		vars["TEMPDIR"] = TorchTempDir
	}
	vars["PYTHONNOUSERSITE"] = "1"
	vars["PYTHONDONTWRITEBYTECODE"] = "1"
	vars["PYISOLATE_CHILD"] = "1"
	vars["PYISOLATE_EXTENSION"] = m.Name
	vars["PYISOLATE_GROUP"] = m.groupName()
	vars["PYISOLATE_MODULE_PATH"] = m.ModulePath
	vars["PYISOLATE_SHM_DIR"] = ShmMount
	if b.o.SocketDir != "" {
		vars["PYISOLATE_SOCKET_DIR"] = SocketMount
	}
	if m.ShareTorch {
		vars["PYISOLATE_SHARE_TORCH"] = "1"
	}
	if m.ShareCUDAIPC {
		vars["PYISOLATE_ENABLE_CUDA_IPC"] = "1"
	}
	if m.Venv != "" {
		vars["VIRTUAL_ENV"] = m.Venv
		vars["PATH"] = path.Join(m.Venv, "bin") + ":" + vars["PATH"]
	}
	for k, v := range m.Env {
		vars[k] = v
	}
	env := make([]string, 0, len(vars))
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	sort.Strings(env)
	return env
}

var (
	roBind = []string{"rbind", "ro", "nosuid", "nodev"}
	rwBind = []string{"rbind", "rw", "nosuid", "nodev"}
)

// mounts lists the sandbox's mounts in order: kernel filesystems, system
// binds, /etc allow list, the interpreter, venv and module, private /tmp, the
// group's shm and sockets, then the user's paths last.
func (b *builder) mounts() []specs.Mount {
	m, o := b.m, b.o
	var ms []specs.Mount
	add := func(dst, typ, src string, opts ...string) {
		ms = append(ms, specs.Mount{Destination: dst, Type: typ, Source: src, Options: opts})
	}
	if !b.dropped(DropNamespaces) {
		add("/proc", "proc", "proc", "nosuid", "noexec", "nodev")
		add("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k")
		add("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620")
		if !b.dropped(DropUserNamespace) && m.Sandbox.Network {
			// sysfs may be mounted only by the owner of the network
			// namespace: a container in a user namespace (rootless or
			// not) sharing the host's network gets a read-only bind of
			// the host's /sys instead (what `runc spec --rootless`
			// writes).
			add("/sys", "bind", "/sys", "rbind", "nosuid", "noexec", "nodev", "ro")
		} else {
			add("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro")
		}
	}
	// Private /tmp before the binds, as bwrap orders it: a module, venv or
	// user path that lives under the host's /tmp is bound on top of it
	// rather than hidden by it.
	add("/tmp", "tmpfs", "tmpfs", "nosuid", "nodev", "mode=1777", fmt.Sprintf("size=%d", b.tmpSize()))
	bound := []string{}
	bind := func(p string, opts []string) {
		add(p, "bind", p, opts...)
		bound = append(bound, p)
	}
	for _, p := range SystemPaths {
		if b.h.has(p) {
			bind(p, roBind)
		}
	}
	for _, p := range EtcAllowList {
		if b.h.has(p) {
			bind(p, roBind)
		}
	}
	// The interpreter's prefix, unless a bound path already holds it.
	if prefix := pythonPrefix(m.python()); prefix != "" && !under(prefix, bound) &&
		!under(prefix, []string{m.Venv, m.ModulePath}) {
		bind(prefix, roBind)
	}
	if m.Venv != "" {
		bind(m.Venv, roBind)
	}
	bind(m.ModulePath, roBind)
	if o.ShmDir != "" {
		add(ShmMount, "bind", o.ShmDir, "rbind", "rw", "nosuid", "nodev", "noexec")
	} else {
		size := int64(m.Limits.ShmSize)
		if size <= 0 {
			size = int64(DefaultPrivateShmSize)
		}
		add(ShmMount, "tmpfs", "shm", "nosuid", "nodev", "noexec", "mode=1777", fmt.Sprintf("size=%d", size))
	}
	if o.SocketDir != "" {
		add(SocketMount, "bind", o.SocketDir, "rbind", "rw", "nosuid", "nodev", "noexec")
	}
	for _, p := range m.Sandbox.WritablePaths {
		bind(p, rwBind)
	}
	for _, p := range m.Sandbox.ReadonlyPaths {
		bind(p, roBind)
	}
	return ms
}

// UserPaths returns the host paths of m that a user, not the host, controls
// and that Build may bind: the interpreter's prefix, the venv, the module and
// the writable and read-only paths. They were checked by name (CheckPaths);
// the runtime binds them as the very objects checked
// (runtime.CreateOptions.PinSources pins the binds whose source is listed).
func UserPaths(m *Manifest) []string {
	var ps []string
	if prefix := pythonPrefix(m.python()); prefix != "" && prefix != "/" {
		ps = append(ps, prefix)
	}
	if m.Venv != "" {
		ps = append(ps, m.Venv)
	}
	ps = append(ps, m.ModulePath)
	ps = append(ps, m.Sandbox.WritablePaths...)
	return append(ps, m.Sandbox.ReadonlyPaths...)
}

// PinnedPaths returns the paths recorded in s's AnnotationUserPaths, or nil.
func PinnedPaths(s *specs.Spec) []string {
	var ps []string
	if v := s.Annotations[AnnotationUserPaths]; v != "" {
		_ = json.Unmarshal([]byte(v), &ps)
	}
	return ps
}

// pythonPrefix returns the installation prefix of an interpreter path
// (/opt/py/bin/python3 → /opt/py), or "" when it has no bin directory.
func pythonPrefix(py string) string {
	dir := path.Dir(py)
	if path.Base(dir) != "bin" {
		return ""
	}
	return path.Dir(dir)
}

// under reports whether p equals or lies below one of roots.
func under(p string, roots []string) bool {
	for _, r := range roots {
		if r == "" {
			continue
		}
		if p == r || strings.HasPrefix(p, strings.TrimSuffix(r, "/")+"/") {
			return true
		}
	}
	return false
}

func (b *builder) linux(s *specs.Spec) *specs.Linux {
	m, o := b.m, b.o
	def := specconv.Example().Linux
	l := &specs.Linux{
		MaskedPaths:   append(def.MaskedPaths, "/sys/devices/virtual/powercap", "/proc/interrupts"),
		ReadonlyPaths: def.ReadonlyPaths,
		Resources: &specs.LinuxResources{
			// Deny every device; libcontainer adds the standard allowed set
			// (null, zero, full, random, urandom, tty, ptmx, pts).
			Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
		},
	}
	if !b.dropped(DropNamespaces) {
		l.Namespaces = []specs.LinuxNamespace{
			{Type: specs.PIDNamespace},
			{Type: specs.IPCNamespace, Path: o.IPCNamespace},
			{Type: specs.UTSNamespace},
			{Type: specs.MountNamespace},
			{Type: specs.CgroupNamespace},
		}
		if !m.Sandbox.Network {
			l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
		}
	}
	if !b.dropped(DropUserNamespace) {
		base, size := o.IDMapBase, o.IDMapSize
		if base == 0 {
			base = DefaultIDMapBase
		}
		if size == 0 {
			size = DefaultIDMapSize
		}
		l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		l.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: size}}
		l.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: size}}
		if len(o.UIDMappings) > 0 && len(o.GIDMappings) > 0 {
			l.UIDMappings = slices.Clone(o.UIDMappings)
			l.GIDMappings = slices.Clone(o.GIDMappings)
		}
	}
	if !b.dropped(DropCgroupLimits) {
		l.CgroupsPath = o.CgroupsPath
		if l.CgroupsPath == "" && o.ID != "" {
			l.CgroupsPath = "/pyisolate/" + o.ID
		}
		b.limits(l.Resources)
	}
	if !b.dropped(DropSeccomp) {
		l.Seccomp = defaultSeccomp(s)
	}
	return l
}

// limits fills the cgroup limits from the manifest, with the defaults for
// what it leaves out: memory (DefaultMemory, when the host's memory is
// known), pids (DefaultPids) and the CPU weight (DefaultCPUShares, always).
func (b *builder) limits(r *specs.LinuxResources) {
	lim := b.m.Limits
	if mem := int64(b.memoryLimit()); mem > 0 {
		if lim.Memory <= 0 {
			b.useDefault("limits.memory", ByteSize(mem).String())
		}
		// Swap equal to the limit: no swap beyond memory.
		r.Memory = &specs.LinuxMemory{Limit: &mem, Swap: &mem}
	}
	pids := lim.Pids
	if pids <= 0 {
		pids = DefaultPids
		b.useDefault("limits.pids", strconv.Itoa(DefaultPids))
	}
	r.Pids = &specs.LinuxPids{Limit: &pids}
	shares := uint64(DefaultCPUShares)
	r.CPU = &specs.LinuxCPU{Shares: &shares}
	b.useDefault("cpu.shares", strconv.Itoa(DefaultCPUShares))
	if lim.CPUs > 0 {
		period := uint64(100000)
		quota := int64(lim.CPUs * float64(period))
		r.CPU.Period, r.CPU.Quota = &period, &quota
	}
}
