package runtime

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"github.com/opencontainers/cgroups"
	"golang.org/x/sys/unix"
)

// removeRootfs removes the empty rootfs EmptyRootfs made for id, if any. It
// removes only directories and empty files (mount points): anything else
// makes it stop with an error and leave the rest. A mount still on it (none
// should be: mounts are made in the container's mount namespace) is
// detached first.
func (r *Runtime) removeRootfs(id string) error {
	p := r.EmptyRootfsPath(id)
	if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	// Detach first: a bundle's rootfs staged here (pin.go) must never be
	// walked and emptied.
	if err := unmountUnder(p); err != nil {
		return fmt.Errorf("remove rootfs %s: %w", p, err)
	}
	err := removeEmptyTree(p, true)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove rootfs %s: %w", p, err)
	}
	if base := r.rootfsBase(); strings.HasPrefix(base, FallbackRootfsDir+"/") {
		_ = os.Remove(base) // this root's, once its last rootfs is gone
	}
	return nil
}

// removeEmptyTree removes, depth first, the directories and empty regular
// files below dir, and dir itself when self is set. It refuses (and stops at)
// anything else.
func removeEmptyTree(dir string, self bool) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		switch t := e.Type(); {
		case t.IsDir():
			if err := removeEmptyTree(p, true); err != nil {
				return err
			}
		case t.IsRegular():
			fi, err := e.Info()
			if err != nil {
				return err
			}
			if fi.Size() != 0 {
				return fmt.Errorf("%s is not an empty mount point file; not removing it", p)
			}
			if err := unix.Unlink(p); err != nil {
				return &os.PathError{Op: "unlink", Path: p, Err: err}
			}
		default:
			return fmt.Errorf("%s is not a mount point (%s); not removing it", p, t)
		}
	}
	if !self {
		return nil
	}
	if err := unix.Rmdir(dir); err != nil {
		return &os.PathError{Op: "rmdir", Path: dir, Err: err}
	}
	return nil
}

// unmountUnder lazily unmounts every mount at or below dir, deepest first.
func unmountUnder(dir string) error {
	mounts, err := mountinfo.GetMounts(mountinfo.PrefixFilter(dir))
	if err != nil {
		return err
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i].Mountpoint) > len(mounts[j].Mountpoint) })
	for _, m := range mounts {
		if err := unix.Unmount(m.Mountpoint, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return &os.PathError{Op: "umount", Path: m.Mountpoint, Err: err}
		}
	}
	return nil
}

// cgroupMountRoot is where cgroup hierarchies are mounted.
const cgroupMountRoot = "/sys/fs/cgroup"

// defaultCgroupDirs lists the existing cgroup directories of container id at
// the default path (DefaultCgroupParent/<id>) in every hierarchy: each v1
// controller, the hybrid unified one, or the v2 root.
func defaultCgroupDirs(id string) []string {
	rel := filepath.Join(DefaultCgroupParent, id)
	var dirs []string
	if cgroups.IsCgroup2UnifiedMode() {
		if p := filepath.Join(cgroupMountRoot, rel); isDir(p) {
			dirs = append(dirs, p)
		}
		return dirs
	}
	ents, _ := os.ReadDir(cgroupMountRoot)
	for _, e := range ents {
		if p := filepath.Join(cgroupMountRoot, e.Name(), rel); e.IsDir() && isDir(p) {
			dirs = append(dirs, p)
		}
	}
	return dirs
}

func isDir(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && st.IsDir()
}

// removeDefaultCgroups kills the processes left in container id's default
// cgroups and removes them; it reports whether there were any.
func removeDefaultCgroups(id string) bool {
	dirs := defaultCgroupDirs(id)
	for _, d := range dirs {
		killCgroup(d)
	}
	for _, d := range dirs {
		_ = cgroups.RemovePath(d)
	}
	return len(dirs) > 0
}

// killCgroup sends SIGKILL to every process in cgroup directory dir and its
// children.
func killCgroup(dir string) {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		data, err := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(data)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
		return nil
	})
}
