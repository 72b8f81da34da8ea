package main

// Terminals for `pyisolate run`. A bundle whose config.json sets
// process.terminal (what `runc spec` writes) gets a pseudo-terminal made in
// the container, as runc gives it: run is a foreground command, so the
// terminal is connected to the user's, which must be stdin. The user's
// terminal is put in raw mode (the container's terminal does the line
// editing, echo and signals), what the user types is copied to the
// container's terminal and what the process writes to stdout; a change of
// the user's window size (SIGWINCH) resizes the container's terminal. The
// user's terminal is restored when the container has exited.

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"time"

	"github.com/containerd/console"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// terminalDrain bounds how long, after the container exited, run still
// copies what its terminal holds (processes it left in the background may
// keep the terminal open).
const terminalDrain = 2 * time.Second

// checkTerminal refuses, for run, a plain bundle that asks for a terminal
// when stdin is not one. It returns -1 to go on.
func checkTerminal(bundle string, plain *specs.Spec) int {
	if plain == nil || plain.Process == nil || !plain.Process.Terminal {
		return -1
	}
	if _, err := console.ConsoleFromFile(os.Stdin); err != nil {
		return fail(exitUsage, "run: %s: process.terminal is true but stdin is not a terminal: "+
			"run it from a terminal, or set process.terminal to false to use plain stdin, stdout and stderr",
			filepath.Join(bundle, spec.ConfigFile))
	}
	return -1
}

// userTerminal connects a container's terminal to the user's.
type userTerminal struct {
	user  console.Console // stdin, in raw mode once attached
	out   io.Writer
	ptm   *runtime.Console
	winch chan os.Signal
	// copied is closed when the output copy ended.
	copied chan struct{}
}

// attachTerminal prepares a terminal for s when its process asks for one:
// the process's initial window size is the user's, and opts.Console
// connects the container's terminal to the user's (stdin). It returns nil
// when s asks for none. Call Close on the result once Run returned.
func attachTerminal(s *specs.Spec, opts *runtime.CreateOptions) (*userTerminal, error) {
	if s.Process == nil || !s.Process.Terminal {
		return nil, nil
	}
	user, err := console.ConsoleFromFile(os.Stdin)
	if err != nil {
		return nil, fmt.Errorf("process.terminal: stdin is not a terminal: %w", err)
	}
	if ws, err := user.Size(); err == nil && ws.Width > 0 && ws.Height > 0 {
		s.Process.ConsoleSize = &specs.Box{Width: uint(ws.Width), Height: uint(ws.Height)}
	}
	t := &userTerminal{user: user, out: os.Stdout, copied: make(chan struct{})}
	opts.Console = t.attach
	return t, nil
}

// attach starts copying between ptm, the container's terminal, and the
// user's; it is runtime.CreateOptions.Console.
func (t *userTerminal) attach(ptm *runtime.Console) {
	t.ptm = ptm
	if err := t.user.SetRaw(); err != nil {
		fmt.Fprintf(os.Stderr, "pyisolate: warning: raw mode for the terminal: %v\n", err)
	}
	t.winch = make(chan os.Signal, 1)
	signal.Notify(t.winch, unix.SIGWINCH)
	go func() {
		for range t.winch {
			t.resize()
		}
	}()
	t.resize() // a change before the handler was installed
	go func() {
		defer close(t.copied)
		_, _ = io.Copy(t.out, ptm)
	}()
	go func() {
		// Ends with the user's input; the process never ends with it, as
		// a terminal's does not. Left blocked in a read when the process
		// exits first: run exits right after.
		_, _ = io.Copy(ptm, os.Stdin)
	}()
}

// resize gives the container's terminal the user's window size.
func (t *userTerminal) resize() {
	ws, err := t.user.Size()
	if err != nil || ws.Width == 0 || ws.Height == 0 {
		return
	}
	_ = t.ptm.Resize(ws)
}

// Close copies what the container's terminal still holds, closes it and
// restores the user's terminal. It does nothing on a nil terminal.
func (t *userTerminal) Close() {
	if t == nil {
		return
	}
	if t.winch != nil {
		signal.Stop(t.winch)
		close(t.winch)
	}
	if t.ptm != nil {
		t.ptm.Shutdown()
		select {
		case <-t.copied:
		case <-time.After(terminalDrain):
		}
		_ = t.ptm.Close()
	}
	_ = t.user.Reset()
}
