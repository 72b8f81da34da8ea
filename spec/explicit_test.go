package spec

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestCheckExplicit(t *testing.T) {
	user := t.TempDir() // under /tmp: a user path
	link := filepath.Join(user, "etc-link")
	if err := os.Symlink("/etc", link); err != nil {
		t.Fatal(err)
	}
	bind := func(src, dst string) ExplicitMount { return ExplicitMount{Kind: MountBind, Source: src, Dest: dst} }
	ro := func(src, dst string) ExplicitMount { return ExplicitMount{Kind: MountROBind, Source: src, Dest: dst} }
	for _, tc := range []struct {
		name    string
		m       ExplicitMount
		want    ExplicitMount // when no error
		wantErr string
	}{
		{"system dir read-only", ro("/usr", "/usr"), ro("/usr", "/usr"), ""},
		{"below a system dir", ro("/usr/lib", "/usr/lib"), ro("/usr/lib", "/usr/lib"), ""},
		{"system dir read-write", bind("/usr", "/usr"), ExplicitMount{}, "only bound read-only"},
		{"etc allow list", ro("/etc/passwd", "/etc/passwd"), ro("/etc/passwd", "/etc/passwd"), ""},
		{"etc itself", ro("/etc", "/etc"), ExplicitMount{}, "forbidden"},
		{"etc other file", ro("/etc/shadow", "/etc/shadow"), ExplicitMount{}, "under /etc"},
		{"root", ro("/", "/host"), ExplicitMount{}, "forbidden"},
		{"home itself", bind("/home", "/home"), ExplicitMount{}, "forbidden"},
		{"sys read-only", ro("/sys", "/sys"), ExplicitMount{Kind: MountSysfs, Source: "/sys", Dest: "/sys"}, ""},
		{"sys read-write", bind("/sys", "/sys"), ExplicitMount{}, "only given read-only"},
		{"host shm", bind("/dev/shm", "/dev/shm"), bind("/dev/shm", "/dev/shm"), ""},
		{"host shm elsewhere", bind("/dev/shm", "/x"), ExplicitMount{}, "only bound at"},
		{"dev", bind("/dev", "/dev"), ExplicitMount{}, "forbidden"},
		{"user path", bind(user, user), ExplicitMount{Kind: MountBind, Source: user, Dest: user, Pin: true}, ""},
		{"symlink to etc", ro(link, "/x"), ExplicitMount{}, "forbidden"},
		{"missing", ro(filepath.Join(user, "nope"), "/x"), ExplicitMount{}, "Can't find source path"},
		{"onto root", ro("/usr", "/"), ExplicitMount{}, "nothing is mounted on /"},
		{"relative dest", ro("/usr", "usr"), ExplicitMount{}, "not an absolute path"},
		{"proc elsewhere", ExplicitMount{Kind: MountProc, Dest: "/p"}, ExplicitMount{}, "only mounted at /proc"},
		{"dev elsewhere", ExplicitMount{Kind: MountDev, Dest: "/d"}, ExplicitMount{}, "only mounted at /dev"},
		{"dev-bind of a non-GPU device", ExplicitMount{Kind: MountDevBind, Source: "/dev/null", Dest: "/dev/null"}, ExplicitMount{}, "not a GPU device"},
		{"tmpfs", ExplicitMount{Kind: MountTmpfs, Dest: "/tmp/"}, ExplicitMount{Kind: MountTmpfs, Dest: "/tmp"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CheckExplicit(&Explicit{Mounts: []ExplicitMount{tc.m}}, 1000)
			if tc.wantErr != "" {
				var me *MountError
				if !errors.As(err, &me) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a *MountError saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Mounts) != 1 || got.Mounts[0] != tc.want {
				t.Fatalf("mounts = %+v, want %+v", got.Mounts, tc.want)
			}
		})
	}
}

func TestCheckExplicitSocketDir(t *testing.T) {
	// The caller's own /run/user/<uid>/pyisolate is allowed, another
	// user's is not. Only checked where it exists.
	uid := os.Getuid()
	own := SocketDirFor(uid)
	if _, err := os.Stat(own); err != nil {
		t.Skipf("skipped: %s does not exist here", own)
	}
	if _, err := CheckExplicit(&Explicit{Mounts: []ExplicitMount{{Kind: MountBind, Source: own, Dest: own}}}, uid); err != nil {
		t.Errorf("own socket directory: %v", err)
	}
	if _, err := CheckExplicit(&Explicit{Mounts: []ExplicitMount{{Kind: MountBind, Source: own, Dest: own}}}, uid+1); err == nil {
		t.Errorf("another user's socket directory was allowed")
	}
}

