package test

// Rootless e2e (issue 11): the CLI run by an ordinary user, here uid 65534
// (nobody) with an XDG_RUNTIME_DIR of its own, as a user of ComfyUI would
// run it: exit codes and signals, the sandbox, two members of one group
// handing a tensor over zero-copy through a tmpfs, ps/kill/delete/shm gc,
// detect, and a second user who can neither see nor touch the first one's
// containers. The test process is root only to make the users' runtime
// directories and to switch to them (syscall.Credential); pyisolate runs
// as the user with no capability. No --root is given: the default must
// follow the user.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// rlUser is an ordinary user of the host with its own runtime directory.
type rlUser struct {
	uid  uint32
	xdg  string // XDG_RUNTIME_DIR, 0700, the user's
	cred *syscall.Credential
}

// root is the state root pyisolate must choose for this user by default.
func (u *rlUser) root() string { return filepath.Join(u.xdg, "pyisolate") }

// rlNewUser makes the runtime directory of uid under fx.base (which uid can
// traverse) and removes it, and the group directory its runtime made in
// /dev/shm, when the test ends.
func rlNewUser(t testing.TB, fx *secFixture, uid uint32) *rlUser {
	t.Helper()
	u := &rlUser{uid: uid, xdg: filepath.Join(fx.base, fmt.Sprintf("run-user-%d", uid)),
		cred: &syscall.Credential{Uid: uid, Gid: uid, Groups: []uint32{}}}
	if err := os.Mkdir(u.xdg, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(u.xdg, int(uid), int(uid)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if target, err := os.Readlink(filepath.Join(u.root(), "groups")); err == nil && strings.HasPrefix(target, "/dev/shm/pyisolate-") {
			os.RemoveAll(target)
		}
	})
	return u
}

// exec runs the pyisolate CLI as u with XDG_RUNTIME_DIR set.
func (u *rlUser) exec(tools *secTools, timeout time.Duration, args ...string) secRunResult {
	argv := append([]string{"/usr/bin/env", "XDG_RUNTIME_DIR=" + u.xdg, tools.pyisolate}, args...)
	return secExec(timeout, u.cred, nil, argv...)
}

// start starts `pyisolate run --id id BUNDLE -- cmd` as u in the background
// and waits for the container's first line, which must be "ready".
func (u *rlUser) start(t *testing.T, tools *secTools, bundle, id string, cmd ...string) (*exec.Cmd, *bufio.Reader, *strings.Builder) {
	t.Helper()
	argv := append([]string{"XDG_RUNTIME_DIR=" + u.xdg, tools.pyisolate, "run", "--id", id, bundle, "--"}, cmd...)
	c := exec.Command("/usr/bin/env", argv...)
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: u.cred}
	stderr := &strings.Builder{}
	c.Stderr = stderr
	out, err := c.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
		_ = c.Wait()
		u.exec(tools, 30*time.Second, "delete", "--force", id)
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
			t.Fatalf("first line of container %s: %q, want ready; stderr:\n%s", id, l, stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("container %s did not start in 60 s; stderr:\n%s", id, stderr)
	}
	return c, r, stderr
}

// rlSetup returns the tools, a fixture whose module runs the given command
// (sealed, no network) and the user 65534.
func rlSetup(t *testing.T, command []string) (*secTools, *secFixture, *rlUser) {
	t.Helper()
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	if err := syscall.Access(tools.pyisolate, 0o1); err != nil {
		t.Fatalf("%s is not executable: %v", tools.pyisolate, err)
	}
	fx := newSecFixture(t, tools)
	writeManifest(t, fx.bundle, fx.secManifest(command))
	return tools, fx, rlNewUser(t, fx, 65534)
}

// rlCheckNoLeaks fails t when anything of container id is left for user u:
// state beyond the empty reserved directories and the host profile cache,
// a group directory with anything in it, mounts, cgroups or processes.
func rlCheckNoLeaks(t testing.TB, u *rlUser, fx *secFixture, id string) {
	t.Helper()
	root := u.root()
	if target, err := os.Readlink(filepath.Join(root, "groups")); err == nil {
		ents, _ := os.ReadDir(target)
		for _, e := range ents {
			t.Errorf("leak after container %s: group left in %s: %s", id, target, e.Name())
		}
	}
	for _, l := range secLeaks(root, fx.base, id) {
		if strings.HasPrefix(l, "state left: "+filepath.Join(root, "groups")) {
			continue // the link to the groups' tmpfs directory, checked above
		}
		t.Errorf("leak after container %s: %s", id, l)
	}
}

