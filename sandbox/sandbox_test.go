package sandbox

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

func writeBundle(t *testing.T, config *specs.Spec, manifest string) string {
	t.Helper()
	dir := t.TempDir()
	if config != nil {
		b, _ := json.Marshal(config)
		if err := os.WriteFile(filepath.Join(dir, spec.ConfigFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if manifest != "" {
		if err := os.WriteFile(filepath.Join(dir, spec.ManifestFile), []byte(manifest), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoad(t *testing.T) {
	module := t.TempDir()
	manifest := `{"name": "ext", "module_path": "` + module + `"}`
	for _, tc := range []struct {
		name          string
		config        *specs.Spec
		manifest      string
		wantManifest  bool
		wantConfig    bool
		userErrSubstr string
	}{
		{"manifest only", nil, manifest, true, false, ""},
		{"plain", &specs.Spec{Annotations: map[string]string{"a": "b"}}, "", false, true, ""},
		{"group only", &specs.Spec{Annotations: map[string]string{spec.AnnotationFieldGroup: "g", spec.AnnotationPolicy: "hardened"}}, "", false, true, ""},
		{"group and a manifest field", &specs.Spec{Annotations: map[string]string{spec.AnnotationFieldGroup: "g", "io.pyisolate.memory": "1Gi"}}, "", false, false, "io.pyisolate"},
		{"nothing", nil, "", false, false, "no pyisolate.json, no config.json"},
		{"bad manifest", nil, `{"name": 3}`, false, false, "name"},
	} {
		ld, err := Load(writeBundle(t, tc.config, tc.manifest))
		if tc.userErrSubstr != "" {
			if !IsUserError(err) || !strings.Contains(err.Error(), tc.userErrSubstr) {
				t.Errorf("%s: %v, want a user error saying %q", tc.name, err, tc.userErrSubstr)
			}
			continue
		}
		if err != nil || (ld.Manifest != nil) != tc.wantManifest || (ld.Config != nil) != tc.wantConfig {
			t.Errorf("%s: %+v %v", tc.name, ld, err)
		}
	}
}

func TestGroupName(t *testing.T) {
	for _, tc := range []struct {
		m        spec.Manifest
		override string
		want     string
	}{
		{spec.Manifest{Name: "ext"}, "", "ext"},
		{spec.Manifest{Name: "ext", Group: "g"}, "", "g"},
		{spec.Manifest{Name: "ext", Group: "g"}, "o", "o"},
	} {
		if got := GroupName(&tc.m, tc.override); got != tc.want {
			t.Errorf("GroupName(%+v, %q) = %q, want %q", tc.m, tc.override, got, tc.want)
		}
	}
}

func TestChooseRootfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: EmptyRootfs chowns to root, which needs root")
	}
	// Under /run, which others may walk: the rootfs base is <Root>/rootfs.
	root, err := os.MkdirTemp("/run", "pyisolate-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	rt := &runtime.Runtime{Root: root}
	bundle := t.TempDir()
	// No rootfs: an empty one under the state root.
	got, err := chooseRootfs(rt, "c1", bundle, nil)
	if err != nil || got != filepath.Join(rt.Root, "rootfs", "c1") {
		t.Errorf("no rootfs: %q %v", got, err)
	}
	// An empty rootfs/ is no rootfs.
	os.Mkdir(filepath.Join(bundle, "rootfs"), 0o755)
	if got, _ := chooseRootfs(rt, "c2", bundle, nil); got != filepath.Join(rt.Root, "rootfs", "c2") {
		t.Errorf("empty rootfs/: %q", got)
	}
	// A populated rootfs/, or the client's root.path relative to the bundle.
	os.WriteFile(filepath.Join(bundle, "rootfs", "f"), nil, 0o644)
	if got, _ := chooseRootfs(rt, "c3", bundle, nil); got != filepath.Join(bundle, "rootfs") {
		t.Errorf("rootfs/: %q", got)
	}
	os.MkdirAll(filepath.Join(bundle, "other", "bin"), 0o755)
	if got, _ := chooseRootfs(rt, "c4", bundle, &specs.Spec{Root: &specs.Root{Path: "other"}}); got != filepath.Join(bundle, "other") {
		t.Errorf("root.path: %q", got)
	}
}

func TestUserError(t *testing.T) {
	base := errors.New("bad field")
	err := userErr(base)
	if !IsUserError(err) || !errors.Is(err, base) || err.Error() != "bad field" {
		t.Errorf("userErr: %v", err)
	}
	if userErr(err) != err || userErr(nil) != nil {
		t.Error("userErr wraps twice or wraps nil")
	}
	if IsUserError(base) {
		t.Error("a plain error is a user error")
	}
}
