package spec

import (
	"errors"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// fullHost is a host with every candidate path present and nothing restricted.
func fullHost() Host {
	return Host{
		Restriction: RestrictionNone,
		Seccomp:     true,
		Paths:       append(slices.Clone(SystemPaths), EtcAllowList...),
	}
}

func sampleManifest() *Manifest {
	return &Manifest{
		Name:       "ext-a",
		ModulePath: "/srv/nodes/ext_a",
		Venv:       "/srv/venvs/a",
		Group:      "g1",
		Sandbox: Sandbox{
			WritablePaths: []string{"/srv/out"},
			ReadonlyPaths: []string{"/srv/models"},
		},
		Env:    map[string]string{"MY_VAR": "1"},
		Limits: Limits{Memory: 512 << 20, Pids: 64, CPUs: 1.5, ShmSize: 256 << 20},
	}
}

func sampleOptions() Options {
	return Options{
		ID:        "c1",
		Rootfs:    "/run/pyisolate/rootfs/c1",
		ShmDir:    "/run/pyisolate/groups/g1/shm",
		SocketDir: "/run/pyisolate/groups/g1/sock",
		HostEnv:   []string{"LANG=C.UTF-8", "SECRET_TOKEN=x", "PATH=/usr/bin"},
	}
}

func mustBuild(t *testing.T, m *Manifest, h Host, o Options) *specs.Spec {
	t.Helper()
	s, err := Build(m, h, o)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return s
}

func nsTypes(s *specs.Spec) []specs.LinuxNamespaceType {
	var out []specs.LinuxNamespaceType
	for _, ns := range s.Linux.Namespaces {
		out = append(out, ns.Type)
	}
	return out
}

func findMount(s *specs.Spec, dst string) *specs.Mount {
	for i := range s.Mounts {
		if s.Mounts[i].Destination == dst {
			return &s.Mounts[i]
		}
	}
	return nil
}

func envMap(s *specs.Spec) map[string]string {
	out := map[string]string{}
	for _, kv := range s.Process.Env {
		k, v, _ := strings.Cut(kv, "=")
		out[k] = v
	}
	return out
}

func TestBuildDefaultSandbox(t *testing.T) {
	s := mustBuild(t, sampleManifest(), fullHost(), sampleOptions())

	if !s.Root.Readonly || s.Root.Path != "/run/pyisolate/rootfs/c1" {
		t.Errorf("root = %+v, want read-only rootfs", s.Root)
	}
	want := []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace,
		specs.MountNamespace, specs.CgroupNamespace, specs.NetworkNamespace, specs.UserNamespace}
	got := nsTypes(s)
	for _, ns := range want {
		if !slices.Contains(got, ns) {
			t.Errorf("namespace %s missing from %v", ns, got)
		}
	}
	if len(s.Linux.UIDMappings) != 1 || s.Linux.UIDMappings[0].HostID != DefaultIDMapBase || s.Linux.UIDMappings[0].Size != DefaultIDMapSize {
		t.Errorf("uid mappings = %+v", s.Linux.UIDMappings)
	}
	if len(s.Linux.GIDMappings) != 1 || s.Linux.GIDMappings[0].HostID != DefaultIDMapBase {
		t.Errorf("gid mappings = %+v", s.Linux.GIDMappings)
	}
	c := s.Process.Capabilities
	if c == nil || len(c.Bounding)+len(c.Effective)+len(c.Permitted)+len(c.Inheritable)+len(c.Ambient) != 0 {
		t.Errorf("capabilities = %+v, want all dropped", c)
	}
	if !s.Process.NoNewPrivileges {
		t.Error("noNewPrivileges not set")
	}
	if s.Process.User.UID != 0 {
		t.Errorf("uid = %d, want 0 inside the user namespace", s.Process.User.UID)
	}
	for _, p := range []string{"/proc/kcore", "/proc/keys", "/sys/firmware"} {
		if !slices.Contains(s.Linux.MaskedPaths, p) {
			t.Errorf("masked paths lack %s", p)
		}
	}
	for _, p := range []string{"/proc/sys", "/proc/sysrq-trigger"} {
		if !slices.Contains(s.Linux.ReadonlyPaths, p) {
			t.Errorf("read-only paths lack %s", p)
		}
	}
	if _, ok := s.Annotations[AnnotationDegraded]; ok {
		t.Errorf("full spec has %s=%q", AnnotationDegraded, s.Annotations[AnnotationDegraded])
	}
	if s.Annotations[AnnotationGroup] != "g1" || s.Annotations[AnnotationRestriction] != "none" {
		t.Errorf("annotations = %v", s.Annotations)
	}
	if s.Linux.CgroupsPath != "/pyisolate/c1" {
		t.Errorf("cgroups path = %q", s.Linux.CgroupsPath)
	}
	if d := s.Linux.Resources.Devices; len(d) != 1 || d[0].Allow || d[0].Access != "rwm" {
		t.Errorf("device rules = %+v, want deny all", d)
	}
}

