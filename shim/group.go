package shim

import (
	"context"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/runtime/group"
)

// explainSIGBUS logs, for a process of c killed by SIGBUS, whether its
// group's /dev/shm was full and who holds it (torch filling a segment of a
// full tmpfs dies of SIGBUS, not ENOSPC).
func (s *service) explainSIGBUS(c *container, execID string, st runtime.ExitStatus) {
	if st.Signal != unix.SIGBUS || c.group == "" {
		return
	}
	g := s.groups.Get(c.group)
	if g == nil {
		return
	}
	why, _ := g.Domain.ExplainSIGBUS(s.ctx)
	l := log.G(s.ctx).WithField("id", c.id).WithField("group", c.group)
	if execID != "" {
		l = l.WithField("exec", execID)
	}
	l.Warnf("container %s was killed by SIGBUS: %s", c.id, why)
}

// endAbandonedGroups ends the groups under root whose members all died
// (used by the delete action after a shim was killed).
func endAbandonedGroups(ctx context.Context, root string) {
	names, err := group.List(root)
	if err != nil {
		return
	}
	for _, n := range names {
		g, err := group.Load(root, n)
		if err != nil {
			continue
		}
		if _, err := g.EndIfAbandoned(ctx); err != nil {
			log.G(ctx).WithError(err).WithField("group", n).Warn("end abandoned group")
		}
	}
}
