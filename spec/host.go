package spec

// Restriction is a host's restriction model: what the machine forbids a
// container runtime to do with user namespaces and privileges.
type Restriction string

// The restriction models, as decided by detect.Host (runtime/detect).
const (
	// RestrictionNone means nothing is restricted: every namespace works.
	RestrictionNone Restriction = "none"
	// RestrictionAppArmor means kernel.apparmor_restrict_unprivileged_userns=1
	// stops user namespaces (Ubuntu 23.10 and later).
	RestrictionAppArmor Restriction = "apparmor"
	// RestrictionSysctl means user.max_user_namespaces=0 or
	// kernel.unprivileged_userns_clone=0 forbids user namespaces.
	RestrictionSysctl Restriction = "sysctl"
	// RestrictionSELinux means SELinux is enforcing and denies user namespaces.
	RestrictionSELinux Restriction = "selinux"
	// RestrictionNoCaps means the runtime itself runs inside a container
	// without CAP_SYS_ADMIN.
	RestrictionNoCaps Restriction = "no-caps"
	// RestrictionUnsupported means the platform cannot run Linux containers.
	RestrictionUnsupported Restriction = "unsupported"
)

// Restrictions lists every restriction model, in a stable order.
var Restrictions = []Restriction{
	RestrictionNone, RestrictionAppArmor, RestrictionSysctl,
	RestrictionSELinux, RestrictionNoCaps, RestrictionUnsupported,
}

// ForbidsUserNamespaces reports whether the model stops the runtime from
// creating a user namespace.
func (r Restriction) ForbidsUserNamespaces() bool {
	switch r {
	case RestrictionAppArmor, RestrictionSysctl, RestrictionSELinux, RestrictionNoCaps, RestrictionUnsupported:
		return true
	}
	return false
}

// Host is what the spec builder needs to know about the machine. It is filled
// by detect.Host (see detect.Profile.SpecHost in runtime/detect) and by hand in tests, which
// keeps Build a pure function.
type Host struct {
	// Restriction is the host's restriction model.
	Restriction Restriction
	// Seccomp reports whether the kernel and runtime can load seccomp filters.
	Seccomp bool
	// Paths lists the host paths that exist, among those Build may bind
	// (the system directories and the /etc allow list). A path absent from
	// Paths is not bound.
	Paths []string
	// MemTotal is the host's memory in bytes (MemTotal of /proc/meminfo).
	// The default memory limit is half of it (see DefaultMemory) and no
	// tmpfs may be larger (see CheckHostLimits). Zero means unknown: no
	// default memory limit and no cap.
	MemTotal int64
	// Rootless reports that the runtime runs without root (euid != 0) in
	// the host's user namespace: every container gets a user namespace that
	// maps the caller's own ids (Options.UIDMappings), mounts are those an
	// unprivileged user namespace allows, and cgroup limits need
	// CgroupDelegated.
	Rootless bool
	// CgroupDelegated reports, for a rootless runtime, that a cgroup v2
	// subtree with the memory and pids controllers is delegated to the
	// caller, so that limits can be set. Without it Build drops them
	// (DropCgroupLimits). Ignored when Rootless is false.
	CgroupDelegated bool
}

// has reports whether p is listed in h.Paths.
func (h Host) has(p string) bool {
	for _, x := range h.Paths {
		if x == p {
			return true
		}
	}
	return false
}