// TestRootlessRun: exit codes and signals as an ordinary user; inside,
// container root with no capability, no_new_privs, seccomp, a read-only
// root; the state under $XDG_RUNTIME_DIR/pyisolate, 0700, the user's.
func TestRootlessRun(t *testing.T) {
	tools, fx, u := rlSetup(t, []string{"/bin/true"})
	inside := `set -e
id -u
grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status | tr -s '\t ' ' '
if touch /probe-rootfs 2>/dev/null; then echo rootfs-writable; else echo rootfs-read-only; fi
exit 3`
	cases := []struct {
		name string
		cmd  []string
		want int
	}{
		{"exit 3", []string{"/bin/sh", "-c", inside}, 3},
		// The container's init ignores signals it sent itself (it is its
		// PID namespace's init); a fault is delivered all the same.
		{"SIGSEGV is 139", []string{"/usr/bin/python3", "-c", "import ctypes; ctypes.string_at(0)"}, 139},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id := secID("rlrun")
			r := u.exec(tools, secRunTimeout, append([]string{"run", "--id", id, fx.bundle, "--"}, c.cmd...)...)
			rlCheckNoLeaks(t, u, fx, id)
			if r.code != c.want {
				t.Fatalf("want exit %d, got %s", c.want, r)
			}
			if !strings.Contains(string(r.stderr), "dropped cgroup-limits") && !strings.Contains(string(r.stderr), "degraded") {
				t.Logf("no degradation warning (a delegated cgroup?): %s", r.stderr)
			}
			if strings.Contains(string(r.stderr), "file-backed") {
				t.Errorf("the group's shared memory is file-backed: %s", r.stderr)
			}
			if c.want != 3 {
				return
			}
			out := string(r.stdout)
			for _, want := range []string{"0\n", "CapEff: 0000000000000000\n", "NoNewPrivs: 1\n", "Seccomp: 2\n", "rootfs-read-only\n"} {
				if !strings.Contains(out, want) {
					t.Errorf("inside the container: output lacks %q:\n%s", want, out)
				}
			}
		})
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(u.root(), &st); err != nil {
		t.Fatalf("no state root at %s (the default for the user): %v", u.root(), err)
	}
	if st.Uid != u.uid || st.Mode&0o777 != 0o700 {
		t.Errorf("state root %s: uid %d mode %o, want uid %d mode 700", u.root(), st.Uid, st.Mode&0o777, u.uid)
	}

	t.Run("SIGTERM is forwarded", func(t *testing.T) {
		id := secID("rlterm")
		c, r, stderr := u.start(t, tools, fx.bundle, id, "/bin/sh", "-c",
			`trap 'echo got-term; exit 42' TERM; echo ready; while :; do sleep 0.1; done`)
		if err := c.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		rest, _ := r.ReadString(0)
		err := c.Wait()
		code := -1
		if c.ProcessState != nil {
			code = c.ProcessState.ExitCode()
		}
		if code != 42 || !strings.Contains(rest, "got-term") {
			t.Errorf("after SIGTERM: exit %d (%v), output %q, want 42 and got-term; stderr:\n%s", code, err, rest, stderr)
		}
		rlCheckNoLeaks(t, u, fx, id)
	})
}

