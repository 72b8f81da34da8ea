package group

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
	"github.com/pyisolate/pyisolate-oci/tensoripc"
)

// An isolation group's files live under <root>/groups/<name>:
//
//	shm/        the group's tmpfs, bound at /dev/shm in every member
//	shm.state/  the shared-memory domain's records (owners, leases)
//	sock/       the group's socket directory (a small tmpfs), bound at /run/pyisolate
//	lock        flock serialising join and leave across processes
const (
	groupShm      = "shm"
	groupSock     = "sock"
	groupLockFile = "lock"
)

// Options configure a group when its first member creates it.
type Options struct {
	// ShmSize is the tmpfs quota of the group's /dev/shm in bytes; zero gives
	// tensoripc.DefaultSize().
	ShmSize int64
	// Retention is how long segments outlive an exited member; zero gives
	// tensoripc.DefaultRetention.
	Retention time.Duration
}

// Group is an isolation group on this host: a host and its extensions, which
// share one /dev/shm tmpfs and one socket directory and nothing else. The
// group's resources exist while any member lives.
type Group struct {
	// Name is the group's name.
	Name string
	// Dir is <root>/groups/<name>.
	Dir string
	// Domain is the group's shared-memory domain.
	Domain *tensoripc.Domain
}

// Dir returns the directory of group name under the runtime root.
func Dir(root, name string) string {
	return filepath.Join(root, runtime.GroupsDir, name)
}

// ShmDir is the host directory of the group's shared memory.
func (g *Group) ShmDir() string { return filepath.Join(g.Dir, groupShm) }

// SocketDir is the host directory of the group's sockets.
func (g *Group) SocketDir() string { return filepath.Join(g.Dir, groupSock) }

