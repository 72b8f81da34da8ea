package warm

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// memberSpec is a spec as spec.Build makes it for an extension: python -m,
// no capabilities, no_new_privs, own user and pid namespaces.
func memberSpec() *specs.Spec {
	return &specs.Spec{
		Root: &specs.Root{Path: "/state/rootfs/ext-1", Readonly: true},
		Process: &specs.Process{
			Args:            []string{"/usr/bin/python3", "-m", "ext"},
			Env:             []string{"PATH=/usr/bin", "PYTHONUNBUFFERED=1", "HOME=/tmp"},
			Cwd:             "/mods",
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Permitted: []string{}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.UserNamespace}, {Type: specs.PIDNamespace}, {Type: specs.MountNamespace},
				{Type: specs.IPCNamespace},
			},
			UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
			GIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
			CgroupsPath: "/pyisolate/ext-1",
			Resources:   &specs.LinuxResources{},
			Seccomp:     &specs.LinuxSeccomp{DefaultAction: specs.ActErrno},
		},
		Annotations: map[string]string{spec.AnnotationGroup: "g"},
	}
}

func TestEligible(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(s *specs.Spec, m *spec.Manifest)
		want   string // "" eligible, else a part of the reason
	}{
		{"module", func(*specs.Spec, *spec.Manifest) {}, ""},
		{"code", func(s *specs.Spec, _ *spec.Manifest) { s.Process.Args = []string{"/v/bin/python", "-c", "pass"} }, ""},
		{"script", func(s *specs.Spec, _ *spec.Manifest) {
			s.Process.Args = []string{"/usr/bin/python3.11", "/m/run.py", "-x"}
		}, ""},
		{"no preload", func(_ *specs.Spec, m *spec.Manifest) { m.Preload = nil }, "no preload list"},
		{"not python", func(s *specs.Spec, _ *spec.Manifest) { s.Process.Args = []string{"/bin/sh", "-c", "x"} }, "does not run a Python interpreter"},
		{"interpreter flag", func(s *specs.Spec, _ *spec.Manifest) { s.Process.Args = []string{"/usr/bin/python3", "-u", "x.py"} }, "is not PYTHON"},
		{"terminal", func(s *specs.Spec, _ *spec.Manifest) { s.Process.Terminal = true }, "terminal"},
		{"capabilities", func(s *specs.Spec, _ *spec.Manifest) { s.Process.Capabilities.Bounding = []string{"CAP_KILL"} }, "capabilities"},
		{"capabilities unset", func(s *specs.Spec, _ *spec.Manifest) { s.Process.Capabilities = nil }, "capabilities"},
		{"no nnp", func(s *specs.Spec, _ *spec.Manifest) { s.Process.NoNewPrivileges = false }, "no_new_privileges"},
		{"apparmor", func(s *specs.Spec, _ *spec.Manifest) { s.Process.ApparmorProfile = "x" }, "AppArmor"},
		{"no userns", func(s *specs.Spec, _ *spec.Manifest) { s.Linux.Namespaces = s.Linux.Namespaces[1:] }, "no user or pid namespace"},
		{"joined pidns", func(s *specs.Spec, _ *spec.Manifest) { s.Linux.Namespaces[1].Path = "/proc/1/ns/pid" }, "no user or pid namespace"},
		{"two ranges", func(s *specs.Spec, _ *spec.Manifest) {
			s.Linux.UIDMappings = append(s.Linux.UIDMappings, specs.LinuxIDMapping{ContainerID: 70000, HostID: 1, Size: 1})
		}, "single-range"},
		{"joined ipc", func(s *specs.Spec, _ *spec.Manifest) { s.Linux.Namespaces[3].Path = "/proc/7/ns/ipc" }, "joins the ipc namespace /proc/7/ns/ipc"},
		{"listener", func(s *specs.Spec, _ *spec.Manifest) { s.Linux.Seccomp.ListenerPath = "/x" }, "listener"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, mm := memberSpec(), &spec.Manifest{Preload: []string{"torch"}}
			tc.change(s, mm)
			got := Eligible(s, mm)
			if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
				t.Errorf("Eligible = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestKey(t *testing.T) {
	m := &spec.Manifest{Preload: []string{"torch", "numpy"}, Venv: "/v"}
	base := KeyOf(memberSpec(), m, "g")
	if base.Python != "/usr/bin/python3" || !slices.Equal(base.PythonEnv, []string{"HOME=/tmp", "PATH=/usr/bin", "PYTHONUNBUFFERED=1"}) {
		t.Fatalf("key %+v", base)
	}
	// What does not change the interpreter's start does not change the key.
	s := memberSpec()
	s.Process.Env = append(s.Process.Env, "OTHER=1")
	s.Process.Args = []string{"/usr/bin/python3", "-c", "other"}
	if KeyOf(s, m, "g").Hash() != base.Hash() {
		t.Error("a different command or non-Python variable changed the key")
	}
	for name, k := range map[string]Key{
		"group":   KeyOf(memberSpec(), m, "h"),
		"preload": KeyOf(memberSpec(), &spec.Manifest{Preload: []string{"numpy", "torch"}, Venv: "/v"}, "g"),
		"venv":    KeyOf(memberSpec(), &spec.Manifest{Preload: m.Preload}, "g"),
		"python env": func() Key {
			s := memberSpec()
			s.Process.Env = append(s.Process.Env, "PYTHONPATH=/x")
			return KeyOf(s, m, "g")
		}(),
		"interpreter": func() Key {
			s := memberSpec()
			s.Process.Args[0] = "/v/bin/python"
			return KeyOf(s, m, "g")
		}(),
	} {
		if k.Hash() == base.Hash() {
			t.Errorf("a different %s gives the same template key", name)
		}
	}
}

func TestTemplateSpec(t *testing.T) {
	s := memberSpec()
	r := &runtime.Runtime{Root: t.TempDir()}
	s.Root.Path = r.EmptyRootfsPath("ext-1") // the runtime's empty rootfs of the member
	tpl := &template{id: "pyisolate-warm-x", dir: "/state/warm/x", key: KeyOf(s, &spec.Manifest{Preload: []string{"torch"}}, "g")}
	ts, err := templateSpec(r, s, tpl, "ext-1")
	if err != nil {
		t.Fatal(err)
	}
	if got := ts.Process.Args; !slices.Equal(got, []string{"/usr/bin/python3", "/run/pyisolate-warm/zygote.py", "/run/pyisolate-warm/zygote.sock"}) {
		t.Errorf("template args %q", got)
	}
	if !slices.Equal(ts.Process.Env, []string{"HOME=/tmp", "PATH=/usr/bin", "PYTHONUNBUFFERED=1", "PYISOLATE_WARM_PRELOAD=torch"}) {
		t.Errorf("template env %q", ts.Process.Env)
	}
	if ts.Root.Path == s.Root.Path || filepath.Base(ts.Root.Path) != tpl.id {
		t.Errorf("template root %s: want an empty rootfs of its own", ts.Root.Path)
	}
	// A bundle's own rootfs is the template's too, whatever its name.
	bundle := memberSpec()
	bundle.Root.Path = "/bundles/ext-1/ext-1"
	bs, err := templateSpec(r, bundle, tpl, "ext-1")
	if err != nil {
		t.Fatal(err)
	}
	if bs.Root.Path != bundle.Root.Path {
		t.Errorf("template of a bundle rootfs: root %s, want the bundle's %s", bs.Root.Path, bundle.Root.Path)
	}
	if ts.Linux.CgroupsPath != "/pyisolate/pyisolate-warm-x" {
		t.Errorf("template cgroup %s", ts.Linux.CgroupsPath)
	}
	last := ts.Linux.Seccomp.Syscalls[len(ts.Linux.Seccomp.Syscalls)-1]
	if !slices.Equal(last.Names, []string{"unshare", "setns"}) || last.Action != specs.ActAllow {
		t.Errorf("template seccomp: last rule %+v, want unshare and setns allowed", last)
	}
	if len(s.Linux.Seccomp.Syscalls) != 0 || s.Process.Args[1] != "-m" {
		t.Error("templateSpec changed the member's spec")
	}
	if _, ok := ts.Annotations[spec.AnnotationGroup]; ok {
		t.Error("the template records the group as a member would")
	}
	m := ts.Mounts[len(ts.Mounts)-1]
	if m.Destination != templateMount || m.Source != tpl.dir || !slices.Contains(m.Options, "noexec") {
		t.Errorf("template mount %+v", m)
	}
	if ts.Process.Capabilities == nil || len(ts.Process.Capabilities.Bounding) != 0 || !ts.Process.NoNewPrivileges {
		t.Error("the template keeps capabilities or lacks no_new_privileges")
	}
}

func TestDoorSpec(t *testing.T) {
	s := memberSpec()
	d := doorSpec(s, 42, false)
	if d.Linux.Namespaces[0].Path != "/proc/42/ns/user" || d.Linux.Namespaces[1].Path != "/proc/42/ns/pid" ||
		d.Linux.Namespaces[3].Path != "" || d.Linux.UIDMappings != nil {
		t.Errorf("door namespaces %+v, uid map %v", d.Linux.Namespaces, d.Linux.UIDMappings)
	}
	if s.Linux.Namespaces[0].Path != "" || s.Linux.UIDMappings == nil {
		t.Error("doorSpec changed the member's spec")
	}
}

// TestZygoteCompiles compiles the zygote with the interpreter extensions
// use.
func TestZygoteCompiles(t *testing.T) {
	py := "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skipf("skipped: %s is missing", py)
	}
	cmd := exec.Command(py, "-c", "import sys; compile(sys.stdin.read(), 'zygote.py', 'exec')")
	cmd.Stdin = strings.NewReader(zygoteSource)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("zygote.py does not compile: %v\n%s", err, out)
	}
}

func TestColdFace(t *testing.T) {
	if got := ColdFace("pyisolate-runc", &spec.Manifest{}); got != "" {
		t.Errorf("no preload list: %q, want nothing to say", got)
	}
	got := ColdFace("pyisolate-runc", &spec.Manifest{Preload: []string{"torch", "numpy"}})
	for _, want := range []string{"warm start not used", "(torch, numpy)", "pyisolate-runc starts the extension cold"} {
		if !strings.Contains(got, want) {
			t.Errorf("ColdFace = %q, want %q in it", got, want)
		}
	}
}

// TestDialTemplate: the zygote's socket is connected to only as a socket
// found at its path itself: a link there (which the template could plant,
// to any socket on the host) or another kind of file is refused.
func TestDialTemplate(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "zygote.sock")
	l, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := dialTemplate(sock)
	if err != nil {
		t.Fatalf("the socket itself: %v", err)
	}
	c.Close()
	link := filepath.Join(dir, "link.sock")
	if err := os.Symlink(sock, link); err != nil {
		t.Fatal(err)
	}
	if c, err := dialTemplate(link); err == nil {
		c.Close()
		t.Error("a link to a socket was followed")
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := dialTemplate(file); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("a regular file: %v, want: not a socket", err)
	}
}
