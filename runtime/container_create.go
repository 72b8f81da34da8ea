package runtime

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	pathrs "github.com/cyphar/filepath-securejoin/pathrs-lite"
	"github.com/opencontainers/cgroups"
	devices "github.com/opencontainers/cgroups/devices/config"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// EmptyRootfs creates <Root>/rootfs/<id>: an empty directory, mode 0755, owned
// by host root (by the caller when rootless: its container's root is the
// caller, and nothing is chowned), for a bwrap-style container whose whole filesystem comes from
// mounts. Create makes the mount points in it; Delete removes it again, and
// only it. An existing empty directory (left by a killed run) is reused.
func (r *Runtime) EmptyRootfs(id string) (string, error) {
	if err := checkID(id); err != nil {
		return "", err
	}
	if err := r.ensureRoot(); err != nil {
		return "", err
	}
	dir := r.rootfsBase()
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", fmt.Errorf("create rootfs directory: %w", err)
	}
	if err := chmodIfNot(r.root(), stateRootMode()); err != nil {
		return "", err
	}
	p := filepath.Join(dir, id)
	if err := os.Mkdir(p, 0o755); err != nil {
		if !errors.Is(err, os.ErrExist) {
			return "", fmt.Errorf("create empty rootfs: %w", err)
		}
		if err := unmountUnder(p); err != nil {
			return "", fmt.Errorf("empty rootfs %s: %w", p, err)
		}
		if err := removeEmptyTree(p, false); err != nil {
			return "", fmt.Errorf("empty rootfs %s exists and is not empty: %w", p, err)
		}
	}
	if !Rootless() {
		if err := os.Chown(p, 0, 0); err != nil {
			return "", fmt.Errorf("empty rootfs: %w", err)
		}
	}
	if err := os.Chmod(p, 0o755); err != nil {
		return "", fmt.Errorf("empty rootfs: %w", err)
	}
	return p, nil
}

// stateRootMode is the mode of the state root: 0711 as root (see
// ensureRoot), 0700 rootless.
func stateRootMode() os.FileMode {
	if Rootless() {
		return 0o700
	}
	return 0o711
}

// chmodIfNot gives p the permission bits mode unless it has them already.
func chmodIfNot(p string, mode os.FileMode) error {
	st, err := os.Stat(p)
	if err != nil {
		return fmt.Errorf("state root: %w", err)
	}
	if st.Mode().Perm() == mode {
		return nil
	}
	if err := os.Chmod(p, mode); err != nil {
		return fmt.Errorf("state root: %w", err)
	}
	return nil
}

// EmptyRootfsPath is where EmptyRootfs puts the rootfs of id.
func (r *Runtime) EmptyRootfsPath(id string) string {
	return filepath.Join(r.rootfsBase(), id)
}

// FallbackRootfsDir holds the root filesystem directories of state roots
// that a container in a user namespace could not walk to (see rootfsBase).
const FallbackRootfsDir = "/run/pyisolate-rootfs"

// rootfsBase is the directory of the containers' root filesystems (empty
// ones, and bundles' staged ones, pin.go): <Root>/rootfs. The init of a
// container whose root is an unprivileged host uid (a user namespace)
// reaches it by path, so every directory above Root must let others
// through. Docker's does not (the runtime root it gives lies under its
// 0700 exec root), nor does one under a mktemp -d directory: their base is
// FallbackRootfsDir/<sha256 of Root, 16 hex digits>, 0711 from /run down.
// Rootless, the container's root is the caller, who walks its own
// directories.
func (r *Runtime) rootfsBase() string {
	root := r.root()
	if Rootless() || othersMayWalk(filepath.Dir(root)) {
		return filepath.Join(root, rootfsDir)
	}
	sum := sha256.Sum256([]byte(root))
	return filepath.Join(FallbackRootfsDir, hex.EncodeToString(sum[:8]))
}

// othersMayWalk reports whether dir and every directory above it have the
// search bit for others.
func othersMayWalk(dir string) bool {
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == "/" {
			return true
		}
	}
}

