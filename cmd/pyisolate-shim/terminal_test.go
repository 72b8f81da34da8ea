package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/hooks"
)

// terminalBundle writes a plain OCI bundle as `runc spec` makes it
// (process.terminal true) with a busybox rootfs, running args.
func terminalBundle(t *testing.T, args ...string) string {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("busybox is needed for the rootfs")
	}
	dir, err := os.MkdirTemp("/var/tmp", "pyisolate-clitest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(filepath.Join(rootfs, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(rootfs, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, applet := range []string{"sh", "stty", "echo", "sleep"} {
		if err := os.Symlink("busybox", filepath.Join(rootfs, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	s := specconv.Example()
	if !s.Process.Terminal {
		t.Fatal("runc's example spec no longer sets process.terminal")
	}
	s.Root = &specs.Root{Path: "rootfs", Readonly: true}
	s.Process.Args = args
	if err := hooks.WriteBundleSpec(dir, s); err != nil {
		t.Fatal(err)
	}
	return dir
}

// openPTY opens a pseudo-terminal pair: the master and the slave.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetUint32(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pts.Close() })
	return ptm, pts
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestCLIRunTerminal: an unmodified `runc spec` bundle (process.terminal
// true) runs when stdin is a terminal: the process gets a terminal of the
// user's size, a later SIGWINCH resizes it, input reaches the process, its
// exit status comes back, and the user's terminal settings are restored.
// Before, run failed with "process.terminal is not supported by Run".
func TestCLIRunTerminal(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a real container")
	}
	bundle := terminalBundle(t, "/bin/sh", "-c",
		`stty size; while read l; do [ "$l" = q ] && exit 7; echo "got $l"; stty size; done`)
	root, err := os.MkdirTemp("/run", "pyisolate-clitest-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	ptm, pts := openPTY(t)
	setSize := func(rows, cols uint16) {
		if err := unix.IoctlSetWinsize(int(ptm.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: rows, Col: cols}); err != nil {
			t.Fatal(err)
		}
	}
	setSize(30, 100)
	before, err := unix.IoctlGetTermios(int(pts.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "run", "--root", root, "--id", "clitest-tty", bundle)
	cmd.Env = append(os.Environ(), cliEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	// The terminal is the CLI's controlling terminal, so that a window
	// size change sends it SIGWINCH.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := ptm.Read(buf)
			out.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	waitFor := func(what string, poke func()) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !strings.Contains(out.String(), what); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("no %q in the terminal's output:\n%q", what, out.String())
			}
			if poke != nil {
				poke()
			}
		}
	}
	waitFor("30 100", nil)
	setSize(40, 120)
	waitFor("40 120", func() { ptm.WriteString("x\r") })
	if !strings.Contains(out.String(), "got x") {
		t.Errorf("input did not reach the process: %q", out.String())
	}
	ptm.WriteString("q\r")
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 7 {
		t.Errorf("exit %v, want 7; output %q", err, out.String())
	}
	t.Logf("terminal output: %q", out.String())
	after, err := unix.IoctlGetTermios(int(pts.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if *after != *before {
		t.Errorf("terminal settings not restored: %+v, was %+v", *after, *before)
	}
	if list, _ := os.ReadDir(root); len(list) > 0 {
		for _, e := range list {
			if st, err := os.Stat(filepath.Join(root, e.Name(), "state.json")); err == nil {
				t.Errorf("container state left: %s (%v)", e.Name(), st.ModTime())
			}
		}
	}
}

// TestCLIRunTerminalNoTTY: the same bundle with stdin not a terminal exits
// 2 with one line naming process.terminal and what to do, before anything
// is made.
func TestCLIRunTerminalNoTTY(t *testing.T) {
	bundle := terminalBundle(t, "/bin/sh", "-c", "exit 0")
	root := filepath.Join(t.TempDir(), "state")
	code, stdout, stderr := cli(t, "run", "--root", root, bundle)
	line := strings.TrimSpace(stderr)
	if code != exitUsage || stdout != "" || strings.Contains(line, "\n") ||
		!strings.Contains(line, filepath.Join(bundle, "config.json")+": process.terminal is true but stdin is not a terminal") ||
		!strings.Contains(line, "set process.terminal to false") {
		t.Errorf("exit %d, stdout %q, stderr %q; want %d and one line naming process.terminal", code, stdout, stderr, exitUsage)
	}
	if _, err := os.Stat(root); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the state root was made (%v)", err)
	}
}
