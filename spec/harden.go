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

// AnnotationHardened marks a spec produced by Harden (value "true").
const AnnotationHardened = "io.pyisolate.out.hardened"

// hardenNamespaces are the namespaces Harden adds when the caller's spec lacks
// them, in this order. The network namespace is handled apart.
var hardenNamespaces = []specs.LinuxNamespaceType{
	specs.PIDNamespace, specs.IPCNamespace, specs.UTSNamespace, specs.MountNamespace,
}

// Harden returns a copy of a caller's plain OCI spec (a bundle without a
// pyisolate manifest, such as `ctr run` or Docker make) with pyisolate's
// sandbox defaults applied on top. s is not modified.
//
// Kept as the caller wrote them: root (path and readonly: the root filesystem
// becomes read-only only if the caller asked), hostname, mounts, hooks,
// annotations, the process (args, env, cwd, user, terminal, rlimits, OOM
// score, apparmor/selinux labels), uid/gid mappings, sysctls, cgroups path
// and resource limits, devices, and a seccomp profile the caller gave.
//
// Applied:
//   - process.capabilities: every set emptied (all capabilities dropped);
//   - process.noNewPrivileges: true;
//   - linux.seccomp: the default profile (containerd's default deny list,
//     less StrictDenied), computed for the dropped capabilities, when the
//     caller gave none and h.Seccomp is true;
//   - linux.maskedPaths and linux.readonlyPaths: runc's defaults
//     (/proc/kcore, /proc/keys, ..., /proc/sys, /proc/sysrq-trigger, ...) and
//     the extra masked paths Build uses, added to the caller's;
//   - linux.namespaces: pid, ipc, uts and mount added when missing; network
//     added when missing (a caller's network entry, with a path to join or
//     without, is kept). Namespaces the caller set are kept with their paths.
//     Nothing is added when h.Restriction forbids namespaces (no-caps);
//   - linux.resources.devices: a leading deny-all rule ("a", rwm), so that
//     only the devices the caller's later rules (and libcontainer's default
//     set: null, zero, full, random, urandom, tty, ptmx, pts) allow are
//     reachable;
//   - annotations: AnnotationHardened, AnnotationRestriction and, when
//     something was dropped, AnnotationDegraded (as Build writes it).
//
// Harden fails for a spec without process or root, and on a host that cannot
// run Linux containers.
func Harden(s *specs.Spec, h Host) (*specs.Spec, error) {
	if s == nil {
		return nil, errors.New("harden spec: no spec")
	}
	if h.Restriction == RestrictionUnsupported {
		return nil, ErrUnsupported
	}
	if s.Process == nil {
		return nil, errors.New("harden spec: spec has no process")
	}
	if s.Root == nil || s.Root.Path == "" {
		return nil, errors.New("harden spec: spec has no root.path")
	}
	out, err := cloneSpec(s)
	if err != nil {
		return nil, fmt.Errorf("harden spec: %w", err)
	}
	drop := Degradations(h.Restriction)
	// A user namespace is never added, so the only degradation that matters
	// here is the namespace one.
	drop = slices.DeleteFunc(drop, func(d Degradation) bool { return d == DropUserNamespace || d == DropCgroupLimits })

	p := out.Process
	p.Capabilities = &specs.LinuxCapabilities{
		Bounding: []string{}, Effective: []string{}, Permitted: []string{},
		Inheritable: []string{}, Ambient: []string{},
	}
	p.NoNewPrivileges = true

	if out.Linux == nil {
		out.Linux = &specs.Linux{}
	}
	l := out.Linux
	def := specconv.Example().Linux
	l.MaskedPaths = mergePaths(l.MaskedPaths, def.MaskedPaths, []string{"/sys/devices/virtual/powercap", "/proc/interrupts"})
	l.ReadonlyPaths = mergePaths(l.ReadonlyPaths, def.ReadonlyPaths)

	if !slices.Contains(drop, DropNamespaces) {
		for _, t := range hardenNamespaces {
			if !hasNamespace(l, t) {
				l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: t})
			}
		}
		if !hasNamespace(l, specs.NetworkNamespace) {
			l.Namespaces = append(l.Namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
		}
	}

	if l.Resources == nil {
		l.Resources = &specs.LinuxResources{}
	}
	denyAll := specs.LinuxDeviceCgroup{Allow: false, Access: "rwm"}
	if len(l.Resources.Devices) == 0 || !isDenyAll(l.Resources.Devices[0]) {
		l.Resources.Devices = append([]specs.LinuxDeviceCgroup{denyAll}, l.Resources.Devices...)
	}

	if l.Seccomp == nil {
		if h.Seccomp {
			l.Seccomp = defaultSeccomp(out)
		} else {
			drop = append(drop, DropSeccomp)
		}
	}

	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Annotations[AnnotationHardened] = "true"
	out.Annotations[AnnotationRestriction] = string(h.Restriction)
	if len(drop) > 0 {
		names := make([]string, len(drop))
		for i, d := range drop {
			names[i] = string(d)
		}
		out.Annotations[AnnotationDegraded] = strings.Join(names, ",")
	} else {
		delete(out.Annotations, AnnotationDegraded)
	}
	return out, nil
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

func hasNamespace(l *specs.Linux, t specs.LinuxNamespaceType) bool {
	for _, ns := range l.Namespaces {
		if ns.Type == t {
			return true
		}
	}
	return false
}

// isDenyAll reports whether a device rule denies every device.
func isDenyAll(d specs.LinuxDeviceCgroup) bool {
	return !d.Allow && (d.Type == "" || d.Type == "a") && d.Major == nil && d.Minor == nil &&
		strings.Contains(d.Access, "r") && strings.Contains(d.Access, "w") && strings.Contains(d.Access, "m")
}
