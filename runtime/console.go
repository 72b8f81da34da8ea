package runtime

// Terminals. A process whose spec sets process.terminal gets a
// pseudo-terminal as its stdin, stdout and stderr, made as runc makes it:
// libcontainer's init opens it on the container's own devpts instance (the
// spec must mount one on /dev/pts), binds its slave side on /dev/console
// (the container's init only) and sends the master side over
// libcontainer.Process.ConsoleSocket, a socket pair of which this process
// keeps the other end. The streams of CreateOptions and Stdio are then not
// used.

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/containerd/console"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/utils"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// consoleRecvTimeout bounds the wait for the terminal's master side once
// libcontainer started the process; its init sends it before it reports
// ready, so it is normally there already.
const consoleRecvTimeout = 10 * time.Second

// Console is the master side of a container process's pseudo-terminal:
// reading it gives what the process writes to its terminal, writing it is
// the process's input. Its file is non-blocking and in Go's poller, so Close
// ends reads and writes that wait. It belongs to whoever started the
// process, who must close it; deleting the container does not.
type Console struct {
	f  *os.File
	rc syscall.RawConn
	// draining is set by Shutdown: Read returns io.EOF instead of waiting.
	draining atomic.Bool
}

// Console returns the terminal of the container's init, or nil when its spec
// has no process.terminal or the container was not created by this process
// (Load).
func (c *Container) Console() *Console {
	if c.init == nil {
		return nil
	}
	return c.init.console
}

// Console returns the process's terminal, or nil when its spec has no
// process.terminal.
func (p *Process) Console() *Console { return p.console }

// Name returns the path of the terminal's slave side inside the container
// (/dev/pts/N).
func (c *Console) Name() string { return c.f.Name() }

// Read reads the process's terminal output. Once every process holding the
// terminal closed it, or after Shutdown once nothing is left to read, it
// returns io.EOF.
func (c *Console) Read(p []byte) (int, error) {
	for {
		if !c.draining.Load() {
			n, err := c.f.Read(p)
			if !errors.Is(err, os.ErrDeadlineExceeded) || !c.draining.Load() {
				return n, hangupEOF(err)
			}
		}
		// Shutdown set a deadline to wake a waiting Read: clear it and
		// read what is there without waiting.
		_ = c.f.SetReadDeadline(time.Time{})
		n, err := c.readNow(p)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			continue // Shutdown's deadline came after the clear
		}
		return n, err
	}
}

// readNow reads what the terminal holds now; io.EOF when it holds nothing.
func (c *Console) readNow(p []byte) (n int, err error) {
	var rerr error
	if err := c.rc.Read(func(fd uintptr) bool {
		for {
			n, rerr = unix.Read(int(fd), p)
			if rerr != unix.EINTR {
				return true // never wait for more
			}
		}
	}); err != nil {
		return 0, err
	}
	switch {
	case rerr == unix.EAGAIN || rerr == unix.EIO:
		return 0, io.EOF
	case rerr != nil:
		return 0, &os.PathError{Op: "read", Path: c.f.Name(), Err: rerr}
	case n == 0 && len(p) > 0:
		return 0, io.EOF
	}
	return n, nil
}

// hangupEOF turns EIO, what reading a terminal's master side gives once its
// slave side is closed everywhere, into io.EOF.
func hangupEOF(err error) error {
	if errors.Is(err, unix.EIO) {
		return io.EOF
	}
	return err
}

// Write writes input to the process's terminal.
func (c *Console) Write(p []byte) (int, error) { return c.f.Write(p) }

// Shutdown makes Read return what the terminal holds and then io.EOF rather
// than wait for more, for after the process exited while others (processes
// it started in the background) may still hold the terminal.
func (c *Console) Shutdown() {
	c.draining.Store(true)
	_ = c.f.SetReadDeadline(time.Now())
}

// Close closes the master side: the terminal hangs up (SIGHUP to its session
// in the container) and pending reads and writes end.
func (c *Console) Close() error { return c.f.Close() }

// Resize sets the terminal's window size; the process gets SIGWINCH.
func (c *Console) Resize(ws console.WinSize) error {
	var ierr error
	if err := c.rc.Control(func(fd uintptr) {
		ierr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{Row: ws.Height, Col: ws.Width})
	}); err != nil {
		return fmt.Errorf("resize terminal %s: %w", c.Name(), err)
	}
	if ierr != nil {
		return fmt.Errorf("resize terminal %s: %w", c.Name(), ierr)
	}
	return nil
}

