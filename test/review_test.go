package test

// Tests of the outside security review's findings (issue 10) that need real
// containers: a busy container id, a runner killed with SIGKILL.

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
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

// revStartRun starts `pyisolate run` of fx.bundle as id with cmd, its stdout
// piped, and waits until the container printed "ready". The run is killed
// and its container deleted when the test ends.
func revStartRun(t *testing.T, tools *secTools, fx *secFixture, id string, cmd ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	argv := []string{"run", "--root", fx.root, "--id", id, fx.bundle, "--"}
	c := exec.Command(tools.pyisolate, append(argv, cmd...)...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.Process.Kill()
		_, _ = c.Process.Wait()
		secExec(30*time.Second, nil, nil, tools.pyisolate, "delete", "--root", fx.root, "--force", id)
	})
	r := bufio.NewReader(out)
	line := make(chan string, 1)
	go func() {
		l, _ := r.ReadString('\n')
		line <- l
	}()
	select {
	case l := <-line:
		if strings.TrimSpace(l) != "ready" {
			t.Fatalf("first line of the container: %q, want ready; stderr:\n%s", l, stderr.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("container %s did not start in 60 s; stderr:\n%s", id, stderr.String())
	}
	return c, r
}

// revInitPID returns the host pid of container id's init from `pyisolate ps`.
func revInitPID(t *testing.T, tools *secTools, root, id string) int {
	t.Helper()
	res := secExec(30*time.Second, nil, nil, tools.pyisolate, "ps", "--root", root, "--json")
	if res.code != 0 {
		t.Fatalf("ps: %s", res)
	}
	var list []struct {
		ID      string `json:"id"`
		InitPID int    `json:"pid"`
		Status  string `json:"status"`
	}
	if err := json.Unmarshal(res.stdout, &list); err != nil {
		t.Fatalf("ps --json: %v\n%s", err, res.stdout)
	}
	for _, c := range list {
		if c.ID == id {
			return c.InitPID
		}
	}
	t.Fatalf("container %s not in ps: %s", id, res.stdout)
	return 0
}

// A second `run` with the id of a running container fails before it does
// anything: the first keeps its root filesystem, its group and the data in
// the group's shared memory, and runs on to a normal exit.
func TestReviewIDReuse(t *testing.T) {
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	fx := newSecFixture(t, tools)
	writeManifest(t, fx.bundle, fx.secManifest(nil))
	id := secID("reuse")
	first, _ := revStartRun(t, tools, fx, id,
		"/bin/sh", "-c", "trap 'exit 0' TERM; echo kept >/dev/shm/keep; echo ready; sleep 300 & wait")

	shmFile := filepath.Join(fx.root, "groups", "secprobe", "shm", "keep")
	mountpoint := filepath.Join(fx.root, "rootfs", id, "usr")
	for _, p := range []string{shmFile, mountpoint} {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("before the second run: %v", err)
		}
	}
	for i := 0; i < 3; i++ {
		res := secRunPyisolate(tools, fx, id, 60*time.Second, "/bin/true")
		if res.code != 125 || !strings.Contains(string(res.stderr), "in use") {
			t.Errorf("second run with the busy id %s: want exit 125 saying the id is in use, got %s", id, res)
		}
	}
	for _, p := range []string{shmFile, mountpoint} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("the second run damaged the first container: %v", err)
		}
	}
	if pid := revInitPID(t, tools, fx.root, id); pid <= 0 {
		t.Errorf("the first container is no longer running (init pid %d)", pid)
	}
	// The first container still sees its /usr and the group's data.
	pid := revInitPID(t, tools, fx.root, id)
	if b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "root", "dev", "shm", "keep")); err != nil || string(b) != "kept\n" {
		t.Errorf("the first container's /dev/shm/keep: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid), "root", "usr", "bin", "env")); err != nil {
		t.Errorf("the first container's /usr: %v", err)
	}
	// It ends normally: the run forwards SIGTERM to its init.
	if err := first.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- first.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("the first run after SIGTERM: %v (want exit 0)", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the first run did not end after SIGTERM")
	}
	secCheckNoLeaks(t, fx.root, fx.base, id)
}

