package test

// End-to-end tests of tensor IPC across containers (issue 5): real
// `pyisolate run` containers of one isolation group, real Python processes.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pyisolate/pyisolate-oci/tensoripc"
)

// tipcEnv is one test's runtime root and the bundles it wrote.
type tipcEnv struct {
	t     testing.TB
	tools *secTools
	root  string // --root of every pyisolate call
	dir   string // bundles live here
}

func newTipcEnv(t testing.TB) *tipcEnv {
	t.Helper()
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("skipped: /usr/bin/python3 is missing (install python3-numpy)")
	}
	// The root must be traversable by the containers' mapped ids:
	// t.TempDir's parent is mode 0700.
	root, err := os.MkdirTemp("", "pyisolate-tipc-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	e := &tipcEnv{t: t, tools: tools, root: root, dir: t.TempDir()}
	t.Cleanup(func() {
		// Whatever a failed test left: containers, then groups.
		out, _ := exec.Command(tools.pyisolate, "ps", "--root", e.root, "--json").Output()
		var states []struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(out, &states)
		for _, s := range states {
			_ = exec.Command(tools.pyisolate, "delete", "--root", e.root, "--force", s.ID).Run()
		}
		_ = exec.Command(tools.pyisolate, "shm", "gc", "--root", e.root).Run()
		if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil && strings.Contains(string(b), e.root) {
			t.Errorf("mounts left under %s", e.root)
		}
		secCheckNoLeaks(t, e.root, "", "tipc-")
		_ = os.RemoveAll(e.root)
	})
	return e
}

// tipcLimits are the manifest limits of bundle's extensions.
var tipcLimits = map[string]any{"shm_size": "1Gi", "memory": "2Gi", "pids": 256}

// bundle writes an extension bundle whose module is dir (bound read-only)
// with tipcLimits and returns its path.
func (e *tipcEnv) bundle(name, group, module string, command []string, env map[string]string) string {
	e.t.Helper()
	return e.bundleLimits(name, group, module, command, env, tipcLimits)
}

// bundleLimits is bundle with the manifest's limits given.
func (e *tipcEnv) bundleLimits(name, group, module string, command []string, env map[string]string, limits map[string]any) string {
	e.t.Helper()
	return e.bundleFields(name, group, module, command, map[string]any{"env": env, "limits": limits})
}

// bundleFields writes an extension bundle whose manifest has the given
// fields besides name, module_path, python, group and command.
func (e *tipcEnv) bundleFields(name, group, module string, command []string, fields map[string]any) string {
	e.t.Helper()
	b := filepath.Join(e.dir, name)
	if err := os.MkdirAll(b, 0o755); err != nil {
		e.t.Fatal(err)
	}
	m := map[string]any{
		"name": name, "module_path": module, "python": "/usr/bin/python3",
		"group": group, "command": command,
	}
	for k, v := range fields {
		m[k] = v
	}
	writeManifest(e.t, b, m)
	return b
}

// tipcProc is a running `pyisolate run`.
type tipcProc struct {
	cmd    *exec.Cmd
	lines  chan string // stdout, line by line
	stderr *bytes.Buffer
	done   chan struct{}
	err    error
	mu     sync.Mutex
	out    []string
}

// start runs `pyisolate run` for bundle in the background.
func (e *tipcEnv) start(id, bundle string, extra ...string) *tipcProc {
	e.t.Helper()
	args := append([]string{"run", "--root", e.root, "--id", id}, extra...)
	args = append(args, bundle)
	p := &tipcProc{cmd: exec.Command(e.tools.pyisolate, args...), lines: make(chan string, 1024),
		stderr: &bytes.Buffer{}, done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		e.t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
			p.lines <- sc.Text()
		}
		p.err = p.cmd.Wait()
		close(p.lines)
		close(p.done)
	}()
	e.t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// expect waits for a stdout line starting with prefix.
func (p *tipcProc) expect(t testing.TB, prefix string, timeout time.Duration) string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				t.Fatalf("container exited (%v) before printing %q; stderr: %s", p.err, prefix, p.stderr)
			}
			if strings.HasPrefix(l, prefix) {
				return l
			}
		case <-deadline:
			t.Fatalf("no %q line within %s; stderr: %s", prefix, timeout, p.stderr)
		}
	}
}

