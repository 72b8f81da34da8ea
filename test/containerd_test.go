package test

// End-to-end tests of containerd-shim-pyisolate-v1 under real containerd
// daemons: Debian's containerd 1.6 and containerd 2.x (built from the Go
// module proxy into /var/cache/pyisolate-test on first use), each started
// privately by the test (containerd_daemon_test.go). They need root and skip
// with a reason otherwise; run them with `go test -tags seccomp ./test/
// -run Containerd`.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestContainerdRun: ctr run --rm with output and exit codes, hardening of a
// plain spec, early-exiting processes, kill with SIGKILL and SIGTERM.
func TestContainerdRun(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		r := d.Ctr(t, 0, d.RunArgs([]string{"--rm"}, "echo", "/bin/echo", "hello", "world")...)
		if strings.TrimSpace(r.Stdout) != "hello world" {
			t.Errorf("stdout = %q, want %q", r.Stdout, "hello world")
		}
		r = d.Ctr(t, 3, d.RunArgs([]string{"--rm"}, "exit3", "/bin/sh", "-c", "echo to-stderr >&2; exit 3")...)
		if !strings.Contains(r.Stderr, "to-stderr") {
			t.Errorf("stderr = %q, want the container's stderr", r.Stderr)
		}
		// Processes that exit at once: the exit must reach containerd
		// (no reaper stealing it) every time.
		for i := 0; i < 5; i++ {
			d.Ctr(t, 0, d.RunArgs([]string{"--rm"}, fmt.Sprintf("true%d", i), "/bin/true")...)
		}
		d.Ctr(t, 1, d.RunArgs([]string{"--rm"}, "false", "/bin/false")...)

		// A plain OCI spec runs under policy hardened: the capabilities it
		// asked for (containerd's default set) kept, and the floors:
		// no_new_privs, a seccomp filter, /proc/kcore masked.
		r = d.Ctr(t, 0, d.RunArgs([]string{"--rm"}, "status", "/bin/sh", "-c",
			"grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; [ -s /proc/kcore ] && echo kcore-readable || echo kcore-masked")...)
		for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2", "kcore-masked"} {
			if !strings.Contains(r.Stdout, want) {
				t.Errorf("hardened floors: %q missing from\n%s", want, r.Stdout)
			}
		}
		ctrdCheckDefaultCaps(t, r.Stdout, "CapBnd")

		// SIGKILL from ctr task kill: the foreground ctr run exits 137.
		code := ctrdRunAndKill(t, d, "killed", []string{"/bin/sleep", "100"}, "KILL")
		if code != 137 {
			t.Errorf("exit after SIGKILL = %d, want 137", code)
		}
		// SIGTERM, trapped by the process, which exits 7.
		code = ctrdRunAndKill(t, d, "termed", []string{"/bin/sh", "-c", `trap "exit 7" TERM; echo ready; while true; do sleep 1; done`}, "TERM")
		if code != 7 {
			t.Errorf("exit after trapped SIGTERM = %d, want 7", code)
		}
		ctrdAssertClean(t, d, "killed")
	})
}

// ctrdRunAndKill runs cmd in the foreground with ctr run --rm, signals it
// with ctr task kill once it runs and returns ctr run's exit code.
func ctrdRunAndKill(t *testing.T, d *ctrdDaemon, id string, cmd []string, sig string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"--address", d.Addr}, d.RunArgs([]string{"--rm"}, id, cmd...)...)
	run := exec.CommandContext(ctx, d.Version.Ctr, args...)
	var out bytes.Buffer
	run.Stdout, run.Stderr = &out, &out
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	d.WaitTask(t, id, "RUNNING", 30*time.Second)
	time.Sleep(200 * time.Millisecond) // let the shell install its trap
	d.Ctr(t, 0, "task", "kill", "-s", sig, id)
	err := run.Wait()
	if ctx.Err() != nil {
		t.Fatalf("ctr run %s did not end after SIG%s: %s", id, sig, out.String())
	}
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	t.Fatalf("ctr run: %v", err)
	return -1
}

