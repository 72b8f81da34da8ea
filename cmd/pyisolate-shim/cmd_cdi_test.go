package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/pyisolate/pyisolate-oci/gpu/gputest"
	"github.com/pyisolate/pyisolate-oci/hooks"
)

// cdiFakeRoot makes a fake driver root for 8 GPUs; it skips without root.
func cdiFakeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	if _, err := gputest.FakeDriverRoot(root, 8); err != nil {
		if os.Geteuid() != 0 {
			t.Skipf("needs root for mknod: %v", err)
		}
		t.Fatal(err)
	}
	return root
}

// withNVML makes `cdi generate` use lib for the test.
func withNVML(t *testing.T, lib nvml.Interface) {
	t.Helper()
	old := cdiNVML
	cdiNVML = lib
	t.Cleanup(func() { cdiNVML = old })
}

// TestCDIGenerateCommand runs `pyisolate cdi generate` on the DGX A100
// mock: to a file (YAML, or JSON chosen by the extension) that the CDI
// library loads, and to stdout.
func TestCDIGenerateCommand(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		file    string // under the output dir; "" means stdout
		devices int
		json    bool
	}{
		{name: "yaml file, default names", file: "cdi/nvidia.yaml", devices: 17},
		{name: "json by extension", file: "nvidia.json", devices: 17, json: true},
		{name: "index only", args: []string{"--device-name-strategy", "index"}, file: "n.yaml", devices: 9},
		{name: "stdout, two strategies in one flag", args: []string{"--device-name-strategy", "uuid,type-index"}, devices: 17},
		{name: "stdout json", args: []string{"--format", "json"}, devices: 17, json: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			withNVML(t, gputest.MockDGXA100())
			root := cdiFakeRoot(t)
			dir := t.TempDir()
			args := append([]string{"--driver-root", root}, tt.args...)
			if tt.file != "" {
				args = append(args, "--output", filepath.Join(dir, tt.file))
			}
			var stdout, stderr bytes.Buffer
			if code := cdiGenerate(context.Background(), args, &stdout, &stderr); code != 0 {
				t.Fatalf("exit %d: %s", code, stderr.String())
			}
			data := stdout.Bytes()
			if tt.file != "" {
				var err error
				if data, err = os.ReadFile(filepath.Join(dir, tt.file)); err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(stderr.String(), "wrote "+filepath.Join(dir, tt.file)) || !strings.Contains(stderr.String(), "driver "+gputest.MockDriverVersion) {
					t.Errorf("stderr %q lacks the summary", stderr.String())
				}
			} else if err := os.WriteFile(filepath.Join(dir, map[bool]string{true: "s.json", false: "s.yaml"}[tt.json]), data, 0o644); err != nil {
				t.Fatal(err)
			}
			if tt.json != json.Valid(data) {
				t.Errorf("JSON output %v, want %v:\n%s", json.Valid(data), tt.json, data)
			}
			if !strings.Contains(stderr.String(), "warning: nvidia-cdi-hook not found") {
				t.Errorf("stderr %q lacks the missing-hook warning", stderr.String())
			}
			specDir := dir
			if tt.file != "" {
				specDir = filepath.Dir(filepath.Join(dir, tt.file))
			}
			cache, err := cdi.NewCache(cdi.WithSpecDirs(specDir), cdi.WithAutoRefresh(false))
			if err != nil {
				t.Fatal(err)
			}
			if errs := cache.GetErrors(); len(errs) > 0 {
				t.Fatalf("CDI library: %v", errs)
			}
			if got := len(cache.ListDevices()); got != tt.devices {
				t.Errorf("%d devices, want %d: %v", got, tt.devices, cache.ListDevices())
			}
		})
	}
}

