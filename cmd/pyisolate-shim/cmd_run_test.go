package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
)

// cliEnv makes the re-executed test binary act as the pyisolate CLI.
const cliEnv = "PYISOLATE_TEST_AS_CLI"

// The test binary doubles as the container init (libcontainer re-executes it
// as "<binary> init") and, with cliEnv set, as the CLI itself, so that a test
// can SIGKILL a running `pyisolate run`. The main goroutine stays on the
// main thread (see runtime's lifecycle tests for why).
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		containerInit()
	}
	if os.Getenv(cliEnv) == "1" {
		os.Exit(cliMain(os.Args[1:]))
	}
	goruntime.LockOSThread()
}

func TestParseSignal(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want syscall.Signal
		bad  bool
	}{
		{in: "KILL", want: unix.SIGKILL},
		{in: "SIGKILL", want: unix.SIGKILL},
		{in: "kill", want: unix.SIGKILL},
		{in: "9", want: unix.SIGKILL},
		{in: "TERM", want: unix.SIGTERM},
		{in: "usr1", want: unix.SIGUSR1},
		{in: "0", want: 0},
		{in: "-1", bad: true},
		{in: "65", bad: true},
		{in: "NOPE", bad: true},
		{in: "", bad: true},
	} {
		got, err := parseSignal(tc.in)
		if (err != nil) != tc.bad || (!tc.bad && got != tc.want) {
			t.Errorf("parseSignal(%q) = %v, %v", tc.in, got, err)
		}
	}
}

func TestNewID(t *testing.T) {
	for _, name := range []string{"hello", "a b/c", "..", "", strings.Repeat("x", 255)} {
		id := newID(name)
		if err := checkIDChars(id); err != nil || id == newID(name) {
			t.Errorf("newID(%q) = %q (%v)", name, id, err)
		}
		if err := runtime.ValidateID(id); err != nil {
			t.Errorf("newID(%q) = %q: %v", name, id, err)
		}
	}
}

func checkIDChars(id string) error {
	if strings.HasPrefix(id, ".") {
		return fmt.Errorf("leading dot")
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-.+", r)) {
			return fmt.Errorf("bad char %q", r)
		}
	}
	return nil
}

// cli runs the CLI in a child process (the re-executed test binary) and
// returns its exit status, stdout and stderr.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	cmd := cliCommand(args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("pyisolate %v: %v", args, err)
		}
		code = ee.ExitCode()
	}
	return code, stdout.String(), stderr.String()
}

func cliCommand(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	return cmd
}