func TestBuildSeccomp(t *testing.T) {
	s := mustBuild(t, sampleManifest(), fullHost(), sampleOptions())
	sc := s.Linux.Seccomp
	if sc == nil {
		t.Fatal("no seccomp profile")
	}
	if sc.DefaultAction == specs.ActAllow {
		t.Fatalf("default action %s allows everything", sc.DefaultAction)
	}
	for _, name := range []string{"read", "write", "mmap", "openat", "futex", "execve", "ftruncate"} {
		if !Allowed(sc, name) {
			t.Errorf("seccomp denies %s, which python needs", name)
		}
	}
	for _, name := range []string{"mount", "umount2", "unshare", "setns", "ptrace", "process_vm_readv",
		"keyctl", "add_key", "bpf", "perf_event_open", "init_module", "finit_module", "delete_module",
		"kexec_load", "reboot", "swapon", "pivot_root", "io_uring_setup", "open_by_handle_at"} {
		if Allowed(sc, name) {
			t.Errorf("seccomp allows %s", name)
		}
	}
}

func TestBuildMounts(t *testing.T) {
	h := fullHost()
	h.Paths = []string{"/usr", "/lib", "/bin", "/etc/passwd", "/etc/ssl"} // the rest absent
	m := sampleManifest()
	m.Python = "/opt/py311/bin/python3"
	s := mustBuild(t, m, h, sampleOptions())

	for _, p := range []string{"/usr", "/lib", "/bin", "/etc/passwd", "/etc/ssl"} {
		mt := findMount(s, p)
		if mt == nil || mt.Type != "bind" || mt.Source != p || !slices.Contains(mt.Options, "ro") {
			t.Errorf("mount %s = %+v, want read-only bind", p, mt)
		}
	}
	for _, p := range []string{"/lib64", "/sbin", "/opt", "/etc/hosts", "/etc", "/root", "/home"} {
		if mt := findMount(s, p); mt != nil {
			t.Errorf("unexpected mount %+v", mt)
		}
	}
	for _, p := range []string{"/srv/venvs/a", "/srv/nodes/ext_a", "/opt/py311", "/srv/models"} {
		if mt := findMount(s, p); mt == nil || !slices.Contains(mt.Options, "ro") {
			t.Errorf("mount %s = %+v, want read-only", p, mt)
		}
	}
	if mt := findMount(s, "/srv/out"); mt == nil || !slices.Contains(mt.Options, "rw") {
		t.Errorf("writable path mount = %+v", mt)
	}
	if mt := findMount(s, "/tmp"); mt == nil || mt.Type != "tmpfs" {
		t.Errorf("/tmp = %+v, want private tmpfs", mt)
	}
	if mt := findMount(s, ShmMount); mt == nil || mt.Source != "/run/pyisolate/groups/g1/shm" || !slices.Contains(mt.Options, "rw") {
		t.Errorf("/dev/shm = %+v, want the group's dir", mt)
	}
	if mt := findMount(s, SocketMount); mt == nil || mt.Source != "/run/pyisolate/groups/g1/sock" {
		t.Errorf("socket dir = %+v", mt)
	}
	for _, p := range []string{"/proc", "/dev", "/dev/pts", "/sys"} {
		if findMount(s, p) == nil {
			t.Errorf("no %s mount", p)
		}
	}
	// The user's paths come last.
	n := len(s.Mounts)
	if s.Mounts[n-2].Destination != "/srv/out" || s.Mounts[n-1].Destination != "/srv/models" {
		t.Errorf("user paths are not last: %v", s.Mounts[n-2:])
	}
}

