// Command pyisolate-image builds this project's container images without a
// Docker engine, a registry or a network, as docker-archive tars (the
// `docker save` format) that `ctr -n k8s.io images import`, `docker load`
// and `podman load` all read:
//
//   - pyisolate-oci.tar, tagged pyisolate-oci:latest: the node installer of
//     deploy/k8s/installer-daemonset.yaml. A fully static pyisolate (`make
//     static`) at /usr/local/bin/pyisolate and a static busybox at
//     /bin/busybox with the applets the DaemonSet's command and its probes
//     run (sh, sleep, test, nsenter for the host's systemctl, kill, ...).
//     Both are checked to be static ELF files: the image has no libc.
//   - pyisolate-oci-example-host.tar and pyisolate-oci-example-ext.tar,
//     tagged pyisolate-oci-example-host:latest and
//     pyisolate-oci-example-ext:latest: the two members of
//     deploy/k8s/example-pod.yaml, running examples/demo's host and
//     extension. Under the pyisolate runtime every member of that pod is an
//     extension, whose sandbox takes /usr, /lib, /bin, /sbin, /opt, a short
//     /etc allow list, the interpreter and the module from the node
//     (bwrap style, spec.Build), so these images hold no files: one empty
//     layer (the runtime then makes the read-only root itself) and a config
//     naming the command. See deploy/k8s/README.md.
//
// Images are reproducible: fixed timestamps (SOURCE_DATE_EPOCH when set),
// sorted tar entries, uid and gid 0, so the same inputs give the same image
// ids. The place: a build tool, linked with go-containerregistry, which the
// runtime binary does not need; `make image` runs it.
package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// The image names, as deploy/k8s names them.
const (
	InstallerTag   = "pyisolate-oci:latest"
	ExampleHostTag = "pyisolate-oci-example-host:latest"
	ExampleExtTag  = "pyisolate-oci-example-ext:latest"
)

// busyboxApplets are the links made to /bin/busybox in the installer image:
// what the DaemonSet's command, its readiness probe, `pyisolate install`'s
// restart through the host's systemd (nsenter) and an operator's
// `kubectl exec` need.
var busyboxApplets = []string{
	"[", "cat", "chmod", "cp", "echo", "env", "false", "grep", "head", "id", "kill", "ln", "ls",
	"mkdir", "mv", "nsenter", "ps", "readlink", "rm", "sh", "sleep", "stat", "tail", "test", "touch",
	"true", "uname", "wc",
}

const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

func main() {
	out := flag.String("out", "build/images", "directory to write the image tars into")
	binary := flag.String("binary", "bin/static/pyisolate", "the static pyisolate binary (make static)")
	busybox := flag.String("busybox", "", "a static busybox (default: busybox on PATH; Debian's busybox-static)")
	only := flag.String("only", "", "build only these images, comma separated: installer, example-host, example-ext")
	flag.Parse()
	if flag.NArg() > 0 {
		fatalf("unexpected arguments %q", flag.Args())
	}
	if err := run(*out, *binary, *busybox, *only); err != nil {
		fatalf("%v", err)
	}
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "pyisolate-image: "+format+"\n", a...)
	os.Exit(1)
}

func run(out, binary, busybox, only string) error {
	want := map[string]bool{"installer": true, "example-host": true, "example-ext": true}
	if only != "" {
		want = map[string]bool{}
		for _, w := range strings.Split(only, ",") {
			switch w {
			case "installer", "example-host", "example-ext":
				want[w] = true
			default:
				return fmt.Errorf("-only: unknown image %q (want installer, example-host, example-ext)", w)
			}
		}
	}
	created := buildTime()
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if want["installer"] {
		if busybox == "" {
			p, err := lookBusybox()
			if err != nil {
				return err
			}
			busybox = p
		}
		img, err := installerImage(binary, busybox, created)
		if err != nil {
			return err
		}
		if err := write(filepath.Join(out, "pyisolate-oci.tar"), InstallerTag, img); err != nil {
			return err
		}
	}
	for _, role := range []string{"host", "ext"} {
		if !want["example-"+role] {
			continue
		}
		img, tag, err := exampleImage(role, created)
		if err != nil {
			return err
		}
		if err := write(filepath.Join(out, "pyisolate-oci-example-"+role+".tar"), tag, img); err != nil {
			return err
		}
	}
	return nil
}

// buildTime is SOURCE_DATE_EPOCH when set, else the Unix epoch: images do
// not change with the time they are built at.
func buildTime() time.Time {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(n, 0).UTC()
		}
	}
	return time.Unix(0, 0).UTC()
}

