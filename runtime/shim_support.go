package runtime

// Small accessors the containerd shim (package shim) needs beyond the
// lifecycle API: the container's processes and cgroup statistics.

import (
	"fmt"

	"github.com/opencontainers/runc/libcontainer"
)

// Processes returns the host pids of every process in the container's
// cgroup.
func (c *Container) Processes() ([]int, error) {
	pids, err := c.lc.Processes()
	if err != nil {
		return nil, fmt.Errorf("processes of container %s: %w", c.ID(), err)
	}
	return pids, nil
}

// Stats returns the container's cgroup statistics (CPU, memory, pids, I/O).
func (c *Container) Stats() (*libcontainer.Stats, error) {
	st, err := c.lc.Stats()
	if err != nil {
		return nil, fmt.Errorf("stats of container %s: %w", c.ID(), err)
	}
	return st, nil
}