func TestBuildTmpBeforeBinds(t *testing.T) {
	m := sampleManifest()
	m.ModulePath = "/tmp/work/ext_a"
	s := mustBuild(t, m, fullHost(), sampleOptions())
	tmp, mod := -1, -1
	for i, mt := range s.Mounts {
		switch mt.Destination {
		case "/tmp":
			tmp = i
		case "/tmp/work/ext_a":
			mod = i
		}
	}
	if tmp < 0 || mod < 0 || tmp > mod {
		t.Fatalf("/tmp tmpfs at %d, module under /tmp at %d: the tmpfs must come first", tmp, mod)
	}
}

func TestBuildPythonPrefixNotDuplicated(t *testing.T) {
	m := sampleManifest()
	m.Python = "/usr/bin/python3"
	s := mustBuild(t, m, fullHost(), sampleOptions())
	if findMount(s, "/usr") == nil {
		t.Fatal("no /usr")
	}
	count := 0
	for _, mt := range s.Mounts {
		if strings.HasPrefix(mt.Destination, "/usr") {
			count++
		}
	}
	if count != 1 {
		t.Errorf("%d mounts under /usr, want 1", count)
	}
}

func TestBuildPrivateShmWithoutGroupDir(t *testing.T) {
	o := sampleOptions()
	o.ShmDir, o.SocketDir = "", ""
	s := mustBuild(t, sampleManifest(), fullHost(), o)
	mt := findMount(s, ShmMount)
	if mt == nil || mt.Type != "tmpfs" || !slices.Contains(mt.Options, "size=268435456") {
		t.Errorf("/dev/shm = %+v, want private tmpfs of shm_size", mt)
	}
	if findMount(s, SocketMount) != nil {
		t.Error("socket dir bound without SocketDir")
	}
	if _, ok := envMap(s)["PYISOLATE_SOCKET_DIR"]; ok {
		t.Error("PYISOLATE_SOCKET_DIR set without a socket dir")
	}
}

func TestBuildNetwork(t *testing.T) {
	m := sampleManifest()
	m.Sandbox.Network = true
	s := mustBuild(t, m, fullHost(), sampleOptions())
	if slices.Contains(nsTypes(s), specs.NetworkNamespace) {
		t.Error("network namespace present although sandbox.network is true")
	}
}

func TestBuildLimits(t *testing.T) {
	s := mustBuild(t, sampleManifest(), fullHost(), sampleOptions())
	r := s.Linux.Resources
	if r.Memory == nil || *r.Memory.Limit != 512<<20 || *r.Memory.Swap != 512<<20 {
		t.Errorf("memory = %+v", r.Memory)
	}
	if r.Pids == nil || *r.Pids.Limit != 64 {
		t.Errorf("pids = %+v", r.Pids)
	}
	if r.CPU == nil || *r.CPU.Quota != 150000 || *r.CPU.Period != 100000 {
		t.Errorf("cpu = %+v", r.CPU)
	}
	if r.CPU == nil || r.CPU.Shares == nil || *r.CPU.Shares != DefaultCPUShares {
		t.Errorf("cpu shares = %+v, want the default %d besides the quota", r.CPU, DefaultCPUShares)
	}
}

