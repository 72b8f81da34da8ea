package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// An explicit request is a sandbox described by its mount list rather than
// by a manifest: what a bwrap command line says (the bwrap face,
// cmd/pyisolate-shim/bwrap.go). CheckExplicit applies the path policy to it
// and resolves it against the host; BuildExplicit turns the result into a
// spec with the same hardening Build gives an extension: every capability
// dropped, no_new_privileges, the default seccomp profile, masked /proc and
// /sys paths, a read-only root, the default limits, namespaces never fewer
// than asked.

// MountKind is the kind of one mount of an explicit request.
type MountKind string

// The mount kinds, named after the bwrap options that ask for them.
const (
	// MountBind binds a host path read-write (--bind).
	MountBind MountKind = "bind"
	// MountROBind binds a host path read-only (--ro-bind).
	MountROBind MountKind = "ro-bind"
	// MountDevBind binds host device nodes (--dev-bind): only GPUs
	// (GPUDevicePaths), which CheckExplicit turns into Devices.
	MountDevBind MountKind = "dev-bind"
	// MountProc mounts a fresh procfs (--proc); only at /proc.
	MountProc MountKind = "proc"
	// MountDev mounts a minimal /dev (--dev): a tmpfs with the standard
	// device nodes, a private devpts and a private /dev/shm; only at /dev.
	MountDev MountKind = "dev"
	// MountTmpfs mounts an empty tmpfs (--tmpfs), mode 0755 as bwrap makes
	// it, its size capped like the manifest sandbox's /tmp.
	MountTmpfs MountKind = "tmpfs"
	// MountDir creates an empty directory (--dir).
	MountDir MountKind = "dir"
	// MountSysfs is a read-only /sys: what CheckExplicit makes of
	// "--ro-bind /sys /sys" (the host's sysfs is never bound as such).
	MountSysfs MountKind = "sysfs"
)

// ExplicitMount is one mount of an explicit request, in request order.
type ExplicitMount struct {
	// Kind is what to mount.
	Kind MountKind
	// Source is the host path of a bind ("" for the other kinds).
	Source string
	// Dest is the path inside the sandbox.
	Dest string
	// Pin marks a bind whose source a user controls (not a system path):
	// CheckExplicit resolved it, and the runtime binds it as the object
	// checked (AnnotationUserPaths).
	Pin bool
}

// Explicit is a sandbox request given as a mount list.
type Explicit struct {
	// Name names the sandbox in its annotations (io.pyisolate.out.name).
	Name string
	// Hostname is the sandbox's hostname (its UTS namespace is always new).
	Hostname string
	// Mounts are applied in order onto an empty, read-only root.
	Mounts []ExplicitMount
	// Args is the command.
	Args []string
	// Env is the command's whole environment, KEY=VALUE.
	Env []string
	// Cwd is the working directory inside the sandbox; "" is /.
	Cwd string
	// Network shares the host's network namespace; false gives a private
	// one with loopback only.
	Network bool
	// Devices are host device nodes to create in the sandbox: the GPUs
	// of --dev-bind, filled by CheckExplicit.
	Devices []specs.LinuxDevice
}

// MountError is a mount of an explicit request that the path policy refuses
// or that cannot be made.
type MountError struct {
	// Mount is the refused mount.
	Mount ExplicitMount
	// Reason says why.
	Reason string
}

func (e *MountError) Error() string {
	m := e.Mount
	opt := "--" + string(m.Kind)
	if m.Kind == MountSysfs {
		opt = "--ro-bind"
	}
	switch m.Kind {
	case MountBind, MountROBind, MountDevBind, MountSysfs:
		return fmt.Sprintf("%s %s %s: %s", opt, m.Source, m.Dest, e.Reason)
	}
	return fmt.Sprintf("%s %s: %s", opt, m.Dest, e.Reason)
}

// EtcExplicitList are the /etc entries an explicit request may bind
// read-only besides EtcAllowList: pyisolate's allow list also names them.
var EtcExplicitList = []string{"/etc/pki", "/etc/timezone"}

