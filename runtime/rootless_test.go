package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestDefaultStateRootFor(t *testing.T) {
	tests := []struct {
		name string
		euid int
		xdg  string
		want string
	}{
		{"root", 0, "/run/user/0", DefaultRoot},
		{"user with XDG_RUNTIME_DIR", 1000, "/run/user/1000", "/run/user/1000/pyisolate"},
		{"user without it", 1000, "", filepath.Join(os.TempDir(), "pyisolate-1000")},
		{"relative XDG_RUNTIME_DIR is ignored", 1000, "run/user", filepath.Join(os.TempDir(), "pyisolate-1000")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := defaultStateRootFor(tc.euid, tc.xdg); got != tc.want {
				t.Errorf("defaultStateRootFor(%d, %q) = %q, want %q", tc.euid, tc.xdg, got, tc.want)
			}
		})
	}
}

// TestEnsureRootlessDir: the state root is the caller's own 0700
// directory; one planted by another user, or a symbolic link, is refused
// with an error naming it.
func TestEnsureRootlessDir(t *testing.T) {
	base := t.TempDir()
	mine := filepath.Join(base, "a", "pyisolate")
	if err := ensureRootlessDir(mine); err != nil {
		t.Fatalf("new root: %v", err)
	}
	if fi, err := os.Stat(mine); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("new root mode %v (%v), want 0700", fi.Mode(), err)
	}
	if err := os.Chmod(mine, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := ensureRootlessDir(mine); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(mine); fi.Mode().Perm() != 0o700 {
		t.Errorf("an open root was left %v, want 0700", fi.Mode().Perm())
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(mine, link); err != nil {
		t.Fatal(err)
	}
	if err := ensureRootlessDir(link); err == nil || !strings.Contains(err.Error(), link) {
		t.Errorf("a symbolic link as root: %v, want an error naming it", err)
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(base, "other")
		if err := os.Mkdir(other, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(other, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		if err := ensureRootlessDir(other); err == nil || !strings.Contains(err.Error(), "belongs to uid 4242") {
			t.Errorf("a root owned by another user: %v, want refused", err)
		}
	}
}

func TestRootlessIDMappings(t *testing.T) {
	etc := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("subuid", "other:100000:65536\n# comment\n4321:200000:65536\n4321:900000:10\n")
	write("subgid", "4321:300000:1000\n")
	found := func(string) (string, error) { return "/usr/bin/newuidmap", nil }
	missing := func(string) (string, error) { return "", errors.New("not found") }
	one := func(id uint32) []specs.LinuxIDMapping {
		return []specs.LinuxIDMapping{{ContainerID: 0, HostID: id, Size: 1}}
	}

	uids, gids, note := rootlessIDMappings(4321, 4322, etc, missing)
	if len(uids) != 1 || uids[0] != one(4321)[0] || len(gids) != 1 || gids[0] != one(4322)[0] {
		t.Errorf("without newuidmap: %v %v, want the single mapping of 4321/4322", uids, gids)
	}
	if !strings.Contains(note, "uidmap") {
		t.Errorf("note %q does not name the missing package", note)
	}
	uids, gids, note = rootlessIDMappings(4321, 4322, etc, found)
	wantU := append(one(4321), specs.LinuxIDMapping{ContainerID: 1, HostID: 200000, Size: 65536})
	wantG := append(one(4322), specs.LinuxIDMapping{ContainerID: 1, HostID: 300000, Size: 1000})
	if len(uids) != 2 || uids[1] != wantU[1] || len(gids) != 2 || gids[1] != wantG[1] {
		t.Errorf("with newuidmap and ranges: %v %v, want %v %v", uids, gids, wantU, wantG)
	}
	if !strings.Contains(note, "200000-265535") {
		t.Errorf("note %q", note)
	}
	uids, _, note = rootlessIDMappings(5555, 5555, etc, found)
	if len(uids) != 1 || !strings.Contains(note, "no range") {
		t.Errorf("a user without ranges: %v (%q), want the single mapping", uids, note)
	}
}

// TestLinkGroupsDir: <root>/groups becomes a link to a private 0700
// directory in the shared-memory tmpfs, kept while usable, replaced when
// stale; on no tmpfs nothing is linked (file-backed groups, said by
// tensoripc).
func TestLinkGroupsDir(t *testing.T) {
	if !onTmpfsPath(ShmPath) {
		t.Skip("skipped: /dev/shm is not a tmpfs here")
	}
	shm, err := os.MkdirTemp(ShmPath, "rootless-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	root := filepath.Join(t.TempDir(), "pyisolate")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	euid := os.Geteuid()
	if err := linkGroupsDir(root, shm, euid); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(root, groupsDir)
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatalf("groups is no link: %v", err)
	}
	if !ownShmDir(shm, target, euid) {
		t.Fatalf("target %s is not a private directory of uid %d on the tmpfs", target, euid)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Join(link, "."), &fs); err != nil || fs.Type != tmpfsMagic {
		t.Errorf("groups does not lead to a tmpfs: type %#x (%v)", fs.Type, err)
	}
	if err := linkGroupsDir(root, shm, euid); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Readlink(link); again != target {
		t.Errorf("a usable link was replaced: %s, then %s", target, again)
	}
	// Stale: the tmpfs directory is gone (a reboot kept the root).
	if err := os.Remove(target); err != nil {
		t.Fatal(err)
	}
	if err := linkGroupsDir(root, shm, euid); err != nil {
		t.Fatal(err)
	}
	if fresh, _ := os.Readlink(link); fresh == target || !ownShmDir(shm, fresh, euid) {
		t.Errorf("a stale link was not renewed: %s", fresh)
	}
	// Not ours: a directory of another uid is not accepted.
	if ownShmDir(shm, target, euid+1) {
		t.Errorf("ownShmDir accepted another uid")
	}
	// A state root without a tmpfs to link to keeps a plain directory.
	plain := filepath.Join(t.TempDir(), "pyisolate")
	if err := os.Mkdir(plain, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := linkGroupsDir(plain, t.TempDir(), euid); err != nil {
		t.Fatal(err)
	}
	if onTmpfsPath(os.TempDir()) {
		return
	}
	if _, err := os.Lstat(filepath.Join(plain, groupsDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a groups link was made without a tmpfs: %v", err)
	}
}

// TestFindDelegation: a delegated cgroup v2 subtree is found from
// /proc/self/cgroup when its files belong to the user and it has the memory
// and pids controllers; otherwise the reason says what is missing.
func TestFindDelegation(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: the fake cgroup files are chowned to a test uid, which needs root")
	}
	const own = "/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.scope"
	tests := []struct {
		name        string
		version     string
		owner       int
		controllers string
		want        string // "" for delegated, else a substring of the reason
	}{
		{"delegated", CgroupV2, 1000, "cpu memory pids", ""},
		{"hybrid", CgroupHybrid, 1000, "cpu memory pids", "hybrid"},
		{"not the user's", CgroupV2, 0, "cpu memory pids", "not delegated to uid 1000"},
		{"no memory controller", CgroupV2, 1000, "cpu pids", "lacks the memory controller"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := baseFiles()
			files["proc/self/cgroup"] = "0::" + own + "\n"
			dir := "sys/fs/cgroup" + own
			files[dir+"/cgroup.procs"] = "1234\n"
			files[dir+"/cgroup.subtree_control"] = ""
			files[dir+"/cgroup.controllers"] = tc.controllers + "\n"
			root := fakeRoot(t, files)
			for _, f := range []string{"cgroup.procs", "cgroup.subtree_control"} {
				if err := os.Chown(filepath.Join(root, dir, f), tc.owner, tc.owner); err != nil {
					t.Fatal(err)
				}
			}
			p := &Profile{CgroupVersion: tc.version, CgroupV2Path: "/sys/fs/cgroup"}
			d, why := findDelegation(fakeEnv(root, nil), 1000, p)
			if tc.want == "" {
				if d == nil || d.Path != own || d.ContainerCgroupPath("c1") != own+"/pyisolate/c1" {
					t.Fatalf("delegation %+v (%s), want %s", d, why, own)
				}
				return
			}
			if d != nil || !strings.Contains(why, tc.want) {
				t.Errorf("delegation %+v, reason %q; want none because %q", d, why, tc.want)
			}
		})
	}
}

// TestPrepareDelegation: the delegated cgroup's processes move to its leaf
// pyisolate-runner, and the controllers are enabled for its children and
// for pyisolate/, on plain files standing in for cgroupfs.
func TestPrepareDelegation(t *testing.T) {
	dir := t.TempDir()
	for f, c := range map[string]string{"cgroup.procs": "1234\n", "cgroup.subtree_control": "pids\n"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d := &CgroupDelegation{Path: "/x.scope", Dir: dir, Controllers: []string{"cpu", "memory", "pids"}}
	if err := PrepareDelegation(d); err != nil {
		t.Fatal(err)
	}
	read := func(p string) string {
		b, _ := os.ReadFile(filepath.Join(dir, p))
		return string(b)
	}
	if got := read("pyisolate-runner/cgroup.procs"); got != "1234" {
		t.Errorf("runner leaf's cgroup.procs = %q, want the moved pid", got)
	}
	if got := read("cgroup.subtree_control"); got != "+memory +cpu" {
		t.Errorf("subtree_control written %q, want the missing controllers", got)
	}
	if got := read("pyisolate/cgroup.subtree_control"); got != "+memory +pids +cpu" {
		t.Errorf("pyisolate/cgroup.subtree_control = %q", got)
	}
}
