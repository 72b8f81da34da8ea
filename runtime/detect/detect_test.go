package detect

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// Capability sets for fake /proc/self/status files.
const (
	capsRoot   = "000001ffffffffff"
	capsNoSysA = "00000000a80425fb" // Docker's default set: no CAP_SYS_ADMIN
)

const mountinfoHybrid = `22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 30 0:36 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
41 22 0:38 / /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw
`

const mountinfoV1 = `22 1 0:21 / / rw,relatime - ext4 /dev/vda rw
30 22 0:27 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
34 30 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:12 - cgroup cgroup rw,memory
`

const mountinfoV2 = `22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:27 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`

// mountinfoDockerV1 is what a container Docker starts without --privileged
// sees on a cgroup v1 host: its own cgroups, mounted read-only.
const mountinfoDockerV1 = `580 500 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
600 580 0:51 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
601 600 0:28 /docker/0123abcd /sys/fs/cgroup/cpu,cpuacct ro,nosuid,nodev,noexec,relatime master:9 - cgroup cgroup rw,cpu,cpuacct
602 600 0:31 /docker/0123abcd /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:12 - cgroup cgroup rw,memory
603 600 0:36 /docker/0123abcd /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime master:4 - cgroup cgroup rw,name=systemd
`

// mountinfoDockerV2 is the same on a cgroup v2 host (a private cgroup
// namespace, the unified hierarchy read-only).
const mountinfoDockerV2 = `580 500 0:50 / / rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w
610 580 0:30 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate
`

// statusFile is a fake /proc/self/status.
func statusFile(capEff string, euid int) string {
	return fmt.Sprintf("Name:\ttest\nUid:\t%d\t%d\t%d\t%d\nCapInh:\t0000000000000000\nCapEff:\t%s\nSeccomp:\t0\nSeccomp_filters:\t0\n",
		euid, euid, euid, euid, capEff)
}

// baseFiles is a root host allowing user namespaces, cgroup hybrid.
func baseFiles() map[string]string {
	return map[string]string{
		"proc/self/status":                      statusFile(capsRoot, 0),
		"proc/self/mountinfo":                   mountinfoHybrid,
		"proc/sys/kernel/osrelease":             "6.1.0-test\n",
		"proc/version":                          "Linux version 6.1.0-test (debian-kernel@lists.debian.org)\n",
		"proc/sys/user/max_user_namespaces":     "96365\n",
		"proc/sys/kernel/seccomp/actions_avail": "kill_process kill_thread trap errno user_notif trace log allow\n",
		"usr/bin/true":                          "",
		"etc/passwd":                            "root:x:0:0::/root:/bin/sh\n",
		"proc/meminfo":                          "MemTotal:       24683652 kB\nMemFree:        22455680 kB\n",
	}
}

// fakeRoot writes files (path → content; "" content "->target" makes a
// symbolic link) under a new directory, plus dev/shm.
func fakeRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if target, ok := strings.CutPrefix(c, "->"); ok {
			if err := os.Symlink(target, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "dev/shm"), 0o1777); err != nil {
		t.Fatal(err)
	}
	return root
}

// fakeProbe answers each probe kind with a fixed error (nil: success).
func fakeProbe(results map[probeKind]error) probeFunc {
	return func(_ context.Context, k probeKind) error { return results[k] }
}

// refused is a probe failure as the real probe reports it.
func refused(errno syscall.Errno) error {
	return fmt.Errorf("start /bin/true in new namespaces: %w", &os.PathError{Op: "fork/exec", Path: "/bin/true", Err: errno})
}

// fakeEnv is a Linux detection environment over root, with plenty of shm.
func fakeEnv(root string, probes map[probeKind]error) detectEnv {
	return detectEnv{
		goos:           "linux",
		root:           root,
		probe:          fakeProbe(probes),
		statfs:         func(string) (fsStat, error) { return fsStat{Size: 2 << 30, Free: 1 << 30}, nil },
		writable:       func(string) bool { return true },
		seccompPrctl:   func() error { return nil },
		seccompBuiltIn: true,
	}
}

