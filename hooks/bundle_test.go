package hooks

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestBindGroupShm(t *testing.T) {
	dir := t.TempDir()
	file := writeFile(t, t.TempDir(), "f", "")
	tests := []struct {
		name    string
		dir     string
		wantErr string
	}{
		{name: "replaces the tmpfs", dir: dir},
		{name: "relative", dir: "shm", wantErr: "not an absolute path"},
		{name: "missing", dir: filepath.Join(dir, "nope"), wantErr: "no such file"},
		{name: "not a dir", dir: file, wantErr: "not a directory"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &specs.Spec{Mounts: []specs.Mount{
				{Destination: "/dev", Type: "tmpfs", Source: "tmpfs"},
				{Destination: "/dev/shm", Type: "tmpfs", Source: "shm"},
			}}
			err := BindGroupShm(s, tt.dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Mounts) != 2 || s.Mounts[1].Source != dir || s.Mounts[1].Type != "bind" {
				t.Fatalf("mounts %+v", s.Mounts)
			}
			if err := VerifyGroupShm(s, dir, "/b"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestVerify(t *testing.T) {
	tests := []struct {
		name    string
		s       *specs.Spec
		verify  func(*specs.Spec) error
		wantErr string
	}{
		{"cdi not injected", &specs.Spec{Annotations: map[string]string{"cdi.k8s.io/x": "a.com/b=c"}},
			func(s *specs.Spec) error { return VerifyCDIInjected(s, CDIOptions{}, "/b") },
			"CDI devices a.com/b=c are not injected into /b/config.json: CDI edits must be in config.json before create; run `pyisolate hook cdi --bundle /b` before `runc create`"},
		{"cdi injected", &specs.Spec{Annotations: map[string]string{"cdi.k8s.io/x": "a.com/b=c", AnnotationCDIInjected: "a.com/b=c"}},
			func(s *specs.Spec) error { return VerifyCDIInjected(s, CDIOptions{}, "/b") }, ""},
		{"cdi extra device missing", &specs.Spec{},
			func(s *specs.Spec) error {
				return VerifyCDIInjected(s, CDIOptions{Devices: []string{"a.com/b=d"}}, "/b")
			}, "a.com/b=d are not injected"},
		{"shm is tmpfs", &specs.Spec{Mounts: []specs.Mount{{Destination: "/dev/shm", Type: "tmpfs", Source: "shm"}}},
			func(s *specs.Spec) error { return VerifyGroupShm(s, "/g", "/b") }, "/dev/shm in /b/config.json is tmpfs shm, not the group shm /g: run `pyisolate hook shm --bundle /b --dir /g`"},
		{"no shm", &specs.Spec{}, func(s *specs.Spec) error { return VerifyGroupShm(s, "/g", "/b") }, "has no /dev/shm mount"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.verify(tt.s)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestReadState(t *testing.T) {
	tests := []struct {
		name, in, wantErr string
	}{
		{"ok", `{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b","annotations":{"a":"b"}}`, ""},
		{"not json", `hello`, "an OCI hook gets the state JSON on stdin"},
		{"no bundle", `{"id":"c1"}`, "no bundle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, err := ReadState(strings.NewReader(tt.in))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || st.ID != "c1" || st.Pid != 42 || st.Bundle != "/b" {
				t.Fatalf("%+v %v", st, err)
			}
		})
	}
}

func TestInjectCDIBundle(t *testing.T) {
	f := newCDIFixture(t)
	bundle := t.TempDir()
	s := &specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"true"}}, Linux: &specs.Linux{},
		Annotations: map[string]string{"cdi.k8s.io/test": "example.com/fake=dev0"}}
	if err := WriteBundleSpec(bundle, s); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(bundle, "config.json"), 0o600); err != nil {
		t.Fatal(err)
	}
	devs, err := InjectCDIBundle(context.Background(), bundle, CDIOptions{SpecDirs: []string{f.specDir}})
	if err != nil || len(devs) != 1 {
		t.Fatalf("%v %v", devs, err)
	}
	got, err := LoadBundleSpec(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyCDIInjected(got, CDIOptions{}, bundle); err != nil {
		t.Fatal(err)
	}
	if v, _ := getEnv(got, "FAKE_DEVICE"); v != "dev0" {
		t.Errorf("FAKE_DEVICE = %q", v)
	}
	if fi, _ := os.Stat(filepath.Join(bundle, "config.json")); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600 kept", fi.Mode())
	}
	if _, err := LoadBundleSpec(t.TempDir()); err == nil || !strings.Contains(err.Error(), "read bundle config") {
		t.Errorf("missing config: %v", err)
	}
}