func TestCLIUsageErrors(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken")
	os.Mkdir(broken, 0o755)
	os.WriteFile(filepath.Join(broken, "config.json"), []byte(`{"ociVersion": "1.0.2",`), 0o644)
	state := filepath.Join(dir, "state") // must never be made
	long := strings.Repeat("a", 1000)
	for _, tc := range []struct {
		name string
		args []string
		want string // in the single stderr line
	}{
		{"no bundle", []string{"run"}, "no bundle given"},
		{"bad flag", []string{"run", "--bogus", "x"}, "bogus"},
		{"missing bundle", []string{"run", filepath.Join(dir, "nope")}, "nope"},
		{"empty bundle", []string{"run", dir}, "config.json"},
		{"broken config", []string{"run", broken}, "config.json"},
		{"ps argument", []string{"ps", "x"}, "unexpected argument"},
		{"kill signal", []string{"kill", "x", "NOSUCH"}, "unknown signal"},
		{"kill no id", []string{"kill"}, "want ID"},
		{"delete no id", []string{"delete"}, "want one container ID"},
		// Bad ids and groups: exit 2 naming the flag and the rule, before
		// the bundle is even read (dir has neither file).
		{"run id slash", []string{"run", "--root", state, "--id", "a/b", dir}, `--id: container id "a/b" contains '/': only letters`},
		{"run id dotdot", []string{"run", "--root", state, "--id", "..", dir}, `--id: container id ".." is not allowed`},
		{"run id too long", []string{"run", "--root", state, "--id", long, dir}, "--id: container id is 1000 characters long, at most 128 are allowed"},
		{"run group slash", []string{"run", "--root", state, "--group", "a/b", dir}, `--group: "a/b" contains '/'`},
		{"run group dotdot", []string{"run", "--root", state, "--group", "..", dir}, `--group: ".." must not start with '.'`},
		{"run group too long", []string{"run", "--root", state, "--group", long, dir}, "--group: \"" + long[:16] + "\"... is 1000 characters long, at most 64 are allowed"},
		{"run group plus", []string{"run", "--root", state, "--group", "a+b", dir}, `--group: "a+b" contains '+'`},
		{"spec id", []string{"spec", "--root", state, "--bundle", dir, "--id", "a/b"}, "spec: --id: container id"},
		{"spec group", []string{"spec", "--root", state, "--bundle", dir, "--group", "../g"}, "spec: --group:"},
		{"kill bad id", []string{"kill", "--root", state, "a/b"}, "kill: ID: container id"},
		{"kill long id", []string{"kill", "--root", state, long}, "at most 128"},
		{"delete bad id", []string{"delete", "--root", state, ".."}, "delete: ID: container id"},
		{"shm path group", []string{"shm", "path", "--root", state, "--join", "--group", "../g"}, "shm path: --group:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := cli(t, tc.args...)
			if code != exitUsage || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, stderr, exitUsage, tc.want)
			}
			if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("stderr has more than one line: %q", stderr)
			}
			if _, err := os.Stat(state); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the state root was made (%v): something was done before the input was checked", err)
			}
		})
	}
}

// TestCLIHelpOnce: -h and --help of every verb and subcommand print the
// usage exactly once, on stdout, and exit 0; a bad flag prints one line on
// stderr and no usage. `run --help` used to print its usage twice.
func TestCLIHelpOnce(t *testing.T) {
	verbs := [][]string{{"shm", "ls"}, {"shm", "gc"}, {"shm", "path"}, {"hook", "cdi"}, {"hook", "shm"}}
	for name := range commands {
		verbs = append(verbs, []string{name})
	}
	for _, verb := range verbs {
		for _, help := range []string{"-h", "--help"} {
			args := append(slices.Clone(verb), help)
			t.Run(strings.Join(args, " "), func(t *testing.T) {
				code, stdout, stderr := cli(t, args...)
				if code != 0 || stderr != "" {
					t.Errorf("exit %d, stderr %q; want 0 and nothing", code, stderr)
				}
				if n := strings.Count(stdout, "Usage: pyisolate "+verb[0]); n != 1 {
					t.Errorf("usage printed %d times:\n%s", n, stdout)
				}
			})
		}
		if verb[0] == "shm" && len(verb) == 1 || verb[0] == "hook" && len(verb) == 1 {
			continue // no flags of their own: a flag is an unknown subcommand
		}
		args := append(slices.Clone(verb), "--no-such-flag")
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			code, stdout, stderr := cli(t, args...)
			if code != exitUsage || stdout != "" || strings.Count(strings.TrimSpace(stderr), "\n") != 0 ||
				!strings.Contains(stderr, "no-such-flag") {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, nothing, one line", code, stdout, stderr, exitUsage)
			}
		})
	}
}