// TestContainerdExec: a detached task, ctr task exec with output and exit
// codes, task ls and ps, kill and delete, and nothing left afterwards.
func TestContainerdExec(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		d.Ctr(t, 0, d.RunArgs([]string{"-d"}, "box", "/bin/sleep", "1000")...)
		d.WaitTask(t, "box", "RUNNING", 10*time.Second)
		pid := d.TaskPid(t, "box")
		shim := d.ShimPid(t, "box")

		r := d.Ctr(t, 0, "task", "exec", "--exec-id", "e0", "box", "/bin/sh", "-c", "echo in-exec; echo exec-err >&2")
		if strings.TrimSpace(r.Stdout) != "in-exec" || !strings.Contains(r.Stderr, "exec-err") {
			t.Errorf("exec output: %s", r)
		}
		for i := 0; i < 5; i++ {
			d.Ctr(t, i, "task", "exec", "--exec-id", fmt.Sprintf("code%d", i), "box", "/bin/sh", "-c", fmt.Sprintf("exit %d", i))
			d.Ctr(t, 0, "task", "exec", "--exec-id", fmt.Sprintf("true%d", i), "box", "/bin/true")
		}
		// Exec processes get the policy's check and floor like the init.
		r = d.Ctr(t, 0, "task", "exec", "--exec-id", "caps", "box", "/bin/grep", "-E", "^(CapBnd|NoNewPrivs):", "/proc/self/status")
		if !strings.Contains(r.Stdout, "NoNewPrivs:\t1") {
			t.Errorf("exec without the hardened floor:\n%s", r.Stdout)
		}
		ctrdCheckDefaultCaps(t, r.Stdout, "CapBnd")
		r = d.Ctr(t, 0, "task", "ps", "box")
		if !strings.Contains(r.Stdout, fmt.Sprint(pid)) {
			t.Errorf("task ps lacks the init pid %d:\n%s", pid, r.Stdout)
		}
		if got := d.Tasks(t)["box"]; got != "RUNNING" {
			t.Errorf("task ls: box is %q", got)
		}
		d.Ctr(t, 0, "task", "kill", "-s", "KILL", "box")
		d.WaitTask(t, "box", "STOPPED", 10*time.Second)
		d.Ctr(t, 0, "task", "delete", "box")
		d.Ctr(t, 0, "container", "rm", "box")
		ctrdAssertClean(t, d, "box", pid, shim)
	})
}

// TestContainerdDetachedExit: a detached task whose process exits at once
// is STOPPED (its exit not lost) and can be deleted.
func TestContainerdDetachedExit(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		d.Ctr(t, 0, d.RunArgs([]string{"-d"}, "quick", "/bin/sh", "-c", "exit 4")...)
		d.WaitTask(t, "quick", "STOPPED", 10*time.Second)
		shim := d.ShimPid(t, "quick")
		d.Ctr(t, 0, "task", "delete", "quick")
		d.Ctr(t, 0, "container", "rm", "quick")
		ctrdAssertClean(t, d, "quick", shim)
	})
}

