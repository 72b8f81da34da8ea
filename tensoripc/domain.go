package tensoripc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

// DefaultRetention is how long a segment outlives its owner when
// Options.Retention is zero; pyisolate's TensorKeeper keeps tensors 5 to 30 s.
const DefaultRetention = 30 * time.Second

// FileBackedWarning is the warning a domain records when it could not mount a
// tmpfs and uses a plain directory instead.
const FileBackedWarning = "file-backed fallback: tensors cross through the page cache; copies happen"

// SharedTmpfsWarning is the warning a domain records when it could not mount
// a tmpfs of its own (not root) but its directory already lies on a tmpfs
// (the host's /dev/shm, a per-user $XDG_RUNTIME_DIR): segments are still
// shared zero-copy, but the kernel enforces no per-group size; the quota is
// only watched (Pressure, ExplainENOSPC, ExplainSIGBUS).
const SharedTmpfsWarning = "no tmpfs of its own (mounting one needs root): segments live in a private directory on a shared tmpfs, zero-copy; the quota is watched, not enforced"

// MountFunc mounts a filesystem; it has the signature of unix.Mount.
type MountFunc func(source, target, fstype string, flags uintptr, data string) error

// Options configures Create and Open. The zero value is usable.
type Options struct {
	// Group names the isolation group in messages; default: base name of dir.
	Group string
	// Size is the tmpfs quota in bytes; default DefaultSize(). Create only.
	Size int64
	// Retention is how long segments outlive their exited owner; default: the
	// value recorded at Create, else DefaultRetention.
	Retention time.Duration
	// StateDir holds the domain's records (JSON) outside the shared memory so
	// members cannot tamper with them; default dir + ".state".
	StateDir string
	// SweepInterval is how often Watch runs Reclaim; default 5 s, negative
	// disables sweeping.
	SweepInterval time.Duration
	// Mount replaces unix.Mount (tests simulate mount failures with it).
	Mount MountFunc
	// ResolvePID maps the pid in a torch segment name (torch_<pid>_...) to a
	// member id. Default: the member one of whose processes has that pid on
	// the host or as its innermost namespaced pid (/proc/<pid>/status NSpid);
	// ambiguous matches resolve to nothing.
	ResolvePID func(pid int) (memberID string, ok bool)
	// IsTmpfs reports whether a directory lies on a tmpfs; default: statfs
	// (tests replace it). Create asks it when mounting was refused.
	IsTmpfs func(dir string) bool
	// ProcRoot is the procfs mount to read; default "/proc".
	ProcRoot string
	// NoHugePages mounts the tmpfs without transparent huge pages; by
	// default Create asks for huge=within_size where the kernel has shmem
	// huge pages and does not deny them.
	NoHugePages bool
}

// shmemHugePagesFile is the kernel's switch for huge pages in shmem and tmpfs.
var shmemHugePagesFile = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

// shmemHugePages reports whether a tmpfs may be mounted with huge pages: the
// kernel has shmem huge pages and the administrator did not deny them.
func shmemHugePages() bool {
	data, err := os.ReadFile(shmemHugePagesFile)
	return err == nil && !strings.Contains(string(data), "[deny]")
}

// Domain is the shared-memory domain of one isolation group: a directory
// (normally a tmpfs mounted by Create, with a size quota) whose regular files
// are the group's segments, plus a state directory recording members and
// segment owners. A Domain is safe for concurrent use, also across processes.
type Domain struct {
	dir      string
	stateDir string
	opts     Options

	mu sync.Mutex // serialises this process; an flock serialises processes
	st *state     // last state loaded or saved
}

// state is what the state directory's state.json holds.
type state struct {
	Group   string `json:"group"`
	Dir     string `json:"dir"`
	Size    int64  `json:"size"`
	Mounted bool   `json:"mounted"`
	// SharedTmpfs: not mounted by Create, but the directory lies on a
	// tmpfs (see SharedTmpfsWarning). Segments are then memory, not files.
	SharedTmpfs bool                      `json:"shared_tmpfs,omitempty"`
	Warnings    []string                  `json:"warnings,omitempty"`
	Retention   time.Duration             `json:"retention_ns"`
	Created     time.Time                 `json:"created"`
	Members     map[string]*memberRecord  `json:"members"`
	Segments    map[string]*segmentRecord `json:"segments"`
}

