package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/fifo"

	"github.com/pyisolate/pyisolate-oci/runtime"
)

// procIO connects a container process's standard streams to what containerd
// asked for in CreateTaskRequest / ExecProcessRequest:
//
//   - a path without scheme (or fifo://): a fifo that the client (ctr, CRI)
//     holds open at its end. The process gets one end of a pipe; the shim
//     copies between the pipe and the fifo, so that the process never sees
//     the fifo's EPIPE or blocking-open behaviour, like the runc shim does;
//   - file:///path: stdout and stderr appended to that file;
//   - binary:///path?arg=value: a logging binary started by the shim with the
//     process's stdout and stderr pipes as fd 3 and 4 and a readiness pipe as
//     fd 5 (containerd's shim logging protocol; binary-v2 also accepted);
//   - empty: /dev/null.
//
// The process's ends are *os.File values, which the runtime hands to the
// container as they are; for a process with a terminal the shim uses them
// itself (attachConsole).
type procIO struct {
	// Stdin, Stdout and Stderr are the container's ends; nil means /dev/null.
	Stdin, Stdout, Stderr *os.File

	stdinW    io.Closer // the shim's write end of the stdin pipe
	stdinKeep io.Closer // a terminal's: the shim's own writer of the stdin fifo (console.go)
	stdinMu   sync.Mutex

	copies  sync.WaitGroup // output copying goroutines
	closers []io.Closer    // closed by Close, after the copies
	child   []*os.File     // the container's ends, closed by CloseChildEnds
	logger  *exec.Cmd      // binary:// logger

	// console is the process's terminal, when it has one (console.go).
	console     *runtime.Console
	consoleOnce sync.Once
}

// stdioPaths are the stdio requested for a process.
type stdioPaths struct {
	Stdin, Stdout, Stderr string
	Terminal              bool
}

// newProcIO sets up stdio for process id of namespace ns.
func newProcIO(ctx context.Context, id, ns string, p stdioPaths) (_ *procIO, err error) {
	pio := &procIO{}
	defer func() {
		if err != nil {
			pio.CloseChildEnds()
			pio.Close()
		}
	}()
	if p.Stdin != "" {
		if err := pio.openStdin(ctx, p.Stdin); err != nil {
			return nil, err
		}
		if p.Terminal {
			if err := pio.keepStdin(ctx, p.Stdin); err != nil {
				return nil, err
			}
		}
	}
	u, err := parseStdioURI(p.Stdout)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "binary", "binary-v2":
		if err := pio.startLogger(id, ns, u); err != nil {
			return nil, err
		}
		return pio, nil
	case "file":
		f, err := openLogFile(u.Path)
		if err != nil {
			return nil, err
		}
		pio.Stdout = f
		pio.child = append(pio.child, f)
		if p.Stderr != "" && p.Stderr != p.Stdout {
			if pio.Stderr, err = pio.output(ctx, p.Stderr); err != nil {
				return nil, err
			}
		} else {
			pio.Stderr = f
		}
		return pio, nil
	}
	if p.Stdout != "" {
		if pio.Stdout, err = pio.output(ctx, p.Stdout); err != nil {
			return nil, err
		}
	}
	if p.Stderr != "" {
		if p.Stderr == p.Stdout {
			pio.Stderr = pio.Stdout
		} else if pio.Stderr, err = pio.output(ctx, p.Stderr); err != nil {
			return nil, err
		}
	}
	return pio, nil
}

// parseStdioURI parses a stdio path; a plain path is a fifo.
func parseStdioURI(s string) (*url.URL, error) {
	if s == "" {
		return &url.URL{}, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" {
		return &url.URL{Scheme: "fifo", Path: s}, nil
	}
	switch u.Scheme {
	case "fifo", "file", "binary", "binary-v2":
		return u, nil
	}
	return nil, fmt.Errorf("stdio %q: unsupported scheme %q (want a fifo path, file:// or binary://)", s, u.Scheme)
}

