package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pyisolate/pyisolate-oci/hooks"
	"github.com/pyisolate/pyisolate-oci/runtime/detect"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// detectProfile is a restricted host profile for output tests.
func detectProfile() *detect.Profile {
	return &detect.Profile{
		Restriction:        spec.RestrictionAppArmor,
		RestrictionReason:  "clone(CLONE_NEWUSER) failed: EACCES with kernel.apparmor_restrict_unprivileged_userns=1",
		Remedy:             detect.RemedyFor(spec.RestrictionAppArmor),
		UnprivilegedReason: "user namespaces fail for the runtime too",
		CgroupVersion:      detect.CgroupHybrid,
		CgroupRoot:         "/sys/fs/cgroup",
		CgroupV2Path:       "/sys/fs/cgroup/unified",
		Seccomp:            true,
		SeccompActions:     []string{"kill_process", "errno", "allow"},
		SeccompBuiltIn:     true,
		Shm:                detect.Shm{Path: "/dev/shm", Exists: true, Writable: true, SizeBytes: 64 << 20, FreeBytes: 50 << 20, Warning: "/dev/shm has 50 MiB free", Remedy: "docker run --shm-size=2g"},
		Paths:              append([]string{}, detect.SystemPaths[:2]...),
		Kernel:             "6.8.0-31-generic",
		Warnings:           []string{"running rootless" + detect.WarningRemedySep + "use Delegate=yes", "no remedy here"},
	}
}