func TestDetectClassification(t *testing.T) {
	tests := []struct {
		name         string
		goos         string
		files        map[string]string // merged over baseFiles; "" removes
		probes       map[probeKind]error
		want         spec.Restriction
		unprivileged bool
		reason       []string // substrings of RestrictionReason
		warning      string   // substring of some warning
		wsl          int      // Profile.WSL
	}{
		{
			name: "none",
			want: spec.RestrictionNone, unprivileged: true,
			reason: []string{"user namespaces work"},
		},
		{
			name:   "none as root while apparmor blocks unprivileged users",
			files:  map[string]string{"proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1\n"},
			probes: map[probeKind]error{probeUnprivileged: refused(syscall.EPERM)},
			want:   spec.RestrictionNone, unprivileged: false,
			warning: "bwrap",
		},
		{
			name:   "apparmor",
			files:  map[string]string{"proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1\n"},
			probes: map[probeKind]error{probeUserNS: refused(syscall.EACCES)},
			want:   spec.RestrictionAppArmor,
			reason: []string{"clone(CLONE_NEWUSER) failed: EACCES with kernel.apparmor_restrict_unprivileged_userns=1"},
		},
		{
			name:   "apparmor on the mount namespace only",
			files:  map[string]string{"proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1\n"},
			probes: map[probeKind]error{probeNamespaces: refused(syscall.EPERM)},
			want:   spec.RestrictionAppArmor,
			reason: []string{"CLONE_NEWNS", "EPERM", "apparmor_restrict_unprivileged_userns=1"},
		},
		{
			name:   "sysctl max_user_namespaces=0",
			files:  map[string]string{"proc/sys/user/max_user_namespaces": "0\n"},
			probes: map[probeKind]error{probeUserNS: refused(syscall.ENOSPC)},
			want:   spec.RestrictionSysctl,
			reason: []string{"ENOSPC", "user.max_user_namespaces=0"},
		},
		{
			name:   "sysctl unprivileged_userns_clone=0",
			files:  map[string]string{"proc/sys/kernel/unprivileged_userns_clone": "0\n"},
			probes: map[probeKind]error{probeUserNS: refused(syscall.EPERM)},
			want:   spec.RestrictionSysctl,
			reason: []string{"EPERM", "kernel.unprivileged_userns_clone=0"},
		},
		{
			name:   "sysctl limit used up",
			probes: map[probeKind]error{probeUserNS: refused(syscall.ENOSPC)},
			want:   spec.RestrictionSysctl,
			reason: []string{"ENOSPC", "96365 is used up"},
		},
		{
			name:   "sysctl kernel without user namespaces",
			files:  map[string]string{"proc/sys/user/max_user_namespaces": ""},
			probes: map[probeKind]error{probeUserNS: refused(syscall.EINVAL)},
			want:   spec.RestrictionSysctl,
			reason: []string{"EINVAL", "CONFIG_USER_NS"},
		},
		{
			name:   "selinux",
			files:  map[string]string{"sys/fs/selinux/enforce": "1"},
			probes: map[probeKind]error{probeUserNS: refused(syscall.EACCES)},
			want:   spec.RestrictionSELinux,
			reason: []string{"EACCES", "SELinux enforcing"},
		},
		{
			name:   "selinux permissive does not explain",
			files:  map[string]string{"sys/fs/selinux/enforce": "0"},
			probes: map[probeKind]error{probeUserNS: refused(syscall.EACCES)},
			want:   spec.RestrictionAppArmor,
			reason: []string{"EACCES", "no sysctl or SELinux setting explains it"},
		},
		{
			name:   "unexplained refusal is still restricted",
			probes: map[probeKind]error{probeUserNS: refused(syscall.EPERM)},
			want:   spec.RestrictionAppArmor,
			reason: []string{"EPERM", "no sysctl or SELinux setting explains it"},
		},
		{
			name:   "no-caps",
			files:  map[string]string{"proc/self/status": statusFile(capsNoSysA, 0)},
			probes: map[probeKind]error{probeUserNS: refused(syscall.EPERM)},
			want:   spec.RestrictionNoCaps,
			reason: []string{"EPERM", "lacks CAP_SYS_ADMIN"},
		},
		{
			// Docker's default: its capability set, its seccomp filter
			// (which refuses namespace flags without CAP_SYS_ADMIN),
			// read-only cgroups.
			name: "no-caps in Docker's default container",
			files: map[string]string{
				"proc/self/status":    strings.Replace(statusFile(capsNoSysA, 0), "Seccomp:\t0", "Seccomp:\t2", 1),
				"proc/self/mountinfo": mountinfoDockerV1,
			},
			probes:  map[probeKind]error{probeUserNS: refused(syscall.EPERM)},
			want:    spec.RestrictionNoCaps,
			reason:  []string{"clone(CLONE_NEWUSER) failed: EPERM", "lacks CAP_SYS_ADMIN"},
			warning: "cgroup filesystem is mounted read-only",
		},
		{
			name: "no-caps with apparmor too",
			files: map[string]string{
				"proc/self/status": statusFile(capsNoSysA, 1000),
				"proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1",
			},
			probes:  map[probeKind]error{probeNamespaces: refused(syscall.EACCES)},
			want:    spec.RestrictionNoCaps,
			reason:  []string{"EACCES", "lacks CAP_SYS_ADMIN"},
			warning: "apparmor_restrict_unprivileged_userns=0",
		},
		{
			name:  "rootless",
			files: map[string]string{"proc/self/status": statusFile("0000000000000000", 1000)},
			// The unprivileged probe must not run: it would fail (no CAP_SETUID).
			probes: map[probeKind]error{probeUnprivileged: errors.New("must not run")},
			want:   spec.RestrictionNone, unprivileged: true,
			reason:  []string{"rootless"},
			warning: "delegat",
		},
		{
			// Ubuntu 23.10+ for an ordinary user of the host: the
			// AppArmor model with the install --apparmor remedy, not
			// no-caps (that one is for a runtime in a container).
			name: "rootless on the host with apparmor",
			files: map[string]string{
				"proc/self/status":  statusFile("0000000000000000", 1000),
				"proc/self/uid_map": "         0          0 4294967295\n",
				"proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1",
			},
			probes: map[probeKind]error{probeUserNS: refused(syscall.EACCES)},
			want:   spec.RestrictionAppArmor,
			reason: []string{"EACCES", "apparmor_restrict_unprivileged_userns=1"},
		},
		{
			name: "rootless on the host, unexplained refusal",
			files: map[string]string{
				"proc/self/status":  statusFile("0000000000000000", 1000),
				"proc/self/uid_map": "0 0 4294967295\n",
			},
			probes: map[probeKind]error{probeUserNS: refused(syscall.EPERM)},
			want:   spec.RestrictionNoCaps,
			reason: []string{"EPERM", "lacks CAP_SYS_ADMIN"},
		},
		{
			name: "unsupported by GOOS",
			goos: "darwin",
			want: spec.RestrictionUnsupported,
			// No file is read: an empty root must do.
			files:  map[string]string{"proc/self/status": "", "proc/self/mountinfo": ""},
			reason: []string{"darwin", "not Linux"},
		},
		{
			name:   "unsupported on WSL 1",
			files:  map[string]string{"proc/version": "Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com) (gcc version 5.4.0 (GCC) )\n"},
			want:   spec.RestrictionUnsupported,
			reason: []string{"WSL 1"},
			wsl:    1,
		},
		{
			// WSL 2 is a real Linux kernel: the probes decide, as anywhere.
			name: "WSL 2 is Linux",
			files: map[string]string{
				"proc/version":        "Linux version 5.15.153.1-microsoft-standard-WSL2 (root@941d701f84f1) (gcc (GCC) 11.2.0)\n",
				"proc/self/mountinfo": mountinfoV2,
			},
			want: spec.RestrictionNone, unprivileged: true,
			reason: []string{"user namespaces work"},
			wsl:    2,
		},
		{
			name:   "unsupported on Windows",
			goos:   "windows",
			files:  map[string]string{"proc/self/status": "", "proc/self/mountinfo": ""},
			want:   spec.RestrictionUnsupported,
			reason: []string{"windows", "not Linux"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := baseFiles()
			for k, v := range tc.files {
				if v == "" {
					delete(files, k)
				} else {
					files[k] = v
				}
			}
			env := fakeEnv(fakeRoot(t, files), tc.probes)
			if tc.goos != "" {
				env.goos = tc.goos
			}
			p, err := detectAt(context.Background(), env)
			if err != nil {
				t.Fatalf("detectAt: %v", err)
			}
			if p.Restriction != tc.want {
				t.Errorf("restriction = %q, want %q (reason %q)", p.Restriction, tc.want, p.RestrictionReason)
			}
			if p.Unprivileged != tc.unprivileged {
				t.Errorf("unprivileged = %v, want %v (%s)", p.Unprivileged, tc.unprivileged, p.UnprivilegedReason)
			}
			for _, s := range tc.reason {
				if !strings.Contains(p.RestrictionReason, s) {
					t.Errorf("reason %q does not contain %q", p.RestrictionReason, s)
				}
			}
			if p.WSL != tc.wsl {
				t.Errorf("WSL = %d, want %d", p.WSL, tc.wsl)
			}
			if tc.warning != "" && !strings.Contains(strings.Join(p.Warnings, "\n"), tc.warning) {
				t.Errorf("warnings %q do not contain %q", p.Warnings, tc.warning)
			}
			if (p.Remedy == "") != (tc.want == spec.RestrictionNone) {
				t.Errorf("remedy %q for model %s", p.Remedy, p.Restriction)
			}
			if p.Remedy != RemedyFor(p.Restriction) {
				t.Errorf("remedy = %q, want RemedyFor(%s)", p.Remedy, p.Restriction)
			}
		})
	}
}