// Size returns the terminal's window size.
func (c *Console) Size() (console.WinSize, error) {
	var (
		w    *unix.Winsize
		ierr error
	)
	if err := c.rc.Control(func(fd uintptr) {
		w, ierr = unix.IoctlGetWinsize(int(fd), unix.TIOCGWINSZ)
	}); err != nil {
		return console.WinSize{}, fmt.Errorf("size of terminal %s: %w", c.Name(), err)
	}
	if ierr != nil {
		return console.WinSize{}, fmt.Errorf("size of terminal %s: %w", c.Name(), ierr)
	}
	return console.WinSize{Height: w.Row, Width: w.Col}, nil
}

// startWithConsole starts lp with start (libcontainer's Container.Start for
// an init, Run for an exec) and, when p asks for a terminal, receives the
// master side of the pseudo-terminal libcontainer's init made for it; nil
// otherwise. When the terminal cannot be received the started process is
// killed and reaped. With external set (a --console-socket connection) the
// master side is sent there instead, and nil is returned.
func startWithConsole(start func(*libcontainer.Process) error, lp *libcontainer.Process, p *specs.Process, external *os.File) (*Console, error) {
	if !p.Terminal {
		return nil, start(lp)
	}
	if external != nil {
		lp.ConsoleSocket = external
		lp.Stdin, lp.Stdout, lp.Stderr = nil, nil, nil
		setConsoleSize(lp, p)
		err := start(lp)
		lp.ConsoleSocket = nil
		return nil, err
	}
	parent, child, err := utils.NewSockPair("console")
	if err != nil {
		return nil, fmt.Errorf("terminal socket: %w", err)
	}
	defer parent.Close()
	lp.ConsoleSocket = child
	lp.Stdin, lp.Stdout, lp.Stderr = nil, nil, nil
	setConsoleSize(lp, p)
	err = start(lp)
	// The process has its copy; ours would keep a receive from seeing EOF
	// if it never sent.
	child.Close()
	lp.ConsoleSocket = nil
	if err != nil {
		return nil, err
	}
	cons, err := recvConsole(parent)
	if err != nil {
		_ = lp.Signal(unix.SIGKILL)
		_, _ = lp.Wait()
		return nil, fmt.Errorf("receive the terminal: %w", err)
	}
	return cons, nil
}

// setConsoleSize gives lp's terminal the spec's initial window size.
func setConsoleSize(lp *libcontainer.Process, p *specs.Process) {
	if b := p.ConsoleSize; b != nil && b.Width > 0 && b.Height > 0 {
		lp.ConsoleWidth = uint16(min(b.Width, math.MaxUint16))
		lp.ConsoleHeight = uint16(min(b.Height, math.MaxUint16))
	}
}

// recvConsole receives the terminal's master side, sent by libcontainer's
// init with SCM_RIGHTS, and puts it in Go's poller.
func recvConsole(sock *os.File) (*Console, error) {
	rc, err := sock.SyscallConn()
	if err != nil {
		return nil, err
	}
	var (
		fds  []int
		rerr error
	)
	if err := rc.Control(func(s uintptr) {
		tv := unix.NsecToTimeval(consoleRecvTimeout.Nanoseconds())
		if rerr = unix.SetsockoptTimeval(int(s), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); rerr != nil {
			return
		}
		// The message is the master's path, of no use here.
		buf := make([]byte, 4096)
		oob := make([]byte, unix.CmsgSpace(4*4))
		var oobn int
		for {
			_, oobn, _, _, rerr = unix.Recvmsg(int(s), buf, oob, unix.MSG_CMSG_CLOEXEC)
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr != nil {
			return
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			rerr = err
			return
		}
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS {
				got, err := unix.ParseUnixRights(&m)
				if err != nil {
					rerr = err
					return
				}
				fds = append(fds, got...)
			}
		}
	}); err != nil {
		return nil, err
	}
	if rerr == nil && len(fds) != 1 {
		rerr = fmt.Errorf("got %d file descriptors, want the terminal's", len(fds))
	}
	var name string
	if rerr == nil {
		// The slave's number in the container's devpts instance.
		var n uint32
		if n, rerr = unix.IoctlGetUint32(fds[0], unix.TIOCGPTN); rerr == nil {
			name = fmt.Sprintf("/dev/pts/%d", n)
			rerr = unix.SetNonblock(fds[0], true)
		}
	}
	if rerr != nil {
		for _, fd := range fds {
			unix.Close(fd)
		}
		if errors.Is(rerr, unix.EAGAIN) {
			rerr = fmt.Errorf("nothing sent in %v", consoleRecvTimeout)
		}
		return nil, rerr
	}
	// Non-blocking, so os.NewFile puts it in the poller.
	f := os.NewFile(uintptr(fds[0]), name)
	frc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Console{f: f, rc: frc}, nil
}
