package runtime

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Process is a process running in a container: its init (see Container.Wait)
// or one started by Exec.
type Process struct {
	c  *Container
	lp *libcontainer.Process
	// pid and wait, for an adopted init (AdoptProcess), stand for lp.
	pid  int
	wait func(ctx context.Context) (ExitStatus, error)
	// oomBase is the container's OOM kill count when the process started.
	oomBase uint64
	// console is the process's terminal (see console.go), or nil.
	console *Console

	once sync.Once
	done chan struct{}
	st   ExitStatus
	err  error
}

func newOwnedProcess(c *Container, lp *libcontainer.Process, oomBase uint64) *Process {
	return &Process{c: c, lp: lp, oomBase: oomBase, done: make(chan struct{})}
}

// Pid returns the host pid of the process.
func (p *Process) Pid() int {
	if p.lp == nil {
		return p.pid
	}
	pid, err := p.lp.Pid()
	if err != nil {
		return -1
	}
	return pid
}

// Signal sends sig to the process.
func (p *Process) Signal(sig syscall.Signal) error {
	if p.lp == nil {
		if err := unix.Kill(p.pid, sig); err != nil {
			return fmt.Errorf("signal %s to pid %d: %w", unix.SignalName(sig), p.pid, err)
		}
		return nil
	}
	if err := p.lp.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to pid %d: %w", unix.SignalName(sig), p.Pid(), err)
	}
	return nil
}

// Wait waits for the process to exit and returns how it ended. It may be
// called many times and from many goroutines; ctx bounds the wait only.
func (p *Process) Wait(ctx context.Context) (ExitStatus, error) {
	p.once.Do(func() { go p.reap() })
	select {
	case <-p.done:
		return p.st, p.err
	case <-ctx.Done():
		return ExitStatus{}, ctx.Err()
	}
}

// reap collects the exit status (libcontainer's Wait also waits for the
// stdio copying goroutines, if any) and checks for OOM kills while the
// cgroup still exists.
func (p *Process) reap() {
	defer close(p.done)
	if p.wait != nil {
		p.st, p.err = p.wait(context.Background())
		if n, ok := p.c.oomKills(); ok && n > p.oomBase {
			p.st.OOMKilled = true
		}
		return
	}
	ps, err := p.lp.Wait()
	if ps == nil {
		if err == nil {
			err = errors.New("no process state")
		}
		p.err = fmt.Errorf("wait: %w", err)
		return
	}
	// A non-zero exit is an *exec.ExitError; a status is not an error here.
	p.st = exitStatus(ps)
	if n, ok := p.c.oomKills(); ok && n > p.oomBase {
		p.st.OOMKilled = true
	}
}

// exitStatus converts a wait status to shell convention.
func exitStatus(ps *os.ProcessState) ExitStatus {
	ws, ok := ps.Sys().(syscall.WaitStatus)
	if !ok {
		return ExitStatus{Code: ps.ExitCode()}
	}
	if ws.Signaled() {
		return ExitStatus{Code: 128 + int(ws.Signal()), Signal: ws.Signal()}
	}
	return ExitStatus{Code: ws.ExitStatus()}
}

// oomKills returns how many processes of the container the OOM killer killed
// so far: the oom_kill counter of memory.oom_control (cgroup v1) or
// memory.events (v2). ok is false when it cannot be read (no memory
// controller, or the cgroup is gone).
func (c *Container) oomKills() (n uint64, ok bool) {
	st, err := c.lc.State()
	if err != nil {
		return 0, false
	}
	var file string
	if dir := st.CgroupPaths["memory"]; dir != "" && !cgroups.IsCgroup2UnifiedMode() {
		file = filepath.Join(dir, "memory.oom_control")
	} else if dir := st.CgroupPaths[""]; dir != "" && cgroups.IsCgroup2UnifiedMode() {
		file = filepath.Join(dir, "memory.events")
	} else {
		return 0, false
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		k, v, found := bytes.Cut(sc.Bytes(), []byte(" "))
		if found && string(k) == "oom_kill" {
			n, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			return n, err == nil
		}
	}
	return 0, false
}

// MemoryLimit returns the container's memory limit in bytes, or 0 for none.
func (c *Container) MemoryLimit() int64 {
	cg := c.lc.Config().Cgroups
	if cg == nil || cg.Resources == nil || cg.Resources.Memory <= 0 {
		return 0
	}
	return cg.Resources.Memory
}