// TestContainerdLogURI: file:// and binary:// log URIs.
func TestContainerdLogURI(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		logFile := filepath.Join(d.Dir, "logs", "file.log")
		d.Ctr(t, 0, d.RunArgs([]string{"--rm", "--log-uri", "file://" + logFile}, "filelog", "/bin/sh", "-c", "echo to-out; echo to-err >&2")...)
		data, _ := os.ReadFile(logFile)
		if !strings.Contains(string(data), "to-out") || !strings.Contains(string(data), "to-err") {
			t.Errorf("file:// log = %q", data)
		}

		outDir := filepath.Join(d.Dir, "binlog")
		if err := os.MkdirAll(outDir, 0o755); err != nil {
			t.Fatal(err)
		}
		logger := filepath.Join(d.Dir, "logger.sh")
		script := "#!/bin/sh\nexec 5>&-\ncat <&3 > \"$1/out.$CONTAINER_ID\" &\ncat <&4 > \"$1/err.$CONTAINER_NAMESPACE\" &\nwait\n"
		if err := os.WriteFile(logger, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		d.Ctr(t, 0, d.RunArgs([]string{"--rm", "--log-uri", "binary://" + logger + "?" + outDir}, "binlog", "/bin/sh", "-c", "echo bin-out; echo bin-err >&2")...)
		deadline := time.Now().Add(5 * time.Second)
		for {
			o, _ := os.ReadFile(filepath.Join(outDir, "out.binlog"))
			e, _ := os.ReadFile(filepath.Join(outDir, "err.default"))
			if strings.Contains(string(o), "bin-out") && strings.Contains(string(e), "bin-err") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("binary:// logger got stdout %q, stderr %q", o, e)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

// TestContainerdGroup: containers of one isolation group share one shim
// process; it ends after the last of them is deleted.
func TestContainerdGroup(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		group := []string{"--annotation", "io.pyisolate.group=g1"}
		d.Ctr(t, 0, d.RunArgs(append([]string{"-d"}, group...), "g1a", "/bin/sleep", "1000")...)
		d.Ctr(t, 0, d.RunArgs(append([]string{"-d"}, group...), "g1b", "/bin/sleep", "1000")...)
		d.Ctr(t, 0, d.RunArgs([]string{"-d"}, "alone", "/bin/sleep", "1000")...)
		addr := func(id string) string {
			data, err := os.ReadFile(filepath.Join(d.Bundle(id), "address"))
			if err != nil {
				t.Fatal(err)
			}
			return string(data)
		}
		if addr("g1a") != addr("g1b") {
			t.Errorf("group members have different shims: %s, %s", addr("g1a"), addr("g1b"))
		}
		if addr("g1a") == addr("alone") {
			t.Errorf("a container outside the group shares its shim")
		}
		shim := d.ShimPid(t, "g1a")
		for _, id := range []string{"g1a", "g1b"} {
			r := d.Ctr(t, 0, "task", "exec", "--exec-id", "x", id, "/bin/echo", id)
			if strings.TrimSpace(r.Stdout) != id {
				t.Errorf("exec in %s: %s", id, r)
			}
		}
		d.Ctr(t, 0, "task", "kill", "-s", "KILL", "g1a")
		d.WaitTask(t, "g1a", "STOPPED", 10*time.Second)
		d.Ctr(t, 0, "task", "delete", "g1a")
		if !ctrdAlive(shim) {
			t.Fatal("the group's shim ended while g1b still runs")
		}
		if got := d.Tasks(t)["g1b"]; got != "RUNNING" {
			t.Errorf("g1b is %q after g1a's delete", got)
		}
		d.Ctr(t, 0, "task", "kill", "-s", "KILL", "g1b")
		d.WaitTask(t, "g1b", "STOPPED", 10*time.Second)
		d.Ctr(t, 0, "task", "delete", "g1b")
		ctrdWaitGone(t, shim, 10*time.Second)
	})
}

// TestContainerdManifest: a host-files Python extension (empty rootfs and
// the pyisolate manifest in annotations) runs in the full sandbox; a
// manifest with a forbidden path fails with a clear error at ctr.
func TestContainerdManifest(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("/usr/bin/python3 is not installed")
	}
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		module := filepath.Join(ctrdRepoRoot(t), "examples", "hello", "hello_ext")
		empty := filepath.Join(d.Dir, "empty")
		if err := os.MkdirAll(empty, 0o755); err != nil {
			t.Fatal(err)
		}
		run := func(want int, id string, annotations []string, cmd ...string) ctrdResult {
			args := []string{"run", "--rm", "--runtime", ctrdRuntime}
			for _, a := range annotations {
				args = append(args, "--annotation", a)
			}
			args = append(args, "--rootfs", empty, id)
			return d.Ctr(t, want, append(args, cmd...)...)
		}
		hello := []string{"io.pyisolate.name=hello", "io.pyisolate.module_path=" + module}
		r := run(0, "hello", hello)
		if !strings.Contains(r.Stdout, "hello from inside the sandbox") {
			t.Errorf("hello extension output:\n%s", r)
		}
		r = run(0, "pycheck", hello, "/usr/bin/python3", "-c",
			"import os; print(open('/proc/self/uid_map').read().split()[1]); print(os.path.exists('/root'), os.access('/usr', os.W_OK))")
		if f := strings.Fields(r.Stdout); len(f) != 3 || f[0] == "0" || f[1] != "False" || f[2] != "False" {
			t.Errorf("sandbox check (uid map base, /root visible, /usr writable) = %q", r.Stdout)
		}
		// Members of one group share the group's /dev/shm (and one shim);
		// another group does not see it.
		inGroup := func(g string) []string { return append([]string{"io.pyisolate.group=" + g}, hello...) }
		args := []string{"run", "-d", "--runtime", ctrdRuntime}
		for _, a := range inGroup("gx") {
			args = append(args, "--annotation", a)
		}
		args = append(args, "--rootfs", empty, "gA", "/usr/bin/python3", "-c",
			"open('/dev/shm/marker','w').write('from-a'); import time; time.sleep(1000)")
		d.Ctr(t, 0, args...)
		d.WaitTask(t, "gA", "RUNNING", 20*time.Second)
		read := "import os; print(open('/dev/shm/marker').read() if os.path.exists('/dev/shm/marker') else 'absent')"
		var got string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			got = strings.TrimSpace(run(0, "gB", inGroup("gx"), "/usr/bin/python3", "-c", read).Stdout)
			if got != "absent" || time.Now().After(deadline) {
				break
			}
		}
		if got != "from-a" {
			t.Errorf("group member sees /dev/shm/marker = %q, want from-a", got)
		}
		if got := strings.TrimSpace(run(0, "gC", inGroup("gy"), "/usr/bin/python3", "-c", read).Stdout); got != "absent" {
			t.Errorf("another group sees /dev/shm/marker = %q", got)
		}
		d.Ctr(t, 0, "task", "kill", "-s", "KILL", "gA")
		d.WaitTask(t, "gA", "STOPPED", 10*time.Second)
		d.Ctr(t, 0, "task", "delete", "gA")
		d.Ctr(t, 0, "container", "rm", "gA")
		if _, err := os.Stat(filepath.Join(ctrdStateBase, "default", "groups", "gx", "shm")); err == nil {
			t.Errorf("group gx's shared memory left after its last member")
		}

		bad := fmt.Sprintf(`io.pyisolate.manifest={"name":"bad","module_path":%q,"sandbox":{"writable_paths":["/etc"]}}`, module)
		r = run(1, "bad", []string{bad})
		if !strings.Contains(r.Stderr, `"/etc" is forbidden`) {
			t.Errorf("forbidden path error did not reach ctr:\n%s", r)
		}
		d.ctr(20*time.Second, "container", "rm", "bad")
		ctrdAssertClean(t, d, "bad")
		ctrdAssertClean(t, d, "hello")
	})
}