// SystemReadOnlyRoots are the host directories an explicit request may bind
// read-only, with everything below them, and never read-write: the
// system directories Build binds (SystemPaths).
var SystemReadOnlyRoots = SystemPaths

// GPUReadOnlyPaths are host paths below forbidden trees that an explicit
// request may bind read-only for GPU access (pyisolate binds the NVIDIA
// persistence daemon's socket directory; CDI specs mount it too).
var GPUReadOnlyPaths = []string{"/run/nvidia-persistenced"}

// HostShm is the host's shared memory directory. An explicit request may
// bind it read-write at the same path: pyisolate's host passes CPU tensors
// through it (bwrap binds it the same way); a manifest's extension gets its
// group's /dev/shm instead.
const HostShm = "/dev/shm"

// SocketDirFor is the directory of pyisolate's sockets for uid
// (/run/user/<uid>/pyisolate): an explicit request by uid may bind it, and
// what lies below it, read-write.
func SocketDirFor(uid int) string {
	return "/run/user/" + strconv.Itoa(uid) + "/pyisolate"
}

// CheckExplicit applies the path policy of explicit requests to r and
// returns a copy resolved against the host, for BuildExplicit. uid is the
// caller's uid. Binds, in request order:
//   - a read-only bind of a system directory (SystemReadOnlyRoots, or below
//     one) or of an /etc entry in EtcAllowList or EtcExplicitList is allowed
//     by name, as Build binds them; a read-write one is refused;
//   - "--ro-bind /sys /sys" becomes MountSysfs, a read-only sysfs with the
//     masked paths; any other bind of /sys is refused;
//   - HostShm may be bound read-write at HostShm, SocketDirFor(uid) (and
//     below) read-write, GPUReadOnlyPaths read-only;
//   - any other source must exist and pass CheckPath's rules (not one of
//     ForbiddenPaths or their ancestors, not under ForbiddenTrees, also once
//     symlinks are resolved); it is bound as the resolved path and pinned.
//
// --dev-bind is only for GPU device nodes (GPUDevicePaths, or the /dev/dri
// directory): they become Devices, with the major and minor numbers of the
// host's nodes. --proc and --dev are only allowed at /proc and /dev. No
// mount may have / as its destination, and destinations must be clean
// absolute paths. Errors are *MountError.
func CheckExplicit(r *Explicit, uid int) (*Explicit, error) {
	out := *r
	out.Mounts = make([]ExplicitMount, 0, len(r.Mounts))
	out.Devices = slices.Clone(r.Devices)
	for _, m := range r.Mounts {
		refuse := func(format string, a ...any) error {
			return &MountError{Mount: m, Reason: fmt.Sprintf(format, a...)}
		}
		if err := checkDest(m.Dest); err != "" {
			return nil, refuse("%s", err)
		}
		dest := filepath.Clean(m.Dest)
		m.Dest = dest
		switch m.Kind {
		case MountProc:
			if dest != "/proc" {
				return nil, refuse("a procfs is only mounted at /proc")
			}
		case MountDev:
			if dest != "/dev" {
				return nil, refuse("the minimal /dev is only mounted at /dev")
			}
		case MountTmpfs, MountDir:
		case MountDevBind:
			devs, err := gpuDevices(m.Source)
			if err != nil {
				return nil, refuse("%v", err)
			}
			if dest != filepath.Clean(m.Source) {
				return nil, refuse("a device is only bound at its own path")
			}
			out.Devices = append(out.Devices, devs...)
			continue
		case MountBind, MountROBind:
			nm, err := checkBind(m, uid)
			if err != nil {
				return nil, err
			}
			m = nm
		default:
			return nil, refuse("unknown mount kind %q", m.Kind)
		}
		out.Mounts = append(out.Mounts, m)
	}
	return &out, nil
}