// `pyisolate run` killed with SIGKILL takes its container with it, as bwrap
// --die-with-parent does: a reader of the run's output gets EOF at once,
// the container's processes are gone, and the next ps reclaims its state.
func TestReviewDieWithParent(t *testing.T) {
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	fx := newSecFixture(t, tools)
	writeManifest(t, fx.bundle, fx.secManifest(nil))
	id := secID("orphan")
	run, out := revStartRun(t, tools, fx, id, "/bin/sh", "-c", "echo ready; sleep 300 & sleep 300; wait")
	pid := revInitPID(t, tools, fx.root, id)
	if err := run.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_, _ = run.Process.Wait()

	eof := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, out)
		eof <- err
	}()
	select {
	case <-eof:
	case <-time.After(15 * time.Second):
		t.Fatal("the run's stdout did not reach EOF within 15 s of its SIGKILL: the container outlived its runner")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := syscall.Kill(pid, 0); err == syscall.ESRCH {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container's init (pid %d) still runs 10 s after its runner was killed", pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The next ps reclaims what the dead run left.
	res := secExec(30*time.Second, nil, nil, tools.pyisolate, "ps", "--root", fx.root)
	if res.code != 0 || strings.Contains(string(res.stdout), id) {
		t.Fatalf("ps after the runner died: want the orphan reclaimed, got %s", res)
	}
	secCheckNoLeaks(t, fx.root, fx.base, id)
	// And its id is free again.
	if res := secRunPyisolate(tools, fx, id, 60*time.Second, "/bin/true"); res.code != 0 {
		t.Fatalf("run with the reclaimed id: %s", res)
	}
	secCheckNoLeaks(t, fx.root, fx.base, id)
}

// The review's symlink race: while runs start, a loop swaps the module
// directory and a writable path with symlinks to /etc (renameat2
// RENAME_EXCHANGE). A run may fail, but none may bind host /etc: each bind
// source is opened once without following symlinks and bound from there.
func TestReviewSymlinkSwapRace(t *testing.T) {
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	fx := newSecFixture(t, tools)
	runs := 300
	if testing.Short() {
		runs = 40
	}
	r := revSwapRace(t, tools, fx, runs)
	t.Log(r)
	for _, l := range r.leaks {
		t.Errorf("a run bound host /etc: %s", l)
	}
	if r.ok == 0 {
		t.Errorf("no run succeeded: the race test exercised nothing")
	}
}

// revRace is the outcome of revSwapRace.
type revRace struct {
	runs, ok, refused, swaps int
	leaks                    []string
}

func (r revRace) String() string {
	return fmt.Sprintf("%d runs against a symlink swap loop (%d swaps): %d ran, %d refused, %d bound host /etc",
		r.runs, r.swaps, r.ok, r.refused, len(r.leaks))
}

// revSwapRace runs fx's bundle runs times while a loop swaps its module and
// writable path with symlinks to /etc, and reports whether any run saw
// /etc's passwd at either path.
func revSwapRace(t testing.TB, tools *secTools, fx *secFixture, runs int) revRace {
	t.Helper()
	race, err := os.MkdirTemp(fx.base, "race-")
	if err != nil {
		t.Fatal(err)
	}
	mod := filepath.Join(race, "mod")
	w := filepath.Join(race, "w")
	for _, d := range []string{mod, w} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(race, 0o755); err != nil {
		t.Fatal(err)
	}
	modLink := filepath.Join(race, "mod-link")
	wLink := filepath.Join(race, "w-link")
	for _, l := range []string{modLink, wLink} {
		if err := os.Symlink("/etc", l); err != nil {
			t.Fatal(err)
		}
	}
	bundle := filepath.Join(race, "bundle")
	if err := os.Mkdir(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	m := fx.secManifest(nil)
	m["module_path"] = mod
	m["sandbox"] = map[string]any{"writable_paths": []string{w}}
	writeManifest(t, bundle, m)

	stop := make(chan struct{})
	swapped := make(chan int, 1)
	go func() {
		n := 0
		defer func() { swapped <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			for _, pair := range [][2]string{{mod, modLink}, {w, wLink}} {
				// Swap, then swap back, leaving the real directory in
				// place most of the time (as the review's loop did).
				if unix.Renameat2(unix.AT_FDCWD, pair[0], unix.AT_FDCWD, pair[1], unix.RENAME_EXCHANGE) == nil {
					n++
					_ = unix.Renameat2(unix.AT_FDCWD, pair[0], unix.AT_FDCWD, pair[1], unix.RENAME_EXCHANGE)
				}
			}
		}
	}()
	check := fmt.Sprintf("for p in %s %s; do test -e $p/passwd && echo LEAK $p; done; true", mod, w)
	r := revRace{runs: runs}
	for i := 0; i < runs; i++ {
		argv := []string{tools.pyisolate, "run", "--root", fx.root, "--id", secID("race"), bundle, "--", "/bin/sh", "-c", check}
		res := secExec(60*time.Second, nil, nil, argv...)
		switch {
		case res.code < 0:
			close(stop)
			<-swapped
			t.Fatalf("run %d: %s", i, res)
		case strings.Contains(string(res.stdout), "LEAK"):
			r.leaks = append(r.leaks, fmt.Sprintf("run %d: %s", i, strings.TrimSpace(string(res.stdout))))
		case res.code == 0:
			r.ok++
		default:
			r.refused++
		}
	}
	close(stop)
	r.swaps = <-swapped
	// Put the directories back for the clean-up.
	for _, pair := range [][2]string{{mod, modLink}, {w, wLink}} {
		if st, err := os.Lstat(pair[0]); err == nil && st.Mode()&os.ModeSymlink != 0 {
			_ = unix.Renameat2(unix.AT_FDCWD, pair[0], unix.AT_FDCWD, pair[1], unix.RENAME_EXCHANGE)
		}
	}
	return r
}

// An extension bundle with a rootfs of its own, owned by root and lying under
// a 0700 directory (any mktemp -d), runs: the sandbox's root, an unprivileged
// host uid, need not walk the path (the runtime stages the rootfs), and the
// runtime makes the mount points libcontainer could not.
func TestReviewRootfsUnderPrivateDir(t *testing.T) {
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	fx := newSecFixture(t, tools)
	private, err := os.MkdirTemp(fx.base, "private-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(private, 0o700); err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(private, "bundle")
	rootfs := filepath.Join(bundle, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		t.Fatal(err)
	}
	// A file of the image, and an escape attempt: a symlink where a mount
	// point must be made must not make the runtime write outside the rootfs.
	if err := os.WriteFile(filepath.Join(rootfs, "image-file"), []byte("from the image\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	outside := filepath.Join(fx.base, "outside")
	if err := os.Mkdir(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	writeManifest(t, bundle, fx.secManifest(nil))
	id := secID("private")
	argv := []string{tools.pyisolate, "run", "--root", fx.root, "--id", id, bundle, "--", "/bin/cat", "/image-file"}
	res := secExec(60*time.Second, nil, nil, argv...)
	if res.code != 0 || string(res.stdout) != "from the image\n" {
		t.Fatalf("run of a bundle under a 0700 directory: %s", res)
	}
	secCheckNoLeaks(t, fx.root, fx.base, id)

	// The image's /lib64 is now a symlink out of the rootfs: the run may
	// fail, but nothing may be created through it.
	_ = os.RemoveAll(filepath.Join(rootfs, "lib64"))
	if err := os.Symlink(outside, filepath.Join(rootfs, "lib64")); err != nil {
		t.Fatal(err)
	}
	id = secID("private")
	argv = []string{tools.pyisolate, "run", "--root", fx.root, "--id", id, bundle, "--", "/bin/true"}
	if res := secExec(60*time.Second, nil, nil, argv...); res.code < 0 {
		t.Fatalf("run with a symlinked mount point: %s", res)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("the runtime wrote through the rootfs's /lib64 symlink: %v", ents)
	}
	secCheckNoLeaks(t, fx.root, fx.base, id)
}

// The group's socket directory is a small tmpfs mounted nosuid, nodev and
// noexec: an extension can neither fill the host's disk through it nor plant
// a setuid program there, and no other host user can reach the group's
// directories.
func TestReviewGroupDir(t *testing.T) {
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	fx := newSecFixture(t, tools)
	for _, p := range revGroupDirProblems(t, tools, fx) {
		t.Error(p)
	}
}

// revGroupDirProblems runs an extension of group secprobe that writes 200
// MiB to /run/pyisolate and runs a program copied there, then checks the
// group's directories from the host as user nobody. It returns what is
// wrong, nil when the channel is closed.
func revGroupDirProblems(t testing.TB, tools *secTools, fx *secFixture) []string {
	t.Helper()
	bundle, err := os.MkdirTemp(fx.base, "groupdir-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	writeManifest(t, bundle, fx.secManifest(nil))
	script := `trap 'exit 0' TERM
dd if=/dev/zero of=/run/pyisolate/big bs=1M count=200 2>/dev/null; echo dd=$?
echo size=$(wc -c </run/pyisolate/big); rm -f /run/pyisolate/big
cp /bin/true /run/pyisolate/t; /run/pyisolate/t 2>/dev/null; echo exec=$?
grep ' /run/pyisolate ' /proc/self/mountinfo | cut -d' ' -f6
echo ready; sleep 300 & wait`
	id := secID("groupdir")
	argv := []string{tools.pyisolate, "run", "--root", fx.root, "--id", id, bundle, "--", "/bin/sh", "-c", script}
	c := exec.Command(argv[0], argv[1:]...)
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = c.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = c.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = c.Process.Kill()
			<-done
		}
	}()
	rd := bufio.NewReader(out)
	var lines []string
	got := make(chan error, 1)
	go func() {
		for {
			l, err := rd.ReadString('\n')
			if err != nil {
				got <- err
				return
			}
			if l = strings.TrimSpace(l); l == "ready" {
				got <- nil
				return
			}
			lines = append(lines, l)
		}
	}()
	select {
	case err := <-got:
		if err != nil {
			return []string{fmt.Sprintf("the extension's output ended early: %q", lines)}
		}
	case <-time.After(60 * time.Second):
		return []string{"the extension did not get ready in 60 s"}
	}
	var problems []string
	all := strings.Join(lines, "\n")
	if !strings.Contains(all, "dd=1") {
		problems = append(problems, fmt.Sprintf("writing 200 MiB to /run/pyisolate did not fail: %q", all))
	}
	for _, l := range lines {
		if size, ok := strings.CutPrefix(l, "size="); ok {
			if n, _ := strconv.Atoi(size); n > 64<<20 {
				problems = append(problems, fmt.Sprintf("/run/pyisolate took %d bytes, more than its 64 MiB", n))
			}
		}
	}
	if !strings.Contains(all, "exec=126") {
		problems = append(problems, fmt.Sprintf("a program copied to /run/pyisolate ran (want exit 126, noexec): %q", all))
	}
	if len(lines) > 0 {
		opts := lines[len(lines)-1]
		for _, o := range []string{"nosuid", "nodev", "noexec"} {
			if !strings.Contains(opts, o) {
				problems = append(problems, fmt.Sprintf("/run/pyisolate mount options %q lack %s", opts, o))
			}
		}
	}
	gdir := filepath.Join(fx.root, "groups", "secprobe")
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Join(gdir, "sock"), &st); err != nil || st.Type != 0x01021994 {
		problems = append(problems, fmt.Sprintf("the socket directory is not a tmpfs (statfs type %#x, %v)", st.Type, err))
	}
	if fi, err := os.Stat(gdir); err != nil || fi.Mode().Perm()&0o007 != 0 {
		problems = append(problems, fmt.Sprintf("group directory %s: mode %v (%v), want no access for others", gdir, fi.Mode(), err))
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	for _, sub := range []string{"sock", "shm"} {
		res := secExec(10*time.Second, nobody, nil, "/bin/sh", "-c", "ls "+filepath.Join(gdir, sub)+" && touch "+filepath.Join(gdir, sub, "planted"))
		if res.code == 0 {
			problems = append(problems, fmt.Sprintf("host user nobody reached the group's %s", sub))
		}
	}
	return problems
}

// revFIFOProblem gives `pyisolate spec` and `run` a bundle whose
// pyisolate.json is a FIFO nobody writes: both must refuse it (exit 2) at
// once instead of blocking. It returns what is wrong, or "".
func revFIFOProblem(t testing.TB, tools *secTools, fx *secFixture) string {
	t.Helper()
	bundle, err := os.MkdirTemp(fx.base, "fifo-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(bundle, "pyisolate.json"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, argv := range [][]string{
		{tools.pyisolate, "spec", "--root", fx.root, "--bundle", bundle},
		{tools.pyisolate, "run", "--root", fx.root, bundle},
	} {
		res := secExec(15*time.Second, nil, nil, argv...)
		if res.code != 2 {
			return fmt.Sprintf("%s of a bundle whose pyisolate.json is a FIFO: exit %d (%v) %s",
				argv[1], res.code, res.err, secFirstLine(string(res.stderr)))
		}
	}
	return ""
}

// secRuntimeChecks are the report's attacks on the runtime rather than from
// inside a sandbox: the symlink race, the group directory as a host write
// and setuid channel, a FIFO as a bundle file. Each is "" when blocked.
func secRuntimeChecks(t testing.TB, tools *secTools, fx *secFixture) []secRuntimeCheck {
	race := revSwapRace(t, tools, fx, 60)
	raceDetail := ""
	if len(race.leaks) > 0 {
		raceDetail = race.String()
	}
	return []secRuntimeCheck{
		{"symlink-swap-race", raceDetail, race.String()},
		{"group-dir-channel", strings.Join(revGroupDirProblems(t, tools, fx), "; "),
			"/run/pyisolate: 64 MiB tmpfs, nosuid,nodev,noexec; group dir root:100000 0710"},
		{"fifo-bundle-file", revFIFOProblem(t, tools, fx), "a FIFO pyisolate.json is refused with exit 2"},
	}
}

// secRuntimeCheck is one attack on the runtime itself.
type secRuntimeCheck struct {
	name    string
	problem string // "" when blocked
	summary string
}

// An extension with sandbox.network shares the host's network from its own
// user namespace, where sysfs cannot be mounted: it runs, with the host's
// /sys bound read-only (a1b6560 failed its start with "mounting sysfs:
// operation not permitted").
func TestNetworkExtensionRuns(t *testing.T) {
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	fx := newSecFixture(t, tools)
	m := fx.secManifest([]string{"/bin/sh", "-c", "test -d /sys/class && ! touch /sys/x 2>/dev/null && echo sys-ro"})
	m["sandbox"] = map[string]any{"network": true}
	writeManifest(t, fx.bundle, m)
	id := secID("net")
	res := secRunPyisolate(tools, fx, id, 60*time.Second)
	if res.code != 0 || strings.TrimSpace(string(res.stdout)) != "sys-ro" {
		t.Fatalf("an extension with network: %s", res)
	}
	secCheckNoLeaks(t, fx.root, fx.base, id)
}
