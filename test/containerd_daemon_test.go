package test

// Helpers of the containerd end-to-end tests (containerd_test.go): a private
// containerd daemon per test (own root, state, socket and config.toml, the
// shim binary's directory first on its PATH), ctr invocations against it, a
// busybox-static root filesystem, and checks that nothing of a container is
// left on the machine. Names start with ctrd so that they do not collide
// with the other files of package test.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// ctrdRuntime is the runtime type of the shim under test.
	ctrdRuntime = "io.containerd.pyisolate.v1"
	// ctrdShimName is the shim binary containerd looks up on its PATH.
	ctrdShimName = "containerd-shim-pyisolate-v1"
	// ctrdCacheDir holds what the tests build once: the shim binary and
	// containerd 2.x.
	ctrdCacheDir = "/var/cache/pyisolate-test"
	// ctrdV2Version is the containerd 2.x release the tests build and run.
	ctrdV2Version = "v2.4.2"
	// ctrdStateBase is the shim's state root (shim.StateRootBase).
	ctrdStateBase = "/run/pyisolate-containerd"
)

// ctrdVersion is one containerd release to test against.
type ctrdVersion struct {
	Name            string // subtest name
	Containerd, Ctr string // binaries
	Skip            string // why it cannot run here, if it cannot
}

var (
	ctrdShimOnce sync.Once
	ctrdShimDir  string
	ctrdShimErr  error

	ctrdV2Once sync.Once
	ctrdV2Dir  string
	ctrdV2Err  error
)

// ctrdRepoRoot is the module root (the tests run in test/).
func ctrdRepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// ctrdShimBin builds the pyisolate binary once per test process (with the
// seccomp tag, as `make build` does) into a private bin directory with the
// containerd-shim-pyisolate-v1 symlink, and returns that directory.
func ctrdShimBin(t testing.TB) string {
	t.Helper()
	ctrdShimOnce.Do(func() {
		dir := filepath.Join(ctrdCacheDir, "shim-bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			ctrdShimErr = err
			return
		}
		cmd := exec.Command("go", "build", "-tags", "seccomp", "-o", filepath.Join(dir, "pyisolate"), "./cmd/pyisolate-shim")
		cmd.Dir = ctrdRepoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			ctrdShimErr = fmt.Errorf("go build: %v\n%s", err, out)
			return
		}
		link := filepath.Join(dir, ctrdShimName)
		_ = os.Remove(link)
		if err := os.Symlink("pyisolate", link); err != nil {
			ctrdShimErr = err
			return
		}
		ctrdShimDir = dir
	})
	if ctrdShimErr != nil {
		t.Fatalf("build the shim: %v", ctrdShimErr)
	}
	return ctrdShimDir
}

// ctrdV2Bin returns the directory of containerd and ctr 2.x, building them
// with `go install` into the cache when absent (minutes on a small machine).
func ctrdV2Bin() (string, error) {
	ctrdV2Once.Do(func() {
		dir := filepath.Join(ctrdCacheDir, "containerd-"+ctrdV2Version)
		have := func() bool {
			for _, b := range []string{"containerd", "ctr"} {
				if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
					return false
				}
			}
			return true
		}
		if !have() {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				ctrdV2Err = err
				return
			}
			cmd := exec.Command("go", "install",
				"github.com/containerd/containerd/v2/cmd/containerd@"+ctrdV2Version,
				"github.com/containerd/containerd/v2/cmd/ctr@"+ctrdV2Version)
			cmd.Dir = os.TempDir()
			cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
			if out, err := cmd.CombinedOutput(); err != nil {
				ctrdV2Err = fmt.Errorf("go install containerd %s: %v\n%s", ctrdV2Version, err, ctrdLastLines(string(out), 10))
				return
			}
		}
		ctrdV2Dir = dir
	})
	return ctrdV2Dir, ctrdV2Err
}

func ctrdLastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ctrdVersions lists the containerd releases to test: Debian's 1.6 (from
// PATH) and 2.x (built).
func ctrdVersions() []ctrdVersion {
	var vs []ctrdVersion
	v1 := ctrdVersion{Name: "containerd-1.6"}
	if p, err := exec.LookPath("containerd"); err == nil {
		v1.Containerd = p
		if c, err := exec.LookPath("ctr"); err == nil {
			v1.Ctr = c
		} else {
			v1.Skip = "ctr not installed (apt-get install containerd)"
		}
	} else {
		v1.Skip = "containerd not installed (apt-get install containerd)"
	}
	vs = append(vs, v1)
	v2 := ctrdVersion{Name: "containerd-" + strings.TrimPrefix(ctrdV2Version, "v")}
	if os.Getenv("PYISOLATE_TEST_NO_CONTAINERD2") != "" {
		v2.Skip = "PYISOLATE_TEST_NO_CONTAINERD2 is set"
	} else if dir, err := ctrdV2Bin(); err != nil {
		v2.Skip = "containerd " + ctrdV2Version + " could not be built: " + err.Error()
	} else {
		v2.Containerd, v2.Ctr = filepath.Join(dir, "containerd"), filepath.Join(dir, "ctr")
	}
	vs = append(vs, v2)
	return vs
}

// ctrdNeedRoot skips when not root.
func ctrdNeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("containerd tests start a private containerd and real containers: they need root")
	}
}

// ctrdEach runs fn against a fresh private daemon of every containerd
// version, as subtests.
func ctrdEach(t *testing.T, fn func(t *testing.T, d *ctrdDaemon)) {
	ctrdNeedRoot(t)
	if testing.Short() {
		t.Skip("containerd end-to-end tests are slow (-short)")
	}
	for _, v := range ctrdVersions() {
		t.Run(v.Name, func(t *testing.T) {
			if v.Skip != "" {
				t.Skip(v.Skip)
			}
			d := ctrdNewDaemon(t, v)
			fn(t, d)
		})
	}
}

// ctrdDaemon is a private containerd.
type ctrdDaemon struct {
	Version ctrdVersion
	Dir     string // root of everything the daemon owns
	Addr    string // grpc socket
	Rootfs  string // a busybox-static root filesystem
	Shim    string // directory of the shim binary

	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
}

// ctrdNewDaemon starts a private containerd and registers its cleanup:
// every task killed and deleted, the daemon stopped, any shim left killed,
// mounts under its directory unmounted, the directory removed.
func ctrdNewDaemon(t testing.TB, v ctrdVersion) *ctrdDaemon {
	t.Helper()
	shimDir := ctrdShimBin(t)
	dir, err := os.MkdirTemp("", "ctrd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &ctrdDaemon{Version: v, Dir: dir, Addr: filepath.Join(dir, "c.sock"), Shim: shimDir}
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.images", "io.containerd.cri.v1.runtime", "io.containerd.podsandbox.controller.v1.podsandbox"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "debug"

# The pyisolate runtime as CRI sees it (RuntimeClass handler "pyisolate").
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.pyisolate]
  runtime_type = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), d.Addr, d.Addr+".ttrpc", ctrdRuntime)
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	d.Rootfs = ctrdBusybox(t, filepath.Join(dir, "busybox"))
	// The runtime makes a task's parent cgroups (/default/<id> for ctr's
	// namespace "default"); the test removes the ones it made.
	_, statErr := os.Stat("/sys/fs/cgroup/memory/default")
	t.Cleanup(func() {
		d.cleanup(t)
		if os.IsNotExist(statErr) {
			ociRemoveCgroups(t, "default")
		}
	})
	d.Start(t)
	return d
}

