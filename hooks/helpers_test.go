package hooks

import (
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	pspec "github.com/pyisolate/pyisolate-oci/spec"
)

// buildSpec builds a sandbox spec with spec.Build from a manifest, as the
// runtime does before calling the hooks.
func buildSpec(t *testing.T, manifest string, r pspec.Restriction) *specs.Spec {
	t.Helper()
	m, err := pspec.DecodeManifest([]byte(manifest))
	if err != nil {
		t.Fatalf("manifest: %v", err)
	}
	s, err := pspec.Build(m, pspec.Host{Restriction: r, Seccomp: false}, pspec.Options{
		ID: "t1", Rootfs: t.TempDir(), HostEnv: []string{"PATH=/usr/bin:/bin", "CUDA_VISIBLE_DEVICES=3"},
	})
	if err != nil {
		t.Fatalf("build: %v", err)
	}
	return s
}

// gpuManifest is a manifest asking for two GPUs and CUDA IPC.
func gpuManifest(t *testing.T, gpus string) string {
	t.Helper()
	mod := t.TempDir()
	if err := os.WriteFile(filepath.Join(mod, "__init__.py"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	return `{"name": "ext", "module_path": "` + mod + `", "share_cuda_ipc": true, "execution_model": "host-coupled", "gpus": [` + gpus + `]}`
}

// writeFile writes content to dir/name.
func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeDevice makes a character device node copying /dev/null (1:3) at
// dir/name; it skips the test when mknod is not allowed (not root).
func fakeDevice(t *testing.T, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("mknod %s: %v (needs root)", p, err)
	}
	return p
}

func envOf(s *specs.Spec, k string) (string, bool) { return getEnv(s, k) }