// Exec starts p as another process in the running container, with the
// container's namespaces, cgroup and (unless p sets its own) capabilities,
// rlimits and no_new_privileges. Only this process can Wait for it.
func (c *Container) Exec(ctx context.Context, p *specs.Process, stdio Stdio) (*Process, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("exec in container %s: %w", c.ID(), err)
	}
	if p == nil || len(p.Args) == 0 {
		return nil, fmt.Errorf("exec in container %s: no process args", c.ID())
	}
	lp, err := newProcess(p)
	if err != nil {
		return nil, fmt.Errorf("exec in container %s: %w", c.ID(), err)
	}
	if lp.Cwd == "" {
		lp.Cwd = "/"
	}
	lp.Stdin, lp.Stdout, lp.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	lp.ExtraFiles = stdio.ExtraFiles
	// RLIMIT_AS: the process's own, else the init's. One that leaves the
	// Go setns init room goes to libcontainer with the others; a tighter
	// one is set once the setns init is done (rlimit_as.go).
	extra, err := c.rt.readExtraState(c.ID())
	if err != nil {
		return nil, fmt.Errorf("exec in container %s: %w", c.ID(), err)
	}
	as := extra.RlimitAS
	own := len(lp.Rlimits) > 0
	if own {
		lp.Rlimits, as = takeRlimitAS(lp.Rlimits)
	}
	if as != nil && roomyRlimitAS(as) {
		if !own {
			// libcontainer gives a process with no list the init's.
			lp.Rlimits = slices.Clone(c.lc.Config().Rlimits)
		}
		lp.Rlimits, as = append(lp.Rlimits, *as), nil
	}
	if own && len(lp.Rlimits) == 0 {
		// An empty list would fall back to the init's rlimits; the
		// process asked for its own, inheriting the rest.
		lp.Rlimits = inheritedRlimit()
	}
	base, _ := c.oomKills()
	cons, err := startWithConsole(c.lc.Run, lp, p, stdio.ConsoleSocket)
	if err == nil {
		var pid int
		if pid, err = lp.Pid(); err == nil {
			if err = setRlimitAS(pid, as); err != nil {
				_ = lp.Signal(unix.SIGKILL)
				_, _ = lp.Wait()
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("exec in container %s: %w", c.ID(), err)
	}
	pr := newOwnedProcess(c, lp, base)
	pr.console = cons
	return pr, nil
}

// newProcess converts an OCI process to libcontainer's, like runc does.
func newProcess(p *specs.Process) (*libcontainer.Process, error) {
	nnp := p.NoNewPrivileges
	lp := &libcontainer.Process{
		Args:            p.Args,
		Env:             p.Env,
		UID:             int(p.User.UID),
		GID:             int(p.User.GID),
		Cwd:             p.Cwd,
		Label:           p.SelinuxLabel,
		NoNewPrivileges: &nnp,
		AppArmorProfile: p.ApparmorProfile,
		Scheduler:       p.Scheduler,
		IOPriority:      p.IOPriority,
	}
	if c := p.Capabilities; c != nil {
		lp.Capabilities = &configs.Capabilities{
			Bounding: c.Bounding, Effective: c.Effective, Inheritable: c.Inheritable,
			Permitted: c.Permitted, Ambient: c.Ambient,
		}
	}
	for _, g := range p.User.AdditionalGids {
		lp.AdditionalGroups = append(lp.AdditionalGroups, int(g))
	}
	for _, rl := range p.Rlimits {
		t, ok := rlimits[rl.Type]
		if !ok {
			return nil, fmt.Errorf("unknown rlimit %q", rl.Type)
		}
		lp.Rlimits = append(lp.Rlimits, configs.Rlimit{Type: t, Hard: rl.Hard, Soft: rl.Soft})
	}
	aff, err := configs.ConvertCPUAffinity(p.ExecCPUAffinity)
	if err != nil {
		return nil, err
	}
	lp.CPUAffinity = aff
	return lp, nil
}

var rlimits = map[string]int{
	"RLIMIT_CPU":        unix.RLIMIT_CPU,
	"RLIMIT_FSIZE":      unix.RLIMIT_FSIZE,
	"RLIMIT_DATA":       unix.RLIMIT_DATA,
	"RLIMIT_STACK":      unix.RLIMIT_STACK,
	"RLIMIT_CORE":       unix.RLIMIT_CORE,
	"RLIMIT_RSS":        unix.RLIMIT_RSS,
	"RLIMIT_NPROC":      unix.RLIMIT_NPROC,
	"RLIMIT_NOFILE":     unix.RLIMIT_NOFILE,
	"RLIMIT_MEMLOCK":    unix.RLIMIT_MEMLOCK,
	"RLIMIT_AS":         unix.RLIMIT_AS,
	"RLIMIT_LOCKS":      unix.RLIMIT_LOCKS,
	"RLIMIT_SIGPENDING": unix.RLIMIT_SIGPENDING,
	"RLIMIT_MSGQUEUE":   unix.RLIMIT_MSGQUEUE,
	"RLIMIT_NICE":       unix.RLIMIT_NICE,
	"RLIMIT_RTPRIO":     unix.RLIMIT_RTPRIO,
	"RLIMIT_RTTIME":     unix.RLIMIT_RTTIME,
}

// waitPidExit waits until process pid has exited (or gone() reports so),
// for a process that is not our child: through a pidfd where the kernel has
// them, else by polling. It gives up after 10 seconds.
func waitPidExit(ctx context.Context, pid int, gone func() bool) error {
	if pid <= 0 || gone() {
		return nil
	}
	deadline := time.Now().Add(10 * time.Second)
	fd, err := unix.PidfdOpen(pid, 0)
	if err == nil {
		defer unix.Close(fd)
		// The pidfd may name a reused pid; gone() checks the start time.
		if gone() {
			return nil
		}
		for time.Now().Before(deadline) {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 50)
			if err != nil && !errors.Is(err, unix.EINTR) {
				break
			}
			if n > 0 {
				return nil
			}
		}
	} else if errors.Is(err, unix.ESRCH) {
		return nil
	}
	for d := time.Millisecond; time.Now().Before(deadline); d = min(2*d, 50*time.Millisecond) {
		if gone() {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(d)
	}
	if gone() {
		return nil
	}
	return fmt.Errorf("process %d still running 10s after SIGKILL", pid)
}
