package test

// Podman 4.3 (Debian), rootful, driving pyisolate-runc with --runtime: its
// own storage, run and temporary directories, the cgroupfs manager, file
// events, no network, and a containers.conf whose default_ulimits fit this
// machine (Podman's default nofile, 1048576, is above the hard limit of
// small VMs such as CI's, and an nproc at the hard limit is refused there
// too).

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// ociPodman is Podman with private directories.
type ociPodman struct {
	t    *testing.T
	dir  string
	args []string
	env  []string
}

// ociNewPodman returns rootful Podman with the pyisolate runtime at bin and
// registers the clean-up of everything it made.
func ociNewPodman(t *testing.T, bin string) *ociPodman {
	return ociNewPodmanAs(t, bin, -1)
}

// ociNewPodmanAs is ociNewPodman run by the user uid (its group the same
// number) through setpriv, rootless Podman, or by root when uid < 0. A
// user's Podman gets its own HOME and XDG_RUNTIME_DIR in the test's
// directory, which is theirs; the pause process that holds its user
// namespace is killed at the end.
func ociNewPodmanAs(t *testing.T, bin string, uid int) *ociPodman {
	t.Helper()
	podman, err := exec.LookPath("podman")
	if err != nil {
		t.Skip("podman is not installed (apt-get install podman)")
	}
	dir, err := os.MkdirTemp("/tmp", "ocp-")
	if err != nil {
		t.Fatal(err)
	}
	var prefix, userEnv []string
	if uid >= 0 {
		for _, d := range []string{"home", "xdg"} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
				t.Fatal(err)
			}
		}
		if err := filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, uid, uid)
		}); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		id := strconv.Itoa(uid)
		prefix = []string{"setpriv", "--reuid", id, "--regid", id, "--clear-groups"}
		userEnv = []string{"HOME=" + filepath.Join(dir, "home"), "XDG_RUNTIME_DIR=" + filepath.Join(dir, "xdg"), "USER="}
	}
	shmLock := "/dev/shm/libpod_lock" // Podman's shm lock manager
	if uid >= 0 {
		shmLock = fmt.Sprintf("/dev/shm/libpod_rootless_lock_%d", uid)
	}
	var had []string
	for _, p := range []string{"/var/lib/containers", "/sys/fs/cgroup/pids/libpod_parent", shmLock} {
		if _, err := os.Stat(p); err == nil {
			had = append(had, p)
		}
	}
	var nofile, nproc unix.Rlimit
	_ = unix.Getrlimit(unix.RLIMIT_NOFILE, &nofile)
	_ = unix.Getrlimit(unix.RLIMIT_NPROC, &nproc)
	conf := fmt.Sprintf("[containers]\ndefault_ulimits = [\"nofile=%d:%d\", \"nproc=%d:%d\"]\n",
		min(nofile.Max, 20000), min(nofile.Max, 20000), min(nproc.Max, 4096), min(nproc.Max, 4096))
	if err := os.WriteFile(filepath.Join(dir, "containers.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &ociPodman{t: t, dir: dir, env: append(append(os.Environ(), userEnv...), "CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"))}
	p.args = append(prefix, podman, "--root", filepath.Join(dir, "storage"), "--runroot", filepath.Join(dir, "run"),
		"--tmpdir", filepath.Join(dir, "tmp"), "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
		"--events-backend", "file", "--runtime", bin)
	t.Cleanup(func() {
		p.run("rm", "-af", "-t", "0")
		p.run("rmi", "-af")
		// A rootless runtime's groups live in a private directory of the
		// host's /dev/shm, linked from its state root.
		if target, err := os.Readlink(filepath.Join(dir, "xdg", ociName, "groups")); err == nil && strings.HasPrefix(target, "/dev/shm/") {
			_ = os.RemoveAll(target)
		}
		if b, err := os.ReadFile(filepath.Join(dir, "tmp", "pause.pid")); err == nil {
			// Rootless Podman's pause process, holding its user namespace.
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		for _, m := range ctrdMountsUnder(dir) {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
		if !contains(had, "/var/lib/containers") {
			_ = os.RemoveAll("/var/lib/containers")
		}
		if !contains(had, "/sys/fs/cgroup/pids/libpod_parent") {
			ociRemoveCgroups(t, "libpod_parent") // conmon's
		}
		if !contains(had, shmLock) {
			_ = os.Remove(shmLock)
		}
	})
	return p
}

func contains(xs []string, x string) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// run runs podman with args.
func (p *ociPodman) run(args ...string) ociResult {
	cmd := exec.Command(p.args[0], append(p.args[1:], args...)...)
	cmd.Env = p.env
	return ociClientRun(cmd)
}

func (p *ociPodman) must(want int, args ...string) ociResult {
	p.t.Helper()
	r := p.run(args...)
	if r.Code != want {
		p.t.Fatalf("podman %s: want exit %d, got %s", strings.Join(args, " "), want, r)
	}
	return r
}

// TestOCIPodman runs containers through rootful Podman 4.3 with --runtime
// pyisolate-runc: checkLifecycle, and --memory.
func TestOCIPodman(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("rootful Podman end-to-end tests need root")
	}
	if testing.Short() {
		t.Skip("Podman end-to-end tests (-short)")
	}
	p := ociNewPodman(t, ociBin(t))
	img := p.importBusybox()
	p.checkLifecycle(img, func(run []string) {
		if r := p.must(0, append(run, "--memory", "64m", img, "sh", "-c",
			"cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max")...); strings.TrimSpace(r.Stdout) != "67108864" {
			t.Errorf("--memory 64m: the container's limit is %q", r.Stdout)
		}
	})
}

// importBusybox imports the busybox image the Podman tests run.
func (p *ociPodman) importBusybox() string {
	tarball := ociBusyboxTar(p.t, p.dir)
	if err := os.Chmod(tarball, 0o644); err != nil { // a rootless Podman reads it
		p.t.Fatal(err)
	}
	const img = "pyisolate-busybox:test"
	p.must(0, "import", tarball, img)
	return img
}

// checkLifecycle runs what every Podman test checks on img: output and exit
// statuses (127 for a missing command), extra (given the run command line),
// a policy refusal in our words, podman exec, podman stop, podman run -it
// through a pty (conmon's console socket), and two extensions of one group
// (manifests in annotations) sharing the group's /dev/shm.
func (p *ociPodman) checkLifecycle(img string, extra func(run []string)) {
	t := p.t
	t.Helper()
	run := []string{"run", "--rm", "--network", "none"}
	if r := p.must(0, append(run, img, "sh", "-c", "echo hello; echo err >&2")...); r.Stdout != "hello\n" || r.Stderr != "err\n" {
		t.Errorf("podman run output: %s", r)
	}
	p.must(3, append(run, img, "sh", "-c", "exit 3")...)
	p.must(127, append(run, img, "nosuchcmd")...)
	extra(run)
	if r := p.run(append(run, "--privileged", img, "true")...); r.Code == 0 || !strings.Contains(r.Stderr, "refused by policy hardened") {
		t.Errorf("--privileged under the hardened policy: %s", r)
	}
	p.must(0, "run", "-d", "--name", "oci-p1", "--network", "none", img, "sleep", "1000")
	if r := p.must(4, "exec", "oci-p1", "sh", "-c", "echo in-exec; exit 4"); r.Stdout != "in-exec\n" {
		t.Errorf("podman exec output: %s", r)
	}
	p.must(0, "stop", "-t", "1", "oci-p1")
	if r := p.must(0, "inspect", "-f", "{{.State.ExitCode}}", "oci-p1"); strings.TrimSpace(r.Stdout) != "137" {
		t.Errorf("after podman stop: exit code %s", r.Stdout)
	}
	p.must(0, "rm", "oci-p1")
	out, err := ociPtyRun(t, append(p.args, "run", "-it", "--rm", "--network", "none", img,
		"sh", "-c", "test -t 0 && echo tty-yes; read x; echo got-$x"), p.env, "typed\r")
	if err != nil || !strings.Contains(out, "tty-yes") || !strings.Contains(out, "got-typed") {
		t.Errorf("podman run -it: %v, output %q, want tty-yes and got-typed", err, out)
	}
	// Extensions (manifests in annotations) of one group run in
	// their sandboxes and share the group's /dev/shm.
	module := filepath.Join(ctrdRepoRoot(t), "examples", "hello", "hello_ext")
	ext := func(name string) []string {
		return []string{"--network", "none", "--annotation", "io.pyisolate.name=" + name,
			"--annotation", "io.pyisolate.module_path=" + module, "--annotation", "io.pyisolate.group=podman-grp"}
	}
	p.must(0, append(append([]string{"run", "-d", "--name", "oci-rga"}, ext("rga")...), img, "sh", "-c",
		"echo from-a > /dev/shm/marker; exec sleep 1000")...)
	want := "CapEff:\t0000000000000000\nfrom-a\nmodule-read-only\n"
	var got ociResult
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if got = p.run(append(append([]string{"run", "--rm"}, ext("rgb")...), img, "sh", "-c",
			"grep ^CapEff: /proc/self/status; cat /dev/shm/marker; touch "+module+"/x 2>/dev/null || echo module-read-only")...); got.Stdout == want {
			break
		}
	}
	if got.Stdout != want {
		t.Errorf("extension b of group podman-grp: %s; want stdout %q", got, want)
	}
	p.must(0, "rm", "-f", "-t", "0", "oci-rga")
	if r := p.must(0, "ps", "-aq"); strings.TrimSpace(r.Stdout) != "" {
		t.Errorf("containers left: %s", r.Stdout)
	}
}

// ociRemoveCgroups removes the cgroup directories /sys/fs/cgroup/*/name
// (and v2's /sys/fs/cgroup/name), children first, that a client daemon made
// and left empty.
func ociRemoveCgroups(t testing.TB, name string) {
	t.Helper()
	tops, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	if _, err := os.Stat("/sys/fs/cgroup/" + name); err == nil {
		tops = append(tops, "/sys/fs/cgroup/"+name)
	}
	for _, top := range tops {
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove cgroup %s: %v", dirs[i], err)
			}
		}
	}
}

