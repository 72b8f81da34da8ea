package tensoripc

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCreateTmpfs(t *testing.T) {
	d := newDomain(t, true, Options{Size: 4 << 20})
	var fs unix.Statfs_t
	if err := unix.Statfs(d.Dir(), &fs); err != nil {
		t.Fatal(err)
	}
	if fs.Type != unix.TMPFS_MAGIC {
		t.Errorf("filesystem type %#x, want tmpfs %#x", fs.Type, unix.TMPFS_MAGIC)
	}
	if got := int64(fs.Blocks) * fs.Bsize; got != 4<<20 {
		t.Errorf("tmpfs size %d, want %d", got, 4<<20)
	}
	for _, f := range []struct {
		bit  int64
		name string
	}{{unix.ST_NOSUID, "nosuid"}, {unix.ST_NODEV, "nodev"}, {unix.ST_NOEXEC, "noexec"}} {
		if fs.Flags&f.bit == 0 {
			t.Errorf("tmpfs mounted without %s (flags %#x)", f.name, fs.Flags)
		}
	}
	fi, err := os.Stat(d.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Errorf("mode %v, want drwxrwxrwt", fi.Mode())
	}
	if d.FileBacked() || len(d.Warnings()) != 0 {
		t.Errorf("FileBacked %v, warnings %q; want a tmpfs without warnings", d.FileBacked(), d.Warnings())
	}
	if _, err := Create(context.Background(), d.Dir(), Options{}); err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Errorf("second Create: %v, want already exists", err)
	}
	o, err := Open(d.Dir(), Options{})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if o.Group() != "g" || o.FileBacked() {
		t.Errorf("Open: group %q file-backed %v, want g on tmpfs", o.Group(), o.FileBacked())
	}
}

func TestDestroyUnmountsAndRemoves(t *testing.T) {
	for _, busy := range []bool{false, true} {
		t.Run(map[bool]string{false: "idle", true: "busy"}[busy], func(t *testing.T) {
			needRoot(t)
			dir := filepath.Join(t.TempDir(), "shm")
			d, err := Create(context.Background(), dir, Options{Size: 1 << 20})
			if err != nil {
				t.Fatal(err)
			}
			if m, _ := isMountPoint(dir); !m {
				t.Fatalf("%s not mounted after Create", dir)
			}
			if busy { // an open file makes umount(2) fail with EBUSY
				f, err := os.Create(filepath.Join(dir, "held"))
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := unix.Unmount(dir, 0); !errors.Is(err, unix.EBUSY) {
					t.Fatalf("plain unmount of a busy tmpfs: %v, want EBUSY", err)
				}
			}
			if err := d.Destroy(context.Background()); err != nil {
				t.Fatalf("Destroy: %v", err)
			}
			if m, _ := isMountPoint(dir); m {
				unix.Unmount(dir, unix.MNT_DETACH)
				t.Fatalf("%s still mounted after Destroy", dir)
			}
			if exists(t, dir) || exists(t, d.StateDir()) {
				t.Errorf("Destroy left %s or %s", dir, d.StateDir())
			}
		})
	}
}

