package sandbox

import (
	"context"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// ExplicitRequest is what a face asks PrepareExplicit for: a sandbox given
// as a mount list (spec.Explicit), as the bwrap face reads it from a bwrap
// command line, rather than a bundle.
type ExplicitRequest struct {
	// ID is the container id, already reserved by the caller.
	ID string
	// Runtime is the runtime whose state root holds the container.
	Runtime *runtime.Runtime
	// Sandbox is the request, not yet checked.
	Sandbox *spec.Explicit
	// UID and GID are the caller's ids. The sandbox's user namespace maps
	// them, and only them, to its root, as bwrap maps only the caller: what
	// the extension writes (to /dev/shm, to its socket directory) belongs
	// to the caller, so that the caller can open it. A root caller is
	// mapped to itself, with no capability left.
	UID, GID int
}

// HostRefusal is the reason a host gives no sandbox to an explicit request:
// the runtime never runs a command unsandboxed.
type HostRefusal struct {
	// Restriction is the host's restriction model.
	Restriction spec.Restriction
	// Reason is what detection saw; Remedy what to do about it.
	Reason, Remedy string
}

func (e *HostRefusal) Error() string {
	// "Permission denied" is the kernel's word for a refused user
	// namespace (bwrap: "setting up uid map: Permission denied"), which
	// callers that classify bwrap's failures look for.
	return fmt.Sprintf("creating new namespace failed: Permission denied (no sandbox can be made here: "+
		"restriction model %s: %s; remedy: %s)", e.Restriction, e.Reason, e.Remedy)
}

// PrepareExplicit checks and resolves an explicit request (spec.CheckExplicit:
// the path policy of explicit requests), makes the empty root filesystem and
// builds the spec (spec.BuildExplicit) for this host, rootless or not. A host
// where no sandbox can be made (no CAP_SYS_ADMIN and no user namespaces, or
// rootless with user namespaces blocked) is refused with a *HostRefusal.
// Faults of the request are UserErrors. The container joins no isolation
// group: its caller is a process of the host, not a member.
func PrepareExplicit(ctx context.Context, req ExplicitRequest) (*Container, error) {
	prof, err := Host(ctx, req.Runtime.Root)
	if err != nil {
		return nil, err
	}
	if prof.Restriction == spec.RestrictionNoCaps || (prof.Rootless && prof.Restriction.ForbidsUserNamespaces()) {
		return nil, &HostRefusal{Restriction: prof.Restriction, Reason: prof.RestrictionReason, Remedy: prof.Remedy}
	}
	checked, err := spec.CheckExplicit(req.Sandbox, req.UID)
	if err != nil {
		return nil, userErr(err)
	}
	rootfs, err := req.Runtime.EmptyRootfs(req.ID)
	if err != nil {
		return nil, err
	}
	host := prof.SpecHost()
	opts := spec.Options{ID: req.ID, Rootfs: rootfs}
	rootlessOptions(&opts, prof, req.ID)
	opts.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(req.UID), Size: 1}}
	opts.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(req.GID), Size: 1}}
	es, err := spec.BuildExplicit(checked, host, opts)
	if err != nil {
		return nil, userErr(err)
	}
	if err := prepareRootlessCgroup(prof, es.Spec); err != nil {
		return nil, err
	}
	return &Container{Spec: es.Spec, Host: host, RootfsDirs: es.Dirs, id: req.ID}, nil
}
