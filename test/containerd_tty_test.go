package test

// End-to-end tests of terminals through containerd-shim-pyisolate-v1: ctr
// run -t and ctr task exec -t against containerd 1.6 and 2.x (the helpers of
// containerd_daemon_test.go). ctr wants a real terminal on its stdin, so each
// runs on a pseudo-terminal the test makes, as its stdin, stdout, stderr and
// controlling terminal: the test reads what ctr prints there, and resizes it
// (the kernel and the test send ctr SIGWINCH, ctr sends ResizePty).

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
)

// ctrdWaitSize is shell code that waits (at most 10s) until the terminal has
// a size: ctr sends it with ResizePty only once the process started. For a
// terminal of 0x0 busybox's stty size prints nothing and fails.
const ctrdWaitSize = `i=0; while s=$(stty size 2>/dev/null); [ -z "$s" -o "$s" = "0 0" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done`

// ctrdWaitResize is shell code that prints the terminal's size as "first",
// waits (at most 30s) until it changes and prints it again as "second".
const ctrdWaitResize = ctrdWaitSize + `; echo "first $s"; i=0; ` +
	`while [ "$(stty size 2>/dev/null)" = "$s" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo "second $(stty size)"`

// ctrdTTY is a ctr command running on a pseudo-terminal made by the test.
type ctrdTTY struct {
	cmd    *exec.Cmd
	master console.Console

	mu   sync.Mutex
	out  bytes.Buffer
	read chan struct{} // closed once the terminal's output ended

	exited chan struct{} // closed once ctr exited
	err    error         // ctr's exit, once exited
}