// TestRootlessGroupZeroCopy: two members of one group, run by an ordinary
// user, hand a 1 MiB buffer over zero-copy: the reader maps the writer's
// file, the writer then changes it through its own mapping, and the reader
// sees the change in the mapping it already holds, which only shared pages
// do. Both see the same inode, on a tmpfs (statfs inside the sandboxes),
// and nothing says file-backed.
func TestRootlessGroupZeroCopy(t *testing.T) {
	tools, fx, u := rlSetup(t, []string{"/bin/true"})
	group := fmt.Sprintf("rlgrp-%d", os.Getpid())
	m := fx.secManifest(nil)
	m["group"] = group
	m["command"] = nil
	delete(m, "command")
	writeManifest(t, fx.bundle, m)
	const common = `
import mmap, os, subprocess, sys, time
P = "/dev/shm/tensor"
def wait(p):
    for _ in range(600):
        if os.path.exists(p): return
        time.sleep(0.05)
    sys.exit("timed out waiting for " + p)
fstype = subprocess.run(["stat", "-f", "-c", "%T", "/dev/shm"], capture_output=True, text=True).stdout.strip()
`
	writer := common + `
fd = os.open(P + ".tmp", os.O_RDWR | os.O_CREAT, 0o600)
os.ftruncate(fd, 1 << 20)
mm = mmap.mmap(fd, 1 << 20)
mm[:] = b"A" * (1 << 20)
os.rename(P + ".tmp", P)
print("ready", flush=True)
wait("/dev/shm/mapped")
mm[:4] = b"ZERO"
mm.flush()
open("/dev/shm/changed", "w").close()
print("writer ino", os.fstat(fd).st_ino, fstype, flush=True)
wait("/dev/shm/done")
`
	reader := common + `
wait(P)
fd = os.open(P, os.O_RDONLY)
mm = mmap.mmap(fd, 1 << 20, prot=mmap.PROT_READ)
assert mm[:4] == b"AAAA", mm[:4]
open("/dev/shm/mapped", "w").close()
wait("/dev/shm/changed")
print("reader ino", os.fstat(fd).st_ino, fstype, "sees", mm[:4].decode(), flush=True)
open("/dev/shm/done", "w").close()
`
	wid, rid := secID("rlwriter"), secID("rlreader")
	wc, wout, wstderr := u.start(t, tools, fx.bundle, wid, "/usr/bin/python3", "-c", writer)
	r := u.exec(tools, secRunTimeout, "run", "--id", rid, fx.bundle, "--", "/usr/bin/python3", "-c", reader)
	if r.code != 0 {
		t.Fatalf("reader: %s", r)
	}
	wrest, _ := wout.ReadString(0)
	if err := wc.Wait(); err != nil {
		t.Fatalf("writer: %v; stderr:\n%s", err, wstderr)
	}
	var wino, rino, wfs, rfs, seen string
	fmt.Sscanf(strings.TrimSpace(wrest), "writer ino %s %s", &wino, &wfs)
	fmt.Sscanf(strings.TrimSpace(string(r.stdout)), "reader ino %s %s sees %s", &rino, &rfs, &seen)
	t.Logf("writer: %q; reader: %q", strings.TrimSpace(wrest), strings.TrimSpace(string(r.stdout)))
	if wino == "" || wino != rino {
		t.Errorf("the members see different files: writer inode %q, reader inode %q", wino, rino)
	}
	if wfs != "tmpfs" || rfs != "tmpfs" {
		t.Errorf("/dev/shm inside the members is %q and %q, want tmpfs", wfs, rfs)
	}
	if seen != "ZERO" {
		t.Errorf("the reader's mapping shows %q after the writer changed the page, want ZERO: not shared memory", seen)
	}
	for _, s := range []string{wstderr.String(), string(r.stderr)} {
		if strings.Contains(s, "file-backed") {
			t.Errorf("the group fell back to files: %s", s)
		}
	}
	rlCheckNoLeaks(t, u, fx, wid)
	rlCheckNoLeaks(t, u, fx, rid)
}

// TestRootlessLifecycle: ps, kill, delete and shm gc as an ordinary user;
// a second user sees none of it and can touch none of it, neither by id nor
// by pointing --root at the first user's state.
func TestRootlessLifecycle(t *testing.T) {
	tools, fx, u := rlSetup(t, []string{"/bin/true"})
	other := rlNewUser(t, fx, 65533)
	loop := []string{"/bin/sh", "-c", "echo ready; while :; do sleep 0.1; done"}

	id := secID("rlps")
	c, _, stderr := u.start(t, tools, fx.bundle, id, loop...)
	ps := u.exec(tools, 30*time.Second, "ps", "--json")
	var list []struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}
	if ps.code != 0 || json.Unmarshal(ps.stdout, &list) != nil {
		t.Fatalf("ps --json: %s", ps)
	}
	found := false
	for _, e := range list {
		found = found || (e.ID == id && e.Status == "running")
	}
	if !found {
		t.Errorf("ps does not list %s running: %s", id, ps.stdout)
	}

	// The other user.
	if r := other.exec(tools, 30*time.Second, "ps", "--json"); r.code != 0 || strings.Contains(string(r.stdout), id) {
		t.Errorf("another user's ps: %s; want success without %s", r, id)
	}
	for _, args := range [][]string{
		{"kill", id, "KILL"},
		{"delete", "--force", id},
		{"kill", "--root", u.root(), id, "KILL"},
		{"delete", "--root", u.root(), "--force", id},
		{"ps", "--root", u.root()},
	} {
		r := other.exec(tools, 30*time.Second, args...)
		if r.code == 0 {
			t.Errorf("another user's %q succeeded: %s", args, r)
		} else {
			t.Logf("another user's %q refused: %s", args, secFirstLine(string(r.stderr)))
		}
	}
	if r := u.exec(tools, 30*time.Second, "kill", id, "0"); r.code != 0 {
		t.Errorf("after the other user's attempts, %s is not alive: %s", id, r)
	}

	// kill as the owner: the run ends with 128+9.
	if r := u.exec(tools, 30*time.Second, "kill", id, "KILL"); r.code != 0 {
		t.Fatalf("kill: %s", r)
	}
	c.Wait()
	if code := c.ProcessState.ExitCode(); code != 137 {
		t.Errorf("run after kill KILL: exit %d, want 137; stderr:\n%s", code, stderr)
	}
	rlCheckNoLeaks(t, u, fx, id)

	// delete --force of a running container.
	id2 := secID("rldel")
	c2, _, _ := u.start(t, tools, fx.bundle, id2, loop...)
	if r := u.exec(tools, 30*time.Second, "delete", "--force", id2); r.code != 0 {
		t.Fatalf("delete --force: %s", r)
	}
	c2.Wait()
	if r := u.exec(tools, 30*time.Second, "kill", id2, "0"); r.code == 0 {
		t.Errorf("%s still alive after delete --force", id2)
	}
	if r := u.exec(tools, 30*time.Second, "shm", "gc"); r.code != 0 {
		t.Errorf("shm gc: %s", r)
	}
	if r := u.exec(tools, 30*time.Second, "shm", "ls"); r.code != 0 {
		t.Errorf("shm ls: %s", r)
	}
	rlCheckNoLeaks(t, u, fx, id2)
}

