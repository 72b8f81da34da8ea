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
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/userns"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Rootless reports whether this process runs the runtime rootless: without
// root (euid != 0), or as root of a user namespace that maps only some of
// the host's ids, where root has no power over the host (rootless Podman and
// `podman unshare` run the runtime so, as euid 0 in the user's namespace;
// so does `unshare -r`). runc decides the same way.
func Rootless() bool { return os.Geteuid() != 0 || userns.RunningInUserNS() }

// DefaultStateRoot is the state root used when none is given, for the user
// running this process: DefaultRoot (/run/pyisolate) for root;
// $XDG_RUNTIME_DIR/pyisolate for anyone else, the per-user runtime directory
// systemd-logind makes (0700, removed at logout); /tmp/pyisolate-<uid> when
// XDG_RUNTIME_DIR is unset (ensureRoot refuses it when someone else made it
// first).
func DefaultStateRoot() string {
	return DefaultStateRootFor(os.Geteuid(), Rootless(), os.Getenv("XDG_RUNTIME_DIR"), "pyisolate")
}

// DefaultStateRootFor is the default state root named name of a process
// with euid, rootless or not (see Rootless), and $XDG_RUNTIME_DIR xdg:
// /run/<name> as root, <xdg>/<name> rootless, /tmp/<name>-<euid> rootless
// without an absolute xdg.
func DefaultStateRootFor(euid int, rootless bool, xdg, name string) string {
	switch {
	case !rootless:
		return filepath.Join("/run", name)
	case xdg != "" && filepath.IsAbs(xdg):
		return filepath.Join(xdg, name)
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("%s-%d", name, euid))
}

// EnsureRootlessDir makes dir (and its parents) for a rootless runtime and
// checks that it is the caller's own: a directory, not a symbolic link,
// owned by the euid. Group and other bits are removed (0700): nobody else
// may list or enter it. A directory someone else made (/tmp/pyisolate-<uid>
// planted by another user) is refused with an error naming it.
func EnsureRootlessDir(dir string) error {
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
	return RootlessIDMappingsFor(os.Geteuid(), os.Getegid(), "/etc", exec.LookPath)
}

func RootlessIDMappingsFor(euid, egid int, etc string, lookPath func(string) (string, error)) (uids, gids []specs.LinuxIDMapping, note string) {
	uids = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(euid), Size: 1}}
	gids = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(egid), Size: 1}}
	if euid == 0 {
		// Root of a user namespace (Rootless): its own root, one id;
		// newuidmap works from the host's namespace only.
		return uids, gids, fmt.Sprintf("container root is uid 0, gid %d of this user namespace (one id)", egid)
	}
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