// TestCLINonRegularBundleFiles: a FIFO named pyisolate.json or config.json
// makes spec and run exit 2 at once with one line naming the file, instead
// of hanging in open(2).
func TestCLINonRegularBundleFiles(t *testing.T) {
	for _, file := range []string{"pyisolate.json", "config.json"} {
		bundle := t.TempDir()
		fifo := filepath.Join(bundle, file)
		if err := unix.Mkfifo(fifo, 0o644); err != nil {
			t.Fatal(err)
		}
		for _, args := range [][]string{
			{"spec", "--root", t.TempDir(), "--bundle", bundle},
			{"run", "--root", t.TempDir(), bundle},
		} {
			t.Run(args[0]+" "+file, func(t *testing.T) {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				cmd := exec.CommandContext(ctx, os.Args[0], args...)
				cmd.Env = append(os.Environ(), cliEnv+"=1")
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				err := cmd.Run()
				if ctx.Err() != nil {
					t.Fatalf("pyisolate %s hangs on a FIFO %s", args[0], file)
				}
				var ee *exec.ExitError
				if !errors.As(err, &ee) || ee.ExitCode() != exitUsage {
					t.Fatalf("exit %v, stderr %q; want %d", err, stderr.String(), exitUsage)
				}
				line := strings.TrimSpace(stderr.String())
				if strings.Contains(line, "\n") || !strings.Contains(line, fifo+": not a regular file (it is a FIFO)") {
					t.Errorf("stderr %q: want one line naming %s and the rule", line, fifo)
				}
			})
		}
	}
}

// e2e holds a state root and an extension bundle for CLI tests that run
// real containers.
type e2e struct {
	root, bundle string
}

func newE2E(t *testing.T, limits string) *e2e {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("CLI end-to-end tests run real containers and need root")
	}
	root, err := os.MkdirTemp("/run", "pyisolate-clitest-")
	if err != nil {
		t.Fatal(err)
	}
	// Not under /tmp: the sandbox mounts a private /tmp over it.
	dir, err := os.MkdirTemp("/var/tmp", "pyisolate-clitest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	module := filepath.Join(dir, "ext")
	bundle := filepath.Join(dir, "bundle")
	for _, d := range []string{module, bundle} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for name, text := range map[string]string{"__init__.py": "", "__main__.py": "print('ext ran')\n"} {
		if err := os.WriteFile(filepath.Join(module, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	manifest := fmt.Sprintf(`{"name": "clitest", "module_path": %q, "python": "/usr/bin/python3",
		"sandbox": {"network": false}, "limits": {%s}}`, module, limits)
	if err := os.WriteFile(filepath.Join(bundle, "pyisolate.json"), []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &e2e{root: root, bundle: bundle}
	t.Cleanup(func() {
		e.assertClean(t)
		os.RemoveAll(root)
	})
	return e
}

// assertClean checks that nothing is left of the containers under e.root:
// state, rootfs, mounts, cgroups, processes.
func (e *e2e) assertClean(t *testing.T) {
	t.Helper()
	list, err := (&runtime.Runtime{Root: e.root}).List()
	if err != nil || len(list) != 0 {
		t.Errorf("containers left: %+v, %v", list, err)
	}
	if ents, _ := os.ReadDir(filepath.Join(e.root, "rootfs")); len(ents) != 0 {
		t.Errorf("rootfs left: %v", ents)
	}
	for _, f := range []string{"/proc/self/mountinfo", "/proc/1/mountinfo"} {
		if mi, _ := os.ReadFile(f); bytes.Contains(mi, []byte(e.root)) {
			t.Errorf("mounts of %s left in %s", e.root, f)
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cg, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cgroup"))
		if !bytes.Contains(cg, []byte("/pyisolate/clitest-")) {
			continue
		}
		// An orphaned init killed by delete is a zombie until the
		// machine's init reaps it: it holds nothing but its pid.
		if st, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "stat")); isZombie(st) {
			continue
		}
		t.Errorf("process %s left in %s", p.Name(), cg)
	}
	matches, _ := filepath.Glob("/sys/fs/cgroup/*/pyisolate/clitest-*")
	matches2, _ := filepath.Glob("/sys/fs/cgroup/pyisolate/clitest-*")
	if m := append(matches, matches2...); len(m) > 0 {
		t.Errorf("cgroups left: %v", m)
	}
}

func TestCLIRun(t *testing.T) {
	e := newE2E(t, `"memory": "64Mi", "pids": 32`)
	for _, tc := range []struct {
		name   string
		cmd    []string
		code   int
		stdout string
		stderr string
	}{
		{name: "module", code: 0, stdout: "ext ran\n"},
		{name: "exit code", cmd: []string{"sh", "-c", "echo hi; exit 3"}, code: 3, stdout: "hi\n"},
		{name: "killed", cmd: []string{"sh", "-c", "sh -c 'kill -KILL $$'; exit $?"}, code: 137},
		{name: "oom", cmd: []string{"/usr/bin/python3", "-c", "b = bytearray(300 << 20)"}, code: 137,
			stderr: "out of memory (limit 64 MiB)"},
		{name: "no binary", cmd: []string{"/no/such/binary"}, code: exitRuntime, stderr: "/no/such/binary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"run", "--root", e.root, e.bundle}
			if tc.cmd != nil {
				args = append(append(args, "--"), tc.cmd...)
			}
			code, stdout, stderr := cli(t, args...)
			if code != tc.code || stdout != tc.stdout || !strings.Contains(stderr, tc.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, stdout, stderr, tc.code, tc.stdout, tc.stderr)
			}
		})
	}
	// A bad manifest: one line, exit 2, nothing made.
	os.WriteFile(filepath.Join(e.bundle, "pyisolate.json"), []byte(`{"name": "x", "module_path": "/etc"}`), 0o644)
	code, _, stderr := cli(t, "run", "--root", e.root, e.bundle)
	if code != exitUsage || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "module_path") {
		t.Errorf("bad manifest: exit %d, stderr %q", code, stderr)
	}
}