type memberRecord struct {
	ID        string    `json:"id"`
	PID       int       `json:"pid"`
	StartTime uint64    `json:"start_time"`
	Added     time.Time `json:"added"`
	Exited    time.Time `json:"exited,omitzero"`
}

type segmentRecord struct {
	Ino         uint64    `json:"ino"`
	Owner       string    `json:"owner"`
	OwnerPID    int       `json:"owner_pid,omitempty"`
	Attribution string    `json:"attribution"`
	FirstSeen   time.Time `json:"first_seen"`
}

const stateFile = "state.json"

// DefaultSize is the default quota of a group's tmpfs: half of the machine's
// free memory (sysinfo), at most 1 GiB, rounded down to whole pages.
func DefaultSize() int64 {
	const max = 1 << 30
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		return max
	}
	half := int64(si.Freeram) * int64(si.Unit) / 2
	if half > max || half <= 0 {
		half = max
	}
	page := int64(os.Getpagesize())
	if half < page {
		return page
	}
	return half / page * page
}

func (o Options) withDefaults(dir string) Options {
	if o.Group == "" {
		o.Group = filepath.Base(dir)
	}
	if o.StateDir == "" {
		o.StateDir = dir + ".state"
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = 5 * time.Second
	}
	if o.Mount == nil {
		o.Mount = unix.Mount
	}
	if o.ProcRoot == "" {
		o.ProcRoot = "/proc"
	}
	if o.IsTmpfs == nil {
		o.IsTmpfs = onTmpfs
	}
	return o
}

// Create makes the shared-memory domain of a group at dir: it mounts a tmpfs
// of opts.Size bytes there (mode 01777, nosuid,nodev,noexec). Where mounting a
// tmpfs is not allowed (EPERM/EACCES, e.g. not root) or not possible (ENODEV)
// it uses the directory as it is: when the directory lies on a tmpfs already
// (the rootless runtime puts it in a private directory of the host's
// /dev/shm) the segments are still shared memory, zero-copy, and
// SharedTmpfsWarning is recorded; only on any other filesystem is the domain
// file-backed, with FileBackedWarning. dir must
// be absent or an empty directory, and no domain may already be recorded for
// it.
func Create(ctx context.Context, dir string, opts Options) (*Domain, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("create shm domain %s: %w", dir, err)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("create shm domain %s: %w", dir, err)
	}
	opts = opts.withDefaults(abs)
	if opts.Size <= 0 { // tmpfs treats size=0 as unlimited: never pass it
		opts.Size = DefaultSize()
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRetention
	}
	if _, err := os.Stat(filepath.Join(opts.StateDir, stateFile)); err == nil {
		return nil, fmt.Errorf("create shm domain %s: already exists (state in %s); use Open", abs, opts.StateDir)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create shm domain: %w", err)
	}
	if empty, err := isEmptyDir(abs); err != nil {
		return nil, fmt.Errorf("create shm domain: %w", err)
	} else if !empty {
		return nil, fmt.Errorf("create shm domain %s: directory is not empty", abs)
	}
	st := &state{Group: opts.Group, Dir: abs, Size: opts.Size, Retention: opts.Retention,
		Created: time.Now(), Members: map[string]*memberRecord{}, Segments: map[string]*segmentRecord{}}
	data := fmt.Sprintf("size=%d,mode=1777", opts.Size)
	const flags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	if !opts.NoHugePages && shmemHugePages() {
		// Transparent huge pages for segments of 2 MiB and more: a member
		// mapping a big tensor faults and tears down 2 MiB entries, not
		// 512 times as many 4 KiB ones. Small segments keep small pages.
		err = opts.Mount("tmpfs", abs, "tmpfs", flags, data+",huge=within_size")
		if errors.Is(err, unix.EINVAL) {
			err = opts.Mount("tmpfs", abs, "tmpfs", flags, data)
		}
	} else {
		err = opts.Mount("tmpfs", abs, "tmpfs", flags, data)
	}
	switch {
	case err == nil:
		st.Mounted = true
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES), errors.Is(err, unix.ENODEV):
		if opts.IsTmpfs(abs) {
			st.SharedTmpfs = true
			st.Warnings = append(st.Warnings, fmt.Sprintf("shm group %s: %s (%s of %s)", opts.Group, SharedTmpfsWarning, abs, HumanBytes(opts.Size)))
			break
		}
		st.Warnings = append(st.Warnings, fmt.Sprintf("shm group %s: %s (mounting a tmpfs at %s failed: %v, and it lies on no tmpfs)", opts.Group, FileBackedWarning, abs, err))
	default:
		return nil, fmt.Errorf("create shm domain: mount tmpfs at %s (%s): %w", abs, data, err)
	}
	d := &Domain{dir: abs, stateDir: opts.StateDir, opts: opts}
	undo := func(cause error) (*Domain, error) {
		if st.Mounted {
			_ = unix.Unmount(abs, unix.MNT_DETACH)
		}
		return nil, fmt.Errorf("create shm domain %s: %w", abs, cause)
	}
	if err := os.Chmod(abs, 0o777|os.ModeSticky); err != nil {
		return undo(err)
	}
	if err := os.MkdirAll(opts.StateDir, 0o700); err != nil {
		return undo(err)
	}
	if err := d.save(st); err != nil {
		return undo(err)
	}
	d.st = st
	return d, nil
}