func TestBuildExplicit(t *testing.T) {
	h := Host{Restriction: RestrictionNone, Seccomp: true, MemTotal: 8 << 30}
	r := &Explicit{
		Name: "bwrap", Hostname: "h",
		Mounts: []ExplicitMount{
			{Kind: MountProc, Dest: "/proc"}, {Kind: MountDev, Dest: "/dev"}, {Kind: MountTmpfs, Dest: "/tmp"},
			{Kind: MountROBind, Source: "/usr", Dest: "/usr"},
			{Kind: MountDir, Dest: "/run"}, {Kind: MountDir, Dest: "/run/user"},
			{Kind: MountDir, Dest: "/tmp/sub"}, {Kind: MountDir, Dest: "/tmp"},
			{Kind: MountBind, Source: "/home/u/m", Dest: "/home/u/m", Pin: true},
		},
		Args: []string{"/usr/bin/python3", "-m", "x"}, Env: []string{"A=1"},
	}
	o := Options{ID: "c1", Rootfs: "/state/rootfs/c1",
		UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 1}},
		GIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 1}}}
	es, err := BuildExplicit(r, h, o)
	if err != nil {
		t.Fatal(err)
	}
	s := es.Spec
	var dests []string
	for _, m := range s.Mounts {
		dests = append(dests, m.Type+":"+m.Destination)
	}
	want := []string{"proc:/proc", "tmpfs:/dev", "devpts:/dev/pts", "tmpfs:/dev/shm", "tmpfs:/tmp", "bind:/usr", "tmpfs:/tmp/sub", "bind:/home/u/m"}
	if !slices.Equal(dests, want) {
		t.Errorf("mounts = %v, want %v", dests, want)
	}
	if !slices.Equal(es.Dirs, []string{"/run", "/run/user"}) {
		t.Errorf("dirs = %v", es.Dirs)
	}
	p := s.Process
	if !p.NoNewPrivileges || len(p.Capabilities.Bounding) != 0 || len(p.Capabilities.Effective) != 0 {
		t.Errorf("process not hardened: %+v", p)
	}
	if p.Cwd != "/" || !slices.Equal(p.Env, []string{"A=1"}) || !s.Root.Readonly || s.Hostname != "h" {
		t.Errorf("process %+v root %+v hostname %q", p, s.Root, s.Hostname)
	}
	l := s.Linux
	if l.Seccomp == nil || l.Resources.Pids == nil || l.Resources.Memory == nil || l.CgroupsPath != "/pyisolate/c1" {
		t.Errorf("hardening or limits missing: %+v", l)
	}
	for _, ns := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace,
		specs.MountNamespace, specs.CgroupNamespace, specs.NetworkNamespace, specs.UserNamespace} {
		if !slices.ContainsFunc(l.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == ns }) {
			t.Errorf("no %s namespace", ns)
		}
	}
	if l.UIDMappings[0].HostID != 1000 || len(l.UIDMappings) != 1 {
		t.Errorf("uid mappings %+v", l.UIDMappings)
	}
	if got := PinnedPaths(s); !slices.Equal(got, []string{"/home/u/m"}) {
		t.Errorf("pinned paths %v", got)
	}

	// Network shared, no /proc and /dev asked: both added anyway, no netns.
	r2 := &Explicit{Args: []string{"/bin/true"}, Network: true}
	es, err = BuildExplicit(r2, h, o)
	if err != nil {
		t.Fatal(err)
	}
	if es.Spec.Mounts[0].Destination != "/proc" || es.Spec.Mounts[1].Destination != "/dev" {
		t.Errorf("no /proc and /dev first: %+v", es.Spec.Mounts)
	}
	if slices.ContainsFunc(es.Spec.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace }) {
		t.Errorf("network namespace despite a shared network")
	}

	// --dir inside a bind is refused.
	r3 := &Explicit{Args: []string{"/bin/true"}, Mounts: []ExplicitMount{
		{Kind: MountBind, Source: "/home/u/m", Dest: "/home/u/m"}, {Kind: MountDir, Dest: "/home/u/m/d"}}}
	if _, err := BuildExplicit(r3, h, o); err == nil || !strings.Contains(err.Error(), "--dir /home/u/m/d") {
		t.Errorf("dir inside a bind: %v", err)
	}

	// A rootless host without delegation drops the limits and says so.
	hr := h
	hr.Rootless = true
	es, err = BuildExplicit(r2, hr, o)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(DegradedList(es.Spec), string(DropCgroupLimits)) || es.Spec.Linux.Resources.Pids != nil {
		t.Errorf("rootless: degraded %v, pids %+v", DegradedList(es.Spec), es.Spec.Linux.Resources.Pids)
	}
}