// TestBuildDefaultLimits: a limit the manifest leaves out gets the stated
// default (pids 2048, half the host's memory, cpu.shares 1024, /tmp at most
// 1 GiB and at most the memory limit), recorded in AnnotationDefaults; a
// limit the manifest sets is kept and not listed. Before, a manifest
// without limits had no pids, memory or CPU limit and a 1g /tmp.
func TestBuildDefaultLimits(t *testing.T) {
	host := func(mem int64) Host { h := fullHost(); h.MemTotal = mem; return h }
	tests := []struct {
		name         string
		limits       Limits
		host         Host
		memory       int64 // 0: no memory limit
		pids         int64 // 0: no pids limit
		quota        int64 // 0: no CPU quota
		tmp          string
		defaults     string
		cgroupLimits bool
	}{
		{"none set, 8Gi host", Limits{}, host(8 << 30), 4 << 30, DefaultPids, 0, "size=1073741824",
			"limits.memory=4Gi,limits.pids=2048,cpu.shares=1024,limits.tmp_size=1Gi", true},
		{"none set, small host: /tmp within the memory limit", Limits{}, host(1 << 30), 512 << 20, DefaultPids, 0, "size=536870912",
			"limits.memory=512Mi,limits.pids=2048,cpu.shares=1024,limits.tmp_size=512Mi", true},
		{"odd host memory rounds down to a MiB", Limits{}, host(24683652 << 10), 12052 << 20, DefaultPids, 0, "size=1073741824",
			"limits.memory=12052Mi,limits.pids=2048,cpu.shares=1024,limits.tmp_size=1Gi", true},
		{"unknown host memory: no memory default", Limits{}, host(0), 0, DefaultPids, 0, "size=1073741824",
			"limits.pids=2048,cpu.shares=1024,limits.tmp_size=1Gi", true},
		{"explicit limits kept", Limits{Memory: 256 << 20, Pids: 64, CPUs: 0.5}, host(8 << 30), 256 << 20, 64, 50000, "size=268435456",
			"cpu.shares=1024,limits.tmp_size=256Mi", true},
		{"explicit pids above the default kept", Limits{Pids: 100000}, host(8 << 30), 4 << 30, 100000, 0, "size=1073741824",
			"limits.memory=4Gi,cpu.shares=1024,limits.tmp_size=1Gi", true},
		{"explicit tmp_size kept, even above the memory limit", Limits{Memory: 256 << 20, TmpSize: 2 << 30}, host(8 << 30), 256 << 20, DefaultPids, 0, "size=2147483648",
			"limits.pids=2048,cpu.shares=1024", true},
		{"no cgroup limits (no-caps): only /tmp", Limits{}, Host{Restriction: RestrictionNoCaps, Seccomp: true, MemTotal: 1 << 30}, 0, 0, 0, "size=1073741824",
			"limits.tmp_size=1Gi", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := sampleManifest()
			m.Limits = tt.limits
			s := mustBuild(t, m, tt.host, sampleOptions())
			r := s.Linux.Resources
			switch {
			case tt.memory == 0 && r.Memory != nil:
				t.Errorf("memory = %d, want none", *r.Memory.Limit)
			case tt.memory != 0 && (r.Memory == nil || *r.Memory.Limit != tt.memory || *r.Memory.Swap != tt.memory):
				t.Errorf("memory = %+v, want limit and swap %d", r.Memory, tt.memory)
			}
			switch {
			case tt.pids == 0 && r.Pids != nil:
				t.Errorf("pids = %d, want none", *r.Pids.Limit)
			case tt.pids != 0 && (r.Pids == nil || *r.Pids.Limit != tt.pids):
				t.Errorf("pids = %+v, want %d", r.Pids, tt.pids)
			}
			if tt.cgroupLimits {
				if r.CPU == nil || r.CPU.Shares == nil || *r.CPU.Shares != DefaultCPUShares {
					t.Errorf("cpu = %+v, want shares %d", r.CPU, DefaultCPUShares)
				} else if tt.quota == 0 && r.CPU.Quota != nil || tt.quota != 0 && (r.CPU.Quota == nil || *r.CPU.Quota != tt.quota) {
					t.Errorf("cpu quota = %v, want %d", r.CPU.Quota, tt.quota)
				}
			} else if r.CPU != nil {
				t.Errorf("cpu = %+v without cgroup limits", r.CPU)
			}
			if mt := findMount(s, "/tmp"); mt == nil || !slices.Contains(mt.Options, tt.tmp) {
				t.Errorf("/tmp = %+v, want %s", mt, tt.tmp)
			}
			if got := s.Annotations[AnnotationDefaults]; got != tt.defaults {
				t.Errorf("%s = %q, want %q", AnnotationDefaults, got, tt.defaults)
			}
			if got := strings.Join(DefaultsList(s), ","); got != tt.defaults {
				t.Errorf("DefaultsList = %q", got)
			}
		})
	}
}