// wait waits for the container to exit and returns its exit code.
func (p *tipcProc) wait(t testing.TB, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
	case <-time.After(timeout):
		t.Fatalf("container did not exit within %s; stderr: %s", timeout, p.stderr)
	}
	return p.cmd.ProcessState.ExitCode()
}

func (p *tipcProc) output() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.out...)
}

func repoPath(tools *secTools, rel string) string { return filepath.Join(tools.repo, rel) }

// segments lists group's segments as `pyisolate shm ls --json` reports them.
func (e *tipcEnv) segments(group string) []struct {
	Name  string `json:"name"`
	Owner string `json:"owner"`
	Size  int64  `json:"size"`
} {
	e.t.Helper()
	out, err := exec.Command(e.tools.pyisolate, "shm", "ls", "--root", e.root, "--group", group, "--json").Output()
	if err != nil {
		e.t.Fatalf("shm ls: %v", err)
	}
	var segs []struct {
		Name  string `json:"name"`
		Owner string `json:"owner"`
		Size  int64  `json:"size"`
	}
	if err := json.Unmarshal(out, &segs); err != nil {
		e.t.Fatalf("shm ls: %v: %s", err, out)
	}
	return segs
}

// TestTensorHandoffAcrossContainers runs the demo host and extension as two
// containers of one group: a 256 MiB float32 tensor crosses as a TensorRef,
// the extension changes it in place and the host sees the change in its own
// mapping (same pages, no copy).
func TestTensorHandoffAcrossContainers(t *testing.T) {
	e := newTipcEnv(t)
	module := repoPath(e.tools, "examples/demo/pyisolate_demo")
	env := map[string]string{"DEMO_SIZES": "1M,256M", "DEMO_ROUNDS": "3", "DEMO_COPY_MAX": "1M"}
	host := e.bundle("demo-host", "tipc-demo", module, []string{"/usr/bin/python3", "-m", "pyisolate_demo.host"}, env)
	ext := e.bundle("demo-ext", "tipc-demo", module, []string{"/usr/bin/python3", "-m", "pyisolate_demo.ext"}, env)

	h := e.start("tipc-host", host)
	x := e.start("tipc-ext", ext)
	if code := x.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("extension exited %d: %s", code, x.stderr)
	}
	if code := h.wait(t, time.Minute); code != 0 {
		t.Fatalf("host exited %d: %s\n%s", code, h.stderr, strings.Join(h.output(), "\n"))
	}
	var result struct {
		Result string `json:"result"`
		Sizes  []struct {
			Size    int64   `json:"size"`
			ShmMS   float64 `json:"shm_ms"`
			InPlace bool    `json:"in_place"`
		} `json:"sizes"`
	}
	out := h.output()
	if err := json.Unmarshal([]byte(out[len(out)-1]), &result); err != nil {
		t.Fatalf("host result: %v: %q", err, out)
	}
	if result.Result != "ok" || len(result.Sizes) != 2 || result.Sizes[1].Size != 256<<20 || !result.Sizes[1].InPlace {
		t.Fatalf("hand-off failed: %+v", result)
	}
	t.Logf("hand-off through the group's shm: 1 MiB %.2f ms, 256 MiB %.2f ms", result.Sizes[0].ShmMS, result.Sizes[1].ShmMS)
	if groups, _ := os.ReadDir(filepath.Join(e.root, "groups")); len(groups) != 0 {
		t.Errorf("group left after its last member exited: %v", groups)
	}
}

// TestTensorOtherGroupCannotOpen: a member of the same group opens a segment
// by name; a member of another group, and the host's /dev/shm, do not have it.
func TestTensorOtherGroupCannotOpen(t *testing.T) {
	e := newTipcEnv(t)
	module := repoPath(e.tools, "test/testdata/tipc")
	holder := e.bundle("holder", "tipc-a", module, []string{"/usr/bin/python3", module + "/holder.py", "create", "secret_seg", "1048576"}, nil)
	same := e.bundle("same", "tipc-a", module, []string{"/usr/bin/python3", module + "/holder.py", "open", "secret_seg"}, nil)
	other := e.bundle("other", "tipc-b", module, []string{"/usr/bin/python3", module + "/holder.py", "open", "secret_seg"}, nil)

	h := e.start("tipc-holder", holder)
	ready := h.expect(t, "ready ", 2*time.Minute)
	want := strings.TrimPrefix(ready, "ready ")

	s := e.start("tipc-same", same)
	got := s.expect(t, "", time.Minute)
	if got != "opened "+want {
		t.Errorf("same group: %q, want opened with the holder's digest %s", got, want)
	}
	s.wait(t, time.Minute)
	o := e.start("tipc-other", other)
	if got := o.expect(t, "", time.Minute); !strings.HasPrefix(got, "missing ") {
		t.Errorf("other group: %q, want missing", got)
	}
	o.wait(t, time.Minute)
	if _, err := os.Stat("/dev/shm/secret_seg"); err == nil {
		t.Error("the segment appeared in the machine's /dev/shm")
	}
	if err := exec.Command(e.tools.pyisolate, "kill", "--root", e.root, "tipc-holder", "KILL").Run(); err != nil {
		t.Fatalf("kill holder: %v", err)
	}
	if code := h.wait(t, time.Minute); code != 137 {
		t.Errorf("holder exit = %d, want 137", code)
	}
}

