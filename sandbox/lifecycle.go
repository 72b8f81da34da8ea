package sandbox

import (
	"context"
	"fmt"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// The rules after Prepare that faces whose containers outlive the command
// that made them (`pyisolate delete`, the OCI command-line face) share: what
// a container recorded of itself in its state, and how it ends.

// Recorded is what a prepared container recorded of itself in its spec's
// annotations (runtime.State's), which every later command of a face reads
// back.
type Recorded struct {
	// Group is the isolation group of an extension, "" for a plain
	// container.
	Group string
	// Policy is the level of a plain container, "" for an extension.
	Policy spec.Policy
}

// Extension reports whether the container is an extension's (it has no
// plain container's level).
func (r Recorded) Extension() bool { return r.Policy == "" }

// RecordedOf reads what a container recorded from its state's annotations.
// A plain container without a recorded level counts as hardened, the
// stricter one.
func RecordedOf(st runtime.State) Recorded {
	if g := st.Annotations[spec.AnnotationGroup]; g != "" {
		return Recorded{Group: g}
	}
	p, err := spec.ParsePolicy(st.Annotations[spec.AnnotationPolicyOut])
	if err != nil {
		p = spec.PolicyHardened
	}
	return Recorded{Policy: p}
}

// Delete deletes container id under r like runtime.Runtime.Delete (force
// kills it first) and then removes it from its isolation group, ending the
// group when no member is left alive, so that its shared memory is not left
// mounted: for a face that joined the group in one process and deletes in
// another (the `run` or `create` that joined is gone).
func Delete(ctx context.Context, r *runtime.Runtime, id string, force bool) error {
	grp := ""
	if c, err := r.Load(id); err == nil {
		if st, err := c.State(); err == nil {
			grp = RecordedOf(st).Group
		}
	}
	if err := r.Delete(ctx, id, force); err != nil {
		return err
	}
	if grp == "" {
		return nil
	}
	if err := releaseMember(ctx, r.StateRoot(), grp, id); err != nil {
		return fmt.Errorf("delete container %s: leave group %s: %w", id, grp, err)
	}
	return nil
}

// ExecSpec is the process an exec request runs in a container that recorded
// rec: an extension's exec gets the sandbox's capabilities (nil: the
// container's), no_new_privileges and no AppArmor profile of the client's;
// under the hardened policy an exec process, which enters the container
// from the host, is checked as the init was and gets the no-new-privileges
// floor; faithful runs it as asked. Clients build an exec's process from
// the container's original request, which an extension's sandbox replaced.
func ExecSpec(ps specs.Process, rec Recorded) (*specs.Process, error) {
	switch {
	case rec.Extension():
		ps.Capabilities = nil
		ps.NoNewPrivileges = true
		ps.ApparmorProfile = ""
	case rec.Policy == spec.PolicyHardened:
		if err := spec.CheckProcessPolicy(&ps, rec.Policy); err != nil {
			return nil, userErr(err)
		}
		ps.NoNewPrivileges = true
	}
	return &ps, nil
}

// CheckUpdate refuses an update of a running container's resources (`runc
// update`) that loosens an extension's limits: its memory and pids limits
// come from its manifest, and a client may lower them, not raise or remove
// them. A plain container's limits are its client's to change, as under
// runc. cur are the container's limits now.
func CheckUpdate(rec Recorded, cur, next *specs.LinuxResources) error {
	if !rec.Extension() || next == nil || cur == nil {
		return nil
	}
	if cur.Memory != nil && cur.Memory.Limit != nil && *cur.Memory.Limit > 0 &&
		next.Memory != nil && next.Memory.Limit != nil {
		if n := *next.Memory.Limit; n <= 0 || n > *cur.Memory.Limit {
			return userErr(fmt.Errorf("update: an extension's memory limit (%d bytes) comes from its manifest: it may be lowered, not raised or removed (asked: %d)",
				*cur.Memory.Limit, n))
		}
	}
	if cur.Pids != nil && cur.Pids.Limit != nil && *cur.Pids.Limit > 0 &&
		next.Pids != nil && next.Pids.Limit != nil {
		if n := *next.Pids.Limit; n <= 0 || n > *cur.Pids.Limit {
			return userErr(fmt.Errorf("update: an extension's pids limit (%d) comes from its manifest: it may be lowered, not raised or removed (asked: %d)",
				*cur.Pids.Limit, n))
		}
	}
	return nil
}