func TestDetectHuman(t *testing.T) {
	var out bytes.Buffer
	fake := func(context.Context) (*detect.Profile, error) { return detectProfile(), nil }
	if code := runDetect(context.Background(), nil, &out, fake); code != 0 {
		t.Fatalf("exit %d", code)
	}
	got := out.String()
	t.Log("\n" + got)
	for _, want := range []string{
		"restriction model: apparmor (clone(CLONE_NEWUSER) failed: EACCES with kernel.apparmor_restrict_unprivileged_userns=1)\n  remedy: let the pyisolate binary keep user namespaces, as Ubuntu does for chosen programs: 'sudo pyisolate install --apparmor'",
		"unprivileged userns: blocked (user namespaces fail for the runtime too)\n",
		"cgroups: hybrid (v1 controllers at /sys/fs/cgroup + v2 at /sys/fs/cgroup/unified)\n",
		"seccomp: supported (actions: kill_process errno allow)\n",
		"/dev/shm: 50 MiB free of 64 MiB, writable\n  warning: /dev/shm has 50 MiB free\n  remedy: docker run --shm-size=2g\n",
		"kernel: 6.8.0-31-generic\n",
		"host paths: 2 of 19 present (missing: /lib64 ",
		"degraded: user-namespace (no user namespace: extensions run as host uid 65534)\n",
		"warning: running rootless\n  remedy: use Delegate=yes\nwarning: no remedy here\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestDetectHumanRootless: detect run by an ordinary user says rootless,
// how ids map, where group shared memory lives, and which limits are not
// enforced, with the delegation remedy; with a delegation it says where
// limits go and degrades nothing.
func TestDetectHumanRootless(t *testing.T) {
	p := detectProfile()
	p.Restriction, p.Remedy, p.Unprivileged = spec.RestrictionNone, "", true
	p.RestrictionReason = "user namespaces work for the runtime (rootless: no CAP_SYS_ADMIN)"
	p.Rootless = true
	p.Warnings = []string{"rootless: memory, pids and CPU limits are not enforced (cgroups are hybrid here)" +
		detect.WarningRemedySep + detect.DelegationRemedy}
	p.RootlessMode = &detect.RootlessMode{
		UID: 1000, GID: 1000, StateRoot: "/run/user/1000/pyisolate",
		IDMapping:          "container root is uid 1000, gid 1000",
		GroupShm:           "a private 0700 directory on the tmpfs /dev/shm",
		GroupShmTmpfs:      true,
		NoDelegationReason: "cgroups are hybrid here",
		NotEnforced:        []string{"limits.memory", "limits.pids"},
	}
	got := formatProfile(p)
	for _, want := range []string{
		"rootless: yes (uid 1000, gid 1000; state in /run/user/1000/pyisolate)\n",
		"  ids: container root is uid 1000, gid 1000\n",
		"  group shm: a private 0700 directory on the tmpfs /dev/shm\n",
		"  cgroup limits: not enforced (limits.memory, limits.pids): cgroups are hybrid here\n",
		"degraded: cgroup-limits (no memory, pids or CPU limits)\n",
		"  remedy: run pyisolate in a delegated cgroup v2 scope of your systemd user manager: 'systemd-run --user --scope -p Delegate=yes",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	p.RootlessMode.CgroupDelegation = &detect.CgroupDelegation{Path: "/user.slice/run-u1.scope", Controllers: []string{"memory", "pids"}}
	got = formatProfile(p)
	for _, want := range []string{
		"  cgroup limits: enforced in the delegated cgroup /user.slice/run-u1.scope (controllers: memory pids)\n",
		"degraded: nothing (full sandbox)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("with a delegation, output lacks %q:\n%s", want, got)
		}
	}
	p.Rootless, p.RootlessMode = false, nil
	if got := formatProfile(p); !strings.Contains(got, "rootless: no (root)\n") {
		t.Errorf("as root, output lacks rootless: no:\n%s", got)
	}
}

func TestDetectHumanUnrestricted(t *testing.T) {
	p := detectProfile()
	p.Restriction, p.Remedy, p.Unprivileged = spec.RestrictionNone, "", true
	p.RestrictionReason = "user namespaces work for the runtime"
	p.SeccompBuiltIn = false
	got := formatProfile(p)
	for _, want := range []string{
		"restriction model: none (user namespaces work for the runtime)\nunprivileged userns: allowed\n",
		"seccomp: supported by the kernel, but not built into this binary",
		"degraded: seccomp (no seccomp filter)\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Count(got, "remedy:") != 2 { // shm and the first warning
		t.Errorf("unexpected remedies:\n%s", got)
	}
}

func TestDetectExitCodes(t *testing.T) {
	ok := func(context.Context) (*detect.Profile, error) { return detectProfile(), nil }
	broken := func(context.Context) (*detect.Profile, error) {
		return nil, errors.New("read /proc/self/status: no such file")
	}
	tests := []struct {
		name   string
		args   []string
		detect func(context.Context) (*detect.Profile, error)
		want   int
	}{
		{"restricted host", nil, ok, 0},
		{"json", []string{"--json"}, ok, 0},
		{"detection fails", nil, broken, 1},
		{"bad flag", []string{"--yaml"}, ok, exitUsage},
		{"argument", []string{"extra"}, ok, exitUsage},
		{"help", []string{"-h"}, ok, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if got := runDetect(context.Background(), tc.args, &out, tc.detect); got != tc.want {
				t.Errorf("exit %d, want %d", got, tc.want)
			}
		})
	}
}

// TestDetectJSONReal runs the real detection through the command and decodes
// its --json output.
func TestDetectJSONReal(t *testing.T) {
	var out bytes.Buffer
	if code := runDetect(context.Background(), []string{"--json"}, &out, detect.Host); code != 0 {
		t.Fatalf("exit %d", code)
	}
	var got struct {
		detect.Profile
		GPU *hooks.CUDAReport `json:"gpu"`
	}
	dec := json.NewDecoder(&out)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&got); err != nil {
		t.Fatalf("decode --json: %v\n%s", err, out.String())
	}
	p := got.Profile
	if got.GPU == nil || len(got.GPU.SpecDirs) == 0 {
		t.Errorf("--json has no GPU readiness: %s", out.String())
	}
	if p.Restriction == "" || p.RestrictionReason == "" || p.Shm.Path != "/dev/shm" {
		t.Errorf("profile %+v", p)
	}
	if !strings.Contains(formatProfile(&p), "restriction model: "+string(p.Restriction)) {
		t.Errorf("human output of the real profile:\n%s", formatProfile(&p))
	}
}