// ctrdStartTTY starts ctr with args against d on a new pseudo-terminal of
// size ws. When the test ends ctr is killed if it still runs and the
// terminal is closed.
func ctrdStartTTY(t *testing.T, d *ctrdDaemon, ws console.WinSize, args ...string) *ctrdTTY {
	t.Helper()
	master, slavePath, err := console.NewPty()
	if err != nil {
		t.Fatalf("pseudo-terminal: %v", err)
	}
	if err := master.Resize(ws); err != nil {
		master.Close()
		t.Fatal(err)
	}
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		master.Close()
		t.Fatal(err)
	}
	cmd := exec.Command(d.Version.Ctr, append([]string{"--address", d.Addr}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
	// Its own session, with the terminal as its controlling terminal: the
	// kernel sends it SIGWINCH when the size changes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	err = cmd.Start()
	slave.Close()
	if err != nil {
		master.Close()
		t.Fatalf("start ctr: %v", err)
	}
	tt := &ctrdTTY{cmd: cmd, master: master, read: make(chan struct{}), exited: make(chan struct{})}
	go func() {
		defer close(tt.read)
		b := make([]byte, 4096)
		for {
			// EIO once ctr, the only holder of the slave side, exited.
			n, err := master.Read(b)
			tt.mu.Lock()
			tt.out.Write(b[:n])
			tt.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	go func() { tt.err = cmd.Wait(); close(tt.exited) }()
	t.Cleanup(func() {
		select {
		case <-tt.exited:
		default:
			_ = cmd.Process.Kill()
			<-tt.exited
		}
		select {
		case <-tt.read:
		case <-time.After(5 * time.Second):
		}
		master.Close()
	})
	return tt
}

// Output returns what ctr printed so far, without the terminal's carriage
// returns.
func (tt *ctrdTTY) Output() string {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	return strings.ReplaceAll(tt.out.String(), "\r", "")
}

// tail is the end of the output, for messages.
func (tt *ctrdTTY) tail() string {
	out := tt.Output()
	if len(out) > 1000 {
		out = "..." + out[len(out)-1000:]
	}
	return out
}

// WaitOutput waits until the output contains s.
func (tt *ctrdTTY) WaitOutput(t *testing.T, d *ctrdDaemon, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(tt.Output(), s) {
		select {
		case <-tt.exited:
			if !strings.Contains(tt.Output(), s) {
				t.Fatalf("ctr exited (%v) without printing %q; it printed %q\ncontainerd log:\n%s", tt.err, s, tt.tail(), d.LogTail(15))
			}
			return
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("ctr did not print %q in %v; it printed %q\ncontainerd log:\n%s", s, timeout, tt.tail(), d.LogTail(15))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Type writes input on the terminal, as a user typing it.
func (tt *ctrdTTY) Type(t *testing.T, input string) {
	t.Helper()
	if _, err := tt.master.Write([]byte(input)); err != nil {
		t.Fatal(err)
	}
}

// Resize changes the terminal's size and sends ctr SIGWINCH (the kernel does
// too), on which ctr resizes the process's terminal.
func (tt *ctrdTTY) Resize(t *testing.T, ws console.WinSize) {
	t.Helper()
	if err := tt.master.Resize(ws); err != nil {
		t.Fatal(err)
	}
	if err := tt.cmd.Process.Signal(syscall.SIGWINCH); err != nil {
		t.Fatal(err)
	}
}

// Wait waits for ctr to exit and its output to end, and returns its exit
// code.
func (tt *ctrdTTY) Wait(t *testing.T, d *ctrdDaemon, timeout time.Duration) int {
	t.Helper()
	select {
	case <-tt.exited:
	case <-time.After(timeout):
		t.Fatalf("ctr %s still runs after %v; it printed %q\ncontainerd log:\n%s",
			strings.Join(tt.cmd.Args[1:], " "), timeout, tt.tail(), d.LogTail(15))
	}
	select {
	case <-tt.read:
	case <-time.After(5 * time.Second):
		t.Errorf("the terminal's output did not end after ctr exited")
	}
	var ee *exec.ExitError
	switch {
	case tt.err == nil:
		return 0
	case errors.As(tt.err, &ee):
		return ee.ExitCode()
	}
	t.Fatalf("ctr: %v", tt.err)
	return -1
}

// ctrdTTYApplets adds busybox's tty and stty to the daemon's root
// filesystem.
func ctrdTTYApplets(t *testing.T, d *ctrdDaemon) {
	t.Helper()
	for _, a := range []string{"tty", "stty"} {
		if err := os.Symlink("busybox", filepath.Join(d.Rootfs, "bin", a)); err != nil && !errors.Is(err, os.ErrExist) {
			t.Fatal(err)
		}
	}
}

// ctrdFds returns the targets of process pid's open file descriptors.
func ctrdFds(t *testing.T, pid int) []string {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			out = append(out, l)
		}
	}
	return out
}

var ctrdPtsRE = regexp.MustCompile(`(?m)^/dev/pts/[0-9]+$`)

// TestContainerdTTY: ctr run -t --rm gets a terminal of ctr's terminal's
// size, its exit code comes back through ctr, and resizing ctr's terminal
// resizes the container's.
func TestContainerdTTY(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		ctrdTTYApplets(t, d)
		size := console.WinSize{Height: 24, Width: 80}
		run := func(id string, script string) *ctrdTTY {
			return ctrdStartTTY(t, d, size, d.RunArgs([]string{"-t", "--rm"}, id, "/bin/sh", "-c", script)...)
		}

		tt := run("tty", "tty; "+ctrdWaitSize+"; stty size")
		if code := tt.Wait(t, d, 60*time.Second); code != 0 {
			t.Errorf("ctr run -t exited %d, want 0; it printed %q", code, tt.Output())
		}
		if out := tt.Output(); !ctrdPtsRE.MatchString(out) || !strings.Contains(out, "\n24 80\n") {
			t.Errorf("ctr run -t printed %q, want a /dev/pts path and the size 24 80", out)
		}

		tt = run("ttyexit", "echo bye; exit 3")
		if code := tt.Wait(t, d, 60*time.Second); code != 3 {
			t.Errorf("ctr run -t of exit 3 exited %d; it printed %q", code, tt.Output())
		}
		if !strings.Contains(tt.Output(), "bye\n") {
			t.Errorf("ctr run -t printed %q, want bye", tt.Output())
		}

		// Input typed on ctr's terminal reaches an interactive shell.
		tt = ctrdStartTTY(t, d, size, d.RunArgs([]string{"-t", "--rm"}, "ttyin", "/bin/sh")...)
		tt.WaitOutput(t, d, "# ", 30*time.Second)
		tt.Type(t, "echo in-$((2+3))\r")
		tt.WaitOutput(t, d, "in-5\n", 30*time.Second)
		tt.Type(t, "exit 4\r")
		if code := tt.Wait(t, d, 30*time.Second); code != 4 {
			t.Errorf("interactive ctr run -t exited %d, want 4; it printed %q", code, tt.Output())
		}

		tt = run("ttyresize", ctrdWaitResize)
		tt.WaitOutput(t, d, "first 24 80\n", 30*time.Second)
		tt.Resize(t, console.WinSize{Height: 30, Width: 100})
		tt.WaitOutput(t, d, "second 30 100\n", 30*time.Second)
		if code := tt.Wait(t, d, 30*time.Second); code != 0 {
			t.Errorf("ctr run -t with a resize exited %d; it printed %q", code, tt.Output())
		}
		for _, id := range []string{"tty", "ttyexit", "ttyin", "ttyresize"} {
			ctrdAssertClean(t, d, id)
		}
		if tasks := d.Tasks(t); len(tasks) != 0 {
			t.Errorf("tasks left after ctr run --rm: %v", tasks)
		}
	})
}

// TestContainerdExecTTY: ctr task exec -t in a detached task without a
// terminal: the exec's terminal has ctr's size, follows ctr's resizes (the
// exec's, not the init's), its exit code comes back; afterwards the shim
// holds no terminal and no more file descriptors than before.
func TestContainerdExecTTY(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		ctrdTTYApplets(t, d)
		d.Ctr(t, 0, d.RunArgs([]string{"-d"}, "box", "/bin/sleep", "1000")...)
		d.WaitTask(t, "box", "RUNNING", 10*time.Second)
		pid := d.TaskPid(t, "box")
		shim := d.ShimPid(t, "box")
		before := ctrdFds(t, shim)
		size := console.WinSize{Height: 24, Width: 80}
		execTTY := func(execID, script string) *ctrdTTY {
			return ctrdStartTTY(t, d, size, "task", "exec", "-t", "--exec-id", execID, "box", "/bin/sh", "-c", script)
		}

		tt := execTTY("t1", "tty; "+ctrdWaitResize+"; exit 5")
		tt.WaitOutput(t, d, "first 24 80\n", 30*time.Second)
		tt.Resize(t, console.WinSize{Height: 30, Width: 100})
		tt.WaitOutput(t, d, "second 30 100\n", 30*time.Second)
		if code := tt.Wait(t, d, 30*time.Second); code != 5 {
			t.Errorf("ctr task exec -t exited %d, want 5; it printed %q", code, tt.Output())
		}
		if !ctrdPtsRE.MatchString(tt.Output()) {
			t.Errorf("ctr task exec -t printed %q, want a /dev/pts path", tt.Output())
		}
		// A process left in the background on the terminal does not keep
		// the exec's output (and ctr) waiting. It ignores the SIGHUP the
		// exec's exit sends before the exec exits.
		for i := range 3 {
			tt = execTTY(fmt.Sprintf("t%d", i+2), fmt.Sprintf(
				"(trap '' HUP; : > /tmp/bg-%[1]d; exec sleep 1000) & while [ ! -e /tmp/bg-%[1]d ]; do sleep 0.01; done; echo hi-%[1]d", i))
			if code := tt.Wait(t, d, 30*time.Second); code != 0 || !strings.Contains(tt.Output(), fmt.Sprintf("hi-%d\n", i)) {
				t.Errorf("ctr task exec -t: exit %d, printed %q", code, tt.Output())
			}
		}
		if got := d.Tasks(t)["box"]; got != "RUNNING" {
			t.Errorf("box is %q after the execs", got)
		}
		// Every terminal closed, every copy ended: the shim's descriptors
		// are those it had before.
		var after []string
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			after = ctrdFds(t, shim)
			if len(after) == len(before) || time.Now().After(deadline) {
				break
			}
		}
		if len(after) != len(before) {
			t.Errorf("the shim has %d file descriptors after the execs, %d before:\nbefore %v\nafter  %v", len(after), len(before), before, after)
		}
		for _, l := range after {
			if strings.Contains(l, "ptmx") || strings.HasPrefix(l, "/dev/pts/") {
				t.Errorf("the shim still holds a terminal: %s", l)
			}
		}
		d.Ctr(t, 0, "task", "kill", "-s", "KILL", "box")
		d.WaitTask(t, "box", "STOPPED", 10*time.Second)
		d.Ctr(t, 0, "task", "delete", "box")
		d.Ctr(t, 0, "container", "rm", "box")
		ctrdAssertClean(t, d, "box", pid, shim)
	})
}

