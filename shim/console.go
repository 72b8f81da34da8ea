package shim

// Terminals (ctr run -t, ctr task exec -t, CRI tty). The runtime hands the
// shim the master side of the process's pseudo-terminal; the process's
// stdin, stdout and stderr are its slave side. procIO is set up as for a
// process without one, and the shim then stands in for the process at the
// ends procIO made for it: the terminal's output is copied into the stdout
// end (whatever it leads to: fifo, file:// or binary://) and the stdin end
// into the terminal. There is no stderr: the terminal carries both.
//
// The shim holds a writer of the stdin fifo itself, as containerd's runc
// shim does, so that a client going away (ctr run -d -t exiting, an attach
// ending) does not end the input. Once CloseIO closed that writer and the
// clients closed theirs, the input ends and the terminal hangs up (its
// master is closed), as a terminal whose user went away. The output copy
// ends once the process exited and what it wrote was read, even if processes
// it left in the background still hold the terminal; Close ends everything.

import (
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"syscall"

	"github.com/containerd/console"
	"github.com/containerd/fifo"

	"github.com/pyisolate/pyisolate-oci/runtime"
)

// attachConsole connects cons, the process's terminal, to the stdio, taking
// over the process's stdin and stdout ends. Call it once the process runs,
// before CloseChildEnds.
func (pio *procIO) attachConsole(cons *runtime.Console) {
	pio.console = cons
	in, out := pio.Stdin, pio.Stdout
	pio.child = slices.DeleteFunc(pio.child, func(f *os.File) bool { return f == in || f == out })
	pio.Stdin, pio.Stdout = nil, nil

	// Without a stdout, the output is still read: a full terminal would
	// block the process.
	var dst io.Writer = io.Discard
	if out != nil {
		dst = out
	}
	pio.copies.Add(1)
	go func() {
		defer pio.copies.Done()
		buf := make([]byte, 32<<10)
		_, _ = io.CopyBuffer(dst, cons, buf)
		if out != nil {
			// The output copy behind it ends and closes the fifo.
			out.Close()
		}
	}()
	if in != nil {
		go func() {
			_, _ = io.Copy(cons, in)
			in.Close()
			pio.closeConsole()
		}()
	}
}

// keepStdin opens the shim's own writer of the stdin fifo at path, which
// openStdin opened for reading.
func (pio *procIO) keepStdin(ctx context.Context, path string) error {
	u, err := parseStdioURI(path)
	if err != nil {
		return err
	}
	// Non-blocking: returns at once, connected once the reader is open.
	w, err := fifo.OpenFifo(context.WithoutCancel(ctx), u.Path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("open stdin fifo %s for writing: %w", u.Path, err)
	}
	pio.stdinKeep = w
	return nil
}

// shutdownConsole lets the terminal's output copy end once it read what is
// there: for when the process exited. Without a terminal it does nothing.
func (pio *procIO) shutdownConsole() {
	if pio != nil && pio.console != nil {
		pio.console.Shutdown()
	}
}

// closeConsole closes the terminal (once): it hangs up and its copies end.
func (pio *procIO) closeConsole() {
	if pio != nil && pio.console != nil {
		pio.consoleOnce.Do(func() { _ = pio.console.Close() })
	}
}

// resizeConsole sets the terminal's window size. Without a terminal it does
// nothing.
func (pio *procIO) resizeConsole(width, height uint32) error {
	if pio == nil || pio.console == nil {
		return nil
	}
	return pio.console.Resize(console.WinSize{
		Width:  uint16(min(width, math.MaxUint16)),
		Height: uint16(min(height, math.MaxUint16)),
	})
}