// checkDest returns why dest cannot be a mount destination, or "".
func checkDest(dest string) string {
	switch {
	case dest == "":
		return "the destination is empty"
	case strings.IndexByte(dest, 0) >= 0:
		return "the destination contains a NUL byte"
	case !filepath.IsAbs(dest):
		return "the destination is not an absolute path"
	case hasDotDot(dest):
		return "the destination contains '..'"
	case filepath.Clean(dest) == "/":
		return "nothing is mounted on /: the runtime makes the root (empty and read-only)"
	}
	return ""
}

// checkBind applies the bind rules of CheckExplicit to one bind.
func checkBind(m ExplicitMount, uid int) (ExplicitMount, error) {
	refuse := func(format string, a ...any) (ExplicitMount, error) {
		return m, &MountError{Mount: m, Reason: fmt.Sprintf(format, a...)}
	}
	rw := m.Kind == MountBind
	if m.Source == "" || !filepath.IsAbs(m.Source) || strings.IndexByte(m.Source, 0) >= 0 || hasDotDot(m.Source) {
		return refuse("the source must be an absolute path without '..'")
	}
	src := filepath.Clean(m.Source)
	if _, err := os.Lstat(src); err != nil {
		// bwrap's own words, which callers may match.
		return refuse("Can't find source path %s: %s", m.Source, errnoText(err))
	}
	switch {
	case under(src, SystemReadOnlyRoots) || slices.Contains(EtcAllowList, src) || slices.Contains(EtcExplicitList, src):
		if rw {
			return refuse("%s is a system path: it is only bound read-only", src)
		}
		m.Source = src
		return m, nil
	case src == "/sys":
		if rw || m.Dest != "/sys" {
			return refuse("/sys is only given read-only at /sys (a fresh sysfs with the kernel's sensitive paths masked)")
		}
		return ExplicitMount{Kind: MountSysfs, Source: src, Dest: "/sys"}, nil
	case src == HostShm:
		if m.Dest != HostShm {
			return refuse("the host's %s is only bound at %s", HostShm, HostShm)
		}
		m.Source = src
		return m, nil
	case slices.Contains(GPUReadOnlyPaths, src):
		if rw {
			return refuse("%s is only bound read-only", src)
		}
		m.Source = src
		return m, nil
	}
	field := "--" + string(m.Kind)
	resolved, err := CheckPath(field, src, "")
	if err != nil {
		own := SocketDirFor(uid)
		if !within(src, own) {
			var fe *FieldError
			if errors.As(err, &fe) {
				return refuse("%s", fe.Msg)
			}
			return refuse("%v", err)
		}
		// The caller's own socket directory, below /run: checked by
		// name and resolved; it must stay inside it.
		r, rerr := filepath.EvalSymlinks(src)
		if rerr != nil {
			return refuse("%v", rerr)
		}
		if !within(r, own) {
			return refuse("%s resolves to %s, outside %s", src, r, own)
		}
		resolved = r
	}
	if rw && under(resolved, ReadonlyTrees) {
		return refuse("%s lies in a system directory, which is only bound read-only", resolved)
	}
	m.Source, m.Pin = resolved, true
	return m, nil
}

// errnoText is the strerror text of err's errno (as bwrap prints it), or
// err itself.
func errnoText(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		s := errno.Error()
		return strings.ToUpper(s[:1]) + s[1:]
	}
	return err.Error()
}

// gpuDevices returns the GPU device nodes of a --dev-bind source: the node
// itself, or the nodes in a GPU device directory (/dev/dri). Anything else
// is refused: devices come only through CDI or as GPUs.
func gpuDevices(src string) ([]specs.LinuxDevice, error) {
	src = filepath.Clean(src)
	fi, err := os.Stat(src)
	if err != nil {
		return nil, fmt.Errorf("Can't find source path %s: %s", src, errnoText(err))
	}
	if fi.IsDir() {
		if src != "/dev/dri" {
			return nil, fmt.Errorf("only GPU device nodes (%s) are bound", strings.Join(GPUDevicePaths, ", "))
		}
		var devs []specs.LinuxDevice
		err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Type()&fs.ModeDevice == 0 {
				return err
			}
			dev, err := gpuDevice(p)
			if err != nil {
				return err
			}
			devs = append(devs, dev)
			return nil
		})
		return devs, err
	}
	dev, err := gpuDevice(src)
	if err != nil {
		return nil, err
	}
	return []specs.LinuxDevice{dev}, nil
}