// TestContainerdRestart: a task survives a containerd restart; afterwards it
// is listed, exec and kill work and it is deleted cleanly.
func TestContainerdRestart(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		d.Ctr(t, 0, d.RunArgs([]string{"-d"}, "survivor", "/bin/sleep", "1000")...)
		d.WaitTask(t, "survivor", "RUNNING", 10*time.Second)
		pid := d.TaskPid(t, "survivor")
		shim := d.ShimPid(t, "survivor")
		d.Stop(t)
		if !ctrdAlive(pid) || !ctrdAlive(shim) {
			t.Fatalf("the task (%v) or its shim (%v) ended with containerd", ctrdAlive(pid), ctrdAlive(shim))
		}
		d.Start(t)
		if got := d.Tasks(t)["survivor"]; got != "RUNNING" {
			t.Fatalf("after the restart survivor is %q", got)
		}
		r := d.Ctr(t, 0, "task", "exec", "--exec-id", "after", "survivor", "/bin/echo", "still-here")
		if strings.TrimSpace(r.Stdout) != "still-here" {
			t.Errorf("exec after restart: %s", r)
		}
		d.Ctr(t, 0, "task", "kill", "-s", "KILL", "survivor")
		d.WaitTask(t, "survivor", "STOPPED", 10*time.Second)
		d.Ctr(t, 0, "task", "delete", "survivor")
		d.Ctr(t, 0, "container", "rm", "survivor")
		ctrdAssertClean(t, d, "survivor", pid, shim)
	})
}