func TestDetectInconclusiveProbe(t *testing.T) {
	env := fakeEnv(fakeRoot(t, baseFiles()), map[probeKind]error{
		probeUserNS: &inconclusiveError{errors.New("/bin/true fails even without namespaces")},
	})
	if _, err := detectAt(context.Background(), env); err == nil || !strings.Contains(err.Error(), "inconclusive") {
		t.Fatalf("detectAt = %v, want an inconclusive error", err)
	}
	// An inconclusive unprivileged probe only leaves Unprivileged false.
	env = fakeEnv(fakeRoot(t, baseFiles()), map[probeKind]error{
		probeUnprivileged: &inconclusiveError{errors.New("setresuid: EPERM")},
	})
	p, err := detectAt(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	if p.Restriction != spec.RestrictionNone || p.Unprivileged || !strings.Contains(p.UnprivilegedReason, "setresuid") {
		t.Errorf("profile = %+v", p)
	}
}

func TestDetectMissingStatus(t *testing.T) {
	files := baseFiles()
	delete(files, "proc/self/status")
	if _, err := detectAt(context.Background(), fakeEnv(fakeRoot(t, files), nil)); err == nil {
		t.Fatal("detectAt without /proc/self/status succeeded")
	}
}

func TestDetectFacts(t *testing.T) {
	files := baseFiles()
	files["lib64"] = "->usr"                          // a link to a directory counts
	files["etc/resolv.conf"] = "->../run/resolv.conf" // a dangling one cannot be bound
	files["opt/x"] = ""
	env := fakeEnv(fakeRoot(t, files), nil)
	p, err := detectAt(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	wantPaths := []string{"/usr", "/lib64", "/opt", "/etc/passwd"}
	if !reflect.DeepEqual(p.Paths, wantPaths) {
		t.Errorf("paths = %q, want %q", p.Paths, wantPaths)
	}
	if p.Kernel != "6.1.0-test" {
		t.Errorf("kernel = %q", p.Kernel)
	}
	if p.CgroupVersion != CgroupHybrid || p.CgroupRoot != "/sys/fs/cgroup" || p.CgroupV2Path != "/sys/fs/cgroup/unified" {
		t.Errorf("cgroups = %q %q %q", p.CgroupVersion, p.CgroupRoot, p.CgroupV2Path)
	}
	if !p.Seccomp || len(p.SeccompActions) != 8 || p.SeccompActions[0] != "kill_process" {
		t.Errorf("seccomp = %v %q", p.Seccomp, p.SeccompActions)
	}
	if !p.Shm.Exists || !p.Shm.Writable || p.Shm.Warning != "" || p.Shm.FreeBytes != 1<<30 {
		t.Errorf("shm = %+v", p.Shm)
	}
	if len(p.Warnings) != 0 {
		t.Errorf("warnings = %q", p.Warnings)
	}
	if p.MemTotal != 24683652*1024 {
		t.Errorf("mem total = %d", p.MemTotal)
	}
	h := p.SpecHost()
	if h.Restriction != spec.RestrictionNone || !h.Seccomp || !reflect.DeepEqual(h.Paths, wantPaths) || h.MemTotal != 24683652*1024 {
		t.Errorf("SpecHost = %+v", h)
	}
}

// TestMemTotal: MemTotal of /proc/meminfo in bytes; 0 (unknown) for a
// missing file, line or unit the parser does not know.
func TestMemTotal(t *testing.T) {
	for _, tc := range []struct {
		meminfo string
		want    uint64
	}{
		{"MemTotal:       24683652 kB\nMemFree: 1 kB\n", 24683652 << 10},
		{"MemFree: 1 kB\nMemTotal: 1024 kB\n", 1 << 20},
		{"MemTotal: 12 MB\n", 0},
		{"MemTotal: x kB\n", 0},
		{"MemFree: 1 kB\n", 0},
		{"", 0},
	} {
		files := map[string]string{}
		if tc.meminfo != "" {
			files["proc/meminfo"] = tc.meminfo
		}
		if got := memTotal(fakeEnv(fakeRoot(t, files), nil)); got != tc.want {
			t.Errorf("memTotal(%q) = %d, want %d", tc.meminfo, got, tc.want)
		}
	}
}

func TestDetectSeccomp(t *testing.T) {
	tests := []struct {
		name     string
		status   string
		prctl    error
		builtIn  bool
		kernel   bool // Profile.Seccomp
		specHost bool // SpecHost().Seccomp
		warning  string
	}{
		{"supported", statusFile(capsRoot, 0), nil, true, true, true, ""},
		{"binary without seccomp", statusFile(capsRoot, 0), nil, false, true, false, "-tags seccomp"},
		{"no Seccomp field", "Uid:\t0\t0\t0\t0\nCapEff:\t" + capsRoot + "\n", nil, true, false, false, "CONFIG_SECCOMP"},
		{"prctl fails", statusFile(capsRoot, 0), syscall.EINVAL, true, false, false, "PR_GET_SECCOMP"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := baseFiles()
			files["proc/self/status"] = tc.status
			env := fakeEnv(fakeRoot(t, files), nil)
			env.seccompPrctl = func() error { return tc.prctl }
			env.seccompBuiltIn = tc.builtIn
			p, err := detectAt(context.Background(), env)
			if err != nil {
				t.Fatal(err)
			}
			if p.Seccomp != tc.kernel || p.SpecHost().Seccomp != tc.specHost {
				t.Errorf("seccomp = %v, SpecHost().Seccomp = %v; want %v, %v", p.Seccomp, p.SpecHost().Seccomp, tc.kernel, tc.specHost)
			}
			got := strings.Join(p.Warnings, "\n")
			if (tc.warning == "") != (got == "") || !strings.Contains(got, tc.warning) {
				t.Errorf("warnings = %q, want one containing %q", got, tc.warning)
			}
		})
	}
}

func TestCgroupLayout(t *testing.T) {
	tests := []struct {
		name, mountinfo       string
		version, root, v2path string
	}{
		{"hybrid", mountinfoHybrid, CgroupHybrid, "/sys/fs/cgroup", "/sys/fs/cgroup/unified"},
		{"v1", mountinfoV1, CgroupV1, "/sys/fs/cgroup", ""},
		{"v2", mountinfoV2, CgroupV2, "/sys/fs/cgroup", "/sys/fs/cgroup"},
		{"v2 mounted over v1", mountinfoHybrid + "50 22 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", CgroupV2, "/sys/fs/cgroup", "/sys/fs/cgroup"},
		{"none", "22 1 0:21 / / rw - ext4 /dev/vda rw\n", "", "", ""},
		{"v2 elsewhere", "22 1 0:21 / / rw - ext4 /dev/vda rw\n23 22 0:22 / /cgroup2 rw - cgroup2 none rw\n", CgroupV2, "/cgroup2", "/cgroup2"},
		{"v1 elsewhere", "22 1 0:21 / / rw - ext4 /dev/vda rw\n23 22 0:22 / /cgroup/memory rw - cgroup none rw,memory\n", CgroupV1, "/cgroup", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ms, err := parseMountinfo([]byte(tc.mountinfo))
			if err != nil {
				t.Fatal(err)
			}
			v, r, v2 := cgroupLayout(ms)
			if v != tc.version || r != tc.root || v2 != tc.v2path {
				t.Errorf("cgroupLayout = %q %q %q, want %q %q %q", v, r, v2, tc.version, tc.root, tc.v2path)
			}
		})
	}
}