// gpuDevice describes the GPU device node p.
func gpuDevice(p string) (specs.LinuxDevice, error) {
	if !matchAny(p, GPUDevicePaths) && !matchAny(p, []string{"/dev/dri/*/*"}) {
		return specs.LinuxDevice{}, fmt.Errorf("%s is not a GPU device node: only %s are bound (other devices come only through CDI)",
			p, strings.Join(GPUDevicePaths, ", "))
	}
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return specs.LinuxDevice{}, fmt.Errorf("%s: %w", p, err)
	}
	typ := ""
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		typ = "c"
	case unix.S_IFBLK:
		return specs.LinuxDevice{}, fmt.Errorf("%s is a block device: only GPU character devices are bound", p)
	default:
		return specs.LinuxDevice{}, fmt.Errorf("%s is not a device node", p)
	}
	mode := os.FileMode(st.Mode & 0o777)
	uid, gid := st.Uid, st.Gid
	return specs.LinuxDevice{Path: p, Type: typ, Major: int64(unix.Major(uint64(st.Rdev))),
		Minor: int64(unix.Minor(uint64(st.Rdev))), FileMode: &mode, UID: &uid, GID: &gid}, nil
}

// ExplicitSpec is what BuildExplicit makes of an explicit request.
type ExplicitSpec struct {
	// Spec is the container's spec.
	Spec *specs.Spec
	// Dirs are the directories --dir asks for outside every mount: the
	// runtime creates them in the empty root before the mounts
	// (runtime.CreateOptions.RootfsDirs).
	Dirs []string
}

// BuildExplicit builds the spec of an explicit request that CheckExplicit
// returned, for host h, like Build does for a manifest: the same
// namespaces (pid, ipc, uts, mount, cgroup and user always; network unless
// r.Network), the same hardening and the same defaults and degradations.
// The mounts are r's in order, after a /proc and a minimal /dev when r has
// none (the runtime needs both). A --dir inside an earlier tmpfs becomes a
// small tmpfs of its own (the root and binds are not written to); one
// inside a bind is refused. o's Rootfs must be an empty directory. It reads
// no files.
func BuildExplicit(r *Explicit, h Host, o Options) (*ExplicitSpec, error) {
	if r == nil {
		return nil, errors.New("build spec: no request")
	}
	if h.Restriction == RestrictionUnsupported {
		return nil, ErrUnsupported
	}
	if !filepath.IsAbs(o.Rootfs) {
		return nil, fmt.Errorf("build spec: rootfs %q is not an absolute path", o.Rootfs)
	}
	if len(r.Args) == 0 {
		return nil, errors.New("build spec: no command")
	}
	name := r.Name
	if name == "" {
		name = "explicit"
	}
	m := &Manifest{Name: name, Sandbox: Sandbox{Network: r.Network}}
	b := &builder{m: m, h: h, o: o, drop: HostDegradations(h)}
	s := &specs.Spec{
		Version:     specs.Version,
		Root:        &specs.Root{Path: o.Rootfs, Readonly: true},
		Hostname:    r.Hostname,
		Annotations: map[string]string{},
	}
	if b.dropped(DropNamespaces) {
		s.Hostname = ""
	}
	cwd := r.Cwd
	if cwd == "" {
		cwd = "/"
	}
	s.Process = &specs.Process{Args: slices.Clone(r.Args), Env: slices.Clone(r.Env), Cwd: cwd}
	b.harden(s.Process)
	mounts, dirs, err := b.explicitMounts(r)
	if err != nil {
		return nil, err
	}
	s.Mounts = mounts
	s.Linux = b.linux(s)
	if len(r.Devices) > 0 {
		s.Linux.Devices = slices.Clone(r.Devices)
		for _, d := range r.Devices {
			major, minor := d.Major, d.Minor
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices,
				specs.LinuxDeviceCgroup{Allow: true, Type: d.Type, Major: &major, Minor: &minor, Access: "rwm"})
		}
	}
	s.Annotations[AnnotationRestriction] = string(h.Restriction)
	s.Annotations[AnnotationName] = name
	var pins []string
	for _, mt := range r.Mounts {
		if mt.Pin && !slices.Contains(pins, mt.Source) {
			pins = append(pins, mt.Source)
		}
	}
	if paths, err := json.Marshal(pins); err == nil && len(pins) > 0 {
		s.Annotations[AnnotationUserPaths] = string(paths)
	}
	b.annotate(s)
	return &ExplicitSpec{Spec: s, Dirs: dirs}, nil
}