func openLogFile(path string) (*os.File, error) {
	if err := os.MkdirAll(dirOf(path), 0o755); err != nil {
		return nil, fmt.Errorf("log file %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("log file: %w", err)
	}
	return f, nil
}

func dirOf(p string) string {
	for i := len(p) - 1; i > 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return "/"
}

// openStdin opens the stdin fifo and copies it into a pipe for the process.
func (pio *procIO) openStdin(ctx context.Context, path string) error {
	u, err := parseStdioURI(path)
	if err != nil {
		return err
	}
	if u.Scheme != "fifo" {
		return fmt.Errorf("stdin %q: only a fifo is supported", path)
	}
	in, err := fifo.OpenFifo(context.WithoutCancel(ctx), u.Path, syscall.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open stdin fifo %s: %w", u.Path, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		in.Close()
		return err
	}
	pio.Stdin = r
	pio.child = append(pio.child, r)
	pio.stdinW = w
	go func() {
		_, _ = io.Copy(w, in)
		in.Close()
		pio.stdinMu.Lock()
		pio.closeStdinPipe()
		pio.stdinMu.Unlock()
	}()
	pio.closers = append(pio.closers, in)
	return nil
}

// output returns the process end of a pipe whose other end the shim copies
// to the fifo at path (or the file, for file://).
func (pio *procIO) output(ctx context.Context, path string) (*os.File, error) {
	u, err := parseStdioURI(path)
	if err != nil {
		return nil, err
	}
	switch u.Scheme {
	case "file":
		f, err := openLogFile(u.Path)
		if err != nil {
			return nil, err
		}
		pio.child = append(pio.child, f)
		return f, nil
	case "fifo":
	default:
		return nil, fmt.Errorf("stdio %q: %s is only supported for stdout", path, u.Scheme)
	}
	// O_RDWR: never blocks at open and never gives EPIPE when the client
	// goes away (the shim holds a reader); writes block once the fifo is full
	// and nobody reads, as with the runc shim.
	out, err := fifo.OpenFifo(context.WithoutCancel(ctx), u.Path, syscall.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open fifo %s: %w", u.Path, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		out.Close()
		return nil, err
	}
	pio.child = append(pio.child, w)
	pio.copies.Add(1)
	go func() {
		defer pio.copies.Done()
		buf := make([]byte, 32<<10)
		_, _ = io.CopyBuffer(out, r, buf)
		r.Close()
		// The client (ctr) waits for EOF on its end before it deletes
		// the task: close as soon as the process's output ends.
		out.Close()
	}()
	pio.closers = append(pio.closers, out)
	return w, nil
}

// startLogger starts a binary:// logging process.
func (pio *procIO) startLogger(id, ns string, u *url.URL) error {
	outR, outW, err := os.Pipe()
	if err != nil {
		return err
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return err
	}
	readyR, readyW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		errR.Close()
		errW.Close()
		return err
	}
	defer readyR.Close()
	var args []string
	for k, vs := range u.Query() {
		args = append(args, k)
		if len(vs) > 0 && vs[0] != "" {
			args = append(args, vs[0])
		}
	}
	cmd := exec.Command(u.Path, args...)
	cmd.Env = append(os.Environ(), "CONTAINER_ID="+id, "CONTAINER_NAMESPACE="+ns)
	cmd.ExtraFiles = []*os.File{outR, errR, readyW}
	pio.Stdout, pio.Stderr = outW, errW
	pio.child = append(pio.child, outW, errW)
	err = cmd.Start()
	outR.Close()
	errR.Close()
	readyW.Close()
	if err != nil {
		return fmt.Errorf("start logging binary %s: %w", u.Path, err)
	}
	pio.logger = cmd
	// Wait for the logger to say it is ready (close fd 5, or write a byte
	// for binary-v2).
	done := make(chan error, 1)
	go func() {
		b := make([]byte, 1)
		n, err := readyR.Read(b)
		if err == io.EOF {
			err = nil
		}
		if err == nil && u.Scheme == "binary-v2" && n == 0 {
			err = errors.New("logging binary did not signal readiness")
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("logging binary %s: %w", u.Path, err)
		}
	case <-time.After(10 * time.Second):
		return fmt.Errorf("logging binary %s: not ready after 10s", u.Path)
	}
	return nil
}

// CloseChildEnds closes the shim's copies of the process's ends, once the
// process has them (after start): output copies end when the process and
// its children close theirs.
func (pio *procIO) CloseChildEnds() {
	for _, f := range pio.child {
		f.Close()
	}
	pio.child = nil
}

// CloseStdin closes the process's stdin (CloseIO). For a terminal it closes
// the shim's own writer of the stdin fifo: the input ends once the clients'
// writers are closed too.
func (pio *procIO) CloseStdin() {
	pio.stdinMu.Lock()
	defer pio.stdinMu.Unlock()
	if pio.stdinKeep != nil {
		pio.stdinKeep.Close()
		pio.stdinKeep = nil
		return
	}
	pio.closeStdinPipe()
}

// closeStdinPipe ends the process's input; stdinMu is held.
func (pio *procIO) closeStdinPipe() {
	if pio.stdinW != nil {
		pio.stdinW.Close()
		pio.stdinW = nil
	}
}

// Wait waits, at most timeout, until all output was copied.
func (pio *procIO) Wait(timeout time.Duration) {
	done := make(chan struct{})
	go func() { pio.copies.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
	}
}

// Close releases everything: the terminal, fifos, the logger (which gets EOF
// and exits).
func (pio *procIO) Close() {
	pio.stdinMu.Lock()
	if pio.stdinKeep != nil {
		pio.stdinKeep.Close()
		pio.stdinKeep = nil
	}
	pio.closeStdinPipe()
	pio.stdinMu.Unlock()
	pio.closeConsole()
	for _, c := range pio.closers {
		c.Close()
	}
	pio.closers = nil
	if pio.logger != nil {
		cmd := pio.logger
		pio.logger = nil
		go func() {
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		}()
	}
}