// TestDetectCgroupReadOnly: cgroups mounted read-only (a container that is
// not privileged) are reported with a warning and its remedy; a read-only
// tmpfs holding writable v1 hierarchies is not.
func TestDetectCgroupReadOnly(t *testing.T) {
	for _, tc := range []struct {
		name, mountinfo string
		readOnly        bool
	}{
		{"hybrid host", mountinfoHybrid, false},
		{"v1 host, read-only tmpfs above writable hierarchies", mountinfoV1, false},
		{"v2 host", mountinfoV2, false},
		{"Docker on v1", mountinfoDockerV1, true},
		{"Docker on v2", mountinfoDockerV2, true},
		{"one v1 hierarchy read-only", mountinfoHybrid + "42 30 0:39 / /sys/fs/cgroup/pids ro,nosuid - cgroup cgroup rw,pids\n", true},
		{"v2 remounted read-write", mountinfoDockerV2 + "611 580 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup rw\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files := baseFiles()
			files["proc/self/mountinfo"] = tc.mountinfo
			p, err := detectAt(context.Background(), fakeEnv(fakeRoot(t, files), nil))
			if err != nil {
				t.Fatal(err)
			}
			warned := strings.Contains(strings.Join(p.Warnings, "\n"), CgroupReadOnlyWarning+WarningRemedySep+CgroupReadOnlyRemedy)
			if p.CgroupReadOnly != tc.readOnly || warned != tc.readOnly {
				t.Errorf("CgroupReadOnly = %v, warned %v; want %v (warnings %q)", p.CgroupReadOnly, warned, tc.readOnly, p.Warnings)
			}
		})
	}
}

