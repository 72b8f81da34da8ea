package shim

import (
	"context"
	"errors"
	"os"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
	"github.com/pyisolate/pyisolate-oci/tensoripc"
)

// shimGroup is an isolation group as this shim holds it: the members it
// serves share the group's /dev/shm tmpfs and socket directory (members
// served by other shims or by `pyisolate run` join the same files on the
// host). The shim watches the group's shared memory while it serves members.
type shimGroup struct {
	g       *runtime.Group
	members map[string]bool
	cancel  context.CancelFunc
}

// shimGroups is the shim's group registry as the sandbox core joins and
// leaves groups (sandbox.Groups).
type shimGroups struct{ s *service }

func (sg shimGroups) Join(ctx context.Context, name, id string, m *spec.Manifest) (*runtime.Group, error) {
	return sg.s.joinGroup(ctx, name, id, m)
}

func (sg shimGroups) Leave(ctx context.Context, name, id string) { sg.s.leaveGroup(ctx, name, id) }

// joinGroup adds container id to group name, opening (or creating) the
// group on first use in this shim.
func (s *service) joinGroup(ctx context.Context, name, id string, m *spec.Manifest) (*runtime.Group, error) {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	if sg := s.groups[name]; sg != nil {
		if err := sg.g.Join(ctx, id, os.Getpid()); err != nil {
			return nil, err
		}
		sg.members[id] = true
		return sg.g, nil
	}
	g, err := runtime.OpenGroup(ctx, s.rt.Root, name, id, os.Getpid(), runtime.GroupOptions{ShmSize: int64(m.Limits.ShmSize)})
	if err != nil {
		return nil, err
	}
	for _, w := range g.Domain.Warnings() {
		log.G(ctx).WithField("group", name).Warn(w)
	}
	wctx, cancel := context.WithCancel(context.WithoutCancel(s.ctx))
	go func() {
		warn := func(p tensoripc.Pressure) { log.G(wctx).WithField("group", name).Warn(p.Message) }
		if err := g.Domain.WatchPressure(wctx, warn); err != nil && !errors.Is(err, context.Canceled) {
			log.G(wctx).WithError(err).WithField("group", name).Warn("watch group shared memory")
		}
	}()
	s.groups[name] = &shimGroup{g: g, members: map[string]bool{id: true}, cancel: cancel}
	return g, nil
}

// registerMember records the host pid of a member's init, so that the
// segments it makes are attributed to it.
func (s *service) registerMember(ctx context.Context, name, id string, pid int) {
	s.gmu.Lock()
	sg := s.groups[name]
	s.gmu.Unlock()
	if sg == nil {
		return
	}
	if err := sg.g.Join(ctx, id, pid); err != nil {
		log.G(ctx).WithError(err).Warn("register group member")
	}
}

// leaveGroup records that member id exited; the group ends with its last
// member on the host.
func (s *service) leaveGroup(ctx context.Context, name, id string) {
	s.gmu.Lock()
	defer s.gmu.Unlock()
	sg := s.groups[name]
	if sg == nil || !sg.members[id] {
		return
	}
	delete(sg.members, id)
	if _, err := sg.g.Leave(ctx, id); err != nil {
		log.G(ctx).WithError(err).WithField("group", name).Warn("leave group")
	}
	if len(sg.members) == 0 {
		sg.cancel()
		delete(s.groups, name)
	}
}

// explainSIGBUS logs, for a process of c killed by SIGBUS, whether its
// group's /dev/shm was full and who holds it (torch filling a segment of a
// full tmpfs dies of SIGBUS, not ENOSPC).
func (s *service) explainSIGBUS(c *container, execID string, st runtime.ExitStatus) {
	if st.Signal != unix.SIGBUS || c.group == "" {
		return
	}
	s.gmu.Lock()
	sg := s.groups[c.group]
	s.gmu.Unlock()
	if sg == nil {
		return
	}
	why, _ := sg.g.Domain.ExplainSIGBUS(s.ctx)
	l := log.G(s.ctx).WithField("id", c.id).WithField("group", c.group)
	if execID != "" {
		l = l.WithField("exec", execID)
	}
	l.Warnf("container %s was killed by SIGBUS: %s", c.id, why)
}

// endAbandonedGroups ends the groups under root whose members all died
// (used by the delete action after a shim was killed).
func endAbandonedGroups(ctx context.Context, root string) {
	names, err := runtime.ListGroups(root)
	if err != nil {
		return
	}
	for _, n := range names {
		g, err := runtime.LoadGroup(root, n)
		if err != nil {
			continue
		}
		if _, err := g.EndIfAbandoned(ctx); err != nil {
			log.G(ctx).WithError(err).WithField("group", n).Warn("end abandoned group")
		}
	}
}