// explicitMounts translates r's mounts, in order, and returns the
// directories to create in the root.
func (b *builder) explicitMounts(r *Explicit) ([]specs.Mount, []string, error) {
	var ms []specs.Mount
	var dirs []string
	add := func(dst, typ, src string, opts ...string) {
		ms = append(ms, specs.Mount{Destination: dst, Type: typ, Source: src, Options: opts})
	}
	has := func(k MountKind) bool {
		return slices.ContainsFunc(r.Mounts, func(m ExplicitMount) bool { return m.Kind == k })
	}
	tmpSize := fmt.Sprintf("size=%d", b.tmpSize())
	dev := func() {
		add("/dev", "tmpfs", "tmpfs", "nosuid", "strictatime", "mode=755", "size=65536k")
		add("/dev/pts", "devpts", "devpts", "nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620")
		add(ShmMount, "tmpfs", "shm", "nosuid", "nodev", "mode=1777", tmpSize)
	}
	if !b.dropped(DropNamespaces) {
		if !has(MountProc) {
			add("/proc", "proc", "proc", "nosuid", "noexec", "nodev")
		}
		if !has(MountDev) {
			dev()
		}
	}
	// kinds of the destinations mounted so far, to place --dir.
	type placed struct {
		dest string
		kind MountKind
	}
	var done []placed
	for _, m := range r.Mounts {
		switch m.Kind {
		case MountProc:
			add("/proc", "proc", "proc", "nosuid", "noexec", "nodev")
		case MountDev:
			dev()
		case MountTmpfs:
			add(m.Dest, "tmpfs", "tmpfs", "nosuid", "nodev", "mode=755", tmpSize)
		case MountSysfs:
			if r.Network && !b.dropped(DropUserNamespace) {
				// A user namespace may mount sysfs only with a network
				// namespace of its own (see mounts()): with the host's
				// network, a read-only bind of the host's /sys instead.
				add("/sys", "bind", "/sys", "rbind", "nosuid", "noexec", "nodev", "ro")
			} else {
				add("/sys", "sysfs", "sysfs", "nosuid", "noexec", "nodev", "ro")
			}
		case MountBind:
			add(m.Dest, "bind", m.Source, rwBind...)
		case MountROBind:
			add(m.Dest, "bind", m.Source, roBind...)
		case MountDir:
			var in *placed
			for i := len(done) - 1; i >= 0; i-- {
				if within(m.Dest, done[i].dest) {
					in = &done[i]
					break
				}
			}
			switch {
			case in == nil:
				if !slices.Contains(dirs, m.Dest) {
					dirs = append(dirs, m.Dest)
				}
			case in.dest == m.Dest:
				// Already there: the mount is the directory.
			case in.kind == MountTmpfs || in.kind == MountDev:
				add(m.Dest, "tmpfs", "tmpfs", "nosuid", "nodev", "mode=755", "size=65536k")
			default:
				return nil, nil, &MountError{Mount: m, Reason: fmt.Sprintf(
					"it lies in the %s mount at %s: directories are only created in the sandbox's root or in a tmpfs", in.kind, in.dest)}
			}
			continue
		default:
			return nil, nil, &MountError{Mount: m, Reason: fmt.Sprintf("unknown mount kind %q", m.Kind)}
		}
		done = append(done, placed{dest: m.Dest, kind: m.Kind})
	}
	return ms, dirs, nil
}