func lookBusybox() (string, error) {
	for _, p := range []string{"/bin/busybox", "/usr/bin/busybox"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no busybox found: install busybox-static (Debian) or pass -busybox PATH to a static busybox")
}

// checkStatic refuses a file that is not a static ELF executable: the
// installer image has no dynamic loader and no libc.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: not an ELF executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (it names a program interpreter); the image has no libc: use a static build (make static, busybox-static)", path)
		}
	}
	if m := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[runtime.GOARCH]; m != 0 && f.Machine != m {
		return fmt.Errorf("%s is built for %s, not for %s", path, f.Machine, runtime.GOARCH)
	}
	return nil
}

// entry is one file of a layer.
type entry struct {
	mode os.FileMode // permission bits, with os.ModeDir for a directory
	data []byte
	link string // a symlink's target
}

// layerTar writes an uncompressed layer of files (paths without a leading
// slash), adding parent directories; entries are sorted, owned by root and
// dated created.
func layerTar(files map[string]entry, created time.Time) ([]byte, error) {
	all := map[string]entry{}
	for p, e := range files {
		all[p] = e
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = entry{mode: os.ModeDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range names {
		e := all[p]
		h := &tar.Header{Name: p, ModTime: created, Mode: int64(e.mode.Perm()), Format: tar.FormatPAX}
		if e.mode&os.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		switch {
		case e.mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
		case e.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// image makes a one-layer image for this machine's architecture.
func image(layer []byte, created time.Time, cfg v1.Config, comment string) (v1.Image, error) {
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layer)), nil
	})
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{
		Layer:   l,
		History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "pyisolate-image (cmd/pyisolate-image)", Comment: comment},
	})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = runtime.GOARCH, "linux"
	cf.Created = v1.Time{Time: created}
	cf.Config = cfg
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	return mutate.CreatedAt(img, v1.Time{Time: created})
}

func installerImage(binary, busybox string, created time.Time) (v1.Image, error) {
	for _, p := range []string{binary, busybox} {
		if err := checkStatic(p); err != nil {
			return nil, err
		}
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, err
	}
	bb, err := os.ReadFile(busybox)
	if err != nil {
		return nil, err
	}
	files := map[string]entry{
		"usr/local/bin/pyisolate": {mode: 0o755, data: bin},
		"bin/busybox":             {mode: 0o755, data: bb},
		"tmp":                     {mode: os.ModeDir | os.ModeSticky | 0o777},
		"etc/passwd":              {mode: 0o644, data: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")},
		"etc/group":               {mode: 0o644, data: []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, a := range busyboxApplets {
		files["bin/"+a] = entry{link: "busybox"}
	}
	layer, err := layerTar(files, created)
	if err != nil {
		return nil, err
	}
	return image(layer, created, v1.Config{
		Env:        []string{"PATH=" + defaultPath},
		Cmd:        []string{"/usr/local/bin/pyisolate", "--help"},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":       "pyisolate-oci node installer",
			"org.opencontainers.image.description": "pyisolate (static) and busybox, for deploy/k8s/installer-daemonset.yaml",
		},
	}, "static pyisolate and busybox")
}

// exampleImage is a member of deploy/k8s/example-pod.yaml: an empty root
// and the command of examples/demo's host or extension. The interpreter,
// numpy and the module come from the node, where the pyisolate sandbox binds
// them (see the package comment).
func exampleImage(role string, created time.Time) (v1.Image, string, error) {
	layer, err := layerTar(nil, created)
	if err != nil {
		return nil, "", err
	}
	tag := map[string]string{"host": ExampleHostTag, "ext": ExampleExtTag}[role]
	img, err := image(layer, created, v1.Config{
		Entrypoint: []string{"/usr/bin/python3", "-m", "pyisolate_demo." + role},
		Env:        []string{"PATH=" + defaultPath, "PYTHONUNBUFFERED=1"},
		Labels: map[string]string{
			"org.opencontainers.image.title": "pyisolate-oci example: demo " + role,
			"org.opencontainers.image.description": "examples/demo's " + role + " as a member of deploy/k8s/example-pod.yaml; " +
				"no files: under the pyisolate runtime python3, numpy and the module come from the node",
		},
	}, "empty root: the pyisolate sandbox binds the system and the module from the node")
	return img, tag, err
}

// write saves img as a docker-archive tar tagged tag, through a temp file.
func write(path, tag string, img v1.Image) error {
	ref, err := name.NewTag(tag)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, ref, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	id, _ := img.ConfigName()
	fmt.Printf("pyisolate-image: %s  %s  %s  %s\n", path, tag, humanBytes(fi.Size()), id)
	return nil
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}