func TestCreateFallback(t *testing.T) {
	tests := []struct {
		name       string
		mountErr   error
		wantErr    error
		fileBacked bool
		// onTmpfs: the directory lies on a tmpfs already (rootless, in
		// the host's /dev/shm): shared memory without a mount of its own.
		onTmpfs bool
	}{
		{"EPERM falls back", unix.EPERM, nil, true, false},
		{"EACCES falls back", unix.EACCES, nil, true, false},
		{"ENODEV falls back", unix.ENODEV, nil, true, false},
		{"EINVAL is an error", unix.EINVAL, unix.EINVAL, false, false},
		{"EPERM on a tmpfs shares it", unix.EPERM, nil, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "shm")
			var gotData string
			mount := func(_, _, fstype string, flags uintptr, data string) error {
				gotData = data
				if fstype != "tmpfs" || flags != unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC {
					t.Errorf("mount %s flags %#x, want tmpfs nosuid,nodev,noexec", fstype, flags)
				}
				return tt.mountErr
			}
			isTmpfs := func(string) bool { return tt.onTmpfs }
			d, err := Create(context.Background(), dir, Options{Group: "g", Size: 1 << 20, Mount: mount, NoHugePages: true, IsTmpfs: isTmpfs})
			if gotData != "size=1048576,mode=1777" {
				t.Errorf("mount data %q", gotData)
			}
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Create: %v, want %v", err, tt.wantErr)
				}
				if exists(t, filepath.Join(dir+".state", stateFile)) {
					t.Errorf("failed Create left state behind")
				}
				return
			}
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			defer d.Destroy(context.Background())
			want := FileBackedWarning
			if tt.onTmpfs {
				want = SharedTmpfsWarning
			}
			if d.FileBacked() != tt.fileBacked || d.SharedTmpfs() != tt.onTmpfs {
				t.Errorf("after %v: FileBacked %v, SharedTmpfs %v; want %v, %v", tt.mountErr, d.FileBacked(), d.SharedTmpfs(), tt.fileBacked, tt.onTmpfs)
			}
			if w := d.Warnings(); len(w) != 1 || !strings.Contains(w[0], want) {
				t.Errorf("warnings %q, want one with %q", w, want)
			}
			fi, err := os.Stat(dir)
			if err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
				t.Errorf("fallback dir mode %v (%v), want drwxrwxrwt", fi.Mode(), err)
			}
			o, err := Open(dir, Options{})
			if err != nil || o.FileBacked() != tt.fileBacked || o.SharedTmpfs() != tt.onTmpfs || len(o.Warnings()) != 1 {
				t.Errorf("Open of the domain: %v, file-backed %v", err, o != nil && o.FileBacked())
			}
			if err := d.Destroy(context.Background()); err != nil || exists(t, dir) {
				t.Errorf("Destroy: %v, dir left: %v", err, exists(t, dir))
			}
		})
	}
}

func TestCreateRefusesNonEmptyDir(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "x"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Create(context.Background(), dir, Options{Mount: eperm}); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("Create on a non-empty dir: %v, want not empty", err)
	}
}

func TestOpenMissing(t *testing.T) {
	if _, err := Open(filepath.Join(t.TempDir(), "nothing"), Options{}); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Open of no domain: %v, want not-exist error", err)
	}
}

func TestDefaultSize(t *testing.T) {
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		t.Fatal(err)
	}
	half := int64(si.Freeram) * int64(si.Unit) / 2
	s := DefaultSize()
	page := int64(os.Getpagesize())
	if s <= 0 || s > 1<<30 || s%page != 0 {
		t.Fatalf("DefaultSize %d: want 0 < size <= 1 GiB, whole pages", s)
	}
	// free memory moves between the two readings: allow 64 MiB of drift
	if s < 1<<30 && (s > half+64<<20 || s < half-64<<20) {
		t.Errorf("DefaultSize %d, half of free memory %d", s, half)
	}
}

