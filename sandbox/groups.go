package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/pyisolate/pyisolate-oci/runtime/group"
	"github.com/pyisolate/pyisolate-oci/runtime/warm"
	"github.com/pyisolate/pyisolate-oci/spec"
	"github.com/pyisolate/pyisolate-oci/tensoripc"
)

// The group lifetimes the faces need, all opening groups here (package
// sandbox is the only caller of group.Open).

// RunGroups is the group of one `pyisolate run`: opened (created, with the
// run's retention, when no live group of that name exists) for its one
// container, left when the run ends; the last member on the host ends it.
type RunGroups struct {
	// Root is the runtime's state root.
	Root string
	// Retention is the segment retention of a group this run creates; a
	// group that exists with another one is refused (zero: any).
	Retention time.Duration
	// Warn receives the group's warnings (a file-backed fallback).
	Warn func(msg string)

	g *group.Group
}

// Join opens group name for member id; the runner's pid is the member's
// until the container's init is registered.
func (rg *RunGroups) Join(ctx context.Context, name, id string, m *spec.Manifest) (*group.Group, error) {
	g, err := group.Open(ctx, rg.Root, name, id, os.Getpid(), group.Options{
		ShmSize: int64(m.Limits.ShmSize), Retention: rg.Retention,
	})
	if err != nil {
		return nil, err
	}
	// A group's retention is its creator's: a different one asked of a
	// group that exists is refused, not ignored.
	if have := g.Domain.Retention(); rg.Retention > 0 && have != rg.Retention {
		if _, err := g.Leave(ctx, id); err != nil && rg.Warn != nil {
			rg.Warn(err.Error())
		}
		return nil, userErr(fmt.Errorf("--shm-retention %s: group %s exists with retention %s, set by the run that created it; give the same or none",
			rg.Retention, name, have))
	}
	if rg.Warn != nil {
		for _, w := range g.Domain.Warnings() {
			rg.Warn(w)
		}
	}
	rg.g = g
	return g, nil
}

// Leave records that member id left.
func (rg *RunGroups) Leave(ctx context.Context, name, id string) {
	if rg.g == nil {
		return
	}
	ended, err := rg.g.Leave(ctx, id)
	if err != nil && rg.Warn != nil {
		rg.Warn(err.Error())
	}
	if ended {
		if err := warm.StopGroup(ctx, NewRuntime(rg.Root), name); err != nil && rg.Warn != nil {
			rg.Warn(err.Error())
		}
	}
}

// SharedGroups are the groups of a process that serves many members, the
// containerd shim: a group is opened on its first member in this process,
// its shared memory watched (pressure warnings, attribution, reclaim) while
// this process serves members of it, and left with each member; members
// served by other processes join the same files on the host.
type SharedGroups struct {
	ctx  context.Context
	root string
	warn func(group, msg string)

	mu     sync.Mutex
	groups map[string]*sharedGroup
}

type sharedGroup struct {
	g       *group.Group
	members map[string]bool
	cancel  context.CancelFunc
}

// NewSharedGroups returns the groups of a process whose lifetime ctx is,
// under state root root; warn receives each group's warnings.
func NewSharedGroups(ctx context.Context, root string, warn func(group, msg string)) *SharedGroups {
	return &SharedGroups{ctx: context.WithoutCancel(ctx), root: root, warn: warn, groups: map[string]*sharedGroup{}}
}

// Join adds member id to group name, opening (or creating) the group on
// first use in this process.
func (sg *SharedGroups) Join(ctx context.Context, name, id string, m *spec.Manifest) (*group.Group, error) {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	if e := sg.groups[name]; e != nil {
		if err := e.g.Join(ctx, id, os.Getpid()); err != nil {
			return nil, err
		}
		e.members[id] = true
		return e.g, nil
	}
	g, err := group.Open(ctx, sg.root, name, id, os.Getpid(), group.Options{ShmSize: int64(m.Limits.ShmSize)})
	if err != nil {
		return nil, err
	}
	for _, w := range g.Domain.Warnings() {
		sg.warn(name, w)
	}
	wctx, cancel := context.WithCancel(sg.ctx)
	go func() {
		warn := func(p tensoripc.Pressure) { sg.warn(name, p.Message) }
		if err := g.Domain.WatchPressure(wctx, warn); err != nil && !errors.Is(err, context.Canceled) {
			sg.warn(name, fmt.Sprintf("watch group shared memory: %v", err))
		}
	}()
	sg.groups[name] = &sharedGroup{g: g, members: map[string]bool{id: true}, cancel: cancel}
	return g, nil
}

// Register records the host pid of member id's init, so that the segments
// it makes are attributed to it.
func (sg *SharedGroups) Register(ctx context.Context, name, id string, pid int) error {
	g := sg.Get(name)
	if g == nil {
		return nil
	}
	return g.Join(ctx, id, pid)
}

// Get returns group name while this process serves a member of it, or nil.
func (sg *SharedGroups) Get(name string) *group.Group {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	if e := sg.groups[name]; e != nil {
		return e.g
	}
	return nil
}

// Leave records that member id left group name; the group's watch stops
// with the last member this process serves, and the group ends with its
// last member on the host.
func (sg *SharedGroups) Leave(ctx context.Context, name, id string) {
	sg.mu.Lock()
	defer sg.mu.Unlock()
	e := sg.groups[name]
	if e == nil || !e.members[id] {
		return
	}
	delete(e.members, id)
	ended, err := e.g.Leave(ctx, id)
	if err != nil {
		sg.warn(name, fmt.Sprintf("leave group: %v", err))
	}
	if ended {
		if err := warm.StopGroup(ctx, NewRuntime(sg.root), name); err != nil {
			sg.warn(name, err.Error())
		}
	}
	if len(e.members) == 0 {
		e.cancel()
		delete(sg.groups, name)
	}
}

// JoinHost opens group name under root for a host process that runs outside
// containers (`pyisolate shm path --join`), as member "host" with pid,
// creating the group with a tmpfs of shmSize bytes (0: the default) when
// none lives.
func JoinHost(ctx context.Context, root, name string, pid int, shmSize int64) (*group.Group, error) {
	return group.Open(ctx, root, name, "host", pid, group.Options{ShmSize: shmSize})
}
