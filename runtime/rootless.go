package runtime

// Rootless mode: the runtime run by an ordinary user, as bwrap is, with no
// root at all. libcontainer supports it (RootlessEUID, RootlessCgroups);
// what the runtime adds:
//
//   - State lives under $XDG_RUNTIME_DIR/pyisolate (DefaultStateRoot), a
//     0700 directory of the user, so that one user cannot see or touch
//     another's containers and groups: their state, locks, rootfs
//     directories and group directories are all beneath it.
//   - Every container has a user namespace mapping container root to the
//     caller's own uid and gid (RootlessIDMappings); with newuidmap and
//     newgidmap installed and ranges in /etc/subuid and /etc/subgid, ids 1...
//     map to those ranges too (libcontainer runs the tools). Nothing of the
//     host is chowned: the empty rootfs is the user's own directory.
//   - Paths are not pinned (open_tree needs CAP_SYS_ADMIN in the host's
//     mount namespace, see pin.go): the container's root is the user, so a
//     bind can only ever give it what the user may read or write anyway.
//   - A group's shared memory cannot be a tmpfs of its own (mounting one
//     needs root in the host's namespaces). See groupsBacking for where it
//     lives instead.
//   - Limits need a delegated cgroup v2 subtree (see rootless_cgroup.go);
//     without one the spec drops them, said in io.pyisolate.degraded, by
//     run and by detect.

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Rootless reports whether this process runs the runtime rootless: without
// root (euid != 0).
func Rootless() bool { return os.Geteuid() != 0 }

// DefaultStateRoot is the state root used when none is given, for the user
// running this process: DefaultRoot (/run/pyisolate) for root;
// $XDG_RUNTIME_DIR/pyisolate for anyone else, the per-user runtime directory
// systemd-logind makes (0700, removed at logout); /tmp/pyisolate-<uid> when
// XDG_RUNTIME_DIR is unset (ensureRoot refuses it when someone else made it
// first).
func DefaultStateRoot() string {
	return defaultStateRootFor(os.Geteuid(), os.Getenv("XDG_RUNTIME_DIR"))
}

func defaultStateRootFor(euid int, xdg string) string {
	switch {
	case euid == 0:
		return DefaultRoot
	case xdg != "" && filepath.IsAbs(xdg):
		return filepath.Join(xdg, "pyisolate")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("pyisolate-%d", euid))
}

// ensureRootlessDir makes dir (and its parents) for a rootless runtime and
// checks that it is the caller's own: a directory, not a symbolic link,
// owned by the euid. Group and other bits are removed (0700): nobody else
// may list or enter it. A directory someone else made (/tmp/pyisolate-<uid>
// planted by another user) is refused with an error naming it.
func ensureRootlessDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state root: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("state root %s: %w", dir, err)
	}
	euid := os.Geteuid()
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fmt.Errorf("state root %s is not a directory (a symbolic link?): choose another --root", dir)
	case int(st.Uid) != euid:
		return fmt.Errorf("state root %s belongs to uid %d, not to you (uid %d): choose another --root", dir, st.Uid, euid)
	}
	if st.Mode&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state root %s: %w", dir, err)
		}
	}
	return nil
}

// RootlessIDMappings returns the user namespace mappings of a rootless
// container: container id 0 to the caller's euid and egid (size 1), and,
// when newuidmap and newgidmap are on PATH and /etc/subuid and /etc/subgid
// give the user ranges, container ids 1... to the first range of each.
// libcontainer writes a single mapping of one's own id itself and runs the
// tools for more (they are setuid and check the ranges). note says which
// was chosen, for detect.
func RootlessIDMappings() (uids, gids []specs.LinuxIDMapping, note string) {
	return rootlessIDMappings(os.Geteuid(), os.Getegid(), "/etc", exec.LookPath)
}

func rootlessIDMappings(euid, egid int, etc string, lookPath func(string) (string, error)) (uids, gids []specs.LinuxIDMapping, note string) {
	uids = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(euid), Size: 1}}
	gids = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(egid), Size: 1}}
	name := strconv.Itoa(euid)
	if u, err := user.LookupId(name); err == nil {
		name = u.Username
	}
	_, uerr := lookPath("newuidmap")
	_, gerr := lookPath("newgidmap")
	if uerr != nil || gerr != nil {
		return uids, gids, fmt.Sprintf("container root is uid %d, gid %d (one id: newuidmap/newgidmap are not installed, Debian package uidmap)", euid, egid)
	}
	su, serr := subIDRange(filepath.Join(etc, "subuid"), name, euid)
	sg, gerr2 := subIDRange(filepath.Join(etc, "subgid"), name, euid)
	if serr != nil || gerr2 != nil {
		return uids, gids, fmt.Sprintf("container root is uid %d, gid %d (one id: no range for %s in %s/subuid and %s/subgid)", euid, egid, name, etc, etc)
	}
	uids = append(uids, specs.LinuxIDMapping{ContainerID: 1, HostID: su[0], Size: su[1]})
	gids = append(gids, specs.LinuxIDMapping{ContainerID: 1, HostID: sg[0], Size: sg[1]})
	return uids, gids, fmt.Sprintf("container root is uid %d, gid %d; ids 1-%d map to %d-%d (uid) and %d-%d (gid) through newuidmap/newgidmap",
		euid, egid, su[1], su[0], su[0]+su[1]-1, sg[0], sg[0]+sg[1]-1)
}

// subIDRange returns the first range (start, count) of a user in an
// /etc/subuid-style file, whose lines are "name-or-uid:start:count".
func subIDRange(path, name string, uid int) ([2]uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return [2]uint32{}, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(parts) != 3 || (parts[0] != name && parts[0] != strconv.Itoa(uid)) {
			continue
		}
		start, err1 := strconv.ParseUint(parts[1], 10, 32)
		count, err2 := strconv.ParseUint(parts[2], 10, 32)
		if err1 != nil || err2 != nil || count == 0 || start+count > 1<<32-1 {
			continue
		}
		return [2]uint32{uint32(start), uint32(count)}, nil
	}
	if err := sc.Err(); err != nil {
		return [2]uint32{}, err
	}
	return [2]uint32{}, fmt.Errorf("%s: no range for %s", path, name)
}

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
var shmFS = ShmPath

// ensureGroupsDir makes <root>/groups for a rootless runtime (see above).
// As root it does nothing: OpenGroup makes a plain directory and mounts a
// tmpfs per group.
func ensureGroupsDir(root string) error {
	if !Rootless() {
		return nil
	}
	if err := ensureRootlessDir(root); err != nil {
		return err
	}
	return linkGroupsDir(root, shmFS, os.Geteuid())
}

// linkGroupsDir makes <root>/groups a link to a private directory of user
// euid in the tmpfs shm, unless a usable one is there (ensureGroupsDir).
func linkGroupsDir(root, shm string, euid int) error {
	link := filepath.Join(root, groupsDir)
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
		return nil // OpenGroup makes a plain directory; tensoripc warns
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