// TestCreateHugePages: the group's tmpfs asks for huge=within_size where the
// kernel allows shmem huge pages, not when the kernel denies them, not with
// NoHugePages, and falls back to small pages when the option is refused.
func TestCreateHugePages(t *testing.T) {
	dir := t.TempDir()
	allowed, denied := filepath.Join(dir, "allowed"), filepath.Join(dir, "denied")
	os.WriteFile(allowed, []byte("always within_size advise [never] deny force\n"), 0o644)
	os.WriteFile(denied, []byte("always within_size advise never [deny] force\n"), 0o644)
	saved := shmemHugePagesFile
	t.Cleanup(func() { shmemHugePagesFile = saved })
	for _, tc := range []struct {
		name    string
		file    string
		opts    Options
		refuse  bool // the fake mount refuses huge= with EINVAL
		want    []string
		mounted bool
	}{
		{name: "allowed", file: allowed, want: []string{"size=1048576,mode=1777,huge=within_size"}, mounted: true},
		{name: "denied", file: denied, want: []string{"size=1048576,mode=1777"}, mounted: true},
		{name: "no kernel support", file: filepath.Join(dir, "missing"), want: []string{"size=1048576,mode=1777"}, mounted: true},
		{name: "NoHugePages", file: allowed, opts: Options{NoHugePages: true}, want: []string{"size=1048576,mode=1777"}, mounted: true},
		{name: "option refused", file: allowed, refuse: true,
			want: []string{"size=1048576,mode=1777,huge=within_size", "size=1048576,mode=1777"}, mounted: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			shmemHugePagesFile = tc.file
			var got []string
			opts := tc.opts
			opts.Size = 1 << 20
			opts.Mount = func(_, _, _ string, _ uintptr, data string) error {
				got = append(got, data)
				if tc.refuse && strings.Contains(data, "huge=") {
					return unix.EINVAL
				}
				return nil // nothing mounted: the directory stays plain
			}
			d, err := Create(context.Background(), filepath.Join(t.TempDir(), "shm"), opts)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, " | ") != strings.Join(tc.want, " | ") {
				t.Errorf("mount data %q, want %q", got, tc.want)
			}
			if d.FileBacked() == tc.mounted {
				t.Errorf("FileBacked %v", d.FileBacked())
			}
		})
	}
	// For real, where the kernel allows it: the option is in the mount.
	shmemHugePagesFile = saved
	if os.Geteuid() != 0 || !shmemHugePages() {
		t.Skip("the real mount needs root and a kernel with shmem huge pages allowed")
	}
	d := newDomain(t, true, Options{Size: 4 << 20})
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == d.Dir() {
			if !strings.Contains(line, "huge=within_size") {
				t.Errorf("tmpfs mounted without huge=within_size: %s", line)
			}
			return
		}
	}
	t.Errorf("%s not in mountinfo", d.Dir())
}

// TestCreateSharedTmpfsReal: where mounting is refused (as for a rootless
// runtime) a domain made in a directory of the real /dev/shm tmpfs is shared
// memory, not file-backed: statfs sees the tmpfs, and the quota is watched.
func TestCreateSharedTmpfsReal(t *testing.T) {
	if !onTmpfs("/dev/shm") {
		t.Skip("skipped: /dev/shm is not a tmpfs on this host")
	}
	base, err := os.MkdirTemp("/dev/shm", "tensoripc-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	d, err := Create(context.Background(), filepath.Join(base, "shm"), Options{Group: "g", Size: 1 << 20, Mount: eperm})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	defer d.Destroy(context.Background())
	if d.FileBacked() || !d.SharedTmpfs() {
		t.Errorf("FileBacked %v, SharedTmpfs %v; want false, true", d.FileBacked(), d.SharedTmpfs())
	}
	u, err := d.Usage(context.Background())
	if err != nil || u.Quota != 1<<20 {
		t.Errorf("Usage: quota %d (%v), want the configured 1 MiB", u.Quota, err)
	}
	if onTmpfs(t.TempDir()) != isTmpfsByMountinfo(t, t.TempDir()) {
		t.Errorf("onTmpfs disagrees with mountinfo for %s", t.TempDir())
	}
}

// isTmpfsByMountinfo reports whether the longest mount point holding dir is
// a tmpfs, by /proc/self/mountinfo.
func isTmpfsByMountinfo(t *testing.T, dir string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Skip(err)
	}
	best, typ := "", ""
	for _, l := range strings.Split(string(b), "\n") {
		pre, post, ok := strings.Cut(l, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 1 {
			continue
		}
		mp := f[4]
		if (dir == mp || strings.HasPrefix(dir, strings.TrimSuffix(mp, "/")+"/")) && len(mp) >= len(best) {
			best, typ = mp, g[0]
		}
	}
	return typ == "tmpfs"
}