// TestDetectOpenat2: a kernel without openat2 (before 5.6: Ubuntu 20.04's
// 5.4, RHEL 8's 4.18) is warned about with its remedy; other errors of the
// call (a path problem, not the kernel) are not.
func TestDetectOpenat2(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		warn bool
	}{
		{"present", nil, false},
		{"missing", syscall.ENOSYS, true},
		{"other error", syscall.EACCES, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := fakeEnv(fakeRoot(t, baseFiles()), nil)
			env.openat2 = func() error { return tc.err }
			p, err := detectAt(context.Background(), env)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(p.Warnings, "\n")
			if strings.Contains(got, "no openat2") != tc.warn || (tc.warn && !strings.Contains(got, "linux-generic-hwe-20.04")) {
				t.Errorf("warnings %q, want the openat2 warning: %v", got, tc.warn)
			}
		})
	}
}

func TestDetectNoCgroupsWarns(t *testing.T) {
	files := baseFiles()
	files["proc/self/mountinfo"] = "22 1 0:21 / / rw - ext4 /dev/vda rw\n"
	p, err := detectAt(context.Background(), fakeEnv(fakeRoot(t, files), nil))
	if err != nil {
		t.Fatal(err)
	}
	if p.CgroupVersion != "" || !strings.Contains(strings.Join(p.Warnings, "\n"), "no cgroup filesystem") {
		t.Errorf("version %q, warnings %q", p.CgroupVersion, p.Warnings)
	}
}