// TestCLIKilledRun SIGKILLs a running `pyisolate run`: its container dies
// with it (as under bwrap --die-with-parent) and the next `ps` reclaims what
// it left, so `ps` no longer lists it and `delete` finds nothing.
func TestCLIKilledRun(t *testing.T) {
	e := newE2E(t, `"pids": 16`)
	run := cliCommand("run", "--root", e.root, "--id", "clitest-killed", e.bundle, "--", "sleep", "60")
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	var list []runtime.State
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		code, out, stderr := cli(t, "ps", "--root", e.root, "--json")
		if code != 0 {
			t.Fatalf("ps: %d %s", code, stderr)
		}
		if err := json.Unmarshal([]byte(out), &list); err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 && list[0].Status == runtime.StatusRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("container not running: %s", out)
		}
	}
	initPID := list[0].InitPID
	// Signal 0 is the liveness check: 0 while the init lives.
	if code, _, stderr := cli(t, "kill", "--root", e.root, "clitest-killed", "0"); code != 0 || stderr != "" {
		t.Errorf("kill 0 of a running container: %d %q", code, stderr)
	}
	run.Process.Kill()
	run.Wait()

	for deadline := time.Now().Add(10 * time.Second); unix.Kill(initPID, 0) == nil; time.Sleep(20 * time.Millisecond) {
		if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", initPID)); err == nil && isZombie(stat) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container's init (pid %d) outlived its killed runner by 10 s", initPID)
		}
	}
	code, out, _ := cli(t, "ps", "--root", e.root)
	if code != 0 || strings.Contains(out, "clitest-killed") {
		t.Errorf("ps after SIGKILL of run: want the orphan reclaimed; %d %q", code, out)
	}
	if code, _, stderr := cli(t, "kill", "--root", e.root, "clitest-killed", "0"); code != 1 || !strings.Contains(stderr, "clitest-killed") {
		t.Errorf("kill 0 of a reclaimed container: %d %q, want 1 naming it", code, stderr)
	}
	if code, _, _ := cli(t, "delete", "--root", e.root, "clitest-killed"); code == 0 {
		t.Error("delete of a reclaimed container succeeded")
	}
}

// isZombie reports whether a /proc/PID/stat line is a zombie's.
func isZombie(stat []byte) bool {
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && len(stat) > i+2 && stat[i+2] == 'Z'
}

