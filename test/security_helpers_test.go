package test

// Helpers of the sandbox e2e tests (security_test.go) and the start-latency
// benchmark (bench_run_test.go): building bin/pyisolate and the static probe
// once, fixtures (module, venv, markers, a loopback listener), running the
// probe under pyisolate, runc and bwrap, and the leak checks. Names start
// with sec so that they do not collide with the other files of package test.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// secTools are the binaries the tests need, built once per test binary.
type secTools struct {
	repo      string // repository root
	pyisolate string // the CLI binary; "" when it cannot be built
	probe     string // the static probe
	// whyNoPyisolate says why pyisolate is "" (a build error).
	whyNoPyisolate string
	// note says which pyisolate binary is used when it is not a fresh build.
	note string
	dir  string // where the built binaries live
}

var (
	secToolsOnce sync.Once
	secToolsVal  *secTools
	secToolsErr  error
)

// secSetup returns the built tools, skipping the test (with the reason)
// when not root. bin/pyisolate is built with `go build -tags seccomp` into a
// temporary directory (the Go build cache makes this cheap after `make
// build`), so that the tests never run a stale binary and never write bin/
// while someone else runs make. PYISOLATE_BIN overrides it.
//
// No TestMain is used: package test is shared with the containerd tests,
// and a package has only one.
func secSetup(t testing.TB) *secTools {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: the sandbox e2e tests need root (they create real containers)")
	}
	secToolsOnce.Do(func() {
		secCloseOnExec()
		secToolsVal, secToolsErr = secBuild()
	})
	if secToolsErr != nil {
		t.Fatalf("building the test tools: %v", secToolsErr)
	}
	return secToolsVal
}

// secNeedPyisolate skips the test when bin/pyisolate is unavailable.
func secNeedPyisolate(t testing.TB, tools *secTools) {
	t.Helper()
	if tools.pyisolate == "" {
		t.Skipf("skipped: bin/pyisolate is missing and could not be built: %s", tools.whyNoPyisolate)
	}
}

// secCloseOnExec marks every descriptor of the test process above stdio
// close-on-exec, as Python's subprocess (close_fds=True) does for pyisolate's
// bwrap: descriptors the test inherited from its own caller must not reach
// the sandboxes. What a runtime must not leak is passed explicitly
// (secFixture.stray).
func secCloseOnExec() {
	if err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC); err == nil {
		return
	}
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd > 2 {
			unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC)
		}
	}
}