func TestParseMountinfo(t *testing.T) {
	ms, err := parseMountinfo([]byte("36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].point != "/mnt/with space" || ms[0].fstype != "ext3" || ms[0].readOnly {
		t.Errorf("parseMountinfo = %+v", ms)
	}
	for _, bad := range []string{"36 35 98:0 /mnt1 /mnt rw\n", "36 35 /mnt - ext3 x y\n"} {
		if _, err := parseMountinfo([]byte(bad)); err == nil {
			t.Errorf("parseMountinfo(%q) succeeded", bad)
		}
	}
}

func TestDetectShm(t *testing.T) {
	tests := []struct {
		name     string
		missing  bool
		writable bool
		free     uint64
		warning  string
	}{
		{"plenty", false, true, 1 << 30, ""},
		{"exactly the minimum", false, true, ShmMinFree, ""},
		{"just below the minimum", false, true, ShmMinFree - 1, "less than 100 MiB"},
		{"full", false, true, 0, "ENOSPC"},
		{"read-only", false, false, 1 << 30, "not writable"},
		{"missing", true, true, 0, "does not exist"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := fakeRoot(t, nil)
			if tc.missing {
				if err := os.Remove(filepath.Join(root, "dev/shm")); err != nil {
					t.Fatal(err)
				}
			}
			env := fakeEnv(root, nil)
			env.writable = func(string) bool { return tc.writable }
			env.statfs = func(string) (fsStat, error) { return fsStat{Size: 2 << 30, Free: tc.free}, nil }
			s := detectShm(env)
			if s.Exists == tc.missing {
				t.Errorf("exists = %v", s.Exists)
			}
			if !strings.Contains(s.Warning, tc.warning) || (tc.warning == "") != (s.Warning == "") {
				t.Errorf("warning = %q, want one containing %q", s.Warning, tc.warning)
			}
			if (s.Warning == "") != (s.Remedy == "") {
				t.Errorf("warning %q with remedy %q", s.Warning, s.Remedy)
			}
			if strings.Contains(tc.warning, "MiB") && !strings.Contains(s.Remedy, "--shm-size") {
				t.Errorf("remedy = %q", s.Remedy)
			}
		})
	}
}