// ctrdBusybox makes a root filesystem with /bin/busybox (static) and the
// applet links the tests use.
func ctrdBusybox(t testing.TB, dir string) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox-static is not installed (apt-get install busybox-static)")
	}
	if out, err := exec.Command("sh", "-c", "ldd "+bb+" 2>&1 || true").Output(); err == nil &&
		!strings.Contains(string(out), "not a dynamic") && !strings.Contains(string(out), "statically") {
		t.Skipf("%s is not statically linked (apt-get install busybox-static)", bb)
	}
	for _, sub := range []string{"bin", "proc", "dev", "sys", "tmp", "etc"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"sh", "true", "false", "echo", "cat", "sleep", "grep", "id", "ls", "kill", "trap", "ps", "env"} {
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", a)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// Start starts (or restarts) the daemon and waits until it answers.
func (d *ctrdDaemon) Start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(d.Dir, "containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(d.Version.Containerd, "--config", filepath.Join(d.Dir, "config.toml"))
	cmd.Dir = d.Dir
	cmd.Env = append(ctrdEnvWithout(os.Environ(), "PATH"), "PATH="+d.Shim+":"+os.Getenv("PATH"))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s: %v", d.Version.Containerd, err)
	}
	d.cmd, d.log, d.done = cmd, logf, make(chan struct{})
	go func() { _ = cmd.Wait(); close(d.done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := d.ctr(10*time.Second, "version")
		if r.Code == 0 {
			return
		}
		select {
		case <-d.done:
			t.Fatalf("containerd exited during start-up:\n%s", d.LogTail(30))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd does not answer after 30s: %s\n%s", r, d.LogTail(30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop stops the daemon with SIGTERM (SIGKILL after 20s); shims keep
// running, as they do when containerd is restarted.
func (d *ctrdDaemon) Stop(t testing.TB) {
	t.Helper()
	if d.cmd == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	d.cmd = nil
	d.log.Close()
}

// LogTail returns the last n lines of the daemon's log.
func (d *ctrdDaemon) LogTail(n int) string {
	data, _ := os.ReadFile(filepath.Join(d.Dir, "containerd.log"))
	return ctrdLastLines(string(data), n)
}

// Bundle is the bundle directory containerd made for a task.
func (d *ctrdDaemon) Bundle(id string) string {
	return filepath.Join(d.Dir, "state", "io.containerd.runtime.v2.task", "default", id)
}

// ctrdResult is the outcome of one ctr command.
type ctrdResult struct {
	Args           []string
	Stdout, Stderr string
	Code           int
}

func (r ctrdResult) String() string {
	return fmt.Sprintf("ctr %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// ctr runs ctr against the daemon; Code is -1 when it could not run or
// timed out.
func (d *ctrdDaemon) ctr(timeout time.Duration, args ...string) ctrdResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	full := append([]string{"--address", d.Addr}, args...)
	cmd := exec.CommandContext(ctx, d.Version.Ctr, full...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Stdin = nil
	err := cmd.Run()
	r := ctrdResult{Args: args, Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ctx.Err() == nil:
		r.Code = ee.ExitCode()
	default:
		r.Code = -1
		r.Stderr += fmt.Sprintf("\n(%v; ctx %v)", err, ctx.Err())
	}
	return r
}

// Ctr runs ctr and fails the test unless it exits with want.
func (d *ctrdDaemon) Ctr(t testing.TB, want int, args ...string) ctrdResult {
	t.Helper()
	r := d.ctr(60*time.Second, args...)
	if r.Code != want {
		t.Fatalf("want exit %d: %s\ncontainerd log:\n%s", want, r, d.LogTail(15))
	}
	return r
}

// Run is `ctr run --runtime io.containerd.pyisolate.v1 --rootfs` with
// flags before the positionals, as ctr 1.6 wants.
func (d *ctrdDaemon) RunArgs(flags []string, id string, cmd ...string) []string {
	args := append([]string{"run", "--runtime", ctrdRuntime}, flags...)
	args = append(args, "--rootfs", d.Rootfs, id)
	return append(args, cmd...)
}

// Tasks returns ctr task ls as id → status.
func (d *ctrdDaemon) Tasks(t testing.TB) map[string]string {
	t.Helper()
	r := d.Ctr(t, 0, "task", "ls")
	tasks := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(r.Stdout))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] != "TASK" {
			tasks[f[0]] = f[2]
		}
	}
	return tasks
}

// TaskPid returns the pid ctr task ls reports for id.
func (d *ctrdDaemon) TaskPid(t testing.TB, id string) int {
	t.Helper()
	r := d.Ctr(t, 0, "task", "ls")
	for _, line := range strings.Split(r.Stdout, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[0] == id {
			pid, _ := strconv.Atoi(f[1])
			return pid
		}
	}
	t.Fatalf("task %s not listed:\n%s", id, r.Stdout)
	return 0
}

// WaitTask waits until task id has status want ("" means: not listed).
func (d *ctrdDaemon) WaitTask(t testing.TB, id, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, ok := d.Tasks(t)[id]
		if (want == "" && !ok) || (want != "" && got == want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: status %q after %v, want %q\ncontainerd log:\n%s", id, got, timeout, want, d.LogTail(20))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ShimPid reads the pid of the shim serving task id.
func (d *ctrdDaemon) ShimPid(t testing.TB, id string) int {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(d.Bundle(id), "shim.pid"))
	if err != nil {
		t.Fatalf("shim pid of %s: %v", id, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

// cleanup removes everything the daemon and its tasks made.
func (d *ctrdDaemon) cleanup(t testing.TB) {
	if t.Failed() {
		t.Logf("containerd log (%s):\n%s", d.Version.Name, d.LogTail(40))
	}
	var shims []int
	if d.cmd != nil {
		for id := range d.Tasks(t) {
			d.ctr(20*time.Second, "task", "kill", "-s", "KILL", id)
			d.ctr(20*time.Second, "task", "delete", "-f", id)
		}
		r := d.ctr(20*time.Second, "container", "ls", "-q")
		for _, id := range strings.Fields(r.Stdout) {
			d.ctr(20*time.Second, "container", "rm", id)
		}
	}
	// Shims still alive (their bundles still exist) are killed.
	matches, _ := filepath.Glob(filepath.Join(d.Dir, "state", "io.containerd.runtime.v2.task", "*", "*", "shim.pid"))
	for _, m := range matches {
		if data, err := os.ReadFile(m); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(data))); err == nil && pid > 0 {
				shims = append(shims, pid)
			}
		}
	}
	d.Stop(t)
	for _, pid := range shims {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, mp := range ctrdMountsUnder(d.Dir) {
		_ = syscall.Unmount(mp, syscall.MNT_DETACH)
	}
	if err := os.RemoveAll(d.Dir); err != nil {
		t.Logf("remove %s: %v", d.Dir, err)
	}
}

// ctrdMountsUnder lists mount points at or below dir, deepest first.
func ctrdMountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append([]string{f[4]}, out...)
		}
	}
	return out
}

// ctrdEnvWithout drops the variables named keys from env.
func ctrdEnvWithout(env []string, keys ...string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		keep := true
		for _, x := range keys {
			if k == x {
				keep = false
			}
		}
		if keep {
			out = append(out, kv)
		}
	}
	return out
}

// ctrdAlive reports whether pid exists (and is not a zombie).
func ctrdAlive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] != 'Z' && s[i+2] != 'X'
	}
	return true
}

// ctrdWaitGone waits until pid no longer runs.
func ctrdWaitGone(t testing.TB, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for ctrdAlive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after %v", pid, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ctrdAssertClean checks that nothing of container id is left: no state
// directory of the shim's runtime, no mount, no cgroup, and that the given
// pids are gone.
func ctrdAssertClean(t testing.TB, d *ctrdDaemon, id string, pids ...int) {
	t.Helper()
	for _, pid := range pids {
		ctrdWaitGone(t, pid, 10*time.Second)
	}
	for _, p := range []string{
		filepath.Join(ctrdStateBase, "default", id),
		filepath.Join(ctrdStateBase, "default", "rootfs", id),
	} {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("state left behind: %s", p)
		}
	}
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if strings.Contains(line, "/"+id+"/") || strings.HasSuffix(strings.Fields(line + " x x x x x")[4], "/"+id) {
			t.Errorf("mount left behind: %s", line)
		}
	}
	cg, _ := filepath.Glob("/sys/fs/cgroup/*/default/" + id)
	if v2, err := filepath.Glob("/sys/fs/cgroup/default/" + id); err == nil {
		cg = append(cg, v2...)
	}
	if len(cg) > 0 {
		t.Errorf("cgroups left behind: %v", cg)
	}
}