// TestOCIPodmanRootless runs containers through rootless Podman 4.3 (the
// user 65534, no /etc/subuid range: one id) with --runtime pyisolate-runc.
// Podman runs the runtime as euid 0 of the user's own user namespace: the
// runtime must see that it is rootless there (state under
// $XDG_RUNTIME_DIR/pyisolate-runc, no host cgroups, no pinning) and still
// apply the hardened policy and its floors.
func TestOCIPodmanRootless(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the rootless Podman test switches to uid 65534: it needs root to start")
	}
	if testing.Short() {
		t.Skip("Podman end-to-end tests (-short)")
	}
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("setpriv (util-linux) is not installed")
	}
	p := ociNewPodmanAs(t, ociBin(t), 65534)
	img := p.importBusybox()
	p.checkLifecycle(img, func(run []string) {
		// The runtime ran as the user's namespace root, with its state in
		// the user's runtime directory.
		state := filepath.Join(p.dir, "xdg", ociName)
		st, err := os.Stat(state)
		if err != nil {
			t.Fatalf("no state root in $XDG_RUNTIME_DIR: %v", err)
		}
		if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 65534 || st.Mode().Perm() != 0o700 {
			t.Errorf("state root %s: uid %d, mode %v; want the user's own 0700 directory", state, sys.Uid, st.Mode().Perm())
		}
		// The hardened policy's floors hold: no_new_privileges, seccomp.
		r := p.must(0, append(run, img, "sh", "-c", "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status")...)
		for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("rootless container status lacks %q:\n%s", want, r.Stdout)
			}
		}
	})
}