func secBuild() (*secTools, error) {
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	repo := filepath.Dir(wd) // tests run in test/
	if _, err := os.Stat(filepath.Join(repo, "go.mod")); err != nil {
		return nil, fmt.Errorf("repository root not found from %s", wd)
	}
	// One shared directory; each test process builds its own
	// probe.PID and pyisolate.PID and removes those of dead processes.
	dir := filepath.Join(os.TempDir(), "pyisolate-testbin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	if ents, err := os.ReadDir(dir); err == nil {
		for _, e := range ents {
			_, pid, _ := strings.Cut(e.Name(), ".")
			if _, err := os.Stat("/proc/" + pid); pid != "" && err != nil {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	suffix := "." + strconv.Itoa(os.Getpid())
	tools := &secTools{repo: repo, dir: dir, probe: filepath.Join(dir, "probe"+suffix)}
	build := exec.Command("go", "build", "-o", tools.probe, "./test/probe")
	build.Dir = repo
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./test/probe: %v\n%s", err, out)
	}
	if p := os.Getenv("PYISOLATE_BIN"); p != "" {
		tools.pyisolate = p
		tools.note = "pyisolate binary from PYISOLATE_BIN: " + p
		return tools, nil
	}
	bin := filepath.Join(dir, "pyisolate"+suffix)
	build = exec.Command("go", "build", "-tags", "seccomp", "-trimpath", "-o", bin, "./cmd/pyisolate-shim")
	build.Dir = repo
	build.Env = append(os.Environ(), "CGO_ENABLED=1", "GOFLAGS=")
	out, err := build.CombinedOutput()
	switch {
	case err == nil:
		tools.pyisolate = bin
	default:
		// A broken tree (someone mid-edit): fall back to make build's binary.
		made := filepath.Join(repo, "bin", "pyisolate")
		if _, serr := os.Stat(made); serr == nil {
			tools.pyisolate = made
			tools.note = fmt.Sprintf("go build ./cmd/pyisolate-shim failed (%s); using %s, which may be stale",
				secFirstLine(string(out)), made)
			fmt.Fprintf(os.Stderr, "test: %s\n", tools.note)
		} else {
			tools.whyNoPyisolate = fmt.Sprintf("go build: %v: %s", err, secFirstLine(string(out)))
		}
	}
	return tools, nil
}

func secFirstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// secProbeResult is one line of the probe's output.
type secProbeResult struct {
	Check   string `json:"check"`
	Blocked bool   `json:"blocked"`
	Detail  string `json:"detail"`
}

// secRequiredChecks are the checks issue 3 lists; the probe must report
// every one of them (it reports more).
var secRequiredChecks = []string{
	"read-root", "read-home", "read-etc-shadow", "read-host-tmp", "read-host-shm",
	"write-module", "write-venv", "write-etc", "write-usr",
	"net-interfaces", "net-host-loopback", "net-udp-route-v4",
	"mount-tmpfs", "unshare-user", "unshare-mount", "ptrace-child", "keyctl-add-key",
	"bpf-map-create", "perf-event-open", "init-module", "finit-module",
	"write-sysrq-trigger", "read-proc-kcore", "fd-inherited", "fd-host-directory",
	"host-processes", "cap-eff-zero", "no-new-privs", "seccomp-filter",
}

// secParseProbe reads the probe's JSON lines; other lines are an error.
func secParseProbe(out []byte) ([]secProbeResult, error) {
	var rs []secProbeResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var r secProbeResult
		if err := json.Unmarshal([]byte(line), &r); err != nil || r.Check == "" {
			return rs, fmt.Errorf("not a probe line: %q", line)
		}
		rs = append(rs, r)
	}
	if len(rs) == 0 {
		return nil, errors.New("the probe printed nothing")
	}
	return rs, sc.Err()
}

// secFixture is what a probe run needs on the host: a base directory (mode
// 0755, so that the mapped container root can traverse it) holding the
// module (with the probe in it), the venv and a writable directory, both
// world-writable so that only the sandbox's read-only binds can stop a
// write; marker files in the host's /tmp and /dev/shm; a TCP listener on
// 127.0.0.1.
type secFixture struct {
	base, bundle, module, venv, work, root string
	probe                                  string // the probe inside module
	tmpMarker, shmMarker                   string
	listener                               net.Listener
	accepted                               chan string
	hostPID                                int
	hostComm                               string
	// stray are descriptors a careless caller leaks into the runtime: a
	// host directory (the runc CVE-2024-21626 class) and a host file. They
	// are passed as fds 3 and 4 to pyisolate and runc, which must not hand
	// them to the container.
	stray []*os.File
}

func (fx *secFixture) strayFiles() []*os.File { return fx.stray }

func newSecFixture(t testing.TB, tools *secTools) *secFixture {
	t.Helper()
	base, err := os.MkdirTemp("", "pyisolate-sec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// A runtime's leaked mounts (reported by the leak checks) would
		// keep RemoveAll from removing base and stay on the host.
		secUnmountUnder(base)
		os.RemoveAll(base)
	})
	fx := &secFixture{
		base:   base,
		bundle: filepath.Join(base, "bundle"),
		module: filepath.Join(base, "secprobe_ext"),
		venv:   filepath.Join(base, "venv"),
		work:   filepath.Join(base, "work"),
		root:   filepath.Join(base, "state"),
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(base, 0o755))
	for _, d := range []string{fx.bundle, fx.module, fx.venv, fx.work} {
		must(os.Mkdir(d, 0o755))
	}
	for _, d := range []string{fx.module, fx.venv, fx.work} {
		must(os.Chmod(d, 0o777))
	}
	fx.probe = filepath.Join(fx.module, "probe")
	must(secCopyFile(tools.probe, fx.probe, 0o755))
	must(os.WriteFile(filepath.Join(fx.module, "__init__.py"), []byte("print('secprobe')\n"), 0o644))

	suffix := filepath.Base(base)
	fx.tmpMarker = filepath.Join("/tmp", suffix+"-marker")
	fx.shmMarker = filepath.Join("/dev/shm", suffix+"-marker")
	for _, m := range []string{fx.tmpMarker, fx.shmMarker} {
		must(os.WriteFile(m, []byte("host secret\n"), 0o644))
		m := m
		t.Cleanup(func() { os.Remove(m) })
	}

	fx.listener, err = net.Listen("tcp4", "127.0.0.1:0")
	must(err)
	fx.accepted = make(chan string, 16)
	go func() {
		for {
			c, err := fx.listener.Accept()
			if err != nil {
				return
			}
			select {
			case fx.accepted <- c.RemoteAddr().String():
			default:
			}
			c.Close()
		}
	}()
	t.Cleanup(func() { fx.listener.Close() })
	for _, p := range []string{fx.base, fx.tmpMarker} {
		f, err := os.Open(p)
		must(err)
		fx.stray = append(fx.stray, f)
		t.Cleanup(func() { f.Close() })
	}
	fx.hostPID = os.Getpid()
	comm, _ := os.ReadFile("/proc/self/comm")
	fx.hostComm = strings.TrimSpace(string(comm))
	return fx
}

func secCopyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, b, mode)
}

// probeArgs is the probe's command line, with probe the path of the probe
// binary inside the sandbox.
func (fx *secFixture) probeArgs(probe string) []string {
	return []string{probe,
		"-module", fx.module, "-venv", fx.venv,
		"-tmp-marker", fx.tmpMarker, "-shm-marker", fx.shmMarker,
		"-port", strconv.Itoa(fx.listener.Addr().(*net.TCPAddr).Port),
		"-host-pid", strconv.Itoa(fx.hostPID), "-host-comm", fx.hostComm,
	}
}

// secManifest is the manifest of the probe bundle: module and venv, a
// writable directory, sealed, no network, limits.
func (fx *secFixture) secManifest(command []string) map[string]any {
	return map[string]any{
		"name":            "secprobe",
		"module_path":     fx.module,
		"venv":            fx.venv,
		"python":          "/usr/bin/python3",
		"execution_model": "sealed",
		"sandbox": map[string]any{
			"network":        false,
			"writable_paths": []string{fx.work},
		},
		"limits":  map[string]any{"memory": "256Mi", "pids": 64},
		"command": command,
	}
}

func writeManifest(t testing.TB, bundle string, m map[string]any) {
	t.Helper()
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "pyisolate.json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// secRunResult is a finished command.
type secRunResult struct {
	stdout, stderr []byte
	code           int // exit status; -1 when it did not start or timed out
	err            error
	elapsed        time.Duration
}

func (r secRunResult) String() string {
	return fmt.Sprintf("exit %d (err %v)\nstdout:\n%s\nstderr:\n%s", r.code, r.err, r.stdout, r.stderr)
}

// secExec runs a command with a timeout and returns its output and status.
// The child gets only stdio and extra: secSetup marks every other
// descriptor of the test process close-on-exec.
// extra are passed as descriptors 3, 4, ... (see secStrayFiles).
func secExec(timeout time.Duration, cred *syscall.Credential, extra []*os.File, argv ...string) secRunResult {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	cmd.ExtraFiles = extra
	// Kill the whole process group on timeout.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	res := secRunResult{stdout: stdout.Bytes(), stderr: stderr.Bytes(), err: err, elapsed: time.Since(start), code: -1}
	if cmd.ProcessState != nil {
		res.code = cmd.ProcessState.ExitCode()
	}
	if ctx.Err() != nil {
		res.code = -1
		res.err = fmt.Errorf("timed out after %v", timeout)
	}
	return res
}

// secRunPyisolate runs `pyisolate run --root fx.root --id id fx.bundle [-- cmd]`.
func secRunPyisolate(tools *secTools, fx *secFixture, id string, timeout time.Duration, cmd ...string) secRunResult {
	argv := []string{tools.pyisolate, "run", "--root", fx.root, "--id", id, fx.bundle}
	if len(cmd) > 0 {
		argv = append(append(argv, "--"), cmd...)
	}
	return secExec(timeout, nil, fx.strayFiles(), argv...)
}

// secID makes a container id unique to this test process.
func secID(name string) string {
	return fmt.Sprintf("%s-%d-%d", name, os.Getpid(), time.Now().UnixNano()%1e9)
}

// ---- runc with its default spec ----

// secRuncDefaultBundle writes a bundle with `runc spec`'s default config.json
// (only terminal=false and args changed) and a rootfs holding the static
// probe at /probe.
func secRuncDefaultBundle(t testing.TB, tools *secTools, dir string, args []string) {
	t.Helper()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := secCopyFile(tools.probe, filepath.Join(rootfs, "probe"), 0o755); err != nil {
		t.Fatal(err)
	}
	if r := secExec(30*time.Second, nil, nil, "runc", "spec", "--bundle", dir); r.code != 0 {
		t.Fatalf("runc spec: %s", r)
	}
	path := filepath.Join(dir, "config.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	proc := cfg["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = args
	if b, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// secRunOCI runs `RUNTIME --root state run --bundle dir id` and deletes the
// container afterwards whatever happened.
func secRunOCI(runtimeArgv []string, state, dir, id string, timeout time.Duration, extra []*os.File) secRunResult {
	argv := append(append([]string{}, runtimeArgv...), "--root", state, "run", "--bundle", dir, id)
	r := secExec(timeout, nil, extra, argv...)
	del := append(append([]string{}, runtimeArgv...), "--root", state, "delete", "-f", id)
	secExec(30*time.Second, nil, nil, del...)
	return r
}

// ---- bwrap with pyisolate's arguments ----

// secBwrapSystemPaths is SANDBOX_SYSTEM_PATHS of pyisolate
// (Comfy-Org/pyisolate, pyisolate/_internal/sandbox.py).
var secBwrapSystemPaths = []string{
	"/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/opt",
	"/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
	"/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/resolv.conf", "/etc/hosts",
	"/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/localtime", "/etc/timezone",
}

// secBwrapArgs is the bwrap command line pyisolate builds
// (build_bwrap_command in Comfy-Org/pyisolate pyisolate/_internal/sandbox.py)
// for restriction model "none", no GPU, network off: --unshare-user
// --unshare-pid --new-session --die-with-parent --proc /proc --dev /dev
// --tmpfs /tmp, --ro-bind of the system allow list, the venv and the module,
// --unshare-net, --bind /dev/shm /dev/shm, the writable paths, then the
// command. Left out: the ro-binds of the host's site-packages, the pyisolate
// and ComfyUI package directories and the UDS directory (there is no
// pyisolate installation here; they only add read-only or socket binds) and
// the --setenv list.
func secBwrapArgs(module, venv string, writable []string, cmd []string) []string {
	a := []string{"bwrap", "--unshare-user", "--unshare-pid", "--new-session", "--die-with-parent",
		"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"}
	for _, p := range secBwrapSystemPaths {
		if _, err := os.Stat(p); err == nil {
			a = append(a, "--ro-bind", p, p)
		}
	}
	a = append(a, "--ro-bind", venv, venv, "--ro-bind", module, module, "--unshare-net")
	if _, err := os.Stat("/dev/shm"); err == nil {
		a = append(a, "--bind", "/dev/shm", "/dev/shm")
	}
	for _, p := range writable {
		a = append(a, "--bind", p, p)
	}
	return append(a, cmd...)
}

// secBwrapCred runs bwrap as nobody: pyisolate runs bwrap as the (unprivileged)
// user running ComfyUI. Run as root, bwrap would keep every capability in
// its user namespace.
var secBwrapCred = &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}

// ---- leak checks ----

// secCheckNoLeaks fails t when anything of container id is left: state
// under root (beyond the empty reserved rootfs/, groups/, locks/ and binds/ directories),
// mounts naming root or the fixture's base directory, cgroup directories
// named id, or processes whose command line names id or base.
func secCheckNoLeaks(t testing.TB, root, base, id string) {
	t.Helper()
	for _, l := range secLeaks(root, base, id) {
		t.Errorf("leak after container %s: %s", id, l)
	}
}

// secProfileCache is detect.ProfileCacheFile: the host profile `pyisolate
// run` caches under its root, which is not a container's state.
const secProfileCache = "host-profile.json"

func secLeaks(root, base, id string) []string {
	var leaks []string
	// State.
	if ents, err := os.ReadDir(root); err == nil {
		for _, e := range ents {
			p := filepath.Join(root, e.Name())
			if e.Name() == "host-profile.json" && e.Type().IsRegular() {
				continue // the runtime's cache of host detection, not a container's
			}
			if (e.Name() == "rootfs" || e.Name() == "groups" || e.Name() == "locks" || e.Name() == "binds") && e.IsDir() {
				if sub, _ := os.ReadDir(p); len(sub) == 0 {
					continue
				}
				sub, _ := os.ReadDir(p)
				for _, s := range sub {
					leaks = append(leaks, "state left: "+filepath.Join(p, s.Name()))
				}
				continue
			}
			if e.Name() == secProfileCache {
				continue // the host profile cache lives as long as the root
			}
			leaks = append(leaks, "state left: "+p)
		}
	}
	// Mounts.
	if b, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if (root != "" && strings.Contains(l, root)) || (base != "" && strings.Contains(l, base)) ||
				strings.Contains(l, id) {
				leaks = append(leaks, "mount left: "+l)
			}
		}
	}
	// Cgroups.
	for _, d := range secCgroupDirs(id) {
		leaks = append(leaks, "cgroup left: "+d)
	}
	// Processes.
	procs, _ := filepath.Glob("/proc/[0-9]*")
	self := strconv.Itoa(os.Getpid())
	for _, p := range procs {
		if filepath.Base(p) == self {
			continue
		}
		cl, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || len(cl) == 0 {
			continue
		}
		s := string(bytes.ReplaceAll(cl, []byte{0}, []byte{' '}))
		if strings.Contains(s, id) || (base != "" && strings.Contains(s, base)) {
			leaks = append(leaks, fmt.Sprintf("process left: pid %s: %s", filepath.Base(p), s))
		}
	}
	return leaks
}

// secCgroupDirs lists the directories named id (or containing it) under
// every hierarchy of /sys/fs/cgroup, four levels deep at most.
func secCgroupDirs(id string) []string {
	var found []string
	hier, _ := filepath.Glob("/sys/fs/cgroup/*")
	if len(hier) == 0 {
		hier = []string{"/sys/fs/cgroup"}
	}
	for _, h := range hier {
		if st, err := os.Lstat(h); err != nil || !st.IsDir() {
			continue // symlinks such as cpu -> cpu,cpuacct
		}
		depth0 := strings.Count(h, "/")
		filepath.WalkDir(h, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			if strings.Count(p, "/")-depth0 > 4 {
				return filepath.SkipDir
			}
			if strings.Contains(d.Name(), id) {
				found = append(found, p)
				return filepath.SkipDir
			}
			return nil
		})
	}
	return found
}

// secUnmountUnder detaches every mount at or below dir, deepest first.
func secUnmountUnder(dir string) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var points []string
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	for i := len(points) - 1; i >= 0; i-- {
		unix.Unmount(points[i], unix.MNT_DETACH)
	}
}

// secLookPath reports whether a program is installed.
func secLookPath(name string) (string, bool) {
	p, err := exec.LookPath(name)
	return p, err == nil
}
