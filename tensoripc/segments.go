package tensoripc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// OwnerUnknown is the owner of a segment that no member could be tied to.
const OwnerUnknown = "unknown"

// How a segment's owner was determined (Segment.Attribution).
const (
	ByTorchName = "torch-name" // torch_<pid>_... named after a member's process
	ByOpenFD    = "open"       // a member's process held it open at first sight
	ByMapping   = "mapped"     // a member's process mapped it at first sight
	ByFileUID   = "file-uid"   // nothing better: see Segment.UID
)

// Member is a member of the group: a container (ID is the container id) or
// the host process, with the host pid of its init process. Its processes are
// that pid and all its descendants.
type Member struct {
	ID  string
	PID int
}

// MemberStatus is a member as the domain records it.
type MemberStatus struct {
	Member
	Alive  bool
	Exited time.Time // when the member exited; zero while it runs
}

// Segment is one shared-memory segment: a regular file at the top of the
// domain directory.
type Segment struct {
	Name        string
	Size        int64  // bytes allocated (st_blocks*512): what counts against the quota
	Length      int64  // apparent size (st_size)
	Owner       string // member id, or OwnerUnknown
	OwnerPID    int    // host pid that created or held it at first sight; 0 if unknown
	Attribution string // ByTorchName, ByOpenFD, ByMapping or ByFileUID
	UID         uint32 // the file's owner uid
	Created     time.Time
	MappedBy    []int    // pids of live members' processes that map it
	OpenBy      []int    // pids of live members' processes that hold it open
	UsedBy      []string // ids of the members those pids belong to
	// LeaseExpires is when the segment becomes reclaimable: its owner's exit
	// plus the retention. Zero while the owner lives or is unknown.
	LeaseExpires time.Time
}

// AddMember registers a member so that segments its processes create are
// attributed to it. The member's init process must be running; its start time
// is recorded so that a reused pid is not taken for the member. Registering an
// id again replaces the earlier record.
func (d *Domain) AddMember(ctx context.Context, m Member) error {
	if m.ID == "" || m.ID == OwnerUnknown || m.PID <= 0 {
		return fmt.Errorf("add member %q (pid %d) to shm group %s: need a non-empty id other than %q and a pid > 0", m.ID, m.PID, d.opts.Group, OwnerUnknown)
	}
	p, err := readStat(d.opts.ProcRoot, m.PID)
	if err != nil {
		return fmt.Errorf("add member %s to shm group %s: %w", m.ID, d.opts.Group, err)
	}
	return d.update(ctx, func(st *state) error {
		st.Members[m.ID] = &memberRecord{ID: m.ID, PID: m.PID, StartTime: p.start, Added: time.Now()}
		return nil
	})
}

