package test

// End-to-end tests of CDI injection and the group shm with real containers:
// a CDI spec written by the test (a fake device node made with mknod, a
// mount, env and a createContainer hook that writes a marker) is injected by
// `pyisolate hook cdi --bundle` into a busybox bundle that real runc then
// runs; the container sees the device (and may write it: the device cgroup
// allows it), the mount and the env, and the hook's marker appears. The
// hooks run as OCI createRuntime hooks check that the bundle was prepared.
// Names start with cdi so that they do not collide with the other files of
// package test.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/gpu"
	"github.com/pyisolate/pyisolate-oci/gpu/gputest"
	"github.com/pyisolate/pyisolate-oci/hooks"
	pspec "github.com/pyisolate/pyisolate-oci/spec"
)

// cdiPyisolate returns the pyisolate binary the sandbox tests build (one
// per test process, in the shared test binary directory that removes those
// of dead processes).
func cdiPyisolate(t *testing.T) string {
	t.Helper()
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	return tools.pyisolate
}

// cdiNeedRunc skips unless the test runs as root with runc and a static
// busybox.
func cdiNeedRunc(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (mknod, runc)")
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc not on PATH")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("no /bin/busybox for the rootfs")
	}
	return runc
}

// cdiBusyboxBundle makes a bundle with a busybox rootfs and runc's example
// config running argv, with the given annotations.
func cdiBusyboxBundle(t *testing.T, argv []string, ann map[string]string) string {
	t.Helper()
	bundle := t.TempDir()
	rootfs := filepath.Join(bundle, "rootfs")
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "opt", "etc"} {
		if err := os.MkdirAll(filepath.Join(rootfs, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "cat", "stat", "test", "echo", "ls", "env"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	s := specconv.Example()
	s.Root = &specs.Root{Path: "rootfs"}
	s.Process.Terminal = false
	s.Process.Args = argv
	s.Hostname = "cdi"
	s.Annotations = ann
	if err := hooks.WriteBundleSpec(bundle, s); err != nil {
		t.Fatal(err)
	}
	return bundle
}

// cdiTestSpec writes a CDI spec for example.com/fake=dev0 into a new spec
// dir: a char device copying /dev/null (1:3) made with mknod at a host path
// other than its container path, a read-only mount of a temp dir, env and a
// createContainer hook that saves the container state in marker.
func cdiTestSpec(t *testing.T) (specDir, dataDir, marker string) {
	t.Helper()
	tmp := t.TempDir()
	node := filepath.Join(tmp, "fake0")
	if err := unix.Mknod(node, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("mknod: %v", err)
	}
	dataDir = filepath.Join(tmp, "data")
	marker = filepath.Join(tmp, "marker.json")
	specDir = filepath.Join(tmp, "cdi")
	for _, d := range []string{dataDir, specDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dataDir, "hello.txt"), []byte("hello from the CDI mount\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spec := fmt.Sprintf(`cdiVersion: "0.6.0"
kind: example.com/fake
containerEdits:
  env: ["FAKE_VENDOR=example"]
devices:
- name: dev0
  containerEdits:
    env: ["FAKE_DEVICE=dev0"]
    deviceNodes:
    - path: /dev/fake0
      hostPath: %s
    mounts:
    - hostPath: %s
      containerPath: /opt/fake
      options: ["ro", "rbind"]
    hooks:
    - hookName: createContainer
      path: /bin/sh
      args: ["sh", "-c", "cat > %s"]
`, node, dataDir, marker)
	if err := os.WriteFile(filepath.Join(specDir, "fake.yaml"), []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	return specDir, dataDir, marker
}

// cdiRun runs a command with a timeout and returns its combined output.
func cdiRun(t *testing.T, timeout time.Duration, argv ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// cdiRuncRun runs the bundle with runc run under a private state root.
func cdiRuncRun(t *testing.T, runc, bundle, id string) (string, error) {
	t.Helper()
	root := t.TempDir()
	out, err := cdiRun(t, 60*time.Second, runc, "--root", root, "run", "--bundle", bundle, id)
	_, _ = cdiRun(t, 10*time.Second, runc, "--root", root, "delete", "--force", id)
	return out, err
}

// TestCDIRuncHooks prepares a busybox bundle with `pyisolate hook cdi
// --bundle` and `pyisolate hook shm --bundle`, adds both verbs as
// createRuntime hooks (their check faces) and runs it with runc.
func TestCDIRuncHooks(t *testing.T) {
	runc := cdiNeedRunc(t)
	bin := cdiPyisolate(t)
	specDir, _, marker := cdiTestSpec(t)
	shm := t.TempDir()
	script := `set -e
test -c /dev/fake0
echo "dev=$(stat -c %t:%T /dev/fake0)"
echo x > /dev/fake0
echo "mount=$(cat /opt/fake/hello.txt)"
echo "env=$FAKE_VENDOR/$FAKE_DEVICE"
echo shared > /dev/shm/from-container
echo done`
	bundle := cdiBusyboxBundle(t, []string{"sh", "-c", script},
		map[string]string{"cdi.k8s.io/test": "example.com/fake=dev0"})

	// The hooks' check faces as createRuntime hooks, before the bundle is
	// prepared: runc must refuse to create the container.
	s, err := hooks.LoadBundleSpec(bundle)
	if err != nil {
		t.Fatal(err)
	}
	s.Hooks = &specs.Hooks{CreateRuntime: []specs.Hook{
		{Path: bin, Args: []string{"pyisolate", "hook", "cdi", "--spec-dir", specDir}},
		{Path: bin, Args: []string{"pyisolate", "hook", "shm", "--dir", shm}},
	}}
	if err := hooks.WriteBundleSpec(bundle, s); err != nil {
		t.Fatal(err)
	}
	out, err := cdiRuncRun(t, runc, bundle, "cdi-unprepared-"+fmt.Sprint(os.Getpid()))
	if err == nil || !strings.Contains(out, "run `pyisolate hook cdi --bundle "+bundle+"` before `runc create`") {
		t.Fatalf("unprepared bundle: err %v, want the hook to refuse it with the remedy; output:\n%s", err, out)
	}

	// Prepare, then run.
	for _, argv := range [][]string{
		{bin, "hook", "cdi", "--bundle", bundle, "--spec-dir", specDir},
		{bin, "hook", "cdi", "--bundle", bundle, "--spec-dir", specDir}, // idempotent
		{bin, "hook", "shm", "--bundle", bundle, "--dir", shm},
	} {
		if out, err := cdiRun(t, 30*time.Second, argv...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(argv[1:], " "), err, out)
		}
	}
	id := "cdi-e2e-" + fmt.Sprint(os.Getpid())
	out, err = cdiRuncRun(t, runc, bundle, id)
	if err != nil {
		t.Fatalf("runc run: %v\n%s", err, out)
	}
	for _, want := range []string{"dev=1:3", "mount=hello from the CDI mount", "env=example/dev0", "done"} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q:\n%s", want, out)
		}
	}
	if got, err := os.ReadFile(filepath.Join(shm, "from-container")); err != nil || string(got) != "shared\n" {
		t.Errorf("group shm: %q, %v", got, err)
	}
	data, err := os.ReadFile(marker)
	if err != nil {
		t.Fatalf("the CDI createContainer hook left no marker: %v", err)
	}
	var st specs.State
	if err := json.Unmarshal(data, &st); err != nil || st.ID != id {
		t.Errorf("marker %q: state id %q, want %q (%v)", data, st.ID, id, err)
	}
}

// TestCDIHookErrors checks what `pyisolate hook cdi --bundle` says about
// unknown devices and malformed spec files.
func TestCDIHookErrors(t *testing.T) {
	bin := cdiPyisolate(t)
	tests := []struct {
		name     string
		ann      string
		files    map[string]string
		wantCode int
		want     []string
	}{
		{name: "unknown device", ann: "example.com/fake=nope", wantCode: 1,
			files: map[string]string{"ok.yaml": "cdiVersion: \"0.6.0\"\nkind: example.com/fake\ndevices:\n- name: a\n  containerEdits:\n    env: [\"A=1\"]\n"},
			want:  []string{"unknown CDI device example.com/fake=nope", "no CDI spec in SPECDIR defines it", "example.com/fake=a"}},
		{name: "malformed spec", ann: "example.com/fake=a", wantCode: 1,
			files: map[string]string{"bad.json": `{"cdiVersion": "0.6.0", "kind": `},
			want:  []string{"CDI spec file SPECDIR/bad.json"}},
		{name: "bad annotation", ann: "gpu0", wantCode: 1, want: []string{`invalid CDI device name "gpu0"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			specDir := t.TempDir()
			for name, content := range tt.files {
				if err := os.WriteFile(filepath.Join(specDir, name), []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			bundle := t.TempDir()
			s := &specs.Spec{Version: specs.Version, Process: &specs.Process{Args: []string{"true"}}, Linux: &specs.Linux{},
				Annotations: map[string]string{pspec.AnnotationCDIDevices: tt.ann}}
			if err := hooks.WriteBundleSpec(bundle, s); err != nil {
				t.Fatal(err)
			}
			out, err := cdiRun(t, 30*time.Second, bin, "hook", "cdi", "--bundle", bundle, "--spec-dir", specDir)
			code := 0
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatal(err)
			}
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d:\n%s", code, tt.wantCode, out)
			}
			for _, w := range tt.want {
				if w = strings.ReplaceAll(w, "SPECDIR", specDir); !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestCDICUDAIPCMembers builds a host and an extension spec of one group the
// way the runtime will (spec.Build, InjectCDI, CUDAIPCSettings) against a
// CDI spec of fake GPUs, and checks that both carry the CUDA IPC settings
// and pass CheckCUDAIPCGroup.
func TestCDICUDAIPCMembers(t *testing.T) {
	specDir := t.TempDir()
	nvidia := `cdiVersion: "0.5.0"
kind: nvidia.com/gpu
containerEdits:
  env: ["NVIDIA_VISIBLE_DEVICES=void"]
  deviceNodes: [{path: /dev/nvidiactl, type: c, major: 195, minor: 255}]
devices:
- name: GPU-11111111-2222-3333-4444-555555555555
  containerEdits:
    deviceNodes: [{path: /dev/nvidia0, type: c, major: 195, minor: 0}]
`
	if err := os.WriteFile(filepath.Join(specDir, "nvidia.yaml"), []byte(nvidia), 0o644); err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	if err := os.WriteFile(filepath.Join(mod, "__init__.py"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	member := func(name, ipcNS string) *specs.Spec {
		m, err := pspec.DecodeManifest([]byte(`{"name": "` + name + `", "module_path": "` + mod +
			`", "share_cuda_ipc": true, "group": "g1", "gpus": ["nvidia.com/gpu=GPU-11111111-2222-3333-4444-555555555555"]}`))
		if err != nil {
			t.Fatal(err)
		}
		s, err := pspec.Build(m, pspec.Host{Restriction: pspec.RestrictionNone}, pspec.Options{ID: name, Rootfs: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := hooks.InjectCDI(context.Background(), s, hooks.CDIOptions{SpecDirs: []string{specDir}}); err != nil {
			t.Fatal(err)
		}
		if err := hooks.CUDAIPCSettings(s, ipcNS); err != nil {
			t.Fatal(err)
		}
		return s
	}
	host := member("host", "")
	ext := member("ext", "/proc/777/ns/ipc")
	for _, s := range []*specs.Spec{host, ext} {
		env := strings.Join(s.Process.Env, "\n")
		for _, want := range []string{"PYISOLATE_ENABLE_CUDA_IPC=1", "CUDA_VISIBLE_DEVICES=GPU-11111111-2222-3333-4444-555555555555", "CUDA_DEVICE_ORDER=PCI_BUS_ID"} {
			if !strings.Contains(env, want) {
				t.Errorf("%s env lacks %s:\n%s", s.Hostname, want, env)
			}
		}
		if s.Annotations[pspec.AnnotationShareCUDAIPC] != "true" {
			t.Errorf("%s: no %s annotation", s.Hostname, pspec.AnnotationShareCUDAIPC)
		}
	}
	if err := hooks.CheckCUDAIPCGroup(host, ext); err != nil {
		t.Fatal(err)
	}
	for _, ns := range ext.Linux.Namespaces {
		if (ns.Type == specs.IPCNamespace && ns.Path != "/proc/777/ns/ipc") || (ns.Type == specs.PIDNamespace && ns.Path != "/proc/777/ns/pid") {
			t.Errorf("extension namespace %s = %q", ns.Type, ns.Path)
		}
	}
}

// TestCDIGeneratedSpecRunc writes the CDI spec of go-nvml's DGX A100 mock
// with package gpu (what `pyisolate cdi generate` writes; device nodes are
// copies of /dev/null made with mknod in a fake driver root), prepares a
// busybox bundle asking for GPU 1 by index and GPU 5 by UUID with `pyisolate
// hook cdi --bundle`, and runs it with runc: the container sees those two
// GPUs' nodes and the control nodes, not GPU 0's, and the driver library
// the spec mounts.
func TestCDIGeneratedSpecRunc(t *testing.T) {
	runc := cdiNeedRunc(t)
	bin := cdiPyisolate(t)
	root := t.TempDir()
	if _, err := gputest.FakeDriverRoot(root, 8); err != nil {
		t.Skipf("fake driver root: %v", err)
	}
	mock := gputest.MockDGXA100()
	uuid5, r := mock.Devices[5].GetUUID()
	if r != nvml.SUCCESS {
		t.Fatal(r)
	}
	s, err := gpu.Generate(context.Background(), gpu.Options{DriverRoot: root, NVML: mock})
	if err != nil {
		t.Fatal(err)
	}
	specDir := filepath.Join(t.TempDir(), "cdi")
	if err := s.Save(filepath.Join(specDir, "nvidia.yaml")); err != nil {
		t.Fatal(err)
	}
	lib := "/" + gputest.MockLibraries[0]
	script := `set -e
for n in /dev/nvidia1 /dev/nvidia5 /dev/nvidiactl /dev/nvidia-uvm; do test -c $n; echo "node=$n $(stat -c %t:%T $n)"; done
test ! -e /dev/nvidia0 && echo "no=/dev/nvidia0"
echo x > /dev/nvidia1
echo "lib=$(cat ` + lib + `)"
echo done`
	bundle := cdiBusyboxBundle(t, []string{"sh", "-c", script},
		map[string]string{"cdi.k8s.io/gpus": "nvidia.com/gpu=1,nvidia.com/gpu=" + uuid5})
	if out, err := cdiRun(t, 30*time.Second, bin, "hook", "cdi", "--bundle", bundle, "--spec-dir", specDir); err != nil {
		t.Fatalf("hook cdi: %v\n%s", err, out)
	}
	out, err := cdiRuncRun(t, runc, bundle, "cdi-gen-"+fmt.Sprint(os.Getpid()))
	if err != nil {
		t.Fatalf("runc run: %v\n%s", err, out)
	}
	for _, want := range []string{"node=/dev/nvidia1 1:3", "node=/dev/nvidia5 1:3", "node=/dev/nvidiactl 1:3", "node=/dev/nvidia-uvm 1:3",
		"no=/dev/nvidia0", "lib=fake " + filepath.Base(lib), "done"} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q:\n%s", want, out)
		}
	}
}
