package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// Container ids are reserved before anything is done for them: a process that
// creates container id first takes <Root>/locks/<id>, a file holding an
// exclusive flock for as long as that process owns the container. A second
// creator of the same id fails on the lock (or, once the first is gone, on
// the container's state directory) before it has made a mount point, joined
// a group or written any state, so it cannot damage the first container.
//
// The file also says who owns the container ("run <pid>" for `pyisolate
// run`, "shim <pid>" for the containerd shim). A lock of a `run` whose flock
// nobody holds belongs to a runner that died (killed with SIGKILL, say): its
// container is an orphan, which ReclaimOrphans deletes.
const locksDir = "locks"

// Owners of a reservation, as recorded in its lock file.
const (
	// OwnerRun is a foreground `pyisolate run`: its container dies with it.
	OwnerRun = "run"
	// OwnerShim is the containerd shim.
	OwnerShim = "shim"
	// OwnerOCI is the OCI command-line face (`pyisolate-runc create`): its
	// containers outlive the command that made them, as runc's do, and are
	// never reclaimed as orphans; `delete` ends them.
	OwnerOCI = "oci"
	// OwnerTemplate is a warm-start template (package runtime/warm): it
	// outlives the run that made it, is never reclaimed as an orphan, and
	// is deleted when its isolation group ends.
	OwnerTemplate = "template"
)

// ErrIDInUse is returned by Reserve when another live process holds the id.
var ErrIDInUse = errors.New("container id is in use by another pyisolate process")

// Reservation is a held container id. Release it once the container is
// deleted; a process that dies releases its reservations with it.
type Reservation struct {
	// ID is the reserved container id.
	ID   string
	f    *os.File
	path string
}

// lockPath is the lock file of container id.
func (r *Runtime) lockPath(id string) string {
	return filepath.Join(r.root(), locksDir, id)
}

// Reserve reserves container id for owner (OwnerRun, OwnerShim or OwnerOCI). It fails
// with ErrIDInUse when a live process holds the id, and with
// libcontainer.ErrExist when a container of that id exists; in both cases
// nothing of the existing container is touched. An id left by a dead `run`
// is reclaimed first (its container deleted), as ReclaimOrphans does.
func (r *Runtime) Reserve(ctx context.Context, id, owner string) (*Reservation, error) {
	res, prev, err := r.lockNew(id)
	if err != nil {
		return nil, err
	}
	if prevOwner(prev) == OwnerRun {
		// The runner that held the id died: its container (killed with
		// it, see CreateOptions.DieWithParent) is an orphan.
		if err := r.reclaim(ctx, id); err != nil {
			res.Release()
			return nil, fmt.Errorf("reserve container %s: reclaim the container of a dead run: %w", id, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(r.root(), id)); err == nil {
		if prev == "" {
			res.Release() // the lock file is ours, made just now
		} else {
			res.unlock() // not ours to remove: keep it as it was
		}
		return nil, fmt.Errorf("create container %s: %w", id, libcontainer.ErrExist)
	}
	if err := res.write(fmt.Sprintf("%s %d\n", owner, os.Getpid())); err != nil {
		res.Release()
		return nil, fmt.Errorf("reserve container %s: %w", id, err)
	}
	return res, nil
}

// Lock takes container id for owner like Reserve, but leaves whatever exists
// of the id to the caller: it fails only with ErrIDInUse, when a live process
// holds the id. The containerd shim uses it, and then clears the state a dead
// shim left. It returns the owner recorded before ("" for none).
func (r *Runtime) Lock(id, owner string) (res *Reservation, prevOwnerName string, err error) {
	res, prev, err := r.lockNew(id)
	if err != nil {
		return nil, "", err
	}
	if err := res.write(fmt.Sprintf("%s %d\n", owner, os.Getpid())); err != nil {
		res.Release()
		return nil, "", fmt.Errorf("reserve container %s: %w", id, err)
	}
	return res, prevOwner(prev), nil
}

// lockNew checks id, makes the locks directory and locks id's lock file.
func (r *Runtime) lockNew(id string) (*Reservation, string, error) {
	if err := checkID(id); err != nil {
		return nil, "", fmt.Errorf("reserve container id: %w", err)
	}
	if err := r.ensureRoot(); err != nil {
		return nil, "", fmt.Errorf("reserve container %s: %w", id, err)
	}
	if err := os.Mkdir(filepath.Join(r.root(), locksDir), 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, "", fmt.Errorf("reserve container %s: %w", id, err)
	}
	res, prev, err := r.lockID(id, true, true)
	if err != nil {
		return nil, "", fmt.Errorf("reserve container %s: %w", id, err)
	}
	return res, prev, nil
}

// lockID opens (creating it when create is set) and flocks the lock file of
// id: with brief it rides out a holder that keeps it for a moment
// (flockBriefly), else it tries once, for a scan to which a held lock means
// a live owner (or another scan, which does the same work). It returns the file's previous content. A lock file
// removed or replaced while it was being locked is opened again.
func (r *Runtime) lockID(id string, create, brief bool) (*Reservation, string, error) {
	p := r.lockPath(id)
	for {
		flags := os.O_RDWR | unix.O_CLOEXEC | unix.O_NOFOLLOW
		if create {
			flags |= os.O_CREATE
		}
		f, err := os.OpenFile(p, flags, 0o600)
		if err != nil {
			return nil, "", err
		}
		lock := flockBriefly
		if !brief {
			lock = func(f *os.File) error { return unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) }
		}
		if err := lock(f); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, "", ErrIDInUse
			}
			return nil, "", fmt.Errorf("lock %s: %w", p, err)
		}
		// The holder before us may have unlinked the file after we opened
		// it: then our lock is on a file nobody else will find.
		var fst, pst unix.Stat_t
		if unix.Fstat(int(f.Fd()), &fst) != nil || unix.Lstat(p, &pst) != nil ||
			fst.Ino != pst.Ino || fst.Dev != pst.Dev {
			f.Close()
			continue
		}
		buf := make([]byte, 128)
		n, _ := f.ReadAt(buf, 0)
		return &Reservation{ID: id, f: f, path: p}, string(buf[:n]), nil
	}
}

