package runtime

import (
	"fmt"
	"time"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/utils"
)

// Status is the lifecycle state of a container, with the OCI names.
type Status string

// The container statuses.
const (
	// StatusCreated: the init is set up and waits for Start.
	StatusCreated Status = "created"
	// StatusRunning: the init runs the container's process.
	StatusRunning Status = "running"
	// StatusPaused: the container's cgroup is frozen.
	StatusPaused Status = "paused"
	// StatusStopped: the init has exited; the container awaits Delete.
	StatusStopped Status = "stopped"
	// StatusUnknown: a state directory without readable state, left by a
	// creation that was cut short; Runtime.Delete removes it.
	StatusUnknown Status = "unknown"
)

// State describes a container.
type State struct {
	// ID is the container id.
	ID string `json:"id"`
	// Status is the lifecycle state.
	Status Status `json:"status"`
	// InitPID is the host pid of the container's init, or 0 when stopped.
	InitPID int `json:"pid"`
	// Bundle is the bundle path given to Create.
	Bundle string `json:"bundle"`
	// Rootfs is the host path of the root filesystem.
	Rootfs string `json:"rootfs,omitempty"`
	// Created is when the container was created.
	Created time.Time `json:"created"`
	// Annotations are the spec's annotations.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// State returns the current state of the container.
func (c *Container) State() (State, error) {
	s, err := c.lc.State()
	if err != nil {
		return State{}, fmt.Errorf("state of container %s: %w", c.ID(), err)
	}
	status, err := c.lc.Status()
	if err != nil {
		return State{}, fmt.Errorf("state of container %s: %w", c.ID(), err)
	}
	bundle, ann := utils.Annotations(s.Config.Labels)
	extra, err := c.rt.readExtraState(c.ID())
	if err != nil {
		return State{}, fmt.Errorf("state of container %s: %w", c.ID(), err)
	}
	ann = extra.withRuntimeAnnotations(ann)
	st := State{
		ID:          c.ID(),
		Status:      statusOf(status),
		Bundle:      bundle,
		Rootfs:      s.Config.Rootfs,
		Created:     s.Created,
		Annotations: ann,
	}
	if st.Status != StatusStopped {
		st.InitPID = s.InitProcessPid
	}
	return st, nil
}

func statusOf(s libcontainer.Status) Status {
	switch s {
	case libcontainer.Created:
		return StatusCreated
	case libcontainer.Running:
		return StatusRunning
	case libcontainer.Paused:
		return StatusPaused
	case libcontainer.Stopped:
		return StatusStopped
	}
	return StatusUnknown
}