// Members returns the recorded members, sorted by id. A member whose process
// is gone is reported not alive even before MemberExited is called.
func (d *Domain) Members(ctx context.Context) ([]MemberStatus, error) {
	var out []MemberStatus
	err := d.update(ctx, func(st *state) error {
		for _, id := range sortedKeys(st.Members) {
			m := st.Members[id]
			out = append(out, MemberStatus{Member: Member{ID: m.ID, PID: m.PID},
				Alive: m.Exited.IsZero() && procAlive(d.opts.ProcRoot, m.PID, m.StartTime), Exited: m.Exited})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("members of shm group %s: %w", d.opts.Group, err)
	}
	return out, nil
}

// Segments scans the domain and returns its segments sorted by name. Owners
// are attributed the first time a segment is seen (see Segment.Attribution)
// and persisted, so later scans, also from other processes, agree; a segment
// of unknown owner is attributed again on every scan until a member is found.
func (d *Domain) Segments(ctx context.Context) ([]Segment, error) {
	var segs []Segment
	err := d.update(ctx, func(st *state) error {
		var err error
		segs, err = d.scan(st, time.Now())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("segments of shm group %s: %w", d.opts.Group, err)
	}
	return segs, nil
}

var torchName = regexp.MustCompile(`^torch_(\d+)_`)

// torchOwner attributes a torch_<pid>_... segment born at born (zero:
// unknown) to the member whose process the name's pid is, as pid
// namespaces number it. Every extension's init is pid 1 of its own, so the
// name alone may point at the wrong member: when the creator died before
// any scan saw the segment, or while its runner has not yet registered its
// init (its processes are then not yet known as the member's). So the live
// member resolve finds is taken only when it uses the segment (users) or
// the pid is its process's host pid (no namespace to guess through), or
// when resolve is the caller's (trusted, Options.ResolvePID); else,
// when nobody uses it, the one member that was added before the segment
// was born and exited since, if there is exactly one; else the owner stays
// unknown, for the open and mapped evidence or a later scan to settle.
func torchOwner(st *state, pid int, born time.Time, users map[string]bool, resolve func(int) (string, int, bool), trusted bool) (string, int, string) {
	var exited []string
	for _, id := range sortedKeys(st.Members) {
		m := st.Members[id]
		if !m.Exited.IsZero() && !born.IsZero() && !m.Exited.Before(born) && !m.Added.After(born) {
			exited = append(exited, id)
		}
	}
	if id, hp, ok := resolve(pid); ok && (trusted || users[id] || hp == pid) {
		return id, hp, ByTorchName
	}
	if len(users) == 0 && len(exited) == 1 {
		return exited[0], 0, ByTorchName
	}
	return OwnerUnknown, 0, ByFileUID
}

// scan brings st up to date with the directory and the processes: members
// whose process is gone are marked exited at now, new segments get an owner,
// records of removed segments are dropped.
func (d *Domain) scan(st *state, now time.Time) ([]Segment, error) {
	entries, err := os.ReadDir(d.dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.dir, err)
	}
	if len(entries) == 0 {
		// Nothing to attribute (a new group's first scan, or every segment
		// removed): the members' liveness is all there is to bring up to
		// date, without reading every process of the host.
		for _, m := range st.Members {
			if m.Exited.IsZero() && !procAlive(d.opts.ProcRoot, m.PID, m.StartTime) {
				m.Exited = now
			}
		}
		clear(st.Segments)
		return nil, nil
	}
	pt, err := readProcs(d.opts.ProcRoot)
	if err != nil {
		return nil, err
	}
	trees := map[string][]int{} // live member -> its pids
	pidMember := map[int]string{}
	var pids []int
	for _, id := range sortedKeys(st.Members) {
		m := st.Members[id]
		if !m.Exited.IsZero() {
			continue
		}
		if !pt.alive(m.PID, m.StartTime) {
			m.Exited = now
			continue
		}
		trees[id] = pt.tree(m.PID)
		for _, p := range trees[id] {
			pidMember[p] = id
			pids = append(pids, p)
		}
	}
	var dst unix.Stat_t
	if err := unix.Stat(d.dir, &dst); err != nil {
		return nil, fmt.Errorf("stat %s: %w", d.dir, err)
	}
	use := scanUse(d.opts.ProcRoot, d.dir, dst.Dev, pids)
	var nsPIDs map[int][]int // innermost namespaced pid -> host pids, read lazily
	resolve := func(pid int) (string, int, bool) {
		if d.opts.ResolvePID != nil {
			id, ok := d.opts.ResolvePID(pid)
			return id, 0, ok
		}
		if nsPIDs == nil {
			nsPIDs = map[int][]int{}
			for _, p := range pids {
				ns := p
				if v, err := innermostPID(d.opts.ProcRoot, p); err == nil {
					ns = v
				}
				nsPIDs[ns] = append(nsPIDs[ns], p)
			}
		}
		found := map[string]int{}
		if id, ok := pidMember[pid]; ok {
			found[id] = pid
		}
		for _, hp := range nsPIDs[pid] {
			found[pidMember[hp]] = hp
		}
		if len(found) != 1 {
			return "", 0, false
		}
		for id, hp := range found {
			return id, hp, true
		}
		return "", 0, false
	}
	seen := map[string]bool{}
	var segs []Segment
	for _, e := range entries {
		var sx unix.Statx_t
		path := filepath.Join(d.dir, e.Name())
		if err := unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS|unix.STATX_BTIME, &sx); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			return nil, fmt.Errorf("stat segment %s: %w", path, err)
		}
		if sx.Mode&unix.S_IFMT != unix.S_IFREG {
			continue
		}
		name := e.Name()
		seen[name] = true
		key := fileKey{dev: unix.Mkdev(sx.Dev_major, sx.Dev_minor), ino: sx.Ino}
		mapped, open := use.mapped[key], use.open[key]
		if len(mapped) == 0 {
			mapped = use.mappedByName[name]
		}
		var born time.Time // zero where the filesystem keeps no birth time
		if sx.Mask&unix.STATX_BTIME != 0 && sx.Btime.Sec > 0 {
			born = time.Unix(sx.Btime.Sec, int64(sx.Btime.Nsec))
		}
		users := map[string]bool{} // members whose processes map or hold it open
		for _, p := range append(append([]int(nil), mapped...), open...) {
			users[pidMember[p]] = true
		}
		rec := st.Segments[name]
		if rec == nil || rec.Ino != sx.Ino || rec.Owner == OwnerUnknown {
			fresh := &segmentRecord{Ino: sx.Ino, Owner: OwnerUnknown, Attribution: ByFileUID, FirstSeen: now}
			if rec != nil && rec.Ino == sx.Ino {
				fresh.FirstSeen = rec.FirstSeen
			}
			if m := torchName.FindStringSubmatch(name); m != nil {
				if pid, err := strconv.Atoi(m[1]); err == nil {
					fresh.Owner, fresh.OwnerPID, fresh.Attribution = torchOwner(st, pid, born, users, resolve, d.opts.ResolvePID != nil)
				}
			}
			if fresh.Owner == OwnerUnknown {
				for _, c := range []struct {
					pids []int
					how  string
				}{{open, ByOpenFD}, {mapped, ByMapping}} {
					if len(c.pids) > 0 { // pids are sorted: the lowest pid wins
						fresh.Owner, fresh.OwnerPID, fresh.Attribution = pidMember[c.pids[0]], c.pids[0], c.how
						break
					}
				}
			}
			rec = fresh
			st.Segments[name] = rec
		}
		seg := Segment{Name: name, Size: int64(sx.Blocks) * 512, Length: int64(sx.Size),
			Owner: rec.Owner, OwnerPID: rec.OwnerPID, Attribution: rec.Attribution, UID: sx.Uid,
			Created: rec.FirstSeen, MappedBy: mapped, OpenBy: open}
		if !born.IsZero() {
			seg.Created = born
		}
		seg.UsedBy = sortedKeys(users)
		if m := st.Members[rec.Owner]; m != nil && !m.Exited.IsZero() {
			seg.LeaseExpires = m.Exited.Add(d.retention(st))
		}
		segs = append(segs, seg)
	}
	for name := range st.Segments {
		if !seen[name] {
			delete(st.Segments, name)
		}
	}
	sort.Slice(segs, func(i, j int) bool { return segs[i].Name < segs[j].Name })
	return segs, nil
}