// TestCLIShmPressure: an extension that fills its group's /dev/shm past 90%
// of shm_size gets one warning line from `run` naming it as the owner.
func TestCLIShmPressure(t *testing.T) {
	e := newE2E(t, `"shm_size": "4Mi"`)
	fill := "import time\nf = open('/dev/shm/big', 'wb'); f.write(b'x' * (3900 << 10)); f.flush()\ntime.sleep(4)\n"
	code, _, stderr := cli(t, "run", "--root", e.root, "--id", "clitest-shm", e.bundle, "--", "/usr/bin/python3", "-c", fill)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if n := strings.Count(stderr, "pyisolate: warning: shm group clitest:"); n != 1 || !strings.Contains(stderr, "largest owners: clitest-shm") {
		t.Errorf("want one pressure warning naming clitest-shm, stderr:\n%s", stderr)
	}
}

// TestCLIDefaultLimits: a manifest without limits runs with the stated
// defaults, read from the container's cgroup on the host: pids.max 2048,
// a memory limit of half the host's memory, CPU shares 1024 (weight 100 on
// cgroup v2), and a private /tmp of 1 GiB. Before, pids.max was "max" and
// there was no memory limit.
func TestCLIDefaultLimits(t *testing.T) {
	e := newE2E(t, "")
	code, stdout, stderr := cli(t, "run", "--root", e.root, "--id", "clitest-tmp", e.bundle, "--",
		"/bin/sh", "-c", `grep " /tmp " /proc/self/mounts`)
	if code != 0 || !strings.Contains(stdout, "size=1048576k") {
		t.Errorf("/tmp: exit %d, %q %q; want a tmpfs of size=1048576k", code, stdout, stderr)
	}

	const id = "clitest-defaults"
	run := cliCommand("run", "--root", e.root, "--id", id, e.bundle, "--", "sleep", "60")
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cli(t, "kill", "--root", e.root, id, "KILL")
		run.Wait()
	}()
	v1 := func(ctrl, file string) string { return filepath.Join("/sys/fs/cgroup", ctrl, "pyisolate", id, file) }
	v2 := func(file string) string { return filepath.Join("/sys/fs/cgroup/pyisolate", id, file) }
	pidsMax := v1("pids", "pids.max")
	if _, err := os.Stat("/sys/fs/cgroup/cgroup.controllers"); err == nil {
		pidsMax = v2("pids.max")
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if code, _, _ := cli(t, "kill", "--root", e.root, id, "0"); code == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("container did not start")
		}
	}
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Errorf("%v", err)
		}
		return strings.TrimSpace(string(b))
	}
	var kb int64
	for _, line := range strings.Split(read("/proc/meminfo"), "\n") {
		if _, err := fmt.Sscanf(line, "MemTotal: %d kB", &kb); err == nil {
			break
		}
	}
	wantMem := strconv.FormatInt(kb*1024/2&^(1<<20-1), 10)
	want := map[string]string{pidsMax: "2048"}
	if pidsMax == v2("pids.max") {
		want[v2("memory.max")] = wantMem
		want[v2("cpu.weight")] = "100"
	} else {
		want[v1("memory", "memory.limit_in_bytes")] = wantMem
		want[v1("cpu", "cpu.shares")] = "1024"
	}
	for p, w := range want {
		if got := read(p); got != w {
			t.Errorf("%s = %q, want %q", p, got, w)
		}
	}
}

// TestCLIOversizeShm: shm_size larger than the host's memory exits 2 with
// one line naming limits.shm_size and the cap, from run (before the
// group's tmpfs is made) and from spec. Before, run mounted a 7 EiB tmpfs.
func TestCLIOversizeShm(t *testing.T) {
	e := newE2E(t, `"shm_size": "8000000T"`)
	for _, args := range [][]string{
		{"run", "--root", e.root, e.bundle},
		{"spec", "--root", e.root, "--bundle", e.bundle},
	} {
		code, stdout, stderr := cli(t, args...)
		if code != exitUsage || stdout != "" || strings.Count(strings.TrimSpace(stderr), "\n") != 0 ||
			!strings.Contains(stderr, "limits.shm_size: 8000000T is larger than this host's memory (") {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want %d and one line naming limits.shm_size", args[0], code, stdout, stderr, exitUsage)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(e.root, "groups")); len(ents) != 0 {
		t.Errorf("a group was made: %v", ents)
	}
}
