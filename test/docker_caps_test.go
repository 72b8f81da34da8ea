package test

// pyisolate inside Docker-like containers, started by runc: Docker's default
// (its capability set without CAP_SYS_ADMIN, its seccomp profile, read-only
// /sys and cgroups), the same with --cap-add SYS_ADMIN, and --privileged.
// The container's root is the static binary test's busybox root, so that
// pyisolate needs nothing from the image. Names start with docker so that
// they do not collide with the other files of package test.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// dockerDefaultCaps is the capability set Docker gives a container that
// does not ask for more (moby's oci/caps defaults): no CAP_SYS_ADMIN.
var dockerDefaultCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// dockerCapNames are the Linux capabilities by number (linux/capability.h).
var dockerCapNames = []string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
	"SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
	"IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
	"SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
	"LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
	"WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
}

// dockerBoundingCaps returns the capabilities of this process's bounding set:
// what --privileged can give here (this machine's root may lack some).
func dockerBoundingCaps(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			var caps []string
			for i, n := range dockerCapNames {
				if mask&(1<<i) != 0 {
					caps = append(caps, "CAP_"+n)
				}
			}
			return caps
		}
	}
	t.Fatal("no CapBnd in /proc/self/status")
	return nil
}

// dockerMode is one way Docker starts a container.
type dockerMode int

const (
	dockerDefault    dockerMode = iota // docker run IMAGE
	dockerSysAdmin                     // docker run --cap-add SYS_ADMIN IMAGE
	dockerPrivileged                   // docker run --privileged IMAGE
)

