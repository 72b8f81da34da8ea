package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/system"
	"golang.org/x/sys/unix"
)

// The support package runtime/warm needs to make a process that this
// runtime did not start (a warm-started member, forked from a template) the
// init of a container it created, whose own init is gone.

// AdoptHooks are what the owner of an adopted process does for the
// container: Start lets the process run (Container.Start calls it once, in
// place of libcontainer's exec), Wait returns how it ended (Container.Wait).
type AdoptHooks struct {
	Start func(ctx context.Context) error
	Wait  func(ctx context.Context) (ExitStatus, error)
}

// libcontainer's state file and exec fifo in a container's state directory.
const (
	lcStateFile = "state.json"
	lcExecFifo  = "exec.fifo"
)

// AdoptProcess makes process pid (a host pid this runtime did not start)
// the container's init in place of the one libcontainer started, which must
// be dead and reaped: it moves the process into every cgroup of the
// container and gives it the process's rlimits and oom_score_adj, as
// libcontainer does for an init, and records it as the init
// in libcontainer's state, so that status, signals, exec (which joins its
// namespaces), pause and delete reach it, from this process and from any
// other that loads the container. Until Start, the container is created.
func (c *Container) AdoptProcess(pid int, h AdoptHooks) error {
	st, err := c.lc.State()
	if err != nil {
		return fmt.Errorf("container %s: adopt process %d: %w", c.ID(), pid, err)
	}
	ps, err := system.Stat(pid)
	if err != nil {
		return fmt.Errorf("container %s: adopt process %d: %w", c.ID(), pid, err)
	}
	for _, dir := range st.CgroupPaths {
		if dir == "" {
			continue
		}
		if _, err := os.Stat(dir); err != nil {
			continue // a controller libcontainer could not use (rootless)
		}
		if err := cgroups.WriteCgroupProc(dir, pid); err != nil {
			return fmt.Errorf("container %s: adopt process %d into %s: %w", c.ID(), pid, dir, err)
		}
	}
	base, _ := c.oomKills()
	if err := c.rt.recordInit(c.ID(), st.InitProcessPid, pid, ps.StartTime); err != nil {
		return fmt.Errorf("container %s: adopt process %d: %w", c.ID(), pid, err)
	}
	lc, err := libcontainer.Load(c.rt.root(), c.ID())
	if err != nil {
		return fmt.Errorf("container %s: adopt process %d: %w", c.ID(), pid, err)
	}
	c.lc = lc
	if err := c.applyProcessLimits(pid); err != nil {
		return fmt.Errorf("container %s: adopt process %d: %w", c.ID(), pid, err)
	}
	c.init = &Process{c: c, pid: pid, wait: h.Wait, oomBase: base, done: make(chan struct{})}
	c.start = h.Start
	return nil
}

// recordInit rewrites libcontainer's state of container id so that the
// process pid (started at start, in clock ticks) is its init, in place of
// oldPID; libcontainer has no call for it. The file is replaced atomically.
func (r *Runtime) recordInit(id string, oldPID, pid int, start uint64) error {
	p := filepath.Join(r.root(), id, lcStateFile)
	b, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	var st map[string]json.RawMessage
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	var nsPaths map[string]string
	if raw, ok := st["namespace_paths"]; ok {
		if err := json.Unmarshal(raw, &nsPaths); err != nil {
			return fmt.Errorf("%s: namespace_paths: %w", p, err)
		}
	}
	from, to := fmt.Sprintf("/proc/%d/", oldPID), fmt.Sprintf("/proc/%d/", pid)
	for k, v := range nsPaths {
		nsPaths[k] = strings.Replace(v, from, to, 1)
	}
	for k, v := range map[string]any{"init_process_pid": pid, "init_process_start": start, "namespace_paths": nsPaths} {
		if st[k], err = json.Marshal(v); err != nil {
			return err
		}
	}
	out, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := p + ".adopt"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// applyProcessLimits sets the container's process rlimits (RLIMIT_AS
// included, which the runtime holds back from libcontainer: rlimit_as.go)
// and oom_score_adj on process pid.
func (c *Container) applyProcessLimits(pid int) error {
	cfg := c.lc.Config()
	for _, rl := range cfg.Rlimits {
		if err := unix.Prlimit(pid, rl.Type, &unix.Rlimit{Cur: rl.Soft, Max: rl.Hard}, nil); err != nil {
			return fmt.Errorf("set rlimit %d: %w", rl.Type, err)
		}
	}
	x, err := c.rt.readExtraState(c.ID())
	if err != nil {
		return err
	}
	if err := setRlimitAS(pid, x.RlimitAS); err != nil {
		return err
	}
	if cfg.OomScoreAdj != nil {
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/oom_score_adj", pid), []byte(strconv.Itoa(*cfg.OomScoreAdj)), 0); err != nil {
			return fmt.Errorf("set oom_score_adj: %w", err)
		}
	}
	return nil
}

// startAdopted is Start for a container whose init was adopted: its owner
// lets the process run, and the exec fifo, which tells libcontainer a
// created container from a running one, goes.
func (c *Container) startAdopted(ctx context.Context) error {
	start := c.start
	c.start = nil
	if err := start(ctx); err != nil {
		return fmt.Errorf("start container %s: %w", c.ID(), err)
	}
	if err := os.Remove(filepath.Join(c.rt.root(), c.ID(), lcExecFifo)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("start container %s: %w", c.ID(), err)
	}
	return nil
}

// OOMKills returns how many processes of the container the OOM killer has
// killed so far; ok is false when the count cannot be read.
func (c *Container) OOMKills() (n uint64, ok bool) { return c.oomKills() }

// InitPID returns the host pid of the container's init, or 0 when it has
// none running.
func (c *Container) InitPID() int {
	st, err := c.lc.State()
	if err != nil {
		return 0
	}
	return st.InitProcessPid
}