func (d *Domain) retention(st *state) time.Duration {
	switch {
	case d.opts.Retention > 0:
		return d.opts.Retention
	case st.Retention > 0:
		return st.Retention
	}
	return DefaultRetention
}

// Watch records segment creations promptly while the runtime runs: it watches
// the domain with inotify and scans (attributing owners) whenever a file is
// created, written and closed, moved in or removed, so that the creator is
// found while it still holds the new file open. Every Options.SweepInterval it
// also runs Reclaim. It returns ctx's error when ctx ends, or an error when
// the domain directory goes away.
func (d *Domain) Watch(ctx context.Context) error {
	return d.WatchPressure(ctx, nil)
}

// WatchPressure is Watch that also calls warn when the group's usage reaches
// WarnPercent of its quota (checked about once a second), and again only
// after usage has fallen below WarnPercent-10 in between. A nil warn is
// Watch.
func (d *Domain) WatchPressure(ctx context.Context, warn func(Pressure)) error {
	var warned bool
	var lastCheck time.Time
	checkPressure := func() {
		if warn == nil || time.Since(lastCheck) < time.Second {
			return
		}
		lastCheck = time.Now()
		// A tmpfs says how full it is for the price of a statfs; the scan
		// that names the owners runs only when it is full enough.
		var fs unix.Statfs_t
		if unix.Statfs(d.dir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC && fs.Blocks > 0 {
			if pct := 100 * float64(fs.Blocks-fs.Bfree) / float64(fs.Blocks); pct < WarnPercent {
				if pct < WarnPercent-10 {
					warned = false
				}
				return
			}
		}
		p, err := d.Pressure(ctx)
		switch {
		case err != nil:
		case p.Warn && !warned:
			warned = true
			warn(p)
		case p.Percent < WarnPercent-10:
			warned = false
		}
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return fmt.Errorf("watch shm group %s: inotify: %w", d.opts.Group, err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: reads use the poller
	defer f.Close()
	const mask = unix.IN_CREATE | unix.IN_CLOSE_WRITE | unix.IN_DELETE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM | unix.IN_ONLYDIR
	if _, err := unix.InotifyAddWatch(fd, d.dir, mask); err != nil {
		return fmt.Errorf("watch shm group %s: inotify on %s: %w", d.opts.Group, d.dir, err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-ctx.Done():
			_ = f.SetReadDeadline(time.Now())
		case <-stop:
		}
	}()
	if _, err := d.Segments(ctx); err != nil {
		return err
	}
	nextSweep := time.Now().Add(d.opts.SweepInterval)
	buf := make([]byte, 64*1024)
	for {
		deadline := time.Now().Add(time.Second)
		if d.opts.SweepInterval > 0 && nextSweep.Before(deadline) {
			deadline = nextSweep
		}
		_ = f.SetReadDeadline(deadline)
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := f.Read(buf)
		if err := ctx.Err(); err != nil {
			return err
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("watch shm group %s: read inotify: %w", d.opts.Group, err)
		}
		if n > 0 {
			gone, scan := false, false
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				if ev.Mask&(unix.IN_IGNORED|unix.IN_UNMOUNT|unix.IN_DELETE_SELF) != 0 {
					gone = true
				}
				// A member closing a segment it wrote (every hand-off
				// that maps one read-write) needs no scan once the
				// segment's owner is known: only new, moved or removed
				// files, and files still unattributed, do.
				name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)], "\x00"))
				if ev.Mask&^unix.IN_CLOSE_WRITE != 0 || !d.attributed(name) {
					scan = true
				}
				off += unix.SizeofInotifyEvent + int(ev.Len)
			}
			if gone {
				return fmt.Errorf("watch shm group %s: %s was removed or unmounted", d.opts.Group, d.dir)
			}
			if scan {
				if _, err := d.Segments(ctx); err != nil {
					return err
				}
			}
		}
		checkPressure()
		if d.opts.SweepInterval > 0 && !time.Now().Before(nextSweep) {
			if _, err := d.Reclaim(ctx, time.Now()); err != nil {
				return err
			}
			nextSweep = time.Now().Add(d.opts.SweepInterval)
		}
	}
}