// Open returns group name under root with member id (host pid pid)
// joined, creating the group's tmpfs and socket directory when no live group
// of that name exists. A group whose members are all gone (a crashed runtime)
// is destroyed and made anew. Creating and joining happen under one lock, so a
// racing Leave cannot end the group in between. The caller may Join again
// later with the container's init pid.
func Open(ctx context.Context, root, name, id string, pid int, opts Options) (*Group, error) {
	if err := runtime.CheckName("group name", name); err != nil {
		return nil, err
	}
	g := &Group{Name: name, Dir: Dir(root, name)}
	if err := ensureGroupsDir(root); err != nil {
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	if err := os.MkdirAll(g.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	if err := restrictGroupDir(g.Dir); err != nil {
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	unlock, err := runtime.LockFile(ctx, filepath.Join(g.Dir, groupLockFile))
	if err != nil {
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	defer unlock()
	dopts := tensoripc.Options{Group: name, Size: opts.ShmSize, Retention: opts.Retention}
	// A group that exists keeps the retention its creator recorded: every
	// member's runtime sweeps with that one.
	d, err := tensoripc.Open(g.ShmDir(), tensoripc.Options{Group: name, Size: opts.ShmSize})
	if err == nil {
		if live, lerr := liveMembers(ctx, d); lerr == nil && len(live) == 0 {
			// Left over by a runtime that died: start clean.
			if err := d.Destroy(ctx); err != nil {
				return nil, fmt.Errorf("group %s: remove stale shared memory: %w", name, err)
			}
			d = nil
		}
	} else {
		d = nil
	}
	if d == nil {
		if d, err = tensoripc.Create(ctx, g.ShmDir(), dopts); err != nil {
			return nil, fmt.Errorf("group %s: %w", name, err)
		}
	}
	g.Domain = d
	if err := g.Join(ctx, id, pid); err != nil {
		return nil, err
	}
	if err := mountSocketDir(g.SocketDir()); err != nil {
		return nil, fmt.Errorf("group %s: socket dir: %w", name, err)
	}
	return g, nil
}

// Limits of a group's socket directory, a tmpfs of its own: sockets take no
// space, and what members write there beside them (torch's manager
// directory, small files) must not reach the host's disk unbounded.
const (
	// SocketDirSize is the size of the socket directory's tmpfs.
	SocketDirSize = 64 << 20
	// socketDirInodes caps the files and directories in it.
	socketDirInodes = 16384
)

// restrictGroupDir makes a group's directory reachable by root and by the
// containers' mapped ids only (owner root, group spec.DefaultIDMapBase, mode
// 0710): no other host user can plant files in, read or fill the group's
// shared memory and sockets. Without root it is the caller's, mode 0700.
func restrictGroupDir(dir string) error {
	if !runtime.Rootless() {
		if err := os.Chown(dir, 0, spec.DefaultIDMapBase); err != nil {
			return err
		}
		return os.Chmod(dir, 0o710)
	}
	return os.Chmod(dir, 0o700)
}

// mountSocketDir makes dir the group's socket directory: a size-limited
// tmpfs mounted nosuid, nodev and noexec, writable by every member (mode
// 1777). A tmpfs already there is kept. Without root (no tmpfs can be
// mounted) it is a plain directory; rootless, it lies beside the group's
// shared memory, on the host's /dev/shm tmpfs (see ensureGroupsDir), and is
// bounded by it rather than by SocketDirSize.
func mountSocketDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if mounted, err := mountinfo.Mounted(dir); err != nil || mounted {
		return err
	}
	if runtime.Rootless() {
		return os.Chmod(dir, 0o777|os.ModeSticky)
	}
	data := fmt.Sprintf("size=%d,nr_inodes=%d,mode=1777", SocketDirSize, socketDirInodes)
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, data); err != nil {
		return &os.PathError{Op: "mount tmpfs", Path: dir, Err: err}
	}
	return nil
}

// Join registers a member (a container id and the host pid of its init, or a
// plain host process) so that the segments it creates are attributed to it.
func (g *Group) Join(ctx context.Context, id string, pid int) error {
	if err := g.Domain.AddMember(ctx, tensoripc.Member{ID: id, PID: pid}); err != nil {
		return fmt.Errorf("group %s: join %s: %w", g.Name, id, err)
	}
	return nil
}

// Leave records that member id exited: its segments are kept for the
// retention period, then reclaimed. When no member is left alive the group
// ends: its shared memory is unmounted and every file of it removed. Leave
// reports whether the group ended.
func (g *Group) Leave(ctx context.Context, id string) (ended bool, err error) {
	unlock, err := runtime.LockFile(ctx, filepath.Join(g.Dir, groupLockFile))
	if errors.Is(err, os.ErrNotExist) {
		return true, nil // another member ended the group already
	}
	if err != nil {
		return false, fmt.Errorf("group %s: leave %s: %w", g.Name, id, err)
	}
	defer unlock()
	if !g.exists() {
		// Ended by another member after its own last container exited
		// (this member's container had exited too).
		g.removeDirIfEmpty()
		return true, nil
	}
	if err := g.Domain.MemberExited(ctx, id, time.Now()); err != nil {
		return false, fmt.Errorf("group %s: leave %s: %w", g.Name, id, err)
	}
	live, err := liveMembers(ctx, g.Domain)
	if err != nil {
		return false, fmt.Errorf("group %s: leave %s: %w", g.Name, id, err)
	}
	if len(live) > 0 {
		return false, nil
	}
	if err := g.destroyLocked(ctx); err != nil {
		return false, err
	}
	return true, nil
}

// EndIfAbandoned ends the group when none of its members is alive (their
// runtimes died without leaving) and reports whether it did.
func (g *Group) EndIfAbandoned(ctx context.Context) (bool, error) {
	unlock, err := runtime.LockFile(ctx, filepath.Join(g.Dir, groupLockFile))
	if err != nil {
		return false, fmt.Errorf("group %s: %w", g.Name, err)
	}
	defer unlock()
	live, err := liveMembers(ctx, g.Domain)
	if err != nil || len(live) > 0 {
		return false, err
	}
	return true, g.destroyLocked(ctx)
}

// Destroy ends the group now, whatever its members: shared memory unmounted,
// segments, sockets and records removed.
func (g *Group) Destroy(ctx context.Context) error {
	unlock, err := runtime.LockFile(ctx, filepath.Join(g.Dir, groupLockFile))
	if err != nil {
		return fmt.Errorf("group %s: destroy: %w", g.Name, err)
	}
	defer unlock()
	return g.destroyLocked(ctx)
}

func (g *Group) destroyLocked(ctx context.Context) error {
	if err := g.Domain.Destroy(ctx); err != nil {
		return fmt.Errorf("group %s: %w", g.Name, err)
	}
	// Rootless, nothing was mounted (mountSocketDir).
	if err := unix.Unmount(g.SocketDir(), unix.MNT_DETACH); err != nil && !runtime.Rootless() &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("group %s: unmount sockets: %w", g.Name, err)
	}
	if err := os.RemoveAll(g.SocketDir()); err != nil {
		return fmt.Errorf("group %s: remove sockets: %w", g.Name, err)
	}
	g.removeDirIfEmpty()
	return nil
}

// exists reports whether the group's shared-memory domain is still recorded.
func (g *Group) exists() bool {
	_, err := os.Stat(g.Domain.StateDir())
	return err == nil
}

// removeDirIfEmpty removes the group directory when only its lock file is
// left. A racing Open recreates what it needs.
func (g *Group) removeDirIfEmpty() {
	ents, err := os.ReadDir(g.Dir)
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.Name() != groupLockFile {
			return
		}
	}
	_ = os.Remove(filepath.Join(g.Dir, groupLockFile))
	_ = os.Remove(g.Dir)
}

