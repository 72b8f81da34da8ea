package runtime

import (
	"fmt"
	"os"

	"github.com/opencontainers/cgroups"
)

// The support package runtime/warm needs to put a process that this runtime
// did not start (a warm-started extension, forked from a template) into a
// container it created.

// AdoptProcess makes process pid (a host pid, which this runtime did not
// start) the container's process in place of its init, which must be gone:
// it moves it into every cgroup of the container, as libcontainer puts the
// init there, and records it, so that State reports the container running
// with it as init, and Signal and Delete reach it.
func (c *Container) AdoptProcess(pid int) error {
	st, err := c.lc.State()
	if err != nil {
		return fmt.Errorf("container %s: adopt process %d: %w", c.ID(), pid, err)
	}
	start, _, ok := procStartTime(pid)
	if !ok {
		return fmt.Errorf("container %s: adopt process %d: it does not exist", c.ID(), pid)
	}
	x, err := c.rt.readExtraState(c.ID())
	if err != nil {
		return err
	}
	x.Adopted = &adoptedProcess{PID: pid, StartTime: start}
	if err := c.rt.writeExtraState(c.ID(), x); err != nil {
		return err
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

// adopted returns the container's live adopted process, or nil.
func (c *Container) adopted() *adoptedProcess {
	x, err := c.rt.readExtraState(c.ID())
	if err != nil || !x.Adopted.alive() {
		return nil
	}
	return x.Adopted
}
