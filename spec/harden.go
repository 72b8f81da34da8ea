package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// AnnotationHardened marks a spec produced by ApplyPolicy under
// PolicyHardened (value "true").
const AnnotationHardened = "io.pyisolate.out.hardened"

// ApplyPolicy returns the spec a caller's plain OCI spec (a bundle without a
// pyisolate manifest, such as `ctr run`, CRI or Docker make) runs with under
// policy p on host h. s is not modified.
//
// Under PolicyFaithful the request is kept as it is. Under PolicyHardened
// what CheckPolicy refuses is an error (a *PolicyError naming the field and
// the rule), and the floors of ApplyFloors are applied and listed in the
// AnnotationFloors annotation. Everything else is kept as the caller wrote
// it: root, hostname, mounts, hooks, the process (capabilities within
// HardenedCapabilities included), namespaces, id mappings, sysctls, cgroups
// path and resource limits, devices, a seccomp profile the caller gave.
//
// ApplyPolicy fails for a spec without process or root, and on a host that
// cannot run Linux containers.
func ApplyPolicy(s *specs.Spec, p Policy, h Host, hc HostChecks) (*specs.Spec, error) {
	if s == nil {
		return nil, errors.New("plain spec: no spec")
	}
	if h.Restriction == RestrictionUnsupported {
		return nil, ErrUnsupported
	}
	if s.Process == nil {
		return nil, errors.New("plain spec: spec has no process")
	}
	if s.Root == nil || s.Root.Path == "" {
		return nil, errors.New("plain spec: spec has no root.path")
	}
	if _, err := ParsePolicy(string(p)); err != nil {
		return nil, err
	}
	if err := CheckPolicy(s, p, hc); err != nil {
		return nil, err
	}
	out, err := cloneSpec(s)
	if err != nil {
		return nil, fmt.Errorf("plain spec: %w", err)
	}
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	// The runtime's outputs are the runtime's to write: a client's
	// io.pyisolate.out.* annotations are dropped.
	for k := range out.Annotations {
		if strings.HasPrefix(k, AnnotationOutPrefix) || k == AnnotationDegraded {
			delete(out.Annotations, k)
		}
	}
	out.Annotations[AnnotationPolicyOut] = string(p)
	out.Annotations[AnnotationRestriction] = string(h.Restriction)
	if p != PolicyHardened {
		return out, nil
	}
	out.Annotations[AnnotationHardened] = "true"
	if floors := ApplyFloors(out, h); len(floors) > 0 {
		out.Annotations[AnnotationFloors] = strings.Join(floors, ",")
	}
	if out.Linux.Seccomp == nil {
		// The request had none and this host or build cannot load one.
		out.Annotations[AnnotationDegraded] = string(DropSeccomp)
	}
	return out, nil
}

// defaultMaskedPaths adds runc's default masked and read-only paths, and the
// extra masked paths Build uses, to masked and ro.
func defaultMaskedPaths(masked, ro []string) ([]string, []string) {
	def := specconv.Example().Linux
	return mergePaths(masked, def.MaskedPaths, []string{"/sys/devices/virtual/powercap", "/proc/interrupts"}),
		mergePaths(ro, def.ReadonlyPaths)
}

// cloneSpec deep-copies a spec through its JSON form.
func cloneSpec(s *specs.Spec) (*specs.Spec, error) {
	data, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	var out specs.Spec
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// mergePaths returns have followed by every path of adds not yet in it.
func mergePaths(have []string, adds ...[]string) []string {
	out := slices.Clone(have)
	for _, list := range adds {
		for _, p := range list {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// isDenyAll reports whether a device rule denies every device.
func isDenyAll(d specs.LinuxDeviceCgroup) bool {
	return !d.Allow && (d.Type == "" || d.Type == "a") && d.Major == nil && d.Minor == nil &&
		strings.Contains(d.Access, "r") && strings.Contains(d.Access, "w") && strings.Contains(d.Access, "m")
}
