package group

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/runtime/detect"
	"golang.org/x/sys/unix"
)

// Where a rootless runtime keeps its groups.
//
// A group's members share /dev/shm zero-copy because they all bind the same
// directory, and the pages of a file on a tmpfs are the same pages in every
// process that maps it. As root that directory is a tmpfs mounted for the
// group, with size= as its quota. A rootless runtime cannot mount one in the
// host's mount namespace. Two ways remain:
//
//   - A directory on a tmpfs the user can already write: the host's
//     /dev/shm (a tmpfs on every Linux distribution, half of the memory,
//     where torch's file_system strategy puts tensors anyway) or a
//     per-user $XDG_RUNTIME_DIR (a tmpfs logind sizes at 10% of memory).
//     A private 0700 directory there, bound at /dev/shm in every member,
//     is exactly as zero-copy as a tmpfs of the group's own. What is lost
//     is the kernel-enforced quota: limits.shm_size is watched
//     (tensoripc's pressure warnings and ENOSPC/SIGBUS explanations), the
//     tmpfs's own size is the hard limit.
//   - A "holder" process: a user and mount namespace owned by the user, in
//     which a tmpfs with size= is mounted, kept alive while the group
//     lives, and joined by every member. It keeps the quota, but it is a
//     process that must outlive every member and die with the last, be
//     found and trusted by members started from other processes, and be
//     reaped after a crash; members must also join its user namespace
//     (libcontainer cannot join a user namespace and create its own mount
//     namespace from the holder's mount tree in one step, and a bind mount
//     cannot take its source from another mount namespace).
//
// The first is chosen: nothing runs besides the members, a crash leaves a
// directory the next run reclaims (as it already does for a root group),
// and the zero-copy hand-off is the same. <root>/groups becomes a symbolic
// link to a directory os.MkdirTemp made in /dev/shm (random name, mode 0700,
// owned by the user: another user can neither guess it in advance nor enter
// it; /dev/shm is sticky, so nobody else can rename or remove it). The link
// lives in the user's 0700 state root, so nobody else can redirect it. Where
// /dev/shm is no writable tmpfs, a state root on a tmpfs keeps its groups
// in place; only where neither is possible are groups file-backed, which
// tensoripc says loudly (FileBackedWarning).

// groupsShmPrefix starts the names of the directories ensureGroupsDir makes
// in the shared-memory filesystem: pyisolate-<uid>-<random>.
const groupsShmPrefix = "pyisolate-"

// shmFS is the tmpfs rootless groups live on; tests change it.
var shmFS = detect.ShmPath

// ensureGroupsDir makes <root>/groups for a rootless runtime (see above).
// As root it does nothing: Open makes a plain directory and mounts a
// tmpfs per group.
func ensureGroupsDir(root string) error {
	if !runtime.Rootless() {
		return nil
	}
	if err := runtime.EnsureRootlessDir(root); err != nil {
		return err
	}
	return linkGroupsDir(root, shmFS, os.Geteuid())
}

// linkGroupsDir makes <root>/groups a link to a private directory of user
// euid in the tmpfs shm, unless a usable one is there (ensureGroupsDir).
func linkGroupsDir(root, shm string, euid int) error {
	link := filepath.Join(root, runtime.GroupsDir)
	fi, err := os.Lstat(link)
	switch {
	case err == nil && fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(link)
		if err == nil && ownShmDir(shm, target, euid) {
			return nil
		}
		// Stale (the tmpfs was emptied by a reboot while the root stayed)
		// or not ours: make a new one.
	case err == nil && fi.IsDir():
		// A plain directory: groups made where no tmpfs was usable, or a
		// state root on a tmpfs. Replace it only when empty.
		if empty, _ := isEmptyDirPath(link); !empty || onTmpfsPath(root) {
			return nil
		}
		if err := os.Remove(link); err != nil {
			return nil // a racing run made a group in it: keep it
		}
	case err == nil:
		return fmt.Errorf("%s is neither a directory nor a symbolic link", link)
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("groups directory: %w", err)
	}
	if !usableShmFS(shm) {
		return nil // Open makes a plain directory; tensoripc warns
	}
	dir, err := os.MkdirTemp(shm, fmt.Sprintf("%s%d-", groupsShmPrefix, euid))
	if err != nil {
		return fmt.Errorf("groups directory in %s: %w", shm, err)
	}
	tmp := fmt.Sprintf("%s.%d", link, os.Getpid())
	_ = os.Remove(tmp)
	if err := os.Symlink(dir, tmp); err != nil {
		os.Remove(dir)
		return fmt.Errorf("groups directory: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		os.Remove(dir)
		return fmt.Errorf("groups directory: %w", err)
	}
	removeStaleShmDirs(shm, dir, euid)
	return nil
}

// ownShmDir reports whether dir is a directory this user made with
// ensureGroupsDir: in the shared-memory filesystem, named with the prefix,
// not a symbolic link, owned by the euid, mode 0700, on a tmpfs.
func ownShmDir(shm, dir string, euid int) bool {
	if filepath.Dir(dir) != filepath.Clean(shm) || !strings.HasPrefix(filepath.Base(dir), groupsShmPrefix) {
		return false
	}
	var st unix.Stat_t
	if unix.Lstat(dir, &st) != nil {
		return false
	}
	return st.Mode&unix.S_IFMT == unix.S_IFDIR && int(st.Uid) == euid &&
		st.Mode&0o777 == 0o700 && onTmpfsPath(dir)
}

// usableShmFS reports whether dir is a tmpfs this user may create entries in.
func usableShmFS(dir string) bool {
	return onTmpfsPath(dir) && unix.Access(dir, unix.W_OK|unix.X_OK) == nil
}

// removeStaleShmDirs removes this user's empty group directories in the
// shared-memory filesystem other than keep: those of state roots that are
// gone (a $XDG_RUNTIME_DIR removed at logout). Only empty ones: a directory
// with groups in it may belong to another state root of the same user.
func removeStaleShmDirs(shm, keep string, euid int) {
	matches, _ := filepath.Glob(filepath.Join(shm, fmt.Sprintf("%s%d-*", groupsShmPrefix, euid)))
	for _, m := range matches {
		if m != keep && ownShmDir(shm, m, euid) {
			_ = os.Remove(m) // fails unless empty
		}
	}
}

// tmpfsMagic is TMPFS_MAGIC, statfs's f_type of a tmpfs.
const tmpfsMagic = 0x01021994

// onTmpfsPath reports whether path lies on a tmpfs.
func onTmpfsPath(path string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(path, &fs) == nil && int64(fs.Type) == tmpfsMagic
}

// isEmptyDirPath reports whether dir has no entries.
func isEmptyDirPath(dir string) (bool, error) {
	ents, err := os.ReadDir(dir)
	return err == nil && len(ents) == 0, err
}
