package gpu_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"

	"github.com/pyisolate/pyisolate-oci/gpu"
	"github.com/pyisolate/pyisolate-oci/gpu/gputest"
)

// TestRefresh runs Refresh as `pyisolate install` does at every start, in
// steps on one node: first install, a second one, a driver change (a GPU
// fewer), a dry run, NVIDIA's own spec appearing, the driver removed.
func TestRefresh(t *testing.T) {
	root := fakeRoot(t, 8)
	dyn := filepath.Join(t.TempDir(), "var/run/cdi")
	static := filepath.Join(t.TempDir(), "etc/cdi")
	path := filepath.Join(dyn, "pyisolate-nvidia.yaml")
	// One node: one mock (each mock has GPUs of new UUIDs), 8 or 7 GPUs.
	mock := gputest.MockDGXA100()
	gpus := func(n int) func() nvml.Interface {
		return func() nvml.Interface {
			mock.DeviceGetCountFunc = func() (int, nvml.Return) { return n, nvml.SUCCESS }
			return mock
		}
	}
	eightGPUs, sevenGPUs := gpus(8), gpus(7)
	steps := []struct {
		name   string
		nvml   func() nvml.Interface // nil: no driver
		dryRun bool
		before func(t *testing.T)
		state  gpu.RefreshState
		reason string
		file   string // "gone", or a device the file must define
	}{
		{name: "first install writes", nvml: eightGPUs, state: gpu.Written, file: "name: \"7\""},
		{name: "second install leaves it", nvml: eightGPUs, state: gpu.Unchanged, file: "name: \"7\""},
		{name: "dry run with a GPU fewer changes nothing", nvml: sevenGPUs, dryRun: true, state: gpu.Refreshed, file: "name: \"7\""},
		{name: "a GPU fewer refreshes", nvml: sevenGPUs, state: gpu.Refreshed, file: "name: \"6\""},
		{name: "NVIDIA's spec in /etc/cdi wins", nvml: sevenGPUs, state: gpu.Skipped, reason: "nvidia.yaml already defines nvidia.com/gpu devices",
			before: func(t *testing.T) {
				if err := os.MkdirAll(static, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(static, "nvidia.yaml"), []byte("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    env: [A=1]\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "driver gone, dry run", dryRun: true, state: gpu.Removed, reason: "no NVIDIA driver",
			before: func(t *testing.T) { os.Remove(filepath.Join(static, "nvidia.yaml")) }, file: "name: \"6\""},
		{name: "driver gone removes ours", state: gpu.Removed, reason: "no NVIDIA driver", file: "gone"},
		{name: "no driver, no file", state: gpu.Skipped, reason: "no NVIDIA driver on this node", file: "gone"},
	}
	for _, st := range steps {
		if !t.Run(st.name, func(t *testing.T) {
			if st.before != nil {
				st.before(t)
			}
			o := gpu.RefreshOptions{Path: path, SpecDirs: []string{static, dyn}, DryRun: st.dryRun, Generate: gpu.Options{DriverRoot: root}}
			if st.nvml != nil {
				o.Generate.NVML = st.nvml()
			} else {
				o.Generate.DriverRoot = t.TempDir() // no libnvidia-ml.so.1 there
			}
			res, err := gpu.Refresh(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			if res.State != st.state || !strings.Contains(res.Reason, st.reason) {
				t.Errorf("state %q (%s), want %q (%s)", res.State, res.Reason, st.state, st.reason)
			}
			data, err := os.ReadFile(path)
			switch {
			case st.file == "gone" && !os.IsNotExist(err):
				t.Errorf("spec file still there (%v)", err)
			case st.file != "gone" && (err != nil || !strings.Contains(string(data), st.file)):
				t.Errorf("spec file lacks %q (%v):\n%s", st.file, err, data)
			}
			if st.file == "name: \"6\"" && !st.dryRun && strings.Contains(string(data), "name: \"7\"") {
				t.Errorf("refreshed file still has GPU 7")
			}
		}) {
			break
		}
	}
}