// TestTensorKillLoopReclaim kills an extension with SIGKILL while it holds a
// segment, many times: after the retention period no segment of a dead owner
// remains and the host's own segment is untouched.
func TestTensorKillLoopReclaim(t *testing.T) {
	e := newTipcEnv(t)
	rounds := 100
	if testing.Short() {
		rounds = 10
	}
	module := repoPath(e.tools, "test/testdata/tipc")
	retention := "--shm-retention=1s"
	host := e.bundle("host", "tipc-kill", module, []string{"/usr/bin/python3", module + "/holder.py", "create", "host_seg", "4194304"}, nil)
	h := e.start("tipc-khost", host, retention)
	hostDigest := strings.TrimPrefix(h.expect(t, "ready ", 2*time.Minute), "ready ")
	// The group's retention is its creator's: another one is refused.
	other := e.bundle("otherret", "tipc-kill", module, []string{"/bin/true"}, nil)
	cmd := exec.Command(e.tools.pyisolate, "run", "--root", e.root, "--id", "tipc-kother", "--shm-retention=5s", other)
	out, err := cmd.CombinedOutput()
	if code := cmd.ProcessState.ExitCode(); code != 2 || !strings.Contains(string(out),
		"--shm-retention 5s: group tipc-kill exists with retention 1s, set by the run that created it") {
		t.Errorf("a member asking another retention: exit %d (%v), %s; want exit 2 naming --shm-retention", code, err, out)
	}

	for i := 0; i < rounds; i++ {
		name := fmt.Sprintf("torch_%d_leak", 1000+i)
		b := e.bundle(fmt.Sprintf("ext%d", i), "tipc-kill", module,
			[]string{"/usr/bin/python3", module + "/holder.py", "create", name, "1048576"}, nil)
		id := fmt.Sprintf("tipc-kext%d", i)
		x := e.start(id, b, retention)
		x.expect(t, "ready ", 2*time.Minute)
		// The segment is attributed to its member before the kill: what
		// this test checks is the reclaim of a dead member's segments. (A
		// segment whose creator dies before any scan sees it stays of
		// unknown owner and is kept: README, "torch and retention".)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			owner := ""
			for _, s := range e.segments("tipc-kill") {
				if s.Name == name {
					owner = s.Owner
				}
			}
			if owner == id {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: segment %s not attributed to %s within 20 s (owner %q)", i, name, id, owner)
			}
		}
		if out, err := exec.Command(e.tools.pyisolate, "kill", "--root", e.root, id, "KILL").CombinedOutput(); err != nil {
			t.Fatalf("round %d: kill: %v: %s", i, err, out)
		}
		if code := x.wait(t, time.Minute); code != 137 {
			t.Fatalf("round %d: extension exit %d, want 137; stderr %s", i, code, x.stderr)
		}
	}
	// Retention (1 s) passes; the host's runtime sweeps every few seconds,
	// and gc reclaims at once.
	time.Sleep(1500 * time.Millisecond)
	if out, err := exec.Command(e.tools.pyisolate, "shm", "gc", "--root", e.root, "--group", "tipc-kill").CombinedOutput(); err != nil {
		t.Fatalf("shm gc: %v: %s", err, out)
	}
	segs := e.segments("tipc-kill")
	if len(segs) != 1 || segs[0].Name != "host_seg" || segs[0].Owner != "tipc-khost" {
		t.Fatalf("after %d killed extensions the group holds %+v, want only the host's segment", rounds, segs)
	}
	// The host's segment is intact: open it from a fresh member.
	check := e.bundle("check", "tipc-kill", module, []string{"/usr/bin/python3", module + "/holder.py", "open", "host_seg"}, nil)
	c := e.start("tipc-kcheck", check)
	if got := c.expect(t, "", time.Minute); got != "opened "+hostDigest {
		t.Errorf("host segment after the loop: %q, want digest %s", got, hostDigest)
	}
	c.wait(t, time.Minute)
	_ = exec.Command(e.tools.pyisolate, "kill", "--root", e.root, "tipc-khost", "KILL").Run()
	h.wait(t, time.Minute)
}

