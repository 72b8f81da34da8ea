package spec

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Policy is what the runtime does with a plain container's request (a bundle
// without a pyisolate manifest: CRI, ctr, Docker). A node chooses its level
// (containerd runtime options, `pyisolate run --policy`); a pod or container
// may tighten it with the io.pyisolate.policy annotation, never loosen it.
type Policy string

// The policy levels, loosest first.
const (
	// PolicyFaithful runs a plain container as its request says, as runc
	// would. The isolation group's features, CDI devices and CUDA IPC
	// settings still apply.
	PolicyFaithful Policy = "faithful"
	// PolicyHardened (the default) refuses, at create, what the policy
	// forbids (privileged, the host's PID, IPC or network namespace, host
	// devices, binds of forbidden host paths, a read-write /sys,
	// capabilities outside HardenedCapabilities), each with an error naming
	// the field, and applies the floors listed in Floors.
	PolicyHardened Policy = "hardened"
)

// DefaultPolicy is the level of a node that chose none.
const DefaultPolicy = PolicyHardened

// Policies lists the levels, loosest first.
var Policies = []Policy{PolicyFaithful, PolicyHardened}

// Annotations of the policy.
const (
	// AnnotationPolicy, on a pod or container, tightens the node's policy
	// for it ("hardened" on a faithful node). A looser level is refused.
	AnnotationPolicy = "io.pyisolate.policy"
	// AnnotationPolicyOut records the level a plain container ran under.
	AnnotationPolicyOut = "io.pyisolate.out.policy"
	// AnnotationFloors lists, comma separated, the floors the hardened
	// policy applied to a container (see Floors): what it changed without
	// refusing.
	AnnotationFloors = "io.pyisolate.out.floors"
)

