package main

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

// staticBusybox returns a static busybox or skips.
func staticBusybox(t *testing.T) string {
	t.Helper()
	p, err := lookBusybox()
	if err != nil {
		t.Skip("no busybox (apt-get install busybox-static)")
	}
	if err := checkStatic(p); err != nil {
		t.Skipf("busybox is not static: %v", err)
	}
	return p
}

// files lists the paths of an image's merged layers with their link targets.
func files(t *testing.T, img v1.Image) map[string]string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Uid != 0 || h.Gid != 0 {
				t.Errorf("%s owned by %d:%d", h.Name, h.Uid, h.Gid)
			}
			out[strings.TrimSuffix(h.Name, "/")] = h.Linkname
		}
		rc.Close()
	}
	return out
}

func load(t *testing.T, path, tag string) v1.Image {
	t.Helper()
	ref, err := name.NewTag(tag)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(path, &ref)
	if err != nil {
		t.Fatalf("%s has no image %s: %v", path, tag, err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return img
}

// The images read back as docker-archive tars under the names the
// manifests use, valid (digests, diff ids, sizes), reproducible, with the
// files and commands they are documented to have. A busybox stands in for
// the static pyisolate (the real one is `make image`'s, tested by
// test/k8s_chain_test.go).
func TestImages(t *testing.T) {
	bb := staticBusybox(t)
	out := t.TempDir()
	if err := run(out, bb, bb, ""); err != nil {
		t.Fatal(err)
	}
	inst := load(t, filepath.Join(out, "pyisolate-oci.tar"), InstallerTag)
	fs := files(t, inst)
	if _, ok := fs["usr/local/bin/pyisolate"]; !ok {
		t.Error("installer image has no /usr/local/bin/pyisolate")
	}
	for _, a := range []string{"sh", "sleep", "test", "nsenter", "kill"} {
		if fs["bin/"+a] != "busybox" {
			t.Errorf("installer image: /bin/%s is not a link to busybox", a)
		}
	}
	cf, _ := inst.ConfigFile()
	if cf.OS != "linux" || !slices.Contains(cf.Config.Env, "PATH="+defaultPath) {
		t.Errorf("installer config: os %q env %q", cf.OS, cf.Config.Env)
	}
	for _, role := range []string{"host", "ext"} {
		tag := map[string]string{"host": ExampleHostTag, "ext": ExampleExtTag}[role]
		img := load(t, filepath.Join(out, "pyisolate-oci-example-"+role+".tar"), tag)
		if fs := files(t, img); len(fs) != 0 {
			t.Errorf("example %s image holds files: %v", role, fs)
		}
		cf, _ := img.ConfigFile()
		if want := []string{"/usr/bin/python3", "-m", "pyisolate_demo." + role}; !slices.Equal(cf.Config.Entrypoint, want) {
			t.Errorf("example %s entrypoint %q, want %q", role, cf.Config.Entrypoint, want)
		}
		// The module it runs is examples/demo's.
		if _, err := os.Stat(filepath.Join("..", "..", "examples", "demo", "pyisolate_demo", role+".py")); err != nil {
			t.Errorf("example %s: %v", role, err)
		}
	}
	// Same inputs, same ids.
	again := t.TempDir()
	if err := run(again, bb, bb, "installer"); err != nil {
		t.Fatal(err)
	}
	a, _ := inst.ConfigName()
	b, _ := load(t, filepath.Join(again, "pyisolate-oci.tar"), InstallerTag).ConfigName()
	if a != b {
		t.Errorf("image id changed between two builds: %s, %s", a, b)
	}
}

// A dynamically linked binary is refused: the installer image has no libc.
func TestDynamicBinaryRefused(t *testing.T) {
	bb := staticBusybox(t)
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	sh, _ = filepath.EvalSymlinks(sh)
	if checkStatic(sh) == nil {
		t.Skipf("%s is static", sh)
	}
	err = run(t.TempDir(), sh, bb, "installer")
	if err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Fatalf("dynamic binary: %v", err)
	}
}