// needTorch skips a test when Debian's python3-torch is missing.
func needTorch(t testing.TB) {
	t.Helper()
	if err := exec.Command("/usr/bin/python3", "-c", "import torch").Run(); err != nil {
		t.Skip("skipped: Debian's python3-torch is not installed (PYISOLATE_WITH_TORCH=1 make deps)")
	}
}

// TestTorchAcrossContainers hands a tensor from a torch host container to a
// torch extension container with torch's own file_system reductions; the
// extension changes it in place and the host sees it. Both manifests say
// share_torch and nothing else (no env): torch's shm manager socket, whose
// path the TensorRef carries, lies in the group's socket directory, while
// Python's tempfile keeps the private /tmp. The TensorRef the host publishes
// decodes in Go, and Go's read-only view reads the same bytes.
func TestTorchAcrossContainers(t *testing.T) {
	e := newTipcEnv(t)
	needTorch(t)
	module := repoPath(e.tools, "test/testdata/tipc")
	torch := map[string]any{"share_torch": true, "limits": tipcLimits}
	host := e.bundleFields("torch-host", "tipc-torch", module, []string{"/usr/bin/python3", module + "/torch_host.py"}, torch)
	ext := e.bundleFields("torch-ext", "tipc-torch", module, []string{"/usr/bin/python3", module + "/torch_ext.py"}, torch)

	h := e.start("tipc-thost", host)
	key := strings.TrimPrefix(h.expect(t, "listening ", 3*time.Minute), "listening ")

	// Go reads the TensorRef the torch host published, before the extension
	// changes the tensor.
	groupDir := filepath.Join(e.root, "groups", "tipc-torch")
	raw, err := os.ReadFile(filepath.Join(groupDir, "sock", "ref.json"))
	if err != nil {
		t.Fatal(err)
	}
	var pub struct {
		Ref     json.RawMessage `json:"ref"`
		SHA256  string          `json:"sha256"`
		TempDir string          `json:"tempdir"`
	}
	if err := json.Unmarshal(raw, &pub); err != nil {
		t.Fatal(err)
	}
	ref, err := tensoripc.DecodeTensorRef(pub.Ref)
	if err != nil {
		t.Fatalf("decode torch's TensorRef: %v", err)
	}
	if ref.CPU == nil || ref.CPU.StorageKey != key {
		t.Fatalf("ref = %+v, want storage key %s", ref, key)
	}
	if !strings.HasPrefix(ref.CPU.ManagerPath, "/run/pyisolate/torch-shm-dir-") {
		t.Errorf("torch's manager socket is %s, want it in the group's socket directory /run/pyisolate", ref.CPU.ManagerPath)
	}
	if pub.TempDir != "/tmp" {
		t.Errorf("Python's tempfile.gettempdir() in the member is %q, want the private /tmp", pub.TempDir)
	}
	view, err := tensoripc.OpenCPU(ref, filepath.Join(groupDir, "shm"))
	if err != nil {
		t.Fatalf("open torch's tensor from Go: %v", err)
	}
	data, err := view.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); got != pub.SHA256 {
		t.Errorf("Go view digest %s, torch's %s", got, pub.SHA256)
	}
	_ = view.Close()

	x := e.start("tipc-text", ext)
	if code := x.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("torch extension exited %d: %s", code, x.stderr)
	}
	if code := h.wait(t, time.Minute); code != 0 {
		t.Fatalf("torch host exited %d: %s\n%s", code, h.stderr, strings.Join(h.output(), "\n"))
	}
	out := h.output()
	if last := out[len(out)-1]; !strings.Contains(last, `"result": "ok"`) {
		t.Fatalf("torch hand-off: %s", last)
	}
}