func TestRemedyFor(t *testing.T) {
	want := map[spec.Restriction]string{
		spec.RestrictionAppArmor:    "kernel.apparmor_restrict_unprivileged_userns=0",
		spec.RestrictionSysctl:      "user.max_user_namespaces=15000",
		spec.RestrictionSELinux:     "setsebool",
		spec.RestrictionNoCaps:      "--privileged",
		spec.RestrictionUnsupported: "WSL2",
	}
	for _, r := range spec.Restrictions {
		got := RemedyFor(r)
		if r == spec.RestrictionNone {
			if got != "" {
				t.Errorf("RemedyFor(none) = %q", got)
			}
			continue
		}
		if r == spec.RestrictionAppArmor && !strings.Contains(got, "sudo pyisolate install --apparmor") {
			t.Errorf("RemedyFor(apparmor) does not name the profile install: %q", got)
		}
		if !strings.Contains(got, want[r]) {
			t.Errorf("RemedyFor(%s) = %q, want it to contain %q", r, got, want[r])
		}
	}
}

func TestProfileJSONRoundTrip(t *testing.T) {
	files := baseFiles()
	files["proc/sys/kernel/apparmor_restrict_unprivileged_userns"] = "1"
	env := fakeEnv(fakeRoot(t, files), map[probeKind]error{probeUserNS: refused(syscall.EACCES)})
	p, err := detectAt(context.Background(), env)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"restriction":"apparmor"`, `"restriction_reason":`, `"cgroup_version":"hybrid"`, `"shm":{"path":"/dev/shm"`, `"free_bytes":`, `"seccomp_actions":[`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("JSON %s lacks %s", b, key)
		}
	}
	var back Profile
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(&back, p) {
		t.Errorf("round trip:\n got %+v\nwant %+v", back, *p)
	}
}

func TestWSLVersion(t *testing.T) {
	tests := map[string]int{
		"Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org)":                            0,
		"Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com) (gcc version 5.4.0 (GCC) )": 1,
		"Linux version 5.15.133.1-microsoft-standard-WSL2 (root@1c602f52c2e4) (gcc (GCC) 11.2.0)":  2,
		"": 0,
	}
	for v, want := range tests {
		if got := wslVersion(v); got != want {
			t.Errorf("wslVersion(%q) = %d, want %d", v, got, want)
		}
	}
}