// TestDetectGPU gives detect a machine with a fake NVIDIA driver directory,
// device node names and a CDI spec, then one without the spec: the human
// and JSON outputs say ready, or not ready with the `cdi generate` remedy.
func TestDetectGPU(t *testing.T) {
	dir := t.TempDir()
	procDriver, devDir, cdiDir := filepath.Join(dir, "proc"), filepath.Join(dir, "dev"), filepath.Join(dir, "cdi")
	for _, d := range []string{procDriver, devDir, cdiDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		filepath.Join(procDriver, "version"): "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15\n",
		filepath.Join(devDir, "nvidia0"):     "",
		filepath.Join(devDir, "nvidiactl"):   "",
		filepath.Join(cdiDir, "nvidia.yaml"): "cdiVersion: \"0.5.0\"\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes: [{path: /dev/nvidia0}]\n",
	}
	for p, text := range files {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	saved := gpuReadiness
	t.Cleanup(func() { gpuReadiness = saved })
	gpuReadiness = func(ctx context.Context) hooks.CUDAReport {
		return hooks.Readiness(ctx, hooks.ReadinessOptions{SpecDirs: []string{cdiDir}, ProcDriver: procDriver, DevDir: devDir,
			LookPath: func(string) (string, error) { return "", errors.New("not found") }})
	}
	fake := func(context.Context) (*detect.Profile, error) { return detectProfile(), nil }
	for _, tc := range []struct {
		name      string
		removeCDI bool
		human     []string
		ready     bool
	}{
		{"ready", false, []string{"CUDA IPC / GPUs: ready\n", "driver: NVRM version", "CDI devices (" + cdiDir + "): nvidia.com/gpu=0\n"}, true},
		{"no CDI spec", true, []string{"CUDA IPC / GPUs: not ready\n", "no CDI spec in " + cdiDir, "remedy: run `pyisolate cdi generate --output=/etc/cdi/nvidia.yaml`"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.removeCDI {
				os.Remove(filepath.Join(cdiDir, "nvidia.yaml"))
			}
			var out bytes.Buffer
			if code := runDetect(context.Background(), nil, &out, fake); code != 0 {
				t.Fatalf("exit %d", code)
			}
			for _, want := range tc.human {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, out.String())
				}
			}
			out.Reset()
			if code := runDetect(context.Background(), []string{"--json"}, &out, fake); code != 0 {
				t.Fatalf("--json: exit %d", code)
			}
			var got struct {
				GPU hooks.CUDAReport `json:"gpu"`
			}
			if err := json.Unmarshal(out.Bytes(), &got); err != nil || got.GPU.Ready != tc.ready {
				t.Errorf("--json gpu.ready = %v (%v), want %v:\n%s", got.GPU.Ready, err, tc.ready, out.String())
			}
		})
	}
}

// TestUnsandboxable: run refuses, with the reason and the remedy, the hosts
// where no sandbox can be made (no-caps; read-only cgroups for a root
// runtime), and detect says so on its "degraded:" line; every other model
// runs, degraded or not.
func TestUnsandboxable(t *testing.T) {
	for _, tc := range []struct {
		name     string
		model    spec.Restriction
		cgroupRO bool
		euid     int
		refused  []string // substrings of the error; nil: not refused
	}{
		{name: "none", model: spec.RestrictionNone},
		{name: "apparmor degrades", model: spec.RestrictionAppArmor},
		{name: "sysctl degrades", model: spec.RestrictionSysctl},
		{name: "selinux degrades", model: spec.RestrictionSELinux},
		{name: "no-caps", model: spec.RestrictionNoCaps,
			refused: []string{"restriction model no-caps (probe says no)", "does not run extensions unsandboxed", "remedy: give the runtime's container CAP_SYS_ADMIN"}},
		{name: "no-caps with read-only cgroups", model: spec.RestrictionNoCaps, cgroupRO: true,
			refused: []string{"restriction model no-caps"}},
		{name: "read-only cgroups as root", model: spec.RestrictionNone, cgroupRO: true,
			refused: []string{"cgroup filesystem is mounted read-only", "remedy: run the runtime's container privileged"}},
		{name: "read-only cgroups rootless", model: spec.RestrictionNone, cgroupRO: true, euid: 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := detectProfile()
			p.Restriction, p.RestrictionReason, p.Remedy = tc.model, "probe says no", detect.RemedyFor(tc.model)
			p.CgroupReadOnly = tc.cgroupRO
			err := unsandboxable(p, tc.euid)
			if (err != nil) != (tc.refused != nil) {
				t.Fatalf("unsandboxable = %v, want refused: %v", err, tc.refused != nil)
			}
			for _, want := range tc.refused {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
			if tc.euid == os.Geteuid() { // degradedText judges the running process
				line := degradedText(p)
				if strings.Contains(line, "refuses") != (tc.refused != nil) {
					t.Errorf("degraded line %q for refused=%v", line, tc.refused != nil)
				}
			}
		})
	}
}
