package tensoripc

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sysPython is Debian's interpreter, the one with python3-numpy (and
// python3-torch when installed).
const sysPython = "/usr/bin/python3"

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skipf("needs root to mount a tmpfs (running as uid %d)", os.Geteuid())
	}
}

var pyModules sync.Map // module -> error from importing it

func needPython(t *testing.T, module string) {
	t.Helper()
	v, ok := pyModules.Load(module)
	if !ok {
		out, err := exec.Command(sysPython, "-c", "import "+module).CombinedOutput()
		if err != nil {
			err = fmt.Errorf("%s cannot import %s: %v: %s", sysPython, module, err, strings.TrimSpace(string(out)))
		}
		v, _ = pyModules.LoadOrStore(module, err)
	}
	if err, _ := v.(error); err != nil {
		t.Skipf("skipping: %v", err)
	}
}

// notTmpfs makes Create treat every directory as lying on a disk.
func notTmpfs(string) bool { return false }

// eperm simulates a host where mounting a tmpfs is not allowed.
func eperm(string, string, string, uintptr, string) error { return unix.EPERM }

// newDomain creates a domain under t.TempDir(): a real tmpfs when tmpfs is
// true (root only), else the file-backed fallback. It is destroyed, and
// unmounted for sure, when the test ends.
func newDomain(t *testing.T, tmpfs bool, opts Options) *Domain {
	t.Helper()
	if tmpfs {
		needRoot(t)
	} else {
		opts.Mount = eperm
		opts.IsTmpfs = notTmpfs // file-backed even where t.TempDir() is a tmpfs
	}
	if opts.Group == "" {
		opts.Group = "g"
	}
	dir := filepath.Join(t.TempDir(), "shm")
	d, err := Create(context.Background(), dir, opts)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Destroy(context.Background()); err != nil {
			t.Errorf("Destroy: %v", err)
		}
		for i := 0; i < 4; i++ {
			if m, _ := isMountPoint(dir); m {
				t.Errorf("%s still mounted after Destroy", dir)
				_ = unix.Unmount(dir, unix.MNT_DETACH)
			}
		}
	})
	return d
}

// anyDomain is a tmpfs domain as root, else a file-backed one: ownership and
// leases work the same on both.
func anyDomain(t *testing.T, opts Options) *Domain {
	return newDomain(t, os.Geteuid() == 0, opts)
}

// pyProc is a running testdata/shmtool.py serve process.
type pyProc struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Reader
	pid  int
	done chan struct{}
}

func startPy(t *testing.T, dir string) *pyProc {
	t.Helper()
	needPython(t, "numpy")
	cmd := exec.Command(sysPython, "testdata/shmtool.py", "serve", dir)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", sysPython, err)
	}
	p := &pyProc{cmd: cmd, in: in, out: bufio.NewReader(out), pid: cmd.Process.Pid, done: make(chan struct{})}
	t.Cleanup(func() { p.kill(t) })
	p.do(t, "pid") // numpy imported: ready
	return p
}

// do sends one command and returns the text after "ok ".
func (p *pyProc) do(t *testing.T, line string) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		if _, err := fmt.Fprintln(p.in, line); err != nil {
			ch <- res{err: err}
			return
		}
		s, err := p.out.ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("python %d %q: %v", p.pid, line, r.err)
		}
		s, ok := strings.CutPrefix(r.s, "ok ")
		if !ok {
			t.Fatalf("python %d %q: %s", p.pid, line, r.s)
		}
		return s
	case <-time.After(30 * time.Second):
		t.Fatalf("python %d %q: no answer in 30 s", p.pid, line)
	}
	return ""
}

// kill sends SIGKILL and reaps the process; later calls do nothing.
func (p *pyProc) kill(t *testing.T) {
	select {
	case <-p.done:
		return
	default:
	}
	close(p.done)
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
}

func addMember(t *testing.T, d *Domain, id string, p *pyProc) {
	t.Helper()
	if err := d.AddMember(context.Background(), Member{ID: id, PID: p.pid}); err != nil {
		t.Fatalf("AddMember(%s): %v", id, err)
	}
}

func segmentMap(t *testing.T, d *Domain) map[string]Segment {
	t.Helper()
	segs, err := d.Segments(context.Background())
	if err != nil {
		t.Fatalf("Segments: %v", err)
	}
	m := map[string]Segment{}
	for _, s := range segs {
		m[s.Name] = s
	}
	return m
}

func exists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Stat(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return err == nil
}