// TestContainerdDetachedTTY: the shell of ctr run -d -t keeps its terminal
// after ctr exits (it is not hung up), ctr task attach reaches it, and its
// exit code comes back through the attach, which then deletes the task.
func TestContainerdDetachedTTY(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		size := console.WinSize{Height: 24, Width: 80}
		tt := ctrdStartTTY(t, d, size, d.RunArgs([]string{"-d", "-t"}, "dtty", "/bin/sh")...)
		if code := tt.Wait(t, d, 60*time.Second); code != 0 {
			t.Fatalf("ctr run -d -t exited %d; it printed %q", code, tt.Output())
		}
		d.WaitTask(t, "dtty", "RUNNING", 10*time.Second)
		pid := d.TaskPid(t, "dtty")
		shim := d.ShimPid(t, "dtty")
		time.Sleep(500 * time.Millisecond) // a hang-up would have ended the shell by now
		if got := d.Tasks(t)["dtty"]; got != "RUNNING" {
			t.Fatalf("the shell of ctr run -d -t is %q after ctr exited", got)
		}

		tt = ctrdStartTTY(t, d, size, "task", "attach", "dtty")
		tt.Type(t, "echo att-$((3+4))\r")
		tt.WaitOutput(t, d, "att-7\n", 30*time.Second)
		tt.Type(t, "exit 6\r")
		if code := tt.Wait(t, d, 30*time.Second); code != 6 {
			t.Errorf("ctr task attach exited %d, want 6; it printed %q", code, tt.Output())
		}
		d.WaitTask(t, "dtty", "", 10*time.Second) // ctr task attach deletes it
		d.Ctr(t, 0, "container", "rm", "dtty")
		ctrdAssertClean(t, d, "dtty", pid, shim)
	})
}