// TestBuildHostCaps: a tmpfs larger than the host's memory is refused,
// naming the field and the cap; the host's memory itself is allowed, and
// an unknown host memory caps nothing. Before, shm_size "8000000T" mounted
// a 7 EiB tmpfs.
func TestBuildHostCaps(t *testing.T) {
	huge, err := ParseByteSize("8000000T")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		limits  Limits
		mem     int64
		field   string // "" for no error
		message string
	}{
		{"shm_size 8000000T", Limits{ShmSize: huge}, 8 << 30, "limits.shm_size", "8000000T is larger than this host's memory (8Gi): at most 8Gi is allowed"},
		{"shm_size one byte over", Limits{ShmSize: 8<<30 + 1}, 8 << 30, "limits.shm_size", "at most 8Gi"},
		{"tmp_size over", Limits{TmpSize: 30 << 30}, 24683652 << 10, "limits.tmp_size", "30Gi is larger than this host's memory (23.5Gi)"},
		{"shm_size equal to memory", Limits{ShmSize: 8 << 30, TmpSize: 8 << 30}, 8 << 30, "", ""},
		{"unknown host memory", Limits{ShmSize: huge}, 0, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := sampleManifest()
			m.Limits = tt.limits
			h := fullHost()
			h.MemTotal = tt.mem
			o := sampleOptions()
			o.ShmDir = "" // a private /dev/shm of shm_size
			_, err := Build(m, h, o)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("Build: %v", err)
				}
				return
			}
			wantFieldError(t, err, tt.field, tt.message)
			if err2 := CheckHostLimits(tt.limits, h); err2 == nil || err2.Error() != err.Error() {
				t.Errorf("CheckHostLimits = %v, want the error of Build", err2)
			}
		})
	}
}

func TestBuildEnv(t *testing.T) {
	tests := []struct {
		name     string
		model    ExecutionModel
		wantKeep []string
		wantDrop []string
	}{
		{"host-coupled inherits", HostCoupled, []string{"LANG", "SECRET_TOKEN"}, nil},
		{"default inherits", "", []string{"LANG", "SECRET_TOKEN"}, nil},
		{"sealed keeps allow list", Sealed, []string{"LANG"}, []string{"SECRET_TOKEN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := sampleManifest()
			m.ExecutionModel = tt.model
			m.ShareCUDAIPC = true
			env := envMap(mustBuild(t, m, fullHost(), sampleOptions()))
			for _, k := range tt.wantKeep {
				if _, ok := env[k]; !ok {
					t.Errorf("%s dropped", k)
				}
			}
			for _, k := range tt.wantDrop {
				if _, ok := env[k]; ok {
					t.Errorf("%s kept", k)
				}
			}
			want := map[string]string{
				"MY_VAR": "1", "PYISOLATE_CHILD": "1", "PYISOLATE_GROUP": "g1", "PYISOLATE_EXTENSION": "ext-a",
				"PYISOLATE_ENABLE_CUDA_IPC": "1", "HOME": "/tmp", "VIRTUAL_ENV": "/srv/venvs/a",
				"PYISOLATE_SOCKET_DIR": SocketMount, "PYISOLATE_SHM_DIR": ShmMount,
			}
			for k, v := range want {
				if env[k] != v {
					t.Errorf("%s = %q, want %q", k, env[k], v)
				}
			}
			if !strings.HasPrefix(env["PATH"], "/srv/venvs/a/bin:") {
				t.Errorf("PATH = %q, want the venv first", env["PATH"])
			}
			if tt.model == Sealed && env["PATH"] != "/srv/venvs/a/bin:"+DefaultPath {
				t.Errorf("sealed PATH = %q, want the venv and DefaultPath only", env["PATH"])
			}
		})
	}
}

func TestBuildCommand(t *testing.T) {
	m := sampleManifest()
	s := mustBuild(t, m, fullHost(), sampleOptions())
	if want := []string{"/srv/venvs/a/bin/python", "-m", "ext_a"}; !slices.Equal(s.Process.Args, want) {
		t.Errorf("args = %v, want %v", s.Process.Args, want)
	}
	if s.Process.Cwd != "/srv/nodes" {
		t.Errorf("cwd = %q", s.Process.Cwd)
	}
	m.Command = []string{"/usr/bin/python3", "-c", "pass"}
	s = mustBuild(t, m, fullHost(), sampleOptions())
	if !slices.Equal(s.Process.Args, m.Command) || s.Process.Cwd != "/srv/nodes" {
		t.Errorf("args = %v cwd = %q", s.Process.Args, s.Process.Cwd)
	}
}

