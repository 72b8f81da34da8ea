package detect

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

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