// ParsePolicy reads a level's name.
func ParsePolicy(s string) (Policy, error) {
	for _, p := range Policies {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("unknown policy %q (want %s or %s)", s, PolicyFaithful, PolicyHardened)
}

// rank orders the levels: higher is stricter.
func (p Policy) rank() int { return slices.Index(Policies, p) }

// Tighten returns the level for a container whose node runs at p and which
// asks for level q ("" for none): q when it is at least as strict, an error
// naming the annotation when it would loosen p.
func (p Policy) Tighten(q string) (Policy, error) {
	if q == "" {
		return p, nil
	}
	want, err := ParsePolicy(q)
	if err != nil {
		return "", fmt.Errorf("%s: %w", AnnotationPolicy, err)
	}
	if want.rank() < p.rank() {
		return "", fmt.Errorf("%s: %q would loosen this node's policy %q; an annotation may only tighten it", AnnotationPolicy, q, p)
	}
	return want, nil
}

// HardenedCapabilities are the capabilities a plain container may ask for
// under PolicyHardened: Docker's and containerd's default set. A request for
// any other is refused; these are kept as requested.
var HardenedCapabilities = []string{
	"CAP_AUDIT_WRITE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID",
	"CAP_KILL", "CAP_MKNOD", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETFCAP",
	"CAP_SETGID", "CAP_SETPCAP", "CAP_SETUID", "CAP_SYS_CHROOT",
}

// ForbiddenHostPaths are the host paths, with their ancestors, that no bind
// may have as its source under PolicyHardened (paths below them may be bound:
// kubelet volumes live under /var/lib/kubelet).
var ForbiddenHostPaths = []string{"/", "/etc", "/root", "/home", "/var", "/run", "/proc", "/sys"}

// GPUDevicePaths are the device node patterns a plain container may be
// given under PolicyHardened (GPUs, as CDI or a device plugin injects them).
var GPUDevicePaths = []string{"/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*"}

// Floors are what PolicyHardened changes in a request without refusing it,
// each recorded in AnnotationFloors when applied:
//   - no-new-privileges: process.noNewPrivileges set (setuid programs do
//     not gain privileges; Kubernetes' allowPrivilegeEscalation: true has
//     no effect);
//   - seccomp-default: the default seccomp profile when the request has
//     none (Kubernetes' Unconfined or unset);
//   - masked-paths: runc's masked and read-only /proc and /sys paths added
//     to the request's;
//   - device-deny-all: a leading deny-all device cgroup rule;
//   - unprivileged-ports: net.ipv4.ip_unprivileged_port_start=0 in the
//     container's own network namespace, as Docker sets it, so that servers
//     bind ports below 1024 without CAP_NET_BIND_SERVICE.
var Floors = []string{"no-new-privileges", "seccomp-default", "masked-paths", "device-deny-all", "unprivileged-ports"}

// PolicyError is a request that a policy refuses: the field, the rule.
type PolicyError struct {
	Field  string
	Policy Policy
	Reason string
	// Hint, when set, says what is allowed; it comes last, after the
	// policy's name, so that a truncated message still names the rule.
	Hint string
}

func (e *PolicyError) Error() string {
	var s string
	if e.Policy == policyExtension {
		s = fmt.Sprintf("%s: %s; refused: an extension runs in its manifest's sandbox", e.Field, e.Reason)
	} else {
		s = fmt.Sprintf("%s: %s; refused by policy %s", e.Field, e.Reason, e.Policy)
	}
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s
}

// HostChecks answer the questions about a request that need the host: they
// keep CheckPolicy free of file reads. A nil function answers "no" (or
// returns the path unchanged).
type HostChecks struct {
	// IsHostNamespace reports whether path names a namespace of type t that
	// is the host's (the runtime's own).
	IsHostNamespace func(t specs.LinuxNamespaceType, path string) bool
	// Resolve returns a host path with its symlinks resolved.
	Resolve func(path string) string
}

// safeDevice is a device cgroup rule target every container may read and
// write: the standard set (null, zero, full, random, urandom, tty, console,
// ptmx, pts) and tun and fuse.
type safeDevice struct {
	major, minor int64 // minor -1: any
}

var safeDevices = []safeDevice{
	{1, 3}, {1, 5}, {1, 7}, {1, 8}, {1, 9}, {5, 0}, {5, 1}, {5, 2}, {136, -1}, {10, 200}, {10, 229},
}

// CheckPolicy returns the first thing in a plain container's spec that
// policy p refuses, as a *PolicyError, or nil. PolicyFaithful refuses
// nothing.
func CheckPolicy(s *specs.Spec, p Policy, hc HostChecks) error {
	if p != PolicyHardened {
		return nil
	}
	refuse := func(field, format string, a ...any) error {
		return &PolicyError{Field: field, Policy: p, Reason: fmt.Sprintf(format, a...)}
	}
	l := s.Linux
	if l == nil {
		l = &specs.Linux{}
	}
	if err := checkPrivileged(l, refuse); err != nil {
		return err
	}
	if s.Process != nil {
		if err := checkCapabilities("process.capabilities", s.Process.Capabilities, p); err != nil {
			return err
		}
	}
	if l.Resources != nil {
		gpuMajors := map[int64]bool{}
		for _, d := range l.Devices {
			if matchAny(d.Path, GPUDevicePaths) {
				gpuMajors[d.Major] = true
			}
		}
		for i, d := range l.Resources.Devices {
			if !d.Allow || !(strings.ContainsAny(d.Access, "rw") || d.Access == "") {
				continue
			}
			field := fmt.Sprintf("linux.resources.devices[%d]", i)
			if (d.Type == "" || d.Type == "a") && d.Major == nil && d.Minor == nil {
				return refuse(field, "allows every device (a privileged container)")
			}
			if !deviceRuleSafe(d, gpuMajors) {
				return refuse(field, "allows read/write access to host device %s", describeRule(d))
			}
		}
	}
	for i, d := range l.Devices {
		if !matchAny(d.Path, GPUDevicePaths) {
			return refuse(fmt.Sprintf("linux.devices[%d]", i), "host device %s (only GPUs: %s; use CDI for them)",
				d.Path, strings.Join(GPUDevicePaths, ", "))
		}
	}
	if err := checkHostNamespaces(l, hc, refuse); err != nil {
		return err
	}
	resolve := hc.Resolve
	if resolve == nil {
		resolve = func(p string) string { return p }
	}
	for _, m := range s.Mounts {
		if m.Type == "sysfs" && !slices.Contains(m.Options, "ro") {
			return refuse(fmt.Sprintf("mounts[%s]", m.Destination), "sysfs mounted read-write")
		}
		if !isBind(m) {
			continue
		}
		src := filepath.Clean(m.Source)
		for _, cand := range []string{src, filepath.Clean(resolve(src))} {
			for _, f := range ForbiddenHostPaths {
				if cand == f || strings.HasPrefix(f, strings.TrimSuffix(cand, "/")+"/") {
					return refuse(fmt.Sprintf("mounts[%s]", m.Destination), "binds host path %s (%s and its ancestors may not be bound)", m.Source, f)
				}
			}
		}
	}
	return nil
}

// CheckProcessPolicy checks an exec process's capabilities under policy p.
func CheckProcessPolicy(ps *specs.Process, p Policy) error {
	if p != PolicyHardened || ps == nil {
		return nil
	}
	return checkCapabilities("process.capabilities", ps.Capabilities, p)
}

func checkCapabilities(field string, c *specs.LinuxCapabilities, p Policy) error {
	if c == nil {
		return nil
	}
	for _, set := range []struct {
		name string
		caps []string
	}{{"bounding", c.Bounding}, {"effective", c.Effective}, {"permitted", c.Permitted},
		{"inheritable", c.Inheritable}, {"ambient", c.Ambient}} {
		for _, cp := range set.caps {
			if !slices.Contains(HardenedCapabilities, strings.ToUpper(cp)) {
				return &PolicyError{Field: field + "." + set.name, Policy: p,
					Reason: fmt.Sprintf("%s is outside the allowed capabilities", cp),
					Hint:   "allowed: " + strings.Join(HardenedCapabilities, ", ")}
			}
		}
	}
	return nil
}

// ApplyFloors applies the hardened floors to out (a copy the caller owns)
// and returns the names of those that changed it.
func ApplyFloors(out *specs.Spec, h Host) []string {
	var applied []string
	if out.Process != nil && !out.Process.NoNewPrivileges {
		out.Process.NoNewPrivileges = true
		applied = append(applied, "no-new-privileges")
	}
	if out.Linux == nil {
		out.Linux = &specs.Linux{}
	}
	l := out.Linux
	if l.Seccomp == nil && h.Seccomp {
		l.Seccomp = defaultSeccomp(out)
		applied = append(applied, "seccomp-default")
	}
	masked, ro := len(l.MaskedPaths), len(l.ReadonlyPaths)
	l.MaskedPaths, l.ReadonlyPaths = defaultMaskedPaths(l.MaskedPaths, l.ReadonlyPaths)
	if len(l.MaskedPaths) != masked || len(l.ReadonlyPaths) != ro {
		applied = append(applied, "masked-paths")
	}
	if l.Resources == nil {
		l.Resources = &specs.LinuxResources{}
	}
	if len(l.Resources.Devices) == 0 || !isDenyAll(l.Resources.Devices[0]) {
		denyAll := specs.LinuxDeviceCgroup{Allow: false, Access: "rwm"}
		l.Resources.Devices = append([]specs.LinuxDeviceCgroup{denyAll}, l.Resources.Devices...)
		applied = append(applied, "device-deny-all")
	}
	if ns, ok := findNamespace(l, specs.NetworkNamespace); ok && ns.Path == "" {
		const key = "net.ipv4.ip_unprivileged_port_start"
		if _, set := l.Sysctl[key]; !set {
			if l.Sysctl == nil {
				l.Sysctl = map[string]string{}
			}
			l.Sysctl[key] = "0"
			applied = append(applied, "unprivileged-ports")
		}
	}
	return applied
}

func findNamespace(l *specs.Linux, t specs.LinuxNamespaceType) (specs.LinuxNamespace, bool) {
	for _, ns := range l.Namespaces {
		if ns.Type == t {
			return ns, true
		}
	}
	return specs.LinuxNamespace{}, false
}

func isBind(m specs.Mount) bool {
	return m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind")
}

func matchAny(p string, patterns []string) bool {
	for _, pat := range patterns {
		if ok, _ := filepath.Match(pat, p); ok {
			return true
		}
	}
	return false
}

func deviceRuleSafe(d specs.LinuxDeviceCgroup, gpuMajors map[int64]bool) bool {
	if d.Major == nil {
		return false
	}
	if d.Type == "c" && gpuMajors[*d.Major] {
		return true
	}
	if d.Type != "c" {
		return false
	}
	for _, sd := range safeDevices {
		if sd.major != *d.Major {
			continue
		}
		if sd.minor == -1 || (d.Minor != nil && *d.Minor == sd.minor) {
			return true
		}
	}
	return false
}

func describeRule(d specs.LinuxDeviceCgroup) string {
	num := func(p *int64) string {
		if p == nil {
			return "*"
		}
		return fmt.Sprint(*p)
	}
	t := d.Type
	if t == "" {
		t = "a"
	}
	return fmt.Sprintf("%s %s:%s %s", t, num(d.Major), num(d.Minor), d.Access)
}

// policyExtension names, in a PolicyError, the rule that an extension
// container runs in its manifest's sandbox.
const policyExtension Policy = "extension"

// ExtensionReplacedBinds are the bind destinations that clients add to every
// container (CRI's /etc/hosts, /etc/hostname, /etc/resolv.conf, the pod's
// /dev/shm, Kubernetes' termination log, Podman's /run/.containerenv marker)
// and that an extension's sandbox replaces with its own: they are not
// refused, and not bound.
var ExtensionReplacedBinds = []string{"/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm", "/dev/termination-log", "/run/.containerenv"}

// CheckExtensionRequest checks the client's spec of a container that has a
// pyisolate manifest: the sandbox comes from the manifest, so a request for
// more than it gives (privileged, capabilities outside HardenedCapabilities,
// the host's PID, IPC or network namespace, binds beyond
// ExtensionReplacedBinds, host devices) is refused instead of ignored.
func CheckExtensionRequest(s *specs.Spec, hc HostChecks) error {
	refuse := func(field, format string, a ...any) error {
		return &PolicyError{Field: field, Policy: policyExtension, Reason: fmt.Sprintf(format, a...)}
	}
	if s.Process != nil {
		if err := checkCapabilities("process.capabilities", s.Process.Capabilities, policyExtension); err != nil {
			return err
		}
	}
	l := s.Linux
	if l == nil {
		l = &specs.Linux{}
	}
	if err := checkPrivileged(l, refuse); err != nil {
		return err
	}
	if len(l.Devices) > 0 {
		return refuse("linux.devices[0]", "host device %s (an extension gets GPUs from its manifest's gpus)", l.Devices[0].Path)
	}
	if err := checkHostNamespaces(l, hc, refuse); err != nil {
		return err
	}
	for _, m := range s.Mounts {
		dest := filepath.Clean(m.Destination)
		if isBind(m) && !slices.Contains(ExtensionReplacedBinds, dest) && dest != ManifestMountPath {
			return refuse(fmt.Sprintf("mounts[%s]", m.Destination),
				"binds %s: an extension's paths come from its manifest (sandbox.writable_paths, sandbox.readonly_paths)", m.Source)
		}
	}
	return nil
}

// refuseFunc makes the PolicyError of one rule.
type refuseFunc func(field, format string, a ...any) error

// checkPrivileged refuses a device rule allowing every device: what a
// privileged container asks for.
func checkPrivileged(l *specs.Linux, refuse refuseFunc) error {
	if l.Resources == nil {
		return nil
	}
	for i, d := range l.Resources.Devices {
		if d.Allow && (d.Type == "" || d.Type == "a") && d.Major == nil && d.Minor == nil &&
			(strings.ContainsAny(d.Access, "rw") || d.Access == "") {
			return refuse(fmt.Sprintf("linux.resources.devices[%d]", i), "allows every device (a privileged container)")
		}
	}
	return nil
}

// checkHostNamespaces refuses the host's PID, IPC or network namespace:
// missing from the request, or joined by a path to the host's own.
func checkHostNamespaces(l *specs.Linux, hc HostChecks, refuse refuseFunc) error {
	for _, t := range []specs.LinuxNamespaceType{specs.PIDNamespace, specs.IPCNamespace, specs.NetworkNamespace} {
		ns, ok := findNamespace(l, t)
		switch {
		case !ok:
			return refuse("linux.namespaces", "no %s namespace: the container would share the host's", t)
		case ns.Path != "" && hc.IsHostNamespace != nil && hc.IsHostNamespace(t, ns.Path):
			return refuse("linux.namespaces", "%s namespace %s is the host's", t, ns.Path)
		}
	}
	return nil
}