func TestBuildDegraded(t *testing.T) {
	tests := []struct {
		model       Restriction
		seccomp     bool
		wantDropped []string
		wantNS      []specs.LinuxNamespaceType
		wantUID     uint32
		wantLimits  bool
	}{
		{RestrictionNone, true, nil,
			[]specs.LinuxNamespaceType{specs.UserNamespace, specs.MountNamespace, specs.PIDNamespace}, 0, true},
		{RestrictionNone, false, []string{"seccomp"},
			[]specs.LinuxNamespaceType{specs.UserNamespace, specs.MountNamespace}, 0, true},
		{RestrictionAppArmor, true, []string{"user-namespace"},
			[]specs.LinuxNamespaceType{specs.MountNamespace, specs.PIDNamespace, specs.NetworkNamespace}, NobodyID, true},
		{RestrictionSysctl, true, []string{"user-namespace"},
			[]specs.LinuxNamespaceType{specs.MountNamespace, specs.PIDNamespace}, NobodyID, true},
		{RestrictionSELinux, true, []string{"user-namespace"},
			[]specs.LinuxNamespaceType{specs.MountNamespace, specs.PIDNamespace}, NobodyID, true},
		{RestrictionNoCaps, true, []string{"user-namespace", "namespaces", "cgroup-limits"},
			nil, NobodyID, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.model), func(t *testing.T) {
			h := fullHost()
			h.Restriction, h.Seccomp = tt.model, tt.seccomp
			s := mustBuild(t, sampleManifest(), h, sampleOptions())
			if got := DegradedList(s); !slices.Equal(got, tt.wantDropped) {
				t.Errorf("degraded = %v, want %v", got, tt.wantDropped)
			}
			got := nsTypes(s)
			for _, ns := range tt.wantNS {
				if !slices.Contains(got, ns) {
					t.Errorf("namespace %s missing from %v", ns, got)
				}
			}
			userns := slices.Contains(got, specs.UserNamespace)
			if userns != !slices.Contains(tt.wantDropped, "user-namespace") {
				t.Errorf("user namespace present = %v with degradations %v", userns, tt.wantDropped)
			}
			if !userns && (len(s.Linux.UIDMappings) > 0 || len(s.Linux.GIDMappings) > 0) {
				t.Error("id mappings without a user namespace")
			}
			if tt.wantNS == nil && len(got) != 0 {
				t.Errorf("namespaces %v, want none", got)
			}
			if s.Process.User.UID != tt.wantUID || s.Process.User.GID != tt.wantUID {
				t.Errorf("user = %+v, want uid/gid %d", s.Process.User, tt.wantUID)
			}
			if hasLimits := s.Linux.Resources.Memory != nil; hasLimits != tt.wantLimits {
				t.Errorf("memory limit present = %v, want %v", hasLimits, tt.wantLimits)
			}
			if (s.Linux.Seccomp != nil) != tt.seccomp {
				t.Errorf("seccomp present = %v, want %v", s.Linux.Seccomp != nil, tt.seccomp)
			}
			// What no model drops.
			if len(s.Process.Capabilities.Bounding) != 0 || !s.Process.NoNewPrivileges || !s.Root.Readonly {
				t.Error("a degraded spec lost capabilities drop, noNewPrivileges or read-only root")
			}
			if findMount(s, "/srv/nodes/ext_a") == nil || findMount(s, ShmMount) == nil {
				t.Error("a degraded spec lost the module or shm mount")
			}
		})
	}
}

func TestBuildUnsupportedAndBadInput(t *testing.T) {
	h := fullHost()
	h.Restriction = RestrictionUnsupported
	if _, err := Build(sampleManifest(), h, sampleOptions()); !errors.Is(err, ErrUnsupported) {
		t.Errorf("unsupported: err = %v", err)
	}
	o := sampleOptions()
	o.Rootfs = "rootfs"
	if _, err := Build(sampleManifest(), fullHost(), o); err == nil || !strings.Contains(err.Error(), "rootfs") {
		t.Errorf("relative rootfs: err = %v", err)
	}
	if _, err := Build(nil, fullHost(), sampleOptions()); err == nil {
		t.Error("nil manifest accepted")
	}
}

