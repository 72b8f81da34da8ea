package hooks

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	pspec "github.com/pyisolate/pyisolate-oci/spec"
)

// fakeNvidia writes a CDI spec for two fake GPUs (/dev/nvidia0 and
// /dev/nvidia1, fully specified 195:N so no host node is needed) named by
// index and by UUID, and a fake /proc/driver/nvidia with their UUIDs. It
// points procDriverNvidia at the fake tree for the test.
func fakeNvidia(t *testing.T) (specDir string) {
	t.Helper()
	tmp := t.TempDir()
	proc := filepath.Join(tmp, "proc")
	writeFile(t, proc, "version", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15\nGCC version: 12\n")
	for i, bus := range []string{"0000:01:00.0", "0000:41:00.0"} {
		writeFile(t, proc, filepath.Join("gpus", bus, "information"), fmt.Sprintf(
			"Model: \t\t NVIDIA H100\nIRQ:   \t\t 100\nGPU UUID: \t GPU-0000000%d-aaaa-bbbb-cccc-dddddddddddd\nDevice Minor: \t %d\n", i, i))
	}
	old := procDriverNvidia
	procDriverNvidia = proc
	t.Cleanup(func() { procDriverNvidia = old })
	specDir = filepath.Join(tmp, "cdi")
	writeFile(t, specDir, "nvidia.yaml", `cdiVersion: "0.5.0"
kind: nvidia.com/gpu
containerEdits:
  env: ["NVIDIA_VISIBLE_DEVICES=void"]
  deviceNodes:
  - {path: /dev/nvidiactl, type: c, major: 195, minor: 255}
devices:
- name: "0"
  containerEdits:
    deviceNodes: [{path: /dev/nvidia0, type: c, major: 195, minor: 0}]
- name: "1"
  containerEdits:
    deviceNodes: [{path: /dev/nvidia1, type: c, major: 195, minor: 1}]
- name: all
  containerEdits:
    deviceNodes:
    - {path: /dev/nvidia0, type: c, major: 195, minor: 0}
    - {path: /dev/nvidia1, type: c, major: 195, minor: 1}
`)
	return specDir
}

// cudaMember builds and prepares one member's spec: Build, InjectCDI,
// CUDAIPCSettings.
func cudaMember(t *testing.T, specDir, gpus, ipcNS string) *specs.Spec {
	t.Helper()
	s := buildSpec(t, gpuManifest(t, gpus), pspec.RestrictionSysctl)
	if _, err := InjectCDI(context.Background(), s, CDIOptions{SpecDirs: []string{specDir}}); err != nil {
		t.Fatal(err)
	}
	if err := CUDAIPCSettings(s, ipcNS); err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCUDAIPCSettings(t *testing.T) {
	specDir := fakeNvidia(t)
	u0, u1 := "GPU-00000000-aaaa-bbbb-cccc-dddddddddddd", "GPU-00000001-aaaa-bbbb-cccc-dddddddddddd"
	tests := []struct {
		name, gpus, ipcNS string
		wantVisible       string
		wantIPC, wantPID  string
		wantVisibleUnset  bool
		procMissing       bool
	}{
		{name: "first member creates the namespaces", gpus: `"nvidia.com/gpu=0"`, wantVisible: u0},
		{name: "joins the group's ipc and pid", gpus: `"nvidia.com/gpu=1","nvidia.com/gpu=0"`, ipcNS: "/proc/1234/ns/ipc",
			wantVisible: u1 + "," + u0, wantIPC: "/proc/1234/ns/ipc", wantPID: "/proc/1234/ns/pid"},
		{name: "bind-mounted namespace dir", gpus: `"nvidia.com/gpu=all"`, ipcNS: "/run/pyisolate/groups/g/ns/ipc",
			wantVisible: u0 + "," + u1, wantIPC: "/run/pyisolate/groups/g/ns/ipc", wantPID: "/run/pyisolate/groups/g/ns/pid"},
		{name: "no driver info: inherited CUDA_VISIBLE_DEVICES removed", gpus: `"nvidia.com/gpu=0"`, procMissing: true, wantVisibleUnset: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.procMissing {
				old := procDriverNvidia
				procDriverNvidia = t.TempDir()
				defer func() { procDriverNvidia = old }()
			}
			s := cudaMember(t, specDir, tt.gpus, tt.ipcNS)
			for k, v := range map[string]string{EnvEnableCUDAIPC: "1", EnvCUDADeviceOrder: "PCI_BUS_ID", EnvNvidiaVisibleDevices: "void"} {
				if got, _ := envOf(s, k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			got, ok := envOf(s, EnvCUDAVisibleDevices)
			if tt.wantVisibleUnset {
				if ok {
					t.Errorf("%s = %q, want it unset (the host's \"3\" is wrong inside)", EnvCUDAVisibleDevices, got)
				}
			} else if got != tt.wantVisible {
				t.Errorf("%s = %q, want %q", EnvCUDAVisibleDevices, got, tt.wantVisible)
			}
			if n := strings.Count(strings.Join(s.Process.Env, "\n"), EnvCUDAVisibleDevices+"="); n > 1 {
				t.Errorf("%s set %d times", EnvCUDAVisibleDevices, n)
			}
			ipc, _ := namespace(s, specs.IPCNamespace)
			pid, _ := namespace(s, specs.PIDNamespace)
			if ipc.Path != tt.wantIPC || pid.Path != tt.wantPID {
				t.Errorf("ipc %q pid %q, want %q %q", ipc.Path, pid.Path, tt.wantIPC, tt.wantPID)
			}
			if s.Annotations[pspec.AnnotationShareCUDAIPC] != "true" {
				t.Errorf("annotation %s missing", pspec.AnnotationShareCUDAIPC)
			}
			if !slices.ContainsFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == "/dev/nvidiactl" }) {
				t.Errorf("spec-wide edits (nvidiactl) not injected")
			}
		})
	}
}

func TestCUDAIPCSettingsErrors(t *testing.T) {
	tests := []struct {
		name    string
		s       *specs.Spec
		ns      string
		wantErr string
	}{
		{"nil", nil, "", "nil spec"},
		{"no linux", &specs.Spec{Process: &specs.Process{}}, "", "no linux section"},
		{"no process", &specs.Spec{Linux: &specs.Linux{}}, "", "no process"},
		{"relative ns", &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{}}, "proc/1/ns/ipc", "not an absolute path"},
		{"ns without pid sibling", &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{}}, "/run/netns/x", "not a path ending in /ipc"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CUDAIPCSettings(tt.s, tt.ns)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestCheckCUDAIPCGroup(t *testing.T) {
	specDir := fakeNvidia(t)
	const join = "/proc/4242/ns/ipc"
	tests := []struct {
		name     string
		host     func() *specs.Spec
		ext      func() *specs.Spec
		wantErrs []string
	}{
		{
			name: "host creates, extension joins, same GPUs",
			host: func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=0","nvidia.com/gpu=1"`, "") },
			ext:  func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=0","nvidia.com/gpu=1"`, join) },
		},
		{
			name: "both join the group holder",
			host: func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=all"`, join) },
			ext:  func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=all"`, join) },
		},
		{
			name: "different GPU",
			host: func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=0"`, "") },
			ext:  func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=1"`, join) },
			wantErrs: []string{"GPU devices differ", "host has [/dev/nvidia0 (195:0) GPU-00000000", "extension has [/dev/nvidia1 (195:1)",
				"CUDA_VISIBLE_DEVICES differs"},
		},
		{
			name:     "same GPUs in another order",
			host:     func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=0","nvidia.com/gpu=1"`, "") },
			ext:      func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=1","nvidia.com/gpu=0"`, join) },
			wantErrs: []string{"GPU devices differ", "CUDA_VISIBLE_DEVICES differs"},
		},
		{
			name:     "extension in its own namespaces",
			host:     func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=0"`, "") },
			ext:      func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=0"`, "") },
			wantErrs: []string{"ipc namespace differs: host in a new one, extension in a new one", "pid namespace differs"},
		},
		{
			name: "extension without CUDA IPC",
			host: func() *specs.Spec { return cudaMember(t, specDir, `"nvidia.com/gpu=0"`, join) },
			ext: func() *specs.Spec {
				s := cudaMember(t, specDir, `"nvidia.com/gpu=0"`, "/proc/1/ns/ipc")
				unsetEnv(s, EnvEnableCUDAIPC)
				return s
			},
			wantErrs: []string{"extension: PYISOLATE_ENABLE_CUDA_IPC is not 1", "ipc namespace differs: host in /proc/4242/ns/ipc, extension in /proc/1/ns/ipc"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckCUDAIPCGroup(tt.host(), tt.ext())
			if len(tt.wantErrs) == 0 {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, want %q", tt.wantErrs)
			}
			for _, w := range tt.wantErrs {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestGPUNodesUUIDFromCDIName(t *testing.T) {
	old := procDriverNvidia
	procDriverNvidia = t.TempDir() // no driver info
	defer func() { procDriverNvidia = old }()
	s := &specs.Spec{
		Annotations: map[string]string{AnnotationCDIInjected: "nvidia.com/gpu=GPU-abc"},
		Linux:       &specs.Linux{Devices: []specs.LinuxDevice{{Path: "/dev/nvidiactl"}, {Path: "/dev/nvidia3", Type: "c", Major: 195, Minor: 3}}},
		Mounts:      []specs.Mount{{Destination: "/dev/nvidia-uvm", Source: "/dev/nvidia-uvm"}},
	}
	got := GPUNodes(s)
	if len(got) != 1 || got[0].Path != "/dev/nvidia3" || got[0].Minor != 3 || got[0].UUID != "GPU-abc" {
		t.Fatalf("GPUNodes = %+v", got)
	}
}

// TestInjectDevices: CDI devices are injected for every member; CUDA IPC
// settings (CUDA_DEVICE_ORDER) only with a group (the namespace path from the
// group); an unknown
// device is a user error.
func TestInjectDevices(t *testing.T) {
	specDir := fakeNvidia(t)
	opts := CDIOptions{SpecDirs: []string{specDir}}
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		gpus    string
		ipcNS   func() string
		wantIPC string
		wantEnv bool
		userErr bool
	}{
		{name: "group member joins", gpus: `"nvidia.com/gpu=0"`, ipcNS: func() string { return "/proc/1234/ns/ipc" },
			wantIPC: "/proc/1234/ns/ipc", wantEnv: true},
		{name: "first member of a group", gpus: `"nvidia.com/gpu=0"`, ipcNS: func() string { return "" }, wantEnv: true},
		{name: "no group", gpus: `"nvidia.com/gpu=0"`},
		{name: "unknown device", gpus: `"nvidia.com/gpu=7"`, ipcNS: func() string { return "" }, userErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := buildSpec(t, gpuManifest(t, tc.gpus), pspec.RestrictionSysctl)
			err := InjectDevices(ctx, s, opts, tc.ipcNS)
			if IsUserError(err) != tc.userErr || (err != nil) != tc.userErr {
				t.Fatalf("InjectDevices: %v, want a user error: %v", err, tc.userErr)
			}
			if tc.userErr {
				return
			}
			if !slices.ContainsFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == "/dev/nvidia0" }) {
				t.Errorf("/dev/nvidia0 not injected")
			}
			if got, _ := envOf(s, EnvCUDADeviceOrder); (got == "PCI_BUS_ID") != tc.wantEnv {
				t.Errorf("%s = %q, want set: %v", EnvCUDADeviceOrder, got, tc.wantEnv)
			}
			if ipc, _ := namespace(s, specs.IPCNamespace); ipc.Path != tc.wantIPC {
				t.Errorf("ipc namespace %q, want %q", ipc.Path, tc.wantIPC)
			}
		})
	}
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{fmt.Errorf("x"), false},
		{fmt.Errorf("wrapped: %w", &SpecFileError{Path: "/etc/cdi/x.yaml", Err: fmt.Errorf("bad")}), true},
		{&UnknownDeviceError{Devices: []string{"a.com/b=c"}}, true},
	} {
		if got := IsUserError(tc.err); got != tc.want {
			t.Errorf("IsUserError(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
