package test

// Offline container images for the CRI test: no registry is reachable here,
// so the test writes docker-archive tars itself (manifest.json, an image
// config, one layer tar) and imports them with `ctr -n k8s.io images import`.

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"testing"
	"time"
)

// criFile is one entry of an image layer.
type criFile struct {
	mode os.FileMode // permission bits; 0 with link set makes a symlink; dir with os.ModeDir
	data []byte
	link string
}

// criLayer returns an uncompressed layer tar of files (paths without a
// leading slash); parent directories are added.
func criLayer(files map[string]criFile) ([]byte, error) {
	all := map[string]criFile{}
	for p, f := range files {
		all[p] = f
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = criFile{mode: os.ModeDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	sort.Strings(names) // parents before children
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	for _, p := range names {
		f := all[p]
		h := &tar.Header{Name: p, ModTime: mtime, Mode: int64(f.mode.Perm()), Format: tar.FormatPAX}
		switch {
		case f.mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
		case f.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// criImageArchive writes a docker-archive tar (the `docker save` format,
// which ctr imports) of a one-layer image named ref.
func criImageArchive(path, ref string, layer []byte, entrypoint, cmd []string) error {
	diffID := fmt.Sprintf("sha256:%x", sha256.Sum256(layer))
	cfg := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      "2023-11-14T22:13:20Z",
		"config": map[string]any{
			"Entrypoint": entrypoint,
			"Cmd":        cmd,
			"Env":        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			"WorkingDir": "/",
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": []string{diffID}},
		"history": []map[string]any{{"created": "2023-11-14T22:13:20Z", "created_by": "pyisolate test/cri_images_test.go"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	cfgName := fmt.Sprintf("%x.json", sha256.Sum256(cfgJSON))
	layerName := fmt.Sprintf("%x/layer.tar", sha256.Sum256(layer))
	manifest, err := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{ref}, "Layers": []string{layerName}}})
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	mtime := time.Unix(1700000000, 0)
	add := func(name string, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: mtime, Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: filepath.Dir(layerName) + "/", Mode: 0o755, ModTime: mtime, Typeflag: tar.TypeDir}); err != nil {
		return err
	}
	for _, e := range []struct {
		name string
		data []byte
	}{{layerName, layer}, {cfgName, cfgJSON}, {"manifest.json", manifest}} {
		if err := add(e.name, e.data); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// criPauseSource is the pause container: sleep until SIGTERM or SIGINT
// (as PID 1 of a PID namespace an unhandled SIGTERM would be ignored).
const criPauseSource = `package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
`

// criPauseLayer builds the pause program as a static binary (CGO_ENABLED=0)
// and returns a layer with it at /pause.
func criPauseLayer(t *testing.T, dir string) []byte {
	t.Helper()
	src := filepath.Join(dir, "pause-src")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "main.go"), []byte(criPauseSource), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module pause\n\ngo 1.21\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(src, "pause")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the pause binary: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	layer, err := criLayer(map[string]criFile{"pause": {mode: 0o755, data: data}})
	if err != nil {
		t.Fatal(err)
	}
	return layer
}

// criBusyboxLayer returns a layer with a static busybox at /bin/busybox and
// applet links, or skips when busybox-static is not installed.
func criBusyboxLayer(t *testing.T) []byte {
	t.Helper()
	var data []byte
	for _, p := range []string{"/usr/bin/busybox", "/bin/busybox"} {
		out, err := exec.Command("file", "-L", p).Output()
		if b, rerr := os.ReadFile(p); rerr == nil && (err != nil || bytes.Contains(out, []byte("statically linked")) || bytes.Contains(out, []byte("static-pie"))) {
			data = b
			break
		}
	}
	if data == nil {
		t.Skip("CRI test: no static busybox (apt-get install busybox-static)")
	}
	files := map[string]criFile{
		"bin/busybox": {mode: 0o755, data: data},
		"etc/passwd":  {mode: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		"etc/group":   {mode: 0o644, data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		"tmp":         {mode: os.ModeDir | 0o1777},
		"proc":        {mode: os.ModeDir | 0o555},
		"sys":         {mode: os.ModeDir | 0o555},
		"dev":         {mode: os.ModeDir | 0o755},
	}
	for _, a := range []string{"sh", "echo", "cat", "sleep", "ls", "id", "ps", "true", "false", "hostname", "mount", "env"} {
		files["bin/"+a] = criFile{link: "busybox"}
	}
	layer, err := criLayer(files)
	if err != nil {
		t.Fatal(err)
	}
	return layer
}