func TestBuildGPUsBecomeCDIAnnotation(t *testing.T) {
	m := sampleManifest()
	m.GPUs = []string{"nvidia.com/gpu=0", "nvidia.com/gpu=1"}
	m.ShareCUDAIPC = true
	s := mustBuild(t, m, fullHost(), sampleOptions())
	if got := s.Annotations[AnnotationCDIDevices]; got != "nvidia.com/gpu=0,nvidia.com/gpu=1" {
		t.Errorf("%s = %q", AnnotationCDIDevices, got)
	}
	if s.Annotations[AnnotationShareCUDAIPC] != "true" {
		t.Errorf("%s missing", AnnotationShareCUDAIPC)
	}
	s = mustBuild(t, sampleManifest(), fullHost(), sampleOptions())
	if _, ok := s.Annotations[AnnotationCDIDevices]; ok {
		t.Error("CDI annotation without gpus")
	}
}

func TestDegradationsNoneIsEmpty(t *testing.T) {
	if d := Degradations(RestrictionNone); d != nil {
		t.Errorf("Degradations(none) = %v", d)
	}
	for _, r := range Restrictions {
		if r != RestrictionNone && r != RestrictionUnsupported && len(Degradations(r)) == 0 {
			t.Errorf("model %s drops nothing", r)
		}
	}
}

