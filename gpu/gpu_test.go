package gpu_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	cdispecs "tags.cncf.io/container-device-interface/specs-go"

	"github.com/pyisolate/pyisolate-oci/gpu"
	"github.com/pyisolate/pyisolate-oci/gpu/gputest"
	"github.com/pyisolate/pyisolate-oci/hooks"
)

// fakeRoot makes a fake driver root for n GPUs; it skips without root
// (mknod).
func fakeRoot(t *testing.T, n int) string {
	t.Helper()
	root := t.TempDir()
	if _, err := gputest.FakeDriverRoot(root, n); err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("needs root for mknod: %v", err)
		}
		t.Fatal(err)
	}
	return root
}

// uuids returns the mock's GPU UUIDs in index order.
func uuids(t *testing.T, s *server.Server) []string {
	t.Helper()
	var out []string
	for i, d := range s.Devices {
		u, r := d.GetUUID()
		if r != nvml.SUCCESS {
			t.Fatalf("mock GPU %d: %v", i, r)
		}
		out = append(out, u)
	}
	return out
}

// device returns the spec's device called name.
func device(s *cdispecs.Spec, name string) *cdispecs.Device {
	for i := range s.Devices {
		if s.Devices[i].Name == name {
			return &s.Devices[i]
		}
	}
	return nil
}

func nodePaths(e cdispecs.ContainerEdits) []string {
	var out []string
	for _, n := range e.DeviceNodes {
		out = append(out, n.Path)
	}
	return out
}