// Create creates container id from spec s and starts its init process in the
// "created" state, like `runc create`: namespaces, mounts and cgroups are set
// up and the init waits; Start makes it exec the spec's process. s is not
// modified. On error nothing is left behind, the empty rootfs EmptyRootfs
// made for id included.
func (r *Runtime) Create(ctx context.Context, id string, s *specs.Spec, opts CreateOptions) (*Container, error) {
	if checkID(id) == nil {
		if _, err := os.Lstat(filepath.Join(r.root(), id)); err == nil {
			return nil, fmt.Errorf("create container %s: %w", id, libcontainer.ErrExist)
		}
	}
	c, err := r.create(ctx, id, s, opts)
	if err != nil && checkID(id) == nil {
		_ = r.removeBinds(id)
		_ = r.removeRootfs(id)
	}
	return c, err
}

func (r *Runtime) create(ctx context.Context, id string, s *specs.Spec, opts CreateOptions) (*Container, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	if err := checkID(id); err != nil {
		return nil, fmt.Errorf("create container: %w", err)
	}
	if s == nil || s.Process == nil {
		return nil, fmt.Errorf("create container %s: spec has no process", id)
	}
	if len(s.Process.Args) == 0 {
		return nil, fmt.Errorf("create container %s: process.args is empty", id)
	}
	if opts.Bundle != "" && !filepath.IsAbs(opts.Bundle) {
		return nil, fmt.Errorf("create container %s: bundle %q is not an absolute path", id, opts.Bundle)
	}
	if opts.Systemd {
		if _, err := os.Stat("/run/systemd/system"); err != nil {
			return nil, fmt.Errorf("create container %s: systemd cgroup driver requested but systemd is not running here (no /run/systemd/system)", id)
		}
	}
	ls, err := absSpec(s, opts.Bundle)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	if err := r.ensureRoot(); err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	empty := ls.Root.Path == r.EmptyRootfsPath(id)
	pinRootfs := !Rootless() && !empty && hasUserNamespace(ls)
	pins := append(spec.PinnedPaths(ls), opts.PinSources...)
	if Rootless() {
		pins = nil
	}
	var pin *pinned
	if len(pins) > 0 || pinRootfs {
		// Without root, open_tree cannot clone a mount: nothing is pinned,
		// and the user can only bind what it may read anyway.
		if pin, err = r.pinSources(id, ls, pins, pinRootfs); err != nil {
			return nil, fmt.Errorf("create container %s: %w", id, err)
		}
		defer r.unpin(id, pin) // once the init has made its mounts, or on error
	}
	Phase("pin bind sources")
	rootless := Rootless()
	if !opts.Systemd && !rootless && ls.Linux != nil && ls.Linux.CgroupsPath == "" {
		// Rootless, an empty path lets libcontainer skip the cgroups it
		// may not create (a spec with limits names its delegated path).
		ls.Linux.CgroupsPath = DefaultCgroupParent + "/" + id
	}
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName:       id,
		UseSystemdCgroup: opts.Systemd,
		NoPivotRoot:      opts.NoPivot,
		Spec:             ls,
		// As runc: the euid decides what libcontainer may do itself
		// (as root of a user namespace it needs no user namespace of its
		// own); cgroups are the host's, off limits in either case.
		RootlessEUID:    os.Geteuid() != 0,
		RootlessCgroups: rootless,
	})
	if err != nil {
		return nil, fmt.Errorf("create container %s: convert spec: %w", id, err)
	}
	compatConfig(cfg)
	// specconv records its working directory as the bundle; record ours.
	cfg.Labels = slices.DeleteFunc(cfg.Labels, func(l string) bool { return strings.HasPrefix(l, "bundle=") })
	cfg.Labels = append(cfg.Labels, "bundle="+opts.Bundle)
	proc, err := newProcess(ls.Process)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	// Process rlimits apply to the init; keep them in the config as well so
	// that processes started by Exec get the same ones by default. RLIMIT_AS
	// is set once the init is done (rlimit_as.go).
	var extra extraState
	proc.Rlimits, extra.RlimitAS = takeRlimitAS(proc.Rlimits)
	cfg.Rlimits = proc.Rlimits
	// The runtime's own annotations are kept beside the config, out of
	// the state hooks read (container_extra.go).
	cfg.Labels, extra.Annotations = takeRuntimeAnnotations(cfg.Labels)
	if opts.DieWithParent {
		cfg.ParentDeathSignal = int(unix.SIGKILL)
	}
	if cgroups.DevicesSetV1 == nil && !cfg.Cgroups.SkipDevices {
		return nil, fmt.Errorf("create container %s: %w", id, errNoDevices)
	}
	if len(opts.RootfsDirs) > 0 {
		if !empty {
			return nil, fmt.Errorf("create container %s: directories are only made in an empty rootfs (EmptyRootfs)", id)
		}
		if err := makeDirs(cfg.Rootfs, opts.RootfsDirs); err != nil {
			return nil, fmt.Errorf("create container %s: %w", id, err)
		}
	}
	if empty || pinRootfs {
		// Our own empty rootfs holds nothing anyone else wrote: plain
		// mkdir is safe there and costs a tenth of the checked walk a
		// bundle's rootfs needs.
		if err := makeMountpoints(cfg.Rootfs, cfg.Mounts, !empty); err != nil {
			return nil, fmt.Errorf("create container %s: %w", id, err)
		}
	}
	Phase("spec to libcontainer config, mount points")
	lc, err := libcontainer.Create(r.root(), id, cfg)
	if err != nil {
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	if err := r.writeExtraState(id, extra); err != nil {
		_ = lc.Destroy()
		return nil, fmt.Errorf("create container %s: %w", id, err)
	}
	Phase("libcontainer create (state, cgroups)")
	proc.Init = true
	proc.Stdin, proc.Stdout, proc.Stderr = opts.Stdin, opts.Stdout, opts.Stderr
	proc.ExtraFiles = opts.ExtraFiles
	var cons *Console
	err = withInitArgv0(opts.DieWithParent, func() (err error) {
		cons, err = startWithConsole(lc.Start, proc, ls.Process, opts.ConsoleSocket)
		return err
	})
	if err != nil {
		_ = lc.Destroy()
		return nil, fmt.Errorf("create container %s: start init: %w", id, err)
	}
	Phase("init started: namespaces, mounts, pivot (created)")
	c := &Container{rt: r, lc: lc}
	c.init = newOwnedProcess(c, proc, 0)
	c.init.console = cons
	return c, nil
}

