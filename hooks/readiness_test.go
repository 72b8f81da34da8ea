package hooks

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadiness(t *testing.T) {
	noCTK := func(string) (string, error) { return "", errors.New("not found") }
	withCTK := func(string) (string, error) { return "/usr/bin/nvidia-ctk", nil }
	gpuSpec := "cdiVersion: \"0.5.0\"\nkind: nvidia.com/gpu\ndevices:\n- name: \"0\"\n  containerEdits:\n    deviceNodes: [{path: /dev/nvidia0, type: c, major: 195, minor: 0}]\n"
	tests := []struct {
		name         string
		driver       bool
		nodes        bool
		spec         string // content of nvidia.yaml, "" for none
		look         func(string) (string, error)
		generate     func(context.Context) ([]string, error)
		wantReady    bool
		wantProblems []string
		wantRemedies []string
	}{
		{name: "no driver, nothing", look: noCTK, wantProblems: []string{"no NVIDIA driver"}, wantRemedies: []string{"install the NVIDIA driver"}},
		{name: "driver, no CDI spec, nvidia-ctk present", driver: true, nodes: true, look: withCTK,
			wantProblems: []string{"defines nvidia.com/gpu devices"}, wantRemedies: []string{"run `pyisolate cdi generate --output=/etc/cdi/nvidia.yaml`"}},
		{name: "driver, no CDI spec, no nvidia-ctk", driver: true, nodes: true, look: noCTK,
			wantProblems: []string{"defines nvidia.com/gpu devices"}, wantRemedies: []string{GenerateCommand, "pyisolate install"}},
		{name: "spec and generator agree", driver: true, nodes: true, spec: gpuSpec, look: noCTK, wantReady: true,
			generate: func(context.Context) ([]string, error) { return []string{"nvidia.com/gpu=0"}, nil }},
		{name: "spec lacks a GPU the generator sees", driver: true, nodes: true, spec: gpuSpec, look: noCTK, wantReady: true,
			generate: func(context.Context) ([]string, error) {
				return []string{"nvidia.com/gpu=0", "nvidia.com/gpu=1"}, nil
			},
			wantProblems: []string{"CDI specs lack devices this machine has: nvidia.com/gpu=1 (the driver or the GPUs changed"},
			wantRemedies: []string{GenerateCommand}},
		{name: "spec has a GPU the generator does not see", driver: true, nodes: true, spec: gpuSpec, look: noCTK, wantReady: true,
			generate:     func(context.Context) ([]string, error) { return []string{"nvidia.com/gpu=all"}, nil },
			wantProblems: []string{"does not have: nvidia.com/gpu=0 (a stale spec?)"}},
		{name: "generator fails", driver: true, nodes: true, spec: gpuSpec, look: noCTK, wantReady: true,
			generate:     func(context.Context) ([]string, error) { return nil, errors.New("NVIDIA driver does not answer") },
			wantProblems: []string{"`pyisolate cdi generate` fails: NVIDIA driver does not answer"}, wantRemedies: []string{"fix what the error names"}},
		{name: "driver without nodes", driver: true, spec: gpuSpec, look: withCTK,
			wantProblems: []string{"no "}, wantRemedies: []string{"nvidia-modprobe"}},
		{name: "broken spec", driver: true, nodes: true, spec: "kind: [", look: withCTK,
			wantProblems: []string{"nvidia.yaml"}, wantRemedies: []string{"fix or remove"}},
		{name: "stale spec without driver", spec: gpuSpec, look: withCTK,
			wantProblems: []string{"no NVIDIA driver", "stale"}},
		{name: "ready", driver: true, nodes: true, spec: gpuSpec, look: withCTK, wantReady: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmp := t.TempDir()
			opts := ReadinessOptions{SpecDirs: []string{filepath.Join(tmp, "cdi")}, ProcDriver: filepath.Join(tmp, "proc"),
				DevDir: filepath.Join(tmp, "dev"), LookPath: tt.look, Generate: tt.generate}
			writeFile(t, opts.DevDir, "null", "")
			if tt.driver {
				writeFile(t, opts.ProcDriver, "version", "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15\n")
				writeFile(t, opts.ProcDriver, "gpus/0000:01:00.0/information", "Model: \t NVIDIA H100\nGPU UUID: \t GPU-1\nDevice Minor: \t 0\n")
			}
			if tt.nodes {
				writeFile(t, opts.DevDir, "nvidia0", "")
				writeFile(t, opts.DevDir, "nvidiactl", "")
			}
			if tt.spec != "" {
				writeFile(t, opts.SpecDirs[0], "nvidia.yaml", tt.spec)
			}
			r := Readiness(context.Background(), opts)
			if r.Ready != tt.wantReady {
				t.Errorf("Ready = %v, want %v\n%s", r.Ready, tt.wantReady, r)
			}
			if len(r.Problems) != len(r.Remedies) {
				t.Fatalf("%d problems, %d remedies", len(r.Problems), len(r.Remedies))
			}
			probs, rems := strings.Join(r.Problems, "\n"), strings.Join(r.Remedies, "\n")
			for _, w := range tt.wantProblems {
				if !strings.Contains(probs, w) {
					t.Errorf("problems %q lack %q", probs, w)
				}
			}
			for _, w := range tt.wantRemedies {
				if !strings.Contains(rems, w) {
					t.Errorf("remedies %q lack %q", rems, w)
				}
			}
			if tt.wantReady && len(r.Problems) > 0 && len(tt.wantProblems) == 0 {
				t.Errorf("ready with problems: %v", r.Problems)
			}
			if tt.driver && (r.DriverVersion == "" || len(r.GPUs) != 1 || r.GPUs[0].UUID != "GPU-1" || r.GPUs[0].Minor != 0) {
				t.Errorf("driver info: %q %+v", r.DriverVersion, r.GPUs)
			}
			if out := r.String(); !strings.Contains(out, "CUDA IPC / GPUs:") {
				t.Errorf("String() = %q", out)
			}
		})
	}
}