// TestGenerateDGXA100 generates the spec of go-nvml's DGX A100 mock over a
// fake driver root and checks its devices (by index, UUID, type-index, the
// "all" device, a GPU in MIG mode left out), their device nodes, the common
// edits, and that the CDI library loads the saved file with the same
// devices.
func TestGenerateDGXA100(t *testing.T) {
	tests := []struct {
		name       string
		strategies []string
		migGPU     int // GPU put in MIG mode, -1 for none
		names      func(uuids []string) []string
	}{
		{
			name: "default strategies: index and uuid", migGPU: -1,
			names: func(u []string) []string {
				return append(append([]string{"0", "1", "2", "3", "4", "5", "6", "7"}, u...), "all")
			},
		},
		{
			name: "index", strategies: []string{"index"}, migGPU: -1,
			names: func([]string) []string { return []string{"0", "1", "2", "3", "4", "5", "6", "7", "all"} },
		},
		{
			name: "uuid", strategies: []string{"uuid"}, migGPU: -1,
			names: func(u []string) []string { return append(slices.Clone(u), "all") },
		},
		{
			name: "type-index", strategies: []string{"type-index"}, migGPU: -1,
			names: func([]string) []string {
				return []string{"gpu0", "gpu1", "gpu2", "gpu3", "gpu4", "gpu5", "gpu6", "gpu7", "all"}
			},
		},
		{
			name: "GPU 7 in MIG mode is not a full-GPU device", strategies: []string{"index", "uuid"}, migGPU: 7,
			names: func(u []string) []string {
				return append(append([]string{"0", "1", "2", "3", "4", "5", "6"}, u[:7]...), "all")
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeRoot(t, 8)
			mock := gputest.MockDGXA100()
			if tt.migGPU >= 0 {
				if r, _ := mock.Devices[tt.migGPU].SetMigMode(nvml.DEVICE_MIG_ENABLE); r != nvml.SUCCESS {
					t.Fatalf("SetMigMode: %v", r)
				}
			}
			u := uuids(t, mock)
			s, err := gpu.Generate(context.Background(), gpu.Options{DriverRoot: root, NameStrategies: tt.strategies, NVML: mock})
			if err != nil {
				t.Fatal(err)
			}
			if s.Raw.Kind != gpu.Kind {
				t.Errorf("kind %q, want %q", s.Raw.Kind, gpu.Kind)
			}
			if s.DriverVersion != gputest.MockDriverVersion {
				t.Errorf("driver version %q, want %q", s.DriverVersion, gputest.MockDriverVersion)
			}
			if len(s.GPUs) != 8 || s.GPUs[3].UUID != u[3] || s.GPUs[3].Node != "/dev/nvidia3" || s.GPUs[7].MIG != (tt.migGPU == 7) {
				t.Errorf("GPUs %+v", s.GPUs)
			}
			var names []string
			for _, d := range s.Raw.Devices {
				names = append(names, d.Name)
			}
			// The spec lists its devices sorted by name (nvcdi's simplifier).
			if want := slices.Sorted(slices.Values(tt.names(u))); !slices.Equal(names, want) {
				t.Fatalf("devices %v,\nwant %v", names, want)
			}
			// Each GPU's devices carry its node, found in the fake root.
			for i := range 8 {
				for _, strategy := range []string{"index", "uuid"} {
					name := fmt.Sprint(i)
					if strategy == "uuid" {
						name = u[i]
					}
					d := device(s.Raw, name)
					if d == nil {
						continue
					}
					if i == tt.migGPU {
						t.Errorf("GPU %d in MIG mode has device %s", i, name)
					}
					want := fmt.Sprintf("/dev/nvidia%d", i)
					if len(d.ContainerEdits.DeviceNodes) != 1 || d.ContainerEdits.DeviceNodes[0].Path != want ||
						d.ContainerEdits.DeviceNodes[0].HostPath != filepath.Join(root, want) {
						t.Errorf("device %s nodes %+v, want %s from the fake root", name, d.ContainerEdits.DeviceNodes, want)
					}
				}
			}
			all := device(s.Raw, "all")
			if n := len(all.ContainerEdits.DeviceNodes); n != 8-btoi(tt.migGPU >= 0) {
				t.Errorf("device all has %d nodes: %v", n, nodePaths(all.ContainerEdits))
			}
			// Common edits: the control nodes and the driver's libraries.
			common := nodePaths(s.Raw.ContainerEdits)
			for _, n := range []string{"/dev/nvidiactl", "/dev/nvidia-uvm"} {
				if !slices.Contains(common, n) {
					t.Errorf("common device nodes %v lack %s", common, n)
				}
			}
			var mounts []string
			for _, m := range s.Raw.ContainerEdits.Mounts {
				mounts = append(mounts, m.ContainerPath)
			}
			for _, l := range gputest.MockLibraries {
				if !slices.Contains(mounts, "/"+l) {
					t.Errorf("common mounts %v lack /%s", mounts, l)
				}
			}
			// Hooks left out: no nvidia-cdi-hook in the fake root.
			if s.HookPath != "" || len(s.Raw.ContainerEdits.Hooks) != 0 || len(s.Warnings) != 1 ||
				!strings.Contains(s.Warnings[0], "nvidia-cdi-hook not found") {
				t.Errorf("hooks %q %v, warnings %q", s.HookPath, s.Raw.ContainerEdits.Hooks, s.Warnings)
			}

			// The saved file is loaded by the CDI library, without errors,
			// with the same devices.
			dir := t.TempDir()
			if err := s.Save(filepath.Join(dir, "nvidia.yaml")); err != nil {
				t.Fatal(err)
			}
			st, err := os.Stat(filepath.Join(dir, "nvidia.yaml"))
			if err != nil || st.Mode().Perm() != 0o644 {
				t.Fatalf("saved spec: %v %v", st, err)
			}
			cache, err := cdi.NewCache(cdi.WithSpecDirs(dir), cdi.WithAutoRefresh(false))
			if err != nil {
				t.Fatal(err)
			}
			if errs := cache.GetErrors(); len(errs) > 0 {
				t.Fatalf("CDI library errors: %v", errs)
			}
			got := cache.ListDevices()
			want := slices.Sorted(slices.Values(s.Devices))
			if !slices.Equal(got, want) {
				t.Errorf("CDI library devices %v,\nwant %v", got, want)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestGeneratedSpecInjects injects devices of a generated spec, by index and
// by UUID, into a container spec with hooks.InjectCDI, as the runtime does.
func TestGeneratedSpecInjects(t *testing.T) {
	root := fakeRoot(t, 8)
	mock := gputest.MockDGXA100()
	u := uuids(t, mock)
	s, err := gpu.Generate(context.Background(), gpu.Options{DriverRoot: root, NVML: mock})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := s.Save(filepath.Join(dir, "nvidia.yaml")); err != nil {
		t.Fatal(err)
	}
	c := &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{Resources: &specs.LinuxResources{
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
	}}}
	got, err := hooks.InjectCDI(context.Background(), c, hooks.CDIOptions{
		SpecDirs: []string{dir}, Devices: []string{"nvidia.com/gpu=1", "nvidia.com/gpu=" + u[5]},
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("injected %v", got)
	}
	var nodes []string
	for _, d := range c.Linux.Devices {
		nodes = append(nodes, d.Path)
	}
	for _, n := range []string{"/dev/nvidia1", "/dev/nvidia5", "/dev/nvidiactl", "/dev/nvidia-uvm"} {
		if !slices.Contains(nodes, n) {
			t.Errorf("container devices %v lack %s", nodes, n)
		}
	}
	if slices.Contains(nodes, "/dev/nvidia0") {
		t.Errorf("container got /dev/nvidia0, not asked for: %v", nodes)
	}
	var mounts []string
	for _, m := range c.Mounts {
		mounts = append(mounts, m.Destination)
	}
	if !slices.Contains(mounts, "/"+gputest.MockLibraries[0]) {
		t.Errorf("container mounts %v lack /%s", mounts, gputest.MockLibraries[0])
	}
}

// TestGenerateHooks checks where the spec's OCI hooks point: the
// nvidia-cdi-hook found under the driver root, the same path on the target
// root (with device and library paths moved there too), none when asked,
// and none with a warning when the program is missing.
func TestGenerateHooks(t *testing.T) {
	tests := []struct {
		name       string
		hookFile   bool
		hookPath   string
		targetRoot string
		wantHook   func(root string) string
		wantWarn   bool
	}{
		{name: "found under the driver root", hookFile: true, wantHook: func(r string) string { return filepath.Join(r, "usr/bin/nvidia-cdi-hook") }},
		{name: "found, target root /", hookFile: true, targetRoot: "/", wantHook: func(string) string { return "/usr/bin/nvidia-cdi-hook" }},
		{name: "explicit path", hookPath: "/opt/nv/nvidia-cdi-hook", wantHook: func(string) string { return "/opt/nv/nvidia-cdi-hook" }},
		{name: "none asked", hookFile: true, hookPath: gpu.NoHooks, wantHook: func(string) string { return "" }},
		{name: "missing", wantHook: func(string) string { return "" }, wantWarn: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := fakeRoot(t, 8)
			if tt.hookFile {
				p := filepath.Join(root, "usr/bin/nvidia-cdi-hook")
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			s, err := gpu.Generate(context.Background(), gpu.Options{
				DriverRoot: root, TargetRoot: tt.targetRoot, HookPath: tt.hookPath, NVML: gputest.MockDGXA100(),
			})
			if err != nil {
				t.Fatal(err)
			}
			want := tt.wantHook(root)
			if s.HookPath != want {
				t.Errorf("HookPath %q, want %q", s.HookPath, want)
			}
			var paths []string
			for _, h := range s.Raw.ContainerEdits.Hooks {
				paths = append(paths, h.Path)
			}
			for _, d := range s.Raw.Devices {
				for _, h := range d.ContainerEdits.Hooks {
					paths = append(paths, h.Path)
				}
			}
			if want == "" && len(paths) > 0 {
				t.Errorf("hooks %v, want none", paths)
			}
			if want != "" && (len(paths) == 0 || slices.ContainsFunc(paths, func(p string) bool { return p != want })) {
				t.Errorf("hooks run %v, want %s", paths, want)
			}
			if got := len(s.Warnings) > 0; got != tt.wantWarn {
				t.Errorf("warnings %q, want some: %v", s.Warnings, tt.wantWarn)
			}
			n0 := device(s.Raw, "0").ContainerEdits.DeviceNodes[0].HostPath
			wantNode := filepath.Join(root, "dev/nvidia0")
			if tt.targetRoot == "/" {
				wantNode = "/dev/nvidia0"
			}
			if n0 != wantNode {
				t.Errorf("GPU 0 host path %q, want %q", n0, wantNode)
			}
		})
	}
}

// TestGenerateErrors checks the errors: no NVML (the library missing, or
// the driver not answering), missing device nodes, bad options, each named
// with its remedy.
func TestGenerateErrors(t *testing.T) {
	tests := []struct {
		name  string
		opts  func(t *testing.T) gpu.Options
		check func(t *testing.T, err error)
	}{
		{
			name: "no NVML library under the driver root",
			opts: func(t *testing.T) gpu.Options { return gpu.Options{DriverRoot: t.TempDir()} },
			check: func(t *testing.T, err error) {
				var e *gpu.NoDriverError
				if !errors.As(err, &e) || e.Return != nvml.ERROR_LIBRARY_NOT_FOUND ||
					!strings.Contains(err.Error(), "no NVIDIA driver: NVML (libnvidia-ml.so.1) not found") ||
					!strings.Contains(err.Error(), "install and load the NVIDIA driver") {
					t.Fatalf("err = %v, want a NoDriverError with the remedy", err)
				}
			},
		},
		{
			name: "driver not answering",
			opts: func(t *testing.T) gpu.Options {
				m := gputest.MockDGXA100()
				m.InitFunc = func() nvml.Return { return nvml.ERROR_DRIVER_NOT_LOADED }
				return gpu.Options{DriverRoot: fakeRoot(t, 8), NVML: m}
			},
			check: func(t *testing.T, err error) {
				var e *gpu.NoDriverError
				if !errors.As(err, &e) || e.Return != nvml.ERROR_DRIVER_NOT_LOADED || !strings.Contains(err.Error(), "nvidia-smi") {
					t.Fatalf("err = %v, want a NoDriverError naming nvidia-smi", err)
				}
			},
		},
		{
			name: "GPU 3 without its device node",
			opts: func(t *testing.T) gpu.Options {
				root := fakeRoot(t, 8)
				if err := os.Remove(filepath.Join(root, "dev/nvidia3")); err != nil {
					t.Fatal(err)
				}
				return gpu.Options{DriverRoot: root, NVML: gputest.MockDGXA100()}
			},
			check: func(t *testing.T, err error) {
				var e *gpu.MissingNodesError
				if !errors.As(err, &e) || len(e.Nodes) != 1 || !strings.HasSuffix(e.Nodes[0], "/dev/nvidia3") ||
					!strings.Contains(err.Error(), "nvidia-modprobe") {
					t.Fatalf("err = %v, want a MissingNodesError naming only /dev/nvidia3", err)
				}
			},
		},
		{
			name: "a regular file is no device node",
			opts: func(t *testing.T) gpu.Options {
				root := fakeRoot(t, 8)
				ctl := filepath.Join(root, "dev/nvidiactl")
				if err := os.Remove(ctl); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(ctl, nil, 0o644); err != nil {
					t.Fatal(err)
				}
				return gpu.Options{DriverRoot: root, NVML: gputest.MockDGXA100()}
			},
			check: func(t *testing.T, err error) {
				var e *gpu.MissingNodesError
				if !errors.As(err, &e) || len(e.Nodes) != 1 || !strings.HasSuffix(e.Nodes[0], "/dev/nvidiactl") {
					t.Fatalf("err = %v, want a MissingNodesError naming /dev/nvidiactl", err)
				}
			},
		},
	}
	for _, o := range []struct{ field, want string }{
		{"format", `format "toml": want yaml or json`},
		{"device-name-strategy", `device-name-strategy "serial": want one of index, uuid, type-index`},
		{"mode", `mode "magic": want one of`},
		{"driver-root", `driver-root "rel/dir": want an absolute path`},
		{"nvidia-cdi-hook-path", `nvidia-cdi-hook-path "hook": want an absolute path or none`},
	} {
		tests = append(tests, struct {
			name  string
			opts  func(t *testing.T) gpu.Options
			check func(t *testing.T, err error)
		}{
			name: "bad " + o.field,
			opts: func(t *testing.T) gpu.Options {
				g := gpu.Options{NVML: gputest.MockDGXA100()}
				switch o.field {
				case "format":
					g.Format = "toml"
				case "device-name-strategy":
					g.NameStrategies = []string{"index", "serial"}
				case "mode":
					g.Mode = "magic"
				case "driver-root":
					g.DriverRoot = "rel/dir"
				case "nvidia-cdi-hook-path":
					g.HookPath = "hook"
				}
				return g
			},
			check: func(t *testing.T, err error) {
				if !gpu.IsOptionError(err) || !strings.Contains(err.Error(), o.want) {
					t.Fatalf("err = %v, want an OptionError %q", err, o.want)
				}
			},
		})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := gpu.Generate(context.Background(), tt.opts(t))
			if err == nil {
				t.Fatalf("no error; spec devices %v", s.Devices)
			}
			tt.check(t, err)
		})
	}
}