// dockerBundle writes, in a new directory, a config.json for rootfs as
// Docker would start it in mode, running args, and returns the directory.
func dockerBundle(t *testing.T, rootfs string, mode dockerMode, args ...string) string {
	t.Helper()
	dir := t.TempDir()
	s := specconv.Example()
	s.Version = "1.0.2" // what Debian's runc 1.1.5 writes itself
	s.Root = &specs.Root{Path: rootfs}
	s.Process.Terminal = false
	s.Process.Args = args
	s.Process.NoNewPrivileges = false // Docker's default
	caps := dockerDefaultCaps
	switch mode {
	case dockerSysAdmin:
		caps = append(append([]string{}, caps...), "CAP_SYS_ADMIN")
	case dockerPrivileged:
		caps = dockerBoundingCaps(t)
	}
	s.Process.Capabilities = &specs.LinuxCapabilities{Bounding: caps, Effective: caps, Permitted: caps}
	s.Mounts = append(s.Mounts,
		specs.Mount{Destination: "/run", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=755"}},
		specs.Mount{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}})
	if mode == dockerPrivileged {
		// Read-write /sys and cgroups, no masked paths, every device, no
		// seccomp filter.
		for i, m := range s.Mounts {
			if m.Destination == "/sys" || m.Destination == "/sys/fs/cgroup" {
				s.Mounts[i].Options = []string{"nosuid", "noexec", "nodev", "rw"}
			}
		}
		s.Linux.MaskedPaths, s.Linux.ReadonlyPaths = nil, nil
		s.Linux.Resources.Devices = []specs.LinuxDeviceCgroup{{Allow: true, Access: "rwm"}}
	} else {
		// Docker's default profile: namespace flags to clone and unshare
		// only with CAP_SYS_ADMIN.
		s.Linux.Seccomp = seccomp.DefaultProfile(s)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// dockerRun runs args in a container of mode over rootfs with runc and
// deletes it.
func dockerRun(t *testing.T, rootfs string, mode dockerMode, args ...string) secRunResult {
	t.Helper()
	dir := dockerBundle(t, rootfs, mode, args...)
	return secRunOCI([]string{"runc"}, filepath.Join(dir, "state"), dir, secID("dockerlike"), 2*time.Minute, nil)
}

// TestDockerLikeContainers runs `pyisolate detect --json` and `pyisolate run`
// inside containers started the way Docker starts them:
//   - default (no CAP_SYS_ADMIN, Docker's seccomp profile): detect reports
//     restriction model no-caps with its remedy; run refuses before it makes
//     anything, exit 125, naming the model and the remedy; the extension
//     never runs unsandboxed;
//   - --cap-add SYS_ADMIN: namespaces work (model none), but the cgroups are
//     read-only: detect warns, run refuses with exit 125 and the remedy;
//   - --privileged: the full sandbox (capabilities dropped, seccomp,
//     no_new_privs, own PID namespace) and the exit status.
func TestDockerLikeContainers(t *testing.T) {
	bin := staticBinary(t)
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("skipped: runc is not installed (scripts/install-deps.sh installs it)")
	}
	rootfs := staticRoot(t, bin)
	const report = `grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; echo "pid $$"; exit 7`
	for _, tc := range []struct {
		name     string
		mode     dockerMode
		model    string
		cgroupRO bool
		remedy   string   // substring of the remedy (detect) and of run's error
		code     int      // run's exit status
		stdout   []string // in run's output
		stderr   []string // in run's error
	}{
		{
			name: "default", mode: dockerDefault, model: "no-caps", cgroupRO: true,
			remedy: "'docker run --privileged'", code: 125,
			stderr: []string{"no sandbox can be made here: restriction model no-caps", "lacks CAP_SYS_ADMIN", "does not run extensions unsandboxed"},
		},
		{
			name: "cap-add SYS_ADMIN", mode: dockerSysAdmin, model: "none", cgroupRO: true,
			remedy: "'docker run --privileged'", code: 125,
			stderr: []string{"no sandbox can be made here: the cgroup filesystem is mounted read-only"},
		},
		{
			name: "privileged", mode: dockerPrivileged, model: "none", code: 7,
			stdout: []string{"CapEff:\t0000000000000000\n", "NoNewPrivs:\t1\n", "Seccomp:\t2\n", "pid 1\n"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dockerRun(t, rootfs, tc.mode, "/pyisolate", "detect", "--json")
			if r.code != 0 {
				t.Fatalf("detect: %s", r)
			}
			var p struct {
				Restriction    string   `json:"restriction"`
				Reason         string   `json:"restriction_reason"`
				Remedy         string   `json:"remedy"`
				CgroupReadOnly bool     `json:"cgroup_read_only"`
				Warnings       []string `json:"warnings"`
			}
			if err := json.Unmarshal(r.stdout, &p); err != nil {
				t.Fatalf("detect --json: %v\n%s", err, r)
			}
			t.Logf("detect: %s (%s), cgroups read-only %v", p.Restriction, p.Reason, p.CgroupReadOnly)
			if p.Restriction != tc.model || p.CgroupReadOnly != tc.cgroupRO {
				t.Errorf("restriction %q, cgroups read-only %v; want %q, %v", p.Restriction, p.CgroupReadOnly, tc.model, tc.cgroupRO)
			}
			if detectRemedy := p.Remedy + strings.Join(p.Warnings, "\n"); tc.remedy != "" && !strings.Contains(detectRemedy, tc.remedy) {
				t.Errorf("detect's remedies %q lack %q", detectRemedy, tc.remedy)
			}

			r = dockerRun(t, rootfs, tc.mode, "/pyisolate", "run", "--root", "/run/pyisolate-test", "--id", secID("dockerlike-ext"),
				"/bundle", "--", "/bin/sh", "-c", report)
			if r.code != tc.code {
				t.Fatalf("run exited %d, want %d: %s", r.code, tc.code, r)
			}
			for _, want := range tc.stdout {
				if !strings.Contains(string(r.stdout), want) {
					t.Errorf("run's output lacks %q: %s", want, r)
				}
			}
			for _, want := range append(tc.stderr, tc.remedy) {
				if !strings.Contains(string(r.stderr), want) {
					t.Errorf("run's error lacks %q: %s", want, r)
				}
			}
			if tc.code == 125 {
				if strings.Contains(string(r.stdout), "pid ") {
					t.Errorf("the extension ran: %s", r)
				}
				if n := strings.Count(strings.TrimSpace(string(r.stderr)), "\n"); n != 0 {
					t.Errorf("run's refusal is %d lines, want one: %s", n+1, r.stderr)
				}
			}
		})
	}
}