// attributed reports whether the last state this process loaded or saved
// records segment name with a known owner.
func (d *Domain) attributed(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st == nil {
		return false
	}
	r := d.st.Segments[name]
	return r != nil && r.Owner != OwnerUnknown
}

// procInfo is what a scan needs from /proc/<pid>/stat.
type procInfo struct {
	ppid  int
	start uint64 // clock ticks after boot
	state byte
}

type procTable struct {
	procs    map[int]procInfo
	children map[int][]int
}

func readProcs(root string) (*procTable, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", root, err)
	}
	pt := &procTable{procs: map[int]procInfo{}, children: map[int][]int{}}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readStat(root, pid)
		if err != nil {
			continue // it exited meanwhile
		}
		pt.procs[pid] = p
		pt.children[p.ppid] = append(pt.children[p.ppid], pid)
	}
	return pt, nil
}

func readStat(root string, pid int) (procInfo, error) {
	data, err := os.ReadFile(filepath.Join(root, strconv.Itoa(pid), "stat"))
	if err != nil {
		return procInfo{}, fmt.Errorf("process %d: %w", pid, err)
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')') // comm may hold spaces and parentheses
	if i < 0 {
		return procInfo{}, fmt.Errorf("process %d: malformed stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return procInfo{}, fmt.Errorf("process %d: malformed stat", pid)
	}
	ppid, err1 := strconv.Atoi(f[1])
	start, err2 := strconv.ParseUint(f[19], 10, 64)
	if err1 != nil || err2 != nil {
		return procInfo{}, fmt.Errorf("process %d: malformed stat", pid)
	}
	return procInfo{ppid: ppid, start: start, state: f[0][0]}, nil
}

// alive reports whether pid runs and is the process that started at start.
func (pt *procTable) alive(pid int, start uint64) bool {
	p, ok := pt.procs[pid]
	return ok && p.start == start && p.state != 'Z' && p.state != 'X'
}

// procAlive is procTable.alive for one process, read on its own.
func procAlive(root string, pid int, start uint64) bool {
	p, err := readStat(root, pid)
	return err == nil && p.start == start && p.state != 'Z' && p.state != 'X'
}

// tree returns pid and its descendants, sorted.
func (pt *procTable) tree(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, pt.children[out[i]]...)
	}
	sort.Ints(out)
	return out
}