// Load opens an existing group without creating anything.
func Load(root, name string) (*Group, error) {
	if err := runtime.CheckName("group name", name); err != nil {
		return nil, err
	}
	g := &Group{Name: name, Dir: Dir(root, name)}
	d, err := tensoripc.Open(g.ShmDir(), tensoripc.Options{Group: name})
	if err != nil {
		return nil, fmt.Errorf("group %s: %w", name, err)
	}
	g.Domain = d
	return g, nil
}

// List returns the names of the groups under root, sorted.
func List(root string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(root, runtime.GroupsDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list groups: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	return names, nil
}

func liveMembers(ctx context.Context, d *tensoripc.Domain) ([]string, error) {
	ms, err := d.Members(ctx)
	if err != nil {
		return nil, err
	}
	var live []string
	for _, m := range ms {
		if m.Alive {
			live = append(live, m.ID)
		}
	}
	return live, nil
}

// IPCNamespace returns the IPC namespace of a running member of g other than
// exceptID (/proc/PID/ns/ipc), or "" when there is none yet: the first member
// creates the namespace the others join (hooks.CUDAIPCSettings).
func (g *Group) IPCNamespace(ctx context.Context, exceptID string) string {
	ms, err := g.Domain.Members(ctx)
	if err != nil {
		return ""
	}
	self, _ := os.Readlink("/proc/self/ns/ipc")
	for _, m := range ms {
		if !m.Alive || m.ID == exceptID {
			continue
		}
		p := fmt.Sprintf("/proc/%d/ns/ipc", m.PID)
		if ns, err := os.Readlink(p); err == nil && ns != self {
			return p
		}
	}
	return ""
}

// ReleaseMember removes member id from group name under root and ends
// the group when none of its members is alive (their runtimes died without
// leaving), so its shared memory is not left mounted. It reports whether
// the group has ended; a group that no longer exists is not an error (and
// has ended).
func ReleaseMember(ctx context.Context, root, name, id string) (ended bool, err error) {
	g, err := Load(root, name)
	if err != nil {
		if _, serr := os.Stat(Dir(root, name)); errors.Is(serr, os.ErrNotExist) {
			return true, nil
		}
		return false, err
	}
	if ended, err := g.Leave(ctx, id); err != nil || ended {
		return ended, err
	}
	return g.EndIfAbandoned(ctx)
}
