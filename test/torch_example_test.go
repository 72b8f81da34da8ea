package test

// The torch example (examples/torch): a torch host and a torch extension in
// two containers of one group share tensors with pyisolate's wire format,
// their manifests saying share_torch and nothing else, through `pyisolate
// run` and through containerd's shim.

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// torchExampleResult is the host's last line.
type torchExampleResult struct {
	Result      string          `json:"result"`
	Checks      map[string]bool `json:"checks"`
	Torch       string          `json:"torch"`
	ManagerPath string          `json:"manager_path"`
}

func checkTorchExample(t *testing.T, hostOut string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(hostOut), "\n")
	var r torchExampleResult
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &r); err != nil {
		t.Fatalf("host result: %v: %q", err, hostOut)
	}
	if r.Result != "ok" {
		t.Fatalf("torch example failed: %+v", r)
	}
	if !strings.HasPrefix(r.ManagerPath, "/run/pyisolate/torch-shm-dir-") {
		t.Errorf("host's manager socket %s, want it in /run/pyisolate", r.ManagerPath)
	}
	t.Logf("torch %s: tensor doubled in place across containers, the extension's tensor read back", r.Torch)
}

// TestTorchExampleRun runs the bundles examples/make-bundles.sh writes for
// the torch example with `pyisolate run`.
func TestTorchExampleRun(t *testing.T) {
	e := newTipcEnv(t)
	needTorch(t)
	out := filepath.Join(e.dir, "bundles")
	if b, err := exec.Command(repoPath(e.tools, "examples/make-bundles.sh"), out).CombinedOutput(); err != nil {
		t.Fatalf("make-bundles.sh: %v: %s", err, b)
	}
	for _, role := range []string{"host", "ext"} {
		var m map[string]any
		b, err := os.ReadFile(filepath.Join(out, "torch-"+role, "pyisolate.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if _, ok := m["env"]; ok || m["share_torch"] != true {
			t.Fatalf("torch-%s manifest %s: want share_torch and no env", role, b)
		}
	}
	h := e.start("torch-example-host", filepath.Join(out, "torch-host"))
	h.expect(t, "listening ", 3*time.Minute)
	x := e.start("torch-example-ext", filepath.Join(out, "torch-ext"))
	if code := x.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("torch extension exited %d: %s", code, x.stderr)
	}
	if code := h.wait(t, time.Minute); code != 0 {
		t.Fatalf("torch host exited %d: %s\n%s", code, h.stderr, strings.Join(h.output(), "\n"))
	}
	checkTorchExample(t, strings.Join(h.output(), "\n"))
}

// TestContainerdTorchExample runs the torch example under containerd 1.6 and
// 2.x: a host-files extension bundle (empty rootfs) per member, the manifest
// in per-field annotations with share_torch and no env.
func TestContainerdTorchExample(t *testing.T) {
	needTorch(t)
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		module := filepath.Join(ctrdRepoRoot(t), "examples", "torch", "pyisolate_torch")
		empty := filepath.Join(d.Dir, "empty")
		if err := os.MkdirAll(empty, 0o755); err != nil {
			t.Fatal(err)
		}
		args := func(role string) []string {
			a := []string{"run", "--rm", "--runtime", ctrdRuntime}
			for _, kv := range []string{"io.pyisolate.name=torch-" + role, "io.pyisolate.module_path=" + module,
				"io.pyisolate.group=torchx", "io.pyisolate.share_torch=true"} {
				a = append(a, "--annotation", kv)
			}
			return append(a, "--rootfs", empty, "torch-"+role, "/usr/bin/python3", "-m", "pyisolate_torch."+role)
		}
		host := make(chan ctrdResult, 1)
		go func() { host <- d.ctr(4*time.Minute, args("host")...) }()
		// One shim serves the group: let the host's start it first.
		d.WaitTask(t, "torch-host", "RUNNING", time.Minute)
		x := d.ctr(4*time.Minute, args("ext")...)
		var h ctrdResult
		select {
		case h = <-host:
		case <-time.After(5 * time.Minute):
			t.Fatal("the torch host did not finish")
		}
		if x.Code != 0 {
			t.Fatalf("torch extension: %s\nhost: %s", x, h)
		}
		if h.Code != 0 {
			t.Fatalf("torch host: %s", h)
		}
		checkTorchExample(t, h.Stdout)
		ctrdAssertClean(t, d, "torch-host")
		ctrdAssertClean(t, d, "torch-ext")
	})
}
