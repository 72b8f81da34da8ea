package test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// torchFill shares a 64 MiB tensor with torch's file_system strategy: in a
// group whose /dev/shm holds 16 MiB, torch dies of SIGBUS while filling the
// segment.
var torchFill = []string{"/usr/bin/python3", "-c", `import torch, torch.multiprocessing as mp
mp.set_sharing_strategy("file_system")
t = torch.ones(16 << 20)
print("sharing", flush=True)
t.share_memory_()
print("shared", flush=True)`}

// sigbusWants are the parts of the explanation run and the shim give.
var sigbusWants = []string{"was killed by SIGBUS", "the group's /dev/shm was full", "of 16 MiB used", "By owner:", "raise limits.shm_size (now 16 MiB)"}

// TestTorchSIGBUSFullShm: `pyisolate run` of torch filling a full group
// exits 135 and says why: SIGBUS while the group's /dev/shm was full, its
// size and owners.
func TestTorchSIGBUSFullShm(t *testing.T) {
	e := newTipcEnv(t)
	needTorch(t)
	b := e.bundleFields("filler", "tipc-full", repoPath(e.tools, "examples/torch/pyisolate_torch"), torchFill,
		map[string]any{"share_torch": true, "limits": map[string]any{"shm_size": "16Mi"}})
	p := e.start("tipc-filler", b)
	if code := p.wait(t, 3*time.Minute); code != 135 {
		t.Fatalf("exit %d, want 135 (SIGBUS); stderr: %s", code, p.stderr)
	}
	msg := p.stderr.String()
	t.Logf("run said: %s", msg)
	for _, want := range append(sigbusWants, "tipc-filler") {
		if !strings.Contains(msg, want) {
			t.Errorf("stderr lacks %q:\n%s", want, msg)
		}
	}
}

// TestContainerdTorchSIGBUSFullShm: the same under containerd: ctr run exits
// 135 and the shim's log says why.
func TestContainerdTorchSIGBUSFullShm(t *testing.T) {
	needTorch(t)
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		module := filepath.Join(ctrdRepoRoot(t), "examples", "torch", "pyisolate_torch")
		empty := filepath.Join(d.Dir, "empty")
		if err := os.MkdirAll(empty, 0o755); err != nil {
			t.Fatal(err)
		}
		args := []string{"run", "--rm", "--runtime", ctrdRuntime}
		for _, kv := range []string{"io.pyisolate.name=filler", "io.pyisolate.module_path=" + module,
			"io.pyisolate.share_torch=true", "io.pyisolate.shm_size=16Mi"} {
			args = append(args, "--annotation", kv)
		}
		args = append(append(args, "--rootfs", empty, "filler"), torchFill...)
		d.Ctr(t, 135, args...)
		var log string
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			if log = d.LogTail(200); strings.Contains(log, "killed by SIGBUS") {
				break
			}
		}
		for _, want := range sigbusWants {
			if !strings.Contains(log, want) {
				t.Errorf("containerd's log lacks %q:\n%s", want, log)
			}
		}
		ctrdAssertClean(t, d, "filler")
	})
}