// prevOwner returns the owner recorded in a lock file's content.
func prevOwner(content string) string {
	owner, _, _ := strings.Cut(strings.TrimSpace(content), " ")
	return owner
}

// write replaces the lock file's content.
func (res *Reservation) write(s string) error {
	if err := res.f.Truncate(0); err != nil {
		return err
	}
	_, err := res.f.WriteAt([]byte(s), 0)
	return err
}

// unlock drops the lock and leaves the file.
func (res *Reservation) unlock() {
	if res != nil && res.f != nil {
		res.f.Close()
		res.f = nil
	}
}

// Keep gives up the lock but leaves the lock file, with its owner, for a
// container that outlives this process (OwnerOCI, OwnerTemplate).
func (res *Reservation) Keep() { res.unlock() }

// Release gives up the reservation and removes its lock file. Call it once
// the container of the id is deleted. It is safe to call more than once.
func (res *Reservation) Release() {
	if res == nil || res.f == nil {
		return
	}
	_ = os.Remove(res.path)
	res.unlock()
}

// reclaim deletes container id, if it exists, and its group membership: the
// process that ran it is gone. The caller holds id's lock.
func (r *Runtime) reclaim(ctx context.Context, id string) error {
	group := ""
	if c, err := r.Load(id); err == nil {
		if st, err := c.State(); err == nil {
			group = st.Annotations[spec.AnnotationGroup]
		}
	}
	err := r.Delete(ctx, id, true)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if group != "" && r.ReleaseGroup != nil {
		if err := r.ReleaseGroup(ctx, r.root(), group, id); err != nil {
			return err
		}
	}
	return nil
}

// ReclaimOrphans deletes the containers whose `pyisolate run` died (see
// Reserve), with their state, rootfs, cgroups and group membership, and
// returns their ids. Containers of live runners and of the shim are left
// alone.
func (r *Runtime) ReclaimOrphans(ctx context.Context) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(r.root(), locksDir))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reclaim orphans: %w", err)
	}
	var done []string
	var errs []error
	for _, e := range ents {
		id := e.Name()
		if checkID(id) != nil {
			continue
		}
		// Only a run's lock can be an orphan's. Reading first keeps this
		// scan off the locks of ids being reserved right now (a file made
		// but not yet locked is empty), which a transient lock of ours
		// would make fail.
		if data, err := os.ReadFile(r.lockPath(id)); err != nil || prevOwner(string(data)) != OwnerRun {
			continue
		}
		res, prev, err := r.lockID(id, false, false)
		if err != nil {
			continue // held by a live process, or removed meanwhile
		}
		if prevOwner(prev) != OwnerRun {
			res.unlock()
			continue
		}
		if err := r.reclaim(ctx, id); err != nil {
			errs = append(errs, fmt.Errorf("container %s: %w", id, err))
			res.unlock()
			continue
		}
		res.Release()
		done = append(done, id)
	}
	return done, errors.Join(errs...)
}

// dropStaleLock removes the lock file of id when no live process holds it.
func (r *Runtime) dropStaleLock(id string) {
	if res, _, err := r.lockID(id, false, false); err == nil {
		res.Release()
	}
}

// flockBriefly takes an exclusive flock on f, riding out a holder that keeps
// it for a moment (another process's orphan scan, dropStaleLock): it tries
// for about 50 ms before it says EWOULDBLOCK. A live owner holds the lock
// for its container's whole life.
func flockBriefly(f *os.File) error {
	var err error
	for i := 0; i < 10; i++ {
		if err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); !errors.Is(err, unix.EWOULDBLOCK) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
	return err
}