// TestCDIGenerateErrors checks the exit status and message of `cdi
// generate` without a driver (3, with the remedy) and with bad input (2).
func TestCDIGenerateErrors(t *testing.T) {
	tests := []struct {
		name   string
		mock   bool
		args   func(root string) []string
		code   int
		stderr string
	}{
		{name: "no NVML", args: func(string) []string { return []string{"--driver-root", os.TempDir()} }, code: exitNoGPU,
			stderr: "cdi generate: no NVIDIA driver: NVML (libnvidia-ml.so.1) not found under driver root " + os.TempDir() + "; install and load the NVIDIA driver"},
		{name: "missing node", mock: true, code: exitNoGPU, stderr: "NVIDIA device nodes missing: ",
			args: func(root string) []string {
				if err := os.Remove(filepath.Join(root, "dev/nvidia6")); err != nil {
					panic(err)
				}
				return []string{"--driver-root", root}
			}},
		{name: "bad format", mock: true, args: func(r string) []string { return []string{"--driver-root", r, "--format", "toml"} }, code: exitUsage},
		{name: "extension not the format", mock: true, args: func(r string) []string { return []string{"--driver-root", r, "--output", "/tmp/x.txt"} }, code: exitUsage},
		{name: "yml is not yaml", mock: true, args: func(r string) []string { return []string{"--driver-root", r, "--output", "/tmp/x.yml"} }, code: exitUsage},
		{name: "json format, yaml file", mock: true, args: func(r string) []string {
			return []string{"--driver-root", r, "--format", "json", "--output", "/tmp/x.yaml"}
		}, code: exitUsage},
		{name: "bad strategy", mock: true, args: func(r string) []string { return []string{"--driver-root", r, "--device-name-strategy", "serial"} }, code: exitUsage},
		{name: "relative driver root", mock: true, args: func(string) []string { return []string{"--driver-root", "host"} }, code: exitUsage},
		{name: "extra argument", mock: true, args: func(r string) []string { return []string{"--driver-root", r, "now"} }, code: exitUsage},
		{name: "unknown flag", mock: true, args: func(string) []string { return []string{"--vendor", "x.com"} }, code: exitUsage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := ""
			if tt.mock {
				withNVML(t, gputest.MockDGXA100())
				root = cdiFakeRoot(t)
			} else {
				withNVML(t, nil)
			}
			var stdout, stderr bytes.Buffer
			code := cdiGenerate(context.Background(), tt.args(root), &stdout, &stderr)
			if code != tt.code {
				t.Fatalf("exit %d, want %d; stderr %q", code, tt.code, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.stderr) || strings.Count(strings.TrimSpace(stderr.String()), "\n") > 0 {
				t.Errorf("stderr %q, want one line with %q", stderr.String(), tt.stderr)
			}
			if stdout.Len() > 0 {
				t.Errorf("stdout %q, want nothing", stdout.String())
			}
		})
	}
	if code := cdiMain([]string{"frobnicate"}); code != exitUsage {
		t.Errorf("cdi frobnicate: exit %d, want %d", code, exitUsage)
	}
}

// TestDetectGenerated checks that detect compares the CDI specs with what
// `cdi generate` writes (the same code, on the DGX A100 mock): a spec written
// by `cdi generate` is current; one written with index names only lacks the
// UUID names; no NVML is reported with the generator's error.
func TestDetectGenerated(t *testing.T) {
	root := cdiFakeRoot(t)
	oldRoot := detectDriverRoot
	detectDriverRoot = root
	t.Cleanup(func() { detectDriverRoot = oldRoot })
	procDriver, cdiDir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(procDriver, "version"), []byte("NVRM version: NVIDIA UNIX x86_64 Kernel Module  "+gputest.MockDriverVersion+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	readiness := func(ctx context.Context) hooks.CUDAReport {
		return hooks.Readiness(ctx, hooks.ReadinessOptions{SpecDirs: []string{cdiDir}, ProcDriver: procDriver,
			DevDir: filepath.Join(root, "dev"), Generate: generatedDevices})
	}
	tests := []struct {
		name    string
		nvml    bool
		args    []string // of cdi generate, "" for no spec
		problem string   // "" for none
	}{
		{name: "current spec", nvml: true, args: []string{}},
		{name: "spec with index names only", nvml: true, args: []string{"--device-name-strategy", "index"}, problem: "CDI specs lack devices this machine has: nvidia.com/gpu=GPU-"},
		{name: "no NVML", args: nil, problem: "`pyisolate cdi generate` fails: no NVIDIA driver: NVML (libnvidia-ml.so.1) not found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			os.Remove(filepath.Join(cdiDir, "nvidia.yaml"))
			withNVML(t, gputest.MockDGXA100())
			if tt.args != nil {
				var stdout, stderr bytes.Buffer
				args := append([]string{"--driver-root", root, "--output", filepath.Join(cdiDir, "nvidia.yaml")}, tt.args...)
				if code := cdiGenerate(context.Background(), args, &stdout, &stderr); code != 0 {
					t.Fatalf("cdi generate: exit %d: %s", code, stderr.String())
				}
			}
			if !tt.nvml {
				withNVML(t, nil)
			}
			r := readiness(context.Background())
			probs := strings.Join(r.Problems, "\n")
			if tt.problem == "" && len(r.Problems) > 0 || !strings.Contains(probs, tt.problem) {
				t.Errorf("problems %q, want %q", probs, tt.problem)
			}
			if tt.nvml && (len(r.Generated) != 17 || !strings.Contains(r.String(), "pyisolate cdi generate would write: nvidia.com/gpu=0, ")) {
				t.Errorf("generated %v; report:\n%s", r.Generated, r)
			}
		})
	}
}
