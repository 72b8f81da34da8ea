package test

import (
	"encoding/json"
	"os"
	"os/exec"
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

// TestTorchKeptSegmentAfterSenderDied: a torch sender killed after sharing a
// tensor leaves its segment, which the runtime keeps for the retention; `shm
// ls` says it is kept and that torch cannot open it any more, and a torch
// receiver indeed fails with "Connection refused" (the sender's shm manager
// died with it).
func TestTorchKeptSegmentAfterSenderDied(t *testing.T) {
	e := newTipcEnv(t)
	needTorch(t)
	module := repoPath(e.tools, "test/testdata/tipc")
	torch := map[string]any{"share_torch": true, "limits": tipcLimits}
	sender := e.bundleFields("keep-send", "tipc-keep", module, []string{"/usr/bin/python3", module + "/torch_keep.py", "send"}, torch)
	opener := e.bundleFields("keep-open", "tipc-keep", module, []string{"/usr/bin/python3", module + "/torch_keep.py", "open"}, torch)
	// A member that outlives the sender keeps the group.
	holder := e.bundleFields("keep-hold", "tipc-keep", module, []string{"/bin/sleep", "600"}, torch)
	h := e.start("tipc-keep-hold", holder, "--shm-retention=10m") // whichever run creates the group sets it
	s := e.start("tipc-keep-send", sender, "--shm-retention=10m")
	key := strings.TrimPrefix(s.expect(t, "ready ", 3*time.Minute), "ready /")
	if out, err := exec.Command(e.tools.pyisolate, "kill", "--root", e.root, "tipc-keep-send", "KILL").CombinedOutput(); err != nil {
		t.Fatalf("kill: %v: %s", err, out)
	}
	if code := s.wait(t, time.Minute); code != 137 {
		t.Fatalf("sender exit %d, want 137", code)
	}
	out, err := exec.Command(e.tools.pyisolate, "shm", "ls", "--root", e.root, "--group", "tipc-keep", "--json").Output()
	if err != nil {
		t.Fatalf("shm ls: %v", err)
	}
	var rows []struct {
		Name        string `json:"name"`
		Owner       string `json:"owner"`
		State       string `json:"state"`
		StateDetail string `json:"state_detail"`
	}
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("shm ls: %v: %s", err, out)
	}
	found := false
	for _, r := range rows {
		if r.Name == key {
			found = true
			if r.Owner != "tipc-keep-send" || r.State != "kept" || !strings.Contains(r.StateDetail, "torch cannot open it anew") {
				t.Errorf("shm ls row %+v: want owner tipc-keep-send, kept, torch cannot open it", r)
			}
		}
	}
	if !found {
		t.Fatalf("segment %s not listed: %s", key, out)
	}
	text, _ := exec.Command(e.tools.pyisolate, "shm", "ls", "--root", e.root, "--group", "tipc-keep").Output()
	t.Logf("shm ls:\n%s", text)
	o := e.start("tipc-keep-open", opener)
	if got := o.expect(t, "", 3*time.Minute); got != "error Connection refused" {
		t.Errorf("torch opening the kept segment: %q, want error Connection refused", got)
	}
	o.wait(t, time.Minute)
	_ = exec.Command(e.tools.pyisolate, "kill", "--root", e.root, "tipc-keep-hold", "KILL").Run()
	h.wait(t, time.Minute)
}
