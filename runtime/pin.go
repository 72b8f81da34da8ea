package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Bind sources that a user controls (an extension's module, venv and
// writable or read-only paths, a bundle's rootfs) are checked by name in spec/
// and would be resolved again by name when libcontainer mounts them: a
// symlink swapped in between (renameat2 RENAME_EXCHANGE) would bind whatever
// it points to. Pinning closes that window: each source is opened once,
// refusing symlinks in any component (openat2 RESOLVE_NO_SYMLINKS), the
// opened object's path is compared with the checked one, and a detached copy
// of that very mount tree (open_tree OPEN_TREE_CLONE) is attached at a staging
// path under <Root>/binds/<id>, which only root can reach. libcontainer binds
// from there. The staging mounts are detached again once the container's
// init has made its mounts.
//
// A rootfs is staged too, at <Root>/rootfs/<id>, so that a container whose
// root is an unprivileged host uid (user namespace) can reach its rootfs even
// when the bundle lies under a directory it cannot walk (any mktemp -d).
const bindsDir = "binds"

// pinned is what pinSources staged for one container.
type pinned struct {
	mounts []string // staging mount points, to detach after the start
	rootfs string   // the staged rootfs mount, "" when none
}

// bindsPath is the staging directory of container id.
func (r *Runtime) bindsPath(id string) string {
	return filepath.Join(r.root(), bindsDir, id)
}

// pinSources stages, in ls (a copy the caller owns), every bind mount source
// listed in paths, and the rootfs when pinRootfs is set. On error nothing is
// left staged.
func (r *Runtime) pinSources(id string, ls *specs.Spec, paths []string, pinRootfs bool) (p *pinned, err error) {
	p = &pinned{}
	defer func() {
		if err != nil {
			r.unpin(id, p)
			p = nil
		}
	}()
	if len(paths) > 0 {
		if err := os.MkdirAll(filepath.Join(r.root(), bindsDir), 0o700); err != nil {
			return nil, fmt.Errorf("pin bind sources: %w", err)
		}
		if err := os.Mkdir(r.bindsPath(id), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("pin bind sources: %w", err)
		}
	}
	staged := map[string]string{}
	ls.Mounts = append([]specs.Mount(nil), ls.Mounts...)
	for i, m := range ls.Mounts {
		if !isBindMount(m) || !contains(paths, m.Source) {
			continue
		}
		if st, ok := staged[m.Source]; ok {
			ls.Mounts[i].Source = st
			continue
		}
		dst := filepath.Join(r.bindsPath(id), strconv.Itoa(len(p.mounts)))
		if err := stageTree(m.Source, dst); err != nil {
			return nil, fmt.Errorf("bind source %s (for %s): %w", m.Source, m.Destination, err)
		}
		p.mounts = append(p.mounts, dst)
		staged[m.Source] = dst
		ls.Mounts[i].Source = dst
	}
	if pinRootfs {
		dst := r.EmptyRootfsPath(id)
		if err := os.MkdirAll(r.rootfsBase(), 0o711); err != nil {
			return nil, fmt.Errorf("pin rootfs: %w", err)
		}
		if err := stageTree(ls.Root.Path, dst); err != nil {
			return nil, fmt.Errorf("rootfs %s: %w", ls.Root.Path, err)
		}
		p.rootfs = dst
		root := *ls.Root
		root.Path = dst
		ls.Root = &root
	}
	return p, nil
}

// unpin detaches what pinSources staged and removes the staging points. The
// rootfs staging point (an empty directory once detached) stays until the
// container is deleted: libcontainer starts exec processes in it.
func (r *Runtime) unpin(id string, p *pinned) {
	if p == nil {
		return
	}
	for _, m := range p.mounts {
		_ = unix.Unmount(m, unix.MNT_DETACH)
		_ = os.Remove(m)
	}
	_ = os.Remove(r.bindsPath(id))
	if p.rootfs != "" {
		_ = unix.Unmount(p.rootfs, unix.MNT_DETACH)
	}
}

// removeBinds removes what a cut-short creation left staged for id.
func (r *Runtime) removeBinds(id string) error {
	dir := r.bindsPath(id)
	if _, err := os.Lstat(dir); err != nil {
		return nil
	}
	if err := unmountUnder(dir); err != nil {
		return err
	}
	return removeEmptyTree(dir, true)
}

// stageTree opens src once, without following any symlink, checks that the
// object opened is the one named src, and attaches a copy of its mount tree
// at dst (created as a directory or an empty file, like src).
func stageTree(src, dst string) error {
	if !filepath.IsAbs(src) || filepath.Clean(src) != src {
		return fmt.Errorf("not a clean absolute path")
	}
	fd, err := unix.Openat2(unix.AT_FDCWD, src, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
	})
	if errors.Is(err, unix.ELOOP) {
		return fmt.Errorf("a symbolic link appeared in the path after it was checked; refusing to bind it")
	}
	if err != nil {
		return &os.PathError{Op: "openat2", Path: src, Err: err}
	}
	defer unix.Close(fd)
	if got, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err != nil || got != src {
		return fmt.Errorf("the path changed after it was checked (now %q); refusing to bind it", got)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return &os.PathError{Op: "fstat", Path: src, Err: err}
	}
	tree, err := unix.OpenTree(fd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH|unix.AT_RECURSIVE)
	if err != nil {
		return &os.PathError{Op: "open_tree", Path: src, Err: err}
	}
	defer unix.Close(tree)
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err := os.Mkdir(dst, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
	} else {
		f, err := os.OpenFile(dst, os.O_CREATE|os.O_RDONLY|unix.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		f.Close()
	}
	if err := unix.MoveMount(tree, "", unix.AT_FDCWD, dst, unix.MOVE_MOUNT_F_EMPTY_PATH); err != nil {
		_ = os.Remove(dst)
		return &os.PathError{Op: "move_mount", Path: dst, Err: err}
	}
	return nil
}

// isBindMount reports whether m is a bind mount.
func isBindMount(m specs.Mount) bool {
	if m.Type == "bind" {
		return true
	}
	for _, o := range m.Options {
		if o == "bind" || o == "rbind" {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