// TestRootlessDetect: detect --json as an ordinary user says rootless, the
// group's shared memory on a tmpfs, and, without a delegated cgroup v2
// subtree (this host: cgroup v1 hybrid), which limits are not enforced and
// how to get them.
func TestRootlessDetect(t *testing.T) {
	tools, fx, u := rlSetup(t, []string{"/bin/true"})
	_ = fx
	r := u.exec(tools, 60*time.Second, "detect", "--json")
	if r.code != 0 {
		t.Fatalf("detect --json: %s", r)
	}
	var p struct {
		Restriction  string   `json:"restriction"`
		Rootless     bool     `json:"rootless"`
		Warnings     []string `json:"warnings"`
		RootlessMode *struct {
			UID              int             `json:"uid"`
			StateRoot        string          `json:"state_root"`
			GroupShmTmpfs    bool            `json:"group_shm_tmpfs"`
			CgroupDelegation json.RawMessage `json:"cgroup_delegation"`
			NotEnforced      []string        `json:"not_enforced"`
		} `json:"rootless_mode"`
	}
	if err := json.Unmarshal(r.stdout, &p); err != nil {
		t.Fatalf("detect --json: %v\n%s", err, r.stdout)
	}
	m := p.RootlessMode
	if !p.Rootless || m == nil || m.UID != int(u.uid) || m.StateRoot != u.root() {
		t.Fatalf("detect as uid %d: rootless %v, mode %+v; want rootless with state root %s", u.uid, p.Rootless, m, u.root())
	}
	if p.Restriction != "none" {
		t.Errorf("restriction %q, want none (unprivileged user namespaces are allowed here)", p.Restriction)
	}
	if !m.GroupShmTmpfs {
		t.Errorf("group shm not on a tmpfs: %s", r.stdout)
	}
	if len(m.CgroupDelegation) == 0 {
		if len(m.NotEnforced) == 0 || !strings.Contains(strings.Join(p.Warnings, "\n"), "Delegate=yes") {
			t.Errorf("no delegation, but detect names no unenforced limit or no remedy: %s", r.stdout)
		}
	}
	h := u.exec(tools, 60*time.Second, "detect")
	for _, want := range []string{"rootless: yes (uid 65534", "group shm: ", "cgroup limits: "} {
		if !strings.Contains(string(h.stdout), want) {
			t.Errorf("detect lacks %q:\n%s", want, h.stdout)
		}
	}
	t.Logf("detect:\n%s", h.stdout)
}

// rlRunProbe runs the sandbox probe under `pyisolate run` as an ordinary
// user (uid 65534), handed the same stray descriptors as the root column.
func rlRunProbe(t *testing.T, tools *secTools, fx *secFixture) ([]secProbeResult, secRunResult) {
	t.Helper()
	u := rlNewUser(t, fx, 65534)
	id := secID("rlprobe")
	writeManifest(t, fx.bundle, fx.secManifest(fx.probeArgs(fx.probe)))
	argv := []string{"/usr/bin/env", "XDG_RUNTIME_DIR=" + u.xdg, tools.pyisolate, "run", "--id", id, fx.bundle}
	r := secExec(secRunTimeout, u.cred, fx.strayFiles(), argv...)
	t.Cleanup(func() { rlCheckNoLeaks(t, u, fx, id) })
	if r.code != 0 {
		return nil, r
	}
	rs, err := secParseProbe(r.stdout)
	if err != nil {
		r.err, r.code = err, -1
	}
	return rs, r
}