// compatConfig keeps requests that runc 1.1 (what Docker 20.10, Podman 4.3
// and Debian ship) runs, and that libcontainer 1.5 refuses although they ask
// for nothing the kernel would apply: filesystem options on a bind mount
// (a bind mount takes none: runc 1.1 ignored them) and a major:minor on a
// FIFO device (a FIFO has none: mknod makes it 0:0, which libcontainer
// then finds "incorrect"). Both are dropped.
func compatConfig(cfg *configs.Config) {
	for _, m := range cfg.Mounts {
		if m.IsBind() && m.Data != "" {
			m.Data = ""
		}
	}
	for _, d := range cfg.Devices {
		if d.Type == devices.FifoDevice {
			d.Major, d.Minor = 0, 0
		}
	}
}

// absSpec returns a copy of s whose root path and bind mount sources are
// absolute, resolved against bundle. specconv resolves them against the
// working directory instead, which a library must not change.
func absSpec(s *specs.Spec, bundle string) (*specs.Spec, error) {
	ls := *s
	if s.Root == nil || s.Root.Path == "" {
		return nil, errors.New("spec has no root.path")
	}
	abs := func(p string) (string, error) {
		if filepath.IsAbs(p) {
			return p, nil
		}
		if bundle == "" {
			return "", fmt.Errorf("relative path %q in spec and no bundle given", p)
		}
		return filepath.Join(bundle, p), nil
	}
	root := *s.Root
	var err error
	if root.Path, err = abs(root.Path); err != nil {
		return nil, err
	}
	ls.Root = &root
	ls.Mounts = slices.Clone(s.Mounts)
	for i, m := range ls.Mounts {
		if m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind") {
			if ls.Mounts[i].Source, err = abs(m.Source); err != nil {
				return nil, err
			}
		}
	}
	if s.Linux != nil {
		l := *s.Linux
		ls.Linux = &l
	}
	return &ls, nil
}