// TestContainerdShimKilled: kill -9 of the shim; containerd notices, runs
// the shim's delete action, and no process, mount, cgroup or state is left.
func TestContainerdShimKilled(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		d.Ctr(t, 0, d.RunArgs([]string{"-d"}, "victim", "/bin/sleep", "1000")...)
		d.WaitTask(t, "victim", "RUNNING", 10*time.Second)
		pid := d.TaskPid(t, "victim")
		shim := d.ShimPid(t, "victim")
		if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		d.WaitTask(t, "victim", "", 20*time.Second)
		d.Ctr(t, 0, "container", "rm", "victim")
		ctrdAssertClean(t, d, "victim", pid, shim)
		// containerd removes the bundle of a dead shim's task after the
		// shim's delete action returns, asynchronously under load.
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if _, err := os.Stat(d.Bundle("victim")); err != nil {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("bundle %s left behind", d.Bundle("victim"))
				break
			}
		}
	})
}

// TestContainerdStaleState: containerd and the shim of a detached task both
// die, leaving the task's container in the shim's state root. A second
// containerd may not create a container of that id while the orphan runs
// (the error says why); once it has stopped, the stale state is cleared and
// the id runs again.
func TestContainerdStaleState(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		d.Ctr(t, 0, d.RunArgs([]string{"-d"}, "stale", "/bin/sleep", "1000")...)
		d.WaitTask(t, "stale", "RUNNING", 10*time.Second)
		pid := d.TaskPid(t, "stale")
		shim := d.ShimPid(t, "stale")
		d.Stop(t)
		if err := syscall.Kill(shim, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		ctrdWaitGone(t, shim, 10*time.Second)
		if !ctrdAlive(pid) {
			t.Fatalf("the orphaned task %d ended with its shim", pid)
		}

		d2 := ctrdNewDaemon(t, d.Version)
		r := d2.Ctr(t, 1, d2.RunArgs([]string{"--rm"}, "stale", "/bin/echo", "hi")...)
		if !strings.Contains(r.Stderr, "unknown to this containerd") {
			t.Errorf("creating over a running orphan: %s", r)
		}
		if !ctrdAlive(pid) {
			t.Errorf("the orphaned task %d was killed by a create of another containerd", pid)
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		ctrdWaitGone(t, pid, 10*time.Second)
		r = d2.Ctr(t, 0, d2.RunArgs([]string{"--rm"}, "stale", "/bin/echo", "hi")...)
		if strings.TrimSpace(r.Stdout) != "hi" {
			t.Errorf("run over stale state: %s", r)
		}
		ctrdAssertClean(t, d2, "stale", pid, shim)
	})
}

// ctrdDefaultCaps is containerd's default capability set (Docker's), as a
// /proc/PID/status mask: what `ctr run` asks for, and policy hardened keeps.
const ctrdDefaultCaps = 0x00000000a80425fb

// ctrdCheckDefaultCaps fails t unless the status line field of status holds
// a non-empty subset of containerd's default capabilities.
func ctrdCheckDefaultCaps(t *testing.T, status, field string) {
	t.Helper()
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil || caps == 0 || caps&^ctrdDefaultCaps != 0 {
				t.Errorf("%s = %s: want the requested default capabilities (%#x), no more", field, strings.TrimSpace(v), ctrdDefaultCaps)
			}
			return
		}
	}
	t.Errorf("%s missing from\n%s", field, status)
}
