package runtime

import (
	"bytes"
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// withDevpts gives s the container's own devpts instance, which a terminal
// needs.
func withDevpts(s *specs.Spec) {
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/dev/pts", Type: "devpts", Source: "devpts",
		Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}})
}

// consoleReader collects what a console gives until io.EOF.
type consoleReader struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	err  error
	done chan struct{}
}

func readConsole(c *Console) *consoleReader {
	r := &consoleReader{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		b := make([]byte, 1024)
		for {
			n, err := c.Read(b)
			r.mu.Lock()
			r.buf.Write(b[:n])
			if err != nil && err != io.EOF {
				r.err = err
			}
			r.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return r
}

// output returns what was read so far, without the terminal's carriage
// returns.
func (r *consoleReader) output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.ReplaceAll(r.buf.String(), "\r", "")
}

// waitFor waits until the output contains s.
func (r *consoleReader) waitFor(t *testing.T, s string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(r.output(), s); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("terminal output %q lacks %q after 10s", r.output(), s)
		}
	}
}

// waitEOF waits until the console gave io.EOF.
func (r *consoleReader) waitEOF(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("terminal output did not end; so far %q", r.output())
	}
	if r.err != nil {
		t.Errorf("read terminal: %v", r.err)
	}
}

// TestTerminal runs a container's init and an exec process on a terminal:
// the process's stdio is a /dev/pts terminal of the spec's console size,
// Resize reaches it, input written to the console reaches it, its exit code
// comes back, and the console ends with io.EOF, also when a background
// process still holds the terminal (Shutdown).
func TestTerminal(t *testing.T) {
	script := `tty; stty size; read line; stty size; echo "got $line"; exit 3`
	tests := []struct {
		name string
		exec bool // the terminal process is an exec; the init sleeps
		args []string
	}{
		{name: "init", args: []string{"sh", "-c", script}},
		{name: "exec", exec: true, args: []string{"sh", "-c", script}},
		{name: "exec-background", exec: true, args: []string{"sh", "-c", "(trap '' HUP; exec sleep 30) & " + script}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := testRuntime(t)
			id := testID(t)
			ctx := context.Background()
			proc := &specs.Process{Args: tc.args, Terminal: true, ConsoleSize: &specs.Box{Height: 24, Width: 80},
				Cwd: "/", Env: []string{"PATH=/usr/bin:/bin", "TERM=xterm"}}
			s := newSpec(t, r, id, "sleep", "30")
			if !tc.exec {
				s.Process.Args, s.Process.Terminal, s.Process.ConsoleSize = proc.Args, true, proc.ConsoleSize
			}
			withDevpts(s)
			c, err := r.Create(ctx, id, s, CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Delete(ctx, true)
			if err := c.Start(ctx); err != nil {
				t.Fatal(err)
			}
			cons := c.Console()
			wait := c.Wait
			if tc.exec {
				if cons != nil {
					t.Fatal("an init without process.terminal has a console")
				}
				p, err := c.Exec(ctx, proc, Stdio{})
				if err != nil {
					t.Fatal(err)
				}
				cons, wait = p.Console(), p.Wait
			}
			if cons == nil {
				t.Fatal("no console")
			}
			defer cons.Close()
			out := readConsole(cons)
			out.waitFor(t, "24 80\n")
			if !strings.HasPrefix(out.output(), cons.Name()+"\n") || !strings.HasPrefix(cons.Name(), "/dev/pts/") {
				t.Errorf("tty printed %q, console name %q", out.output(), cons.Name())
			}
			if err := cons.Resize(console.WinSize{Height: 30, Width: 100}); err != nil {
				t.Fatal(err)
			}
			if ws, err := cons.Size(); err != nil || ws.Height != 30 || ws.Width != 100 {
				t.Errorf("Size after Resize = %+v, %v", ws, err)
			}
			if _, err := cons.Write([]byte("hello\n")); err != nil {
				t.Fatal(err)
			}
			st, err := wait(ctx)
			if err != nil || st.Code != 3 {
				t.Errorf("exit: %+v, %v; want code 3", st, err)
			}
			cons.Shutdown()
			out.waitEOF(t)
			if got := out.output(); !strings.Contains(got, "30 100\n") || !strings.Contains(got, "got hello\n") {
				t.Errorf("terminal output %q: want the resized size and the input", got)
			}
		})
	}
}

// TestTerminalErrors: Run refuses a terminal (nobody could read it), and a
// terminal without a devpts instance in the container fails at Create
// leaving nothing behind.
func TestTerminalErrors(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	ctx := context.Background()
	s := newSpec(t, r, id, "true")
	s.Process.Terminal = true
	if _, err := r.Run(ctx, id, s, CreateOptions{}); err == nil || !strings.Contains(err.Error(), "terminal") {
		t.Errorf("Run with a terminal: %v", err)
	}
	s = newSpec(t, r, id, "true")
	s.Process.Terminal = true
	if c, err := r.Create(ctx, id, s, CreateOptions{}); err == nil {
		c.Delete(ctx, true)
		t.Error("a terminal without /dev/pts was created")
	} else {
		t.Logf("without /dev/pts: %v", err)
	}
	if err := r.Delete(ctx, id, true); err != nil && !strings.Contains(err.Error(), "not exist") {
		t.Error(err)
	}
}