// Open returns the domain created earlier at dir (by this or another process,
// e.g. the runtime when the caller is the `pyisolate shm` CLI). opts.Size is
// ignored; opts.StateDir must match the one given to Create.
func Open(dir string, opts Options) (*Domain, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("open shm domain %s: %w", dir, err)
	}
	userGroup := opts.Group
	opts = opts.withDefaults(abs)
	d := &Domain{dir: abs, stateDir: opts.StateDir, opts: opts}
	st, err := d.load()
	if err != nil {
		return nil, fmt.Errorf("open shm domain %s: %w", abs, err)
	}
	if st.Dir != abs {
		return nil, fmt.Errorf("open shm domain %s: state in %s belongs to %s", abs, opts.StateDir, st.Dir)
	}
	if userGroup == "" {
		d.opts.Group = st.Group
	}
	d.st = st
	return d, nil
}

// Dir is the directory holding the segments (the group's /dev/shm).
func (d *Domain) Dir() string { return d.dir }

// StateDir is the directory holding the domain's records.
func (d *Domain) StateDir() string { return d.stateDir }

// Group is the group's name as used in messages.
func (d *Domain) Group() string { return d.opts.Group }

// FileBacked reports whether the domain is a plain directory on a disk
// filesystem rather than memory: neither a tmpfs mounted by Create nor a
// directory on a shared tmpfs (see FileBackedWarning).
func (d *Domain) FileBacked() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return !d.st.Mounted && !d.st.SharedTmpfs
}

// SharedTmpfs reports whether the domain is a directory on a tmpfs that
// Create did not mount (see SharedTmpfsWarning): zero-copy, but its quota is
// not enforced by the kernel.
func (d *Domain) SharedTmpfs() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.st.SharedTmpfs
}

// tmpfsMagic is TMPFS_MAGIC, statfs's f_type of a tmpfs.
const tmpfsMagic = 0x01021994

// onTmpfs reports whether dir lies on a tmpfs.
func onTmpfs(dir string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(dir, &fs) == nil && int64(fs.Type) == tmpfsMagic
}

// Warnings returns the warnings recorded when the domain was created.
func (d *Domain) Warnings() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.st.Warnings...)
}