// makeMountpoints creates, as host root, the missing mount points of mounts
// in rootfs: a directory, or an empty file for a bind of a file. It is used
// for an empty rootfs made by EmptyRootfs and for a staged bundle rootfs
// (pin.go): inside a user namespace the container's root cannot write to
// directories owned by host root, so libcontainer could not make them
// itself. Every path is created beneath rootfs without following symlinks out
// of it (pathrs-lite), so a bundle's rootfs cannot turn this into a write
// elsewhere on the host. Destinations below another mount are left to
// libcontainer (they live in that mount).
//
// With untrusted unset (an empty rootfs EmptyRootfs made, which only the
// runtime writes) the mount points are made with plain mkdir.
func makeMountpoints(rootfs string, mounts []*configs.Mount, untrusted bool) error {
	if !untrusted {
		return makeMountpointsOwn(rootfs, mounts)
	}
	root, err := os.OpenFile(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open rootfs: %w", err)
	}
	defer root.Close()
	var done []string
	for _, m := range mounts {
		dst := filepath.Clean("/" + m.Destination)
		if dst == "/" || underAny(dst, done) {
			continue
		}
		done = append(done, dst)
		isFile := false
		if m.IsBind() {
			if st, err := os.Stat(m.Source); err == nil && !st.IsDir() {
				isFile = true
			}
		}
		if !isFile {
			d, err := pathrs.MkdirAllHandle(root, dst, 0o755)
			if err != nil {
				return fmt.Errorf("create mount point %s: %w", dst, err)
			}
			d.Close()
			continue
		}
		dir, err := pathrs.MkdirAllHandle(root, filepath.Dir(dst), 0o755)
		if err != nil {
			return fmt.Errorf("create mount point %s: %w", dst, err)
		}
		fd, err := unix.Openat(int(dir.Fd()), filepath.Base(dst), unix.O_CREAT|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
		dir.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.EISDIR) {
			return fmt.Errorf("create mount point %s: %w", dst, err)
		}
		if err == nil {
			unix.Close(fd)
		}
	}
	return nil
}

// makeMountpointsOwn is makeMountpoints for a rootfs only the runtime
// writes.
func makeMountpointsOwn(rootfs string, mounts []*configs.Mount) error {
	var done []string
	for _, m := range mounts {
		dst := filepath.Clean("/" + m.Destination)
		if dst == "/" || underAny(dst, done) {
			continue
		}
		done = append(done, dst)
		p := filepath.Join(rootfs, dst)
		isFile := false
		if m.IsBind() {
			if st, err := os.Stat(m.Source); err == nil && !st.IsDir() {
				isFile = true
			}
		}
		if !isFile {
			if err := os.MkdirAll(p, 0o755); err != nil {
				return fmt.Errorf("create mount point %s: %w", dst, err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("create mount point %s: %w", dst, err)
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_RDONLY|unix.O_NOFOLLOW, 0o644)
		if err != nil {
			return fmt.Errorf("create mount point %s: %w", dst, err)
		}
		f.Close()
	}
	return nil
}

// makeDirs creates dirs (absolute paths inside the container) in rootfs,
// mode 0755, beneath it without following symlinks out of it (pathrs-lite).
func makeDirs(rootfs string, dirs []string) error {
	root, err := os.OpenFile(rootfs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open rootfs: %w", err)
	}
	defer root.Close()
	for _, d := range dirs {
		dst := filepath.Clean("/" + d)
		if dst == "/" {
			continue
		}
		h, err := pathrs.MkdirAllHandle(root, dst, 0o755)
		if err != nil {
			return fmt.Errorf("create directory %s: %w", dst, err)
		}
		h.Close()
	}
	return nil
}

// underAny reports whether p lies strictly below one of dirs.
func underAny(p string, dirs []string) bool {
	for _, d := range dirs {
		if strings.HasPrefix(p, strings.TrimSuffix(d, "/")+"/") {
			return true
		}
	}
	return false
}

// hasUserNamespace reports whether s asks for a new user namespace.
func hasUserNamespace(s *specs.Spec) bool {
	if s.Linux == nil {
		return false
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == specs.UserNamespace && ns.Path == "" {
			return true
		}
	}
	return false
}