// TestBuildTorchTempDir: with share_torch in a group, torch's shm manager
// socket lands in the group's socket directory (TEMPDIR, which only torch
// reads) and nothing points Python's tempfile away from the private /tmp;
// without share_torch or without a group, TMPDIR is /tmp. A manifest's env
// still wins.
func TestBuildTorchTempDir(t *testing.T) {
	tests := []struct {
		name       string
		shareTorch bool
		socketDir  string
		manifest   map[string]string
		hostEnv    []string
		want       map[string]string // "" means unset
	}{
		{"share_torch in a group", true, "/run/g/sock", nil, []string{"TMP=/host/tmp", "TEMP=/host/tmp", "TMPDIR=/host/tmp"},
			map[string]string{"TEMPDIR": SocketMount, "TMPDIR": "", "TMP": "", "TEMP": "", "HOME": "/tmp"}},
		{"no share_torch", false, "/run/g/sock", nil, nil,
			map[string]string{"TEMPDIR": "", "TMPDIR": "/tmp"}},
		{"share_torch without a group directory", true, "", nil, nil,
			map[string]string{"TEMPDIR": "", "TMPDIR": "/tmp"}},
		{"manifest env wins", true, "/run/g/sock", map[string]string{"TMPDIR": "/run/pyisolate/mine"}, nil,
			map[string]string{"TEMPDIR": SocketMount, "TMPDIR": "/run/pyisolate/mine"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := sampleManifest()
			m.ShareTorch = tt.shareTorch
			m.Env = tt.manifest
			o := sampleOptions()
			o.SocketDir = tt.socketDir
			o.HostEnv = tt.hostEnv
			env := envMap(mustBuild(t, m, fullHost(), o))
			for k, v := range tt.want {
				got, ok := env[k]
				if v == "" && ok {
					t.Errorf("%s = %q, want it unset", k, got)
				}
				if v != "" && got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestBuildRootless: a rootless host maps container root to the caller's
// ids (Options' mappings), keeps every namespace, seccomp, the dropped
// capabilities and no_new_privileges; without a delegated cgroup it drops
// the limits, saying so; with one it keeps them at the delegated path.
// Sharing the host's network, /sys is a read-only bind (sysfs needs a
// network namespace of the user's own).
func TestBuildRootless(t *testing.T) {
	uids := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1000, Size: 1}}
	gids := []specs.LinuxIDMapping{{ContainerID: 0, HostID: 1001, Size: 1}, {ContainerID: 1, HostID: 200000, Size: 65536}}
	tests := []struct {
		name      string
		delegated bool
		network   bool
	}{
		{"no delegation", false, false},
		{"delegated cgroup", true, false},
		{"host network", false, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := fullHost()
			h.Rootless, h.CgroupDelegated, h.MemTotal = true, tc.delegated, 8<<30
			m := sampleManifest()
			m.Sandbox.Network = tc.network
			o := sampleOptions()
			o.UIDMappings, o.GIDMappings = uids, gids
			if tc.delegated {
				o.CgroupsPath = "/user.slice/run-u1.scope/pyisolate/c1"
			}
			s := mustBuild(t, m, h, o)
			if !slices.Equal(s.Linux.UIDMappings, uids) || !slices.Equal(s.Linux.GIDMappings, gids) {
				t.Errorf("mappings %v %v, want %v %v", s.Linux.UIDMappings, s.Linux.GIDMappings, uids, gids)
			}
			want := []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace,
				specs.MountNamespace, specs.CgroupNamespace, specs.NetworkNamespace, specs.UserNamespace}
			if tc.network {
				want = slices.DeleteFunc(want, func(n specs.LinuxNamespaceType) bool { return n == specs.NetworkNamespace })
			}
			if got := nsTypes(s); !slices.Equal(got, want) {
				t.Errorf("namespaces %v, want %v", got, want)
			}
			if s.Linux.Seccomp == nil || !s.Process.NoNewPrivileges || len(s.Process.Capabilities.Bounding) != 0 {
				t.Errorf("seccomp %v, no_new_privileges %v, bounding %v", s.Linux.Seccomp != nil, s.Process.NoNewPrivileges, s.Process.Capabilities.Bounding)
			}
			degraded := DegradedList(s)
			r := s.Linux.Resources
			if tc.delegated {
				if len(degraded) != 0 || s.Linux.CgroupsPath != o.CgroupsPath || r.Memory == nil || r.Pids == nil {
					t.Errorf("delegated: degraded %v, cgroupsPath %q, memory %v, pids %v", degraded, s.Linux.CgroupsPath, r.Memory, r.Pids)
				}
			} else if !slices.Equal(degraded, []string{string(DropCgroupLimits)}) || s.Linux.CgroupsPath != "" || r.Memory != nil || r.Pids != nil || r.CPU != nil {
				t.Errorf("no delegation: degraded %v, cgroupsPath %q, memory %v, pids %v, cpu %v", degraded, s.Linux.CgroupsPath, r.Memory, r.Pids, r.CPU)
			}
			for _, mt := range s.Mounts {
				if mt.Destination != "/sys" {
					continue
				}
				if tc.network && (mt.Type != "bind" || !slices.Contains(mt.Options, "ro")) {
					t.Errorf("/sys with the host's network: %+v, want a read-only bind", mt)
				}
				if !tc.network && mt.Type != "sysfs" {
					t.Errorf("/sys with a private network: %+v, want sysfs", mt)
				}
			}
		})
	}
	h := fullHost()
	h.Rootless = true
	if got := HostDegradations(h); !slices.Equal(got, []Degradation{DropCgroupLimits}) {
		t.Errorf("HostDegradations(rootless) = %v", got)
	}
	h.Rootless = false
	if got := HostDegradations(h); got != nil {
		t.Errorf("HostDegradations(root) = %v, want nil", got)
	}
}

// TestBuildSysWithHostNetwork: a container in a user namespace that shares
// the host's network cannot mount sysfs (only the network namespace's owner
// may), as root too: it gets a read-only bind of /sys; with its own network
// namespace, or without a user namespace, a fresh read-only sysfs.
func TestBuildSysWithHostNetwork(t *testing.T) {
	for _, tc := range []struct {
		name        string
		network     bool
		restriction Restriction
		want        string
	}{
		{"userns, own network", false, RestrictionNone, "sysfs"},
		{"userns, host network", true, RestrictionNone, "bind"},
		{"no userns, host network", true, RestrictionAppArmor, "sysfs"},
	} {
		m := sampleManifest()
		m.Sandbox.Network = tc.network
		h := fullHost()
		h.Restriction = tc.restriction
		s, err := Build(m, h, sampleOptions())
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		for _, mt := range s.Mounts {
			if mt.Destination == "/sys" {
				got = mt.Type
				if !slices.Contains(mt.Options, "ro") {
					t.Errorf("%s: /sys is not read-only: %v", tc.name, mt.Options)
				}
			}
		}
		if got != tc.want {
			t.Errorf("%s: /sys is a %q mount, want %q", tc.name, got, tc.want)
		}
	}
}