// Retention is how long segments outlive their exited owner.
func (d *Domain) Retention() time.Duration {
	if d.opts.Retention > 0 {
		return d.opts.Retention
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st.Retention > 0 {
		return d.st.Retention
	}
	return DefaultRetention
}

// Destroy ends the group's shared memory: it unmounts the tmpfs (lazily,
// MNT_DETACH, when busy), removes the directory and every segment in it, and
// removes the state directory. Nothing stays mounted. Processes that still map
// segments keep their pages until they unmap them.
func (d *Domain) Destroy(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	unlock, err := d.lock(ctx)
	if err != nil {
		return fmt.Errorf("destroy shm domain %s: %w", d.dir, err)
	}
	defer unlock()
	st, err := d.load()
	if err != nil {
		return fmt.Errorf("destroy shm domain %s: %w", d.dir, err)
	}
	if st.Mounted {
		if err := unmountAll(d.dir); err != nil {
			return fmt.Errorf("destroy shm domain %s: %w", d.dir, err)
		}
	}
	if err := removeBusy(d.dir); err != nil {
		return fmt.Errorf("destroy shm domain %s: %w", d.dir, err)
	}
	if err := os.RemoveAll(d.stateDir); err != nil {
		return fmt.Errorf("destroy shm domain %s: remove state: %w", d.dir, err)
	}
	return nil
}

// removeBusy removes dir and everything in it. Right after a member's
// container dies its mounts can still be going away, and removing the
// mount point then fails with EBUSY for a moment: retry for up to a second,
// detaching dir again each time.
func removeBusy(dir string) error {
	var err error
	for i := 0; i < 50; i++ {
		if err = os.RemoveAll(dir); err == nil || !errors.Is(err, unix.EBUSY) {
			return err
		}
		_ = unix.Unmount(dir, unix.MNT_DETACH)
		time.Sleep(20 * time.Millisecond)
	}
	return err
}

// unmountAll unmounts dir until it is no longer a mount point, detaching
// lazily when a mount is busy.
func unmountAll(dir string) error {
	for i := 0; i < 16; i++ {
		mounted, err := isMountPoint(dir)
		if err != nil {
			return err
		}
		if !mounted {
			return nil
		}
		err = unix.Unmount(dir, 0)
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(dir, unix.MNT_DETACH)
		}
		if err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 16 unmounts", dir)
}

// isMountPoint reports whether /proc/self/mountinfo lists dir as a mount point.
func isMountPoint(dir string) (bool, error) {
	ms, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(dir))
	if err != nil {
		return false, fmt.Errorf("read mountinfo: %w", err)
	}
	return len(ms) > 0, nil
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if err == io.EOF {
		return true, nil
	}
	return false, err
}

// lock takes the cross-process lock of the state directory, polling so that
// ctx can end the wait.
func (d *Domain) lock(ctx context.Context) (func(), error) {
	f, err := os.OpenFile(filepath.Join(d.stateDir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock state: %w", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock state %s: %w", f.Name(), err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock state %s: %w", f.Name(), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (d *Domain) load() (*state, error) {
	p := filepath.Join(d.stateDir, stateFile)
	data, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("read domain state: %w", err)
	}
	var st state
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("read domain state %s: %w", p, err)
	}
	if st.Members == nil {
		st.Members = map[string]*memberRecord{}
	}
	if st.Segments == nil {
		st.Segments = map[string]*segmentRecord{}
	}
	return &st, nil
}

func (d *Domain) save(st *state) error {
	data, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return fmt.Errorf("encode domain state: %w", err)
	}
	tmp := filepath.Join(d.stateDir, stateFile+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write domain state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(d.stateDir, stateFile)); err != nil {
		return fmt.Errorf("write domain state: %w", err)
	}
	return nil
}

// update runs fn on the current state under the process and file locks and
// saves the state when fn succeeds and changed it (most scans and member
// queries change nothing, and a save is a new file and a rename).
func (d *Domain) update(ctx context.Context, fn func(st *state) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	unlock, err := d.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	st, err := d.load()
	if err != nil {
		return err
	}
	before, _ := json.Marshal(st)
	if err := fn(st); err != nil {
		return err
	}
	if after, err := json.Marshal(st); err != nil || !bytes.Equal(after, before) {
		if err := d.save(st); err != nil {
			return err
		}
	}
	d.st = st
	return nil
}

// sortedKeys returns the keys of m in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