// innermostPID is the pid of a process in its own pid namespace (the last
// NSpid value of /proc/<pid>/status).
func innermostPID(root string, pid int) (int, error) {
	data, err := os.ReadFile(filepath.Join(root, strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				return strconv.Atoi(f[len(f)-1])
			}
		}
	}
	return 0, fmt.Errorf("process %d: no NSpid", pid)
}

type fileKey struct{ dev, ino uint64 }

// fileUse says which processes map or hold open which files of the domain.
type fileUse struct {
	mapped, open map[fileKey][]int
	mappedByName map[string][]int // by path, for filesystems whose maps show another device
}

// scanUse reads /proc/<pid>/maps and /proc/<pid>/fd of pids and keeps the
// files on device dev (the domain's). Files are matched by device and inode,
// which hold across mount namespaces: a container sees the domain at
// /dev/shm, the runtime elsewhere.
func scanUse(root, dir string, dev uint64, pids []int) fileUse {
	mapped := map[fileKey]map[int]bool{}
	open := map[fileKey]map[int]bool{}
	byName := map[string]map[int]bool{}
	add := func(m map[fileKey]map[int]bool, k fileKey, pid int) {
		if m[k] == nil {
			m[k] = map[int]bool{}
		}
		m[k][pid] = true
	}
	for _, pid := range pids {
		base := filepath.Join(root, strconv.Itoa(pid))
		if data, err := os.ReadFile(filepath.Join(base, "maps")); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				f := strings.Fields(line)
				if len(f) < 6 {
					continue
				}
				maj, min, ok := strings.Cut(f[3], ":")
				ma, err1 := strconv.ParseUint(maj, 16, 32)
				mi, err2 := strconv.ParseUint(min, 16, 32)
				ino, err3 := strconv.ParseUint(f[4], 10, 64)
				if !ok || err1 != nil || err2 != nil || err3 != nil || ino == 0 {
					continue
				}
				if k := (fileKey{unix.Mkdev(uint32(ma), uint32(mi)), ino}); k.dev == dev {
					add(mapped, k, pid)
					continue
				}
				path := strings.Join(f[5:], " ")
				if name, ok := strings.CutPrefix(path, dir+"/"); ok && !strings.Contains(name, "/") && !strings.HasSuffix(name, " (deleted)") {
					if byName[name] == nil {
						byName[name] = map[int]bool{}
					}
					byName[name][pid] = true
				}
			}
		}
		fds, err := os.ReadDir(filepath.Join(base, "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			p := filepath.Join(base, "fd", fd.Name())
			if target, err := os.Readlink(p); err != nil || !strings.HasPrefix(target, "/") {
				continue // sockets, pipes, anon inodes
			}
			var st unix.Stat_t
			if unix.Stat(p, &st) == nil && st.Dev == dev {
				add(open, fileKey{st.Dev, st.Ino}, pid)
			}
		}
	}
	flatten := func(m map[int]bool) []int {
		out := make([]int, 0, len(m))
		for p := range m {
			out = append(out, p)
		}
		sort.Ints(out)
		return out
	}
	u := fileUse{mapped: map[fileKey][]int{}, open: map[fileKey][]int{}, mappedByName: map[string][]int{}}
	for k, v := range mapped {
		u.mapped[k] = flatten(v)
	}
	for k, v := range open {
		u.open[k] = flatten(v)
	}
	for k, v := range byName {
		u.mappedByName[k] = flatten(v)
	}
	return u
}
