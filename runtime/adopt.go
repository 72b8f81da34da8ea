package runtime

import (
	"fmt"
	"os"

	"github.com/opencontainers/cgroups"
)

// The support package runtime/warm needs to put a process that this runtime
// did not start (a warm-started extension, forked from a template) into a
// container it created.

// AdoptProcess moves process pid (a host pid) into every cgroup of the
// container, as libcontainer puts the container's own init there. The
// container must not be deleted while the process lives.
func (c *Container) AdoptProcess(pid int) error {
	st, err := c.lc.State()
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
