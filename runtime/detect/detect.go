package detect

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// SystemPaths are the host directories Detect looks for; those that exist
// are bound read-only into every sandbox. It is spec.SystemPaths.
var SystemPaths = spec.SystemPaths

// EtcAllowList are the /etc entries Detect looks for; those that exist are
// bound read-only into every sandbox. It is spec.EtcAllowList.
var EtcAllowList = spec.EtcAllowList

// WarningRemedySep separates a warning from its remedy in Profile.Warnings.
const WarningRemedySep = "; remedy: "

// ShmPath is the shared-memory filesystem Detect inspects.
const ShmPath = "/dev/shm"

// ShmMinFree is the free space of /dev/shm below which Detect warns: torch
// shares every CPU tensor through a file there.
const ShmMinFree = 100 << 20

// The cgroup layouts reported in Profile.CgroupVersion.
const (
	// CgroupV1 is a tmpfs at /sys/fs/cgroup holding one v1 hierarchy per
	// controller.
	CgroupV1 = "v1"
	// CgroupV2 is the unified hierarchy mounted at /sys/fs/cgroup.
	CgroupV2 = "v2"
	// CgroupHybrid is v1 controllers plus an (empty) cgroup2 hierarchy,
	// usually at /sys/fs/cgroup/unified.
	CgroupHybrid = "hybrid"
)

// capSysAdmin is CAP_SYS_ADMIN's bit in the capability sets of
// /proc/self/status.
const capSysAdmin = 21

// Profile is what Detect found out about the host: the restriction model and
// the facts the spec builder and the user need, each problem with a remedy.
type Profile struct {
	// Restriction is the host's restriction model for this runtime.
	Restriction spec.Restriction `json:"restriction"`
	// RestrictionReason is what the probes saw, such as
	// "clone(CLONE_NEWUSER) failed: EACCES with
	// kernel.apparmor_restrict_unprivileged_userns=1".
	RestrictionReason string `json:"restriction_reason"`
	// Remedy is what a user can do about the restriction; empty for none.
	Remedy string `json:"remedy,omitempty"`
	// Unprivileged reports whether unprivileged users (uid 65534 when the
	// runtime is root) can create user and mount namespaces, as bwrap needs.
	// It is independent of what the runtime itself can do.
	Unprivileged bool `json:"unprivileged"`
	// UnprivilegedReason says why Unprivileged is false, when it is.
	UnprivilegedReason string `json:"unprivileged_reason,omitempty"`
	// CgroupVersion is v1, v2 or hybrid; empty when no cgroup filesystem is
	// mounted.
	CgroupVersion string `json:"cgroup_version"`
	// CgroupRoot is where the cgroup hierarchies are mounted
	// (/sys/fs/cgroup).
	CgroupRoot string `json:"cgroup_root"`
	// CgroupV2Path is where the cgroup2 hierarchy is mounted: CgroupRoot for
	// v2, usually /sys/fs/cgroup/unified for hybrid, empty for v1.
	CgroupV2Path string `json:"cgroup_v2_path,omitempty"`
	// CgroupReadOnly reports that the cgroup hierarchies the runtime would
	// create cgroups in are mounted read-only, as inside a Docker or
	// Kubernetes container that is not privileged: no memory, pids or CPU
	// limit can be set there.
	CgroupReadOnly bool `json:"cgroup_read_only,omitempty"`
	// Seccomp reports whether the kernel supports seccomp filters.
	Seccomp bool `json:"seccomp"`
	// SeccompActions are the filter actions the kernel offers
	// (/proc/sys/kernel/seccomp/actions_avail), when it says.
	SeccompActions []string `json:"seccomp_actions,omitempty"`
	// SeccompBuiltIn reports whether this binary was built with seccomp
	// support (cgo, -tags seccomp, libseccomp).
	SeccompBuiltIn bool `json:"seccomp_built_in"`
	// Shm describes the host's /dev/shm.
	Shm Shm `json:"shm"`
	// Paths are the entries of SystemPaths and EtcAllowList that exist on
	// the host (symbolic links included).
	Paths []string `json:"paths"`
	// MemTotal is the host's memory in bytes (MemTotal of /proc/meminfo);
	// 0 when unknown. The spec builder derives the default memory limit
	// and the caps of tmpfs sizes from it.
	MemTotal uint64 `json:"mem_total_bytes"`
	// Kernel is the kernel release (uname -r).
	Kernel string `json:"kernel"`
	// WSL is 1 or 2 under Windows Subsystem for Linux, 0 otherwise.
	WSL int `json:"wsl,omitempty"`
	// Rootless reports that the runtime runs without root (euid != 0):
	// see RootlessMode for what that means here.
	Rootless bool `json:"rootless"`
	// RootlessMode describes the rootless runtime; nil as root.
	RootlessMode *RootlessMode `json:"rootless_mode,omitempty"`
	// Warnings are problems that do not change the restriction model. Each
	// ends in "; remedy: ..." (WarningRemedySep) where something can be done.
	Warnings []string `json:"warnings,omitempty"`
}

// Shm describes a shared-memory filesystem.
type Shm struct {
	// Path is the filesystem's mount point (/dev/shm).
	Path string `json:"path"`
	// Exists reports whether Path is a directory.
	Exists bool `json:"exists"`
	// Writable reports whether the runtime can create files in Path.
	Writable bool `json:"writable"`
	// SizeBytes is the filesystem's size.
	SizeBytes uint64 `json:"size_bytes"`
	// FreeBytes is the space available to the runtime.
	FreeBytes uint64 `json:"free_bytes"`
	// Warning describes a problem (missing, read-only, below ShmMinFree
	// free); empty when there is none.
	Warning string `json:"warning,omitempty"`
	// Remedy is what to do about Warning.
	Remedy string `json:"remedy,omitempty"`
}

// SpecHost returns what the spec builder needs from the profile. Seccomp is
// true only when both the kernel and this binary support it.
func (p *Profile) SpecHost() spec.Host {
	return spec.Host{
		Restriction:     p.Restriction,
		Seccomp:         p.Seccomp && p.SeccompBuiltIn,
		Paths:           append([]string(nil), p.Paths...),
		MemTotal:        int64(min(p.MemTotal, math.MaxInt64)),
		Rootless:        p.Rootless,
		CgroupDelegated: p.RootlessMode != nil && p.RootlessMode.CgroupDelegation != nil,
	}
}

// RemedyFor returns what a user can do about restriction model r; empty for
// RestrictionNone.
func RemedyFor(r spec.Restriction) string {
	switch r {
	case spec.RestrictionAppArmor:
		return "let the pyisolate binary keep user namespaces, as Ubuntu does for chosen programs: " +
			"'sudo pyisolate install --apparmor' writes /etc/apparmor.d/pyisolate (a profile for the installed " +
			"binary granting userns) and loads it; or allow them for every program: " +
			"'sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0' (persist it in /etc/sysctl.d/60-userns.conf)"
	case spec.RestrictionSysctl:
		return "run 'sudo sysctl -w user.max_user_namespaces=15000' and, on Debian-patched kernels, " +
			"'sudo sysctl -w kernel.unprivileged_userns_clone=1' (persist them in /etc/sysctl.d/)"
	case spec.RestrictionSELinux:
		return "allow user namespaces in the SELinux policy: 'sudo setsebool -P user_namespace_create 1' " +
			"where the boolean exists (otherwise a local module allowing 'user_namespace create' for the " +
			"runtime's domain; 'ausearch -m avc -ts recent' shows the denial), or run the runtime as unconfined_t"
	case spec.RestrictionNoCaps:
		return "give the runtime's container CAP_SYS_ADMIN: 'docker run --privileged', or " +
			"'--cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined'; " +
			"in Kubernetes securityContext.privileged: true (or capabilities.add: [SYS_ADMIN]); " +
			"or run pyisolate on the host as root"
	case spec.RestrictionUnsupported:
		return "Linux is required: on Windows run pyisolate inside WSL2 ('wsl --set-version <distro> 2'), " +
			"on macOS inside a Linux VM (Lima, Colima, Docker Desktop's VM)"
	}
	return ""
}

// Host probes the host: it creates user, mount and pid namespaces in
// short-lived children and reads /proc and /sys to decide the restriction
// model, cgroup layout, seccomp support and /dev/shm state. A restricted host
// is not an error; an error means detection itself failed.
func Host(ctx context.Context) (*Profile, error) {
	return detectAt(ctx, hostEnv())
}

// probeKind names one namespace probe.
type probeKind int

const (
	// probeUserNS creates a user namespace as the runtime, mapping its uid.
	probeUserNS probeKind = iota
	// probeNamespaces creates user, mount and pid namespaces at once as the
	// runtime: what a container needs.
	probeNamespaces
	// probeUnprivileged creates user, mount and pid namespaces as uid 65534
	// with a mapping of that uid: what unprivileged tools such as bwrap do.
	// Only run when the runtime has CAP_SYS_ADMIN.
	probeUnprivileged
)

// String returns the clone flags the probe uses.
func (k probeKind) String() string {
	switch k {
	case probeUserNS:
		return "clone(CLONE_NEWUSER)"
	case probeNamespaces:
		return "clone(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID)"
	case probeUnprivileged:
		return "clone(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID) as uid 65534"
	}
	return "probe " + strconv.Itoa(int(k))
}

// probeFunc runs one probe: nil when the namespaces were created, an error
// carrying the syscall.Errno when the kernel refused, or an
// *inconclusiveError when the probe could not tell.
type probeFunc func(ctx context.Context, k probeKind) error

// inconclusiveError is a probe that failed for a reason other than the
// namespaces (the child could not be started at all).
type inconclusiveError struct{ err error }

func (e *inconclusiveError) Error() string { return "probe inconclusive: " + e.err.Error() }
func (e *inconclusiveError) Unwrap() error { return e.err }

// fsStat is the size of a filesystem, in bytes.
type fsStat struct {
	Size, Free uint64
	// Tmpfs reports that the filesystem is a tmpfs.
	Tmpfs bool
}

// detectEnv is what detectAt reads the host through, so that tests can give
// it a fake filesystem root and fake probes.
type detectEnv struct {
	// goos is the operating system (runtime.GOOS on the host).
	goos string
	// root is prepended to every /proc, /sys and /etc path read; "/" on
	// the host.
	root string
	// probe creates namespaces in a child.
	probe probeFunc
	// statfs returns the size of the filesystem holding a path.
	statfs func(path string) (fsStat, error)
	// writable reports whether the runtime can create files in a directory.
	writable func(path string) bool
	// seccompPrctl calls prctl(PR_GET_SECCOMP); nil error when it works.
	seccompPrctl func() error
	// seccompBuiltIn reports whether the binary has seccomp compiled in.
	seccompBuiltIn bool
	// openat2 calls openat2(2) on a directory; nil when the kernel has it.
	openat2 func() error
}

// path returns p under the environment's root.
func (e detectEnv) path(p string) string { return filepath.Join(e.root, p) }

// hostFacts are the files detectAt reads, parsed.
type hostFacts struct {
	sysAdmin       bool
	euid           int
	seccompMode    int // -1: no Seccomp field in /proc/self/status
	apparmorUserns int // -1: file absent
	maxUserNS      int // -1: file absent
	unprivClone    int // -1: file absent
	selinuxEnforce int // -1: file absent
	wsl            int
	// initialUserNS: /proc/self/uid_map is the identity of all ids, so
	// this process runs in the host's user namespace, not in a container
	// that has one of its own.
	initialUserNS bool
	// partialUserNS: /proc/self/uid_map maps only some ids, so this
	// process runs in a user namespace (rootless Podman's, `unshare -r`),
	// where even euid 0 has no power over the host.
	partialUserNS bool
}

// detectAt is Detect's core, reading the host through env.
func detectAt(ctx context.Context, env detectEnv) (*Profile, error) {
	p := &Profile{Shm: Shm{Path: ShmPath}, Paths: []string{}}
	if env.goos != "linux" {
		p.Restriction = spec.RestrictionUnsupported
		p.RestrictionReason = fmt.Sprintf("the operating system is %s, not Linux", env.goos)
		p.Remedy = RemedyFor(p.Restriction)
		return p, nil
	}
	f, err := readFacts(env)
	if err != nil {
		return nil, err
	}
	p.WSL = f.wsl
	p.Kernel = strings.TrimSpace(readString(env.path("/proc/sys/kernel/osrelease")))
	if f.wsl == 1 {
		p.Restriction = spec.RestrictionUnsupported
		p.RestrictionReason = "WSL 1 has no Linux kernel: no namespaces, no cgroups"
		p.Remedy = RemedyFor(p.Restriction)
		return p, nil
	}
	if err := classify(ctx, env, f, p); err != nil {
		return nil, err
	}
	if err := detectCgroups(env, p); err != nil {
		return nil, err
	}
	detectRootless(env, f, p)
	detectSeccomp(env, f, p)
	detectOpenat2(env, p)
	p.Shm = detectShm(env)
	p.Paths = existingPaths(env)
	p.MemTotal = memTotal(env)
	return p, nil
}

// memTotal returns MemTotal of /proc/meminfo in bytes, or 0 when it cannot
// be read.
func memTotal(env detectEnv) uint64 {
	for _, line := range strings.Split(readString(env.path("/proc/meminfo")), "\n") {
		rest, ok := strings.CutPrefix(line, "MemTotal:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil || kb > math.MaxUint64/1024 {
			return 0
		}
		return kb * 1024
	}
	return 0
}

// readFacts reads the capability, uid, sysctl, SELinux and WSL files.
func readFacts(env detectEnv) (hostFacts, error) {
	f := hostFacts{
		apparmorUserns: readInt(env.path("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")),
		maxUserNS:      readInt(env.path("/proc/sys/user/max_user_namespaces")),
		unprivClone:    readInt(env.path("/proc/sys/kernel/unprivileged_userns_clone")),
		selinuxEnforce: readInt(env.path("/sys/fs/selinux/enforce")),
		wsl:            wslVersion(readString(env.path("/proc/version"))),
	}
	uidMap := strings.Join(strings.Fields(readString(env.path("/proc/self/uid_map"))), " ")
	f.initialUserNS = uidMap == "0 0 4294967295"
	f.partialUserNS = uidMap != "" && !f.initialUserNS
	status := env.path("/proc/self/status")
	b, err := os.ReadFile(status)
	if err != nil {
		return f, fmt.Errorf("read process status: %w", err)
	}
	st := parseStatus(b)
	capEff, ok := st["CapEff"]
	if !ok {
		return f, fmt.Errorf("%s has no CapEff line", status)
	}
	caps, err := strconv.ParseUint(capEff, 16, 64)
	if err != nil {
		return f, fmt.Errorf("%s: CapEff %q: %w", status, capEff, err)
	}
	f.sysAdmin = caps&(1<<capSysAdmin) != 0
	f.euid = -1
	if ids := strings.Fields(st["Uid"]); len(ids) >= 2 {
		if n, err := strconv.Atoi(ids[1]); err == nil {
			f.euid = n
		}
	}
	f.seccompMode = -1
	if s, ok := st["Seccomp"]; ok {
		if n, err := strconv.Atoi(s); err == nil {
			f.seccompMode = n
		}
	}
	return f, nil
}

// parseStatus splits /proc/PID/status into its "Key:\tvalue" lines.
func parseStatus(b []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// wslVersion tells WSL 1 ("Microsoft" kernels) from WSL 2
// ("microsoft-standard-WSL2") by /proc/version; 0 when not WSL.
func wslVersion(version string) int {
	switch {
	case strings.Contains(version, "WSL2") || strings.Contains(version, "microsoft-standard"):
		return 2
	case strings.Contains(version, "Microsoft"):
		return 1
	case strings.Contains(strings.ToLower(version), "microsoft"):
		return 2
	}
	return 0
}

// readString returns a file's content, or "" when it cannot be read.
func readString(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(b)
}

// readInt returns the integer a /proc or /sys file holds, or -1 when it is
// absent or not a number.
func readInt(path string) int {
	n, err := strconv.Atoi(strings.TrimSpace(readString(path)))
	if err != nil {
		return -1
	}
	return n
}

// classify runs the probes and decides p.Restriction, its reason and remedy,
// and p.Unprivileged.
//
// The order: no CAP_SYS_ADMIN and the probe fails → no-caps; a refusal with
// EACCES/EPERM → apparmor when kernel.apparmor_restrict_unprivileged_userns
// is 1, sysctl when user.max_user_namespaces or
// kernel.unprivileged_userns_clone is 0 (or the errno is ENOSPC/EUSERS, a
// namespace limit), selinux when SELinux enforces. A refusal none of these
// explains is still a restriction: see unexplained. The probe succeeding is
// none, whatever the sysctls say (they restrict only unprivileged users).
func classify(ctx context.Context, env detectEnv, f hostFacts, p *Profile) error {
	kind, perr := runtimeProbe(ctx, env)
	var inc *inconclusiveError
	if errors.As(perr, &inc) {
		return fmt.Errorf("%s: %w", kind, perr)
	}
	if perr == nil {
		classifyWorking(ctx, env, f, p)
		return nil
	}
	p.Unprivileged = false
	p.UnprivilegedReason = "user namespaces fail for the runtime too"
	errno := errnoOf(perr)
	seen := fmt.Sprintf("%s failed: %s", kind, errnoName(errno, perr))
	evidence := sysctlEvidence(f)
	// An ordinary user of the host (a rootless runtime) never has
	// CAP_SYS_ADMIN: what stops it is what stops unprivileged user
	// namespaces (Ubuntu's AppArmor restriction, a sysctl), classified below
	// with that model's remedy. no-caps is for a runtime in a container.
	ruled, _ := restrictedBy(f, errno)
	hostUser := f.euid > 0 && f.initialUserNS && ruled != ""
	if !f.sysAdmin && !hostUser {
		p.Restriction = spec.RestrictionNoCaps
		p.RestrictionReason = seen + " and the runtime lacks CAP_SYS_ADMIN (CapEff)"
		p.Remedy = RemedyFor(p.Restriction)
		if r, _ := restrictedBy(f, errno); r != "" {
			if evidence == "" {
				evidence = "the user namespace limit"
			}
			p.Warnings = append(p.Warnings, fmt.Sprintf("besides the missing capability, %s blocks user namespaces here"+WarningRemedySep+"%s", evidence, RemedyFor(r)))
		}
		return nil
	}
	r, why := restrictedBy(f, errno)
	if r == "" {
		r, why = unexplained(f, errno)
	}
	p.Restriction = r
	p.RestrictionReason = seen + " " + why
	if evidence != "" && !strings.Contains(p.RestrictionReason, evidence) {
		p.RestrictionReason += " (" + evidence + ")"
	}
	p.Remedy = RemedyFor(r)
	return nil
}

// runtimeProbe creates a user namespace, then user, mount and pid namespaces
// together, and returns the first probe that failed with its error.
func runtimeProbe(ctx context.Context, env detectEnv) (probeKind, error) {
	for _, k := range []probeKind{probeUserNS, probeNamespaces} {
		if err := env.probe(ctx, k); err != nil {
			return k, err
		}
	}
	return probeNamespaces, nil
}

// classifyWorking fills p for a runtime that can create namespaces: model
// none, plus whether unprivileged users can.
func classifyWorking(ctx context.Context, env detectEnv, f hostFacts, p *Profile) {
	p.Restriction = spec.RestrictionNone
	if !f.sysAdmin {
		// The cgroup delegation and its warning: detectRootless.
		p.RestrictionReason = "user namespaces work for the runtime (rootless: no CAP_SYS_ADMIN)"
		p.Unprivileged = true
		return
	}
	p.RestrictionReason = "user namespaces work for the runtime"
	err := env.probe(ctx, probeUnprivileged)
	var inc *inconclusiveError
	switch {
	case err == nil:
		p.Unprivileged = true
	case errors.As(err, &inc):
		p.UnprivilegedReason = fmt.Sprintf("%s: %v", probeUnprivileged, err)
	default:
		errno := errnoOf(err)
		p.UnprivilegedReason = fmt.Sprintf("%s failed: %s", probeUnprivileged, errnoName(errno, err))
		if ev := sysctlEvidence(f); ev != "" {
			p.UnprivilegedReason += " with " + ev
		}
		r, _ := restrictedBy(f, errno)
		if r == "" {
			r, _ = unexplained(f, errno)
		}
		p.Warnings = append(p.Warnings, "unprivileged user namespaces are blocked ("+p.UnprivilegedReason+
			"): the runtime is not affected, but unprivileged sandboxes such as bwrap (pyisolate without this runtime) are"+WarningRemedySep+RemedyFor(r))
	}
}

// restrictedBy returns the model the sysctl and SELinux files explain a
// refusal with errno by, and the evidence; "" when they explain nothing.
func restrictedBy(f hostFacts, errno syscall.Errno) (spec.Restriction, string) {
	denied := errno == syscall.EACCES || errno == syscall.EPERM
	switch {
	case denied && f.apparmorUserns == 1:
		return spec.RestrictionAppArmor, "with kernel.apparmor_restrict_unprivileged_userns=1"
	case f.maxUserNS == 0:
		return spec.RestrictionSysctl, "with user.max_user_namespaces=0"
	case denied && f.unprivClone == 0:
		return spec.RestrictionSysctl, "with kernel.unprivileged_userns_clone=0"
	case errno == syscall.ENOSPC:
		if f.maxUserNS > 0 {
			return spec.RestrictionSysctl, fmt.Sprintf("(the limit user.max_user_namespaces=%d is used up)", f.maxUserNS)
		}
		return spec.RestrictionSysctl, "(the user namespace limit is used up)"
	case errno == syscall.EUSERS:
		return spec.RestrictionSysctl, "(user namespaces nested too deep)"
	case denied && f.selinuxEnforce == 1:
		return spec.RestrictionSELinux, "with SELinux enforcing (/sys/fs/selinux/enforce=1)"
	}
	return "", ""
}

// unexplained classifies a refusal no file explains. It is still a
// restriction. The apparmor, sysctl and selinux models all drop only the user
// namespace, so the spec is the same whichever is picked; the choice only
// selects the remedy text, and the reason carries the raw errno:
//   - EINVAL with no user namespace support in the kernel (no
//     /proc/sys/user/max_user_namespaces): sysctl (the kernel configuration);
//   - anything else: apparmor, the most common source of such refusals
//     (an AppArmor profile denying userns; LSM denials are EACCES).
func unexplained(f hostFacts, errno syscall.Errno) (spec.Restriction, string) {
	if errno == syscall.EINVAL && f.maxUserNS < 0 {
		return spec.RestrictionSysctl, "(the kernel has no user namespace support: CONFIG_USER_NS is off)"
	}
	why := "(no sysctl or SELinux setting explains it; closest model: a security module profile denying userns)"
	if f.seccompMode == 2 {
		why = "(no sysctl or SELinux setting explains it; the runtime runs under a seccomp filter, which may forbid it)"
	}
	return spec.RestrictionAppArmor, why
}

// sysctlEvidence lists the restricting sysctl and SELinux values that are
// set, for reasons; "" when none is.
func sysctlEvidence(f hostFacts) string {
	var ev []string
	if f.apparmorUserns == 1 {
		ev = append(ev, "kernel.apparmor_restrict_unprivileged_userns=1")
	}
	if f.maxUserNS == 0 {
		ev = append(ev, "user.max_user_namespaces=0")
	}
	if f.unprivClone == 0 {
		ev = append(ev, "kernel.unprivileged_userns_clone=0")
	}
	if f.selinuxEnforce == 1 {
		ev = append(ev, "SELinux enforcing")
	}
	return strings.Join(ev, ", ")
}

// errnoOf returns the syscall.Errno in err's chain, or 0.
func errnoOf(err error) syscall.Errno {
	var en syscall.Errno
	if errors.As(err, &en) {
		return en
	}
	return 0
}

// errnoNames are the symbolic names of the errnos the probes meet.
var errnoNames = map[syscall.Errno]string{
	syscall.EPERM:  "EPERM",
	syscall.EACCES: "EACCES",
	syscall.ENOSPC: "ENOSPC",
	syscall.EUSERS: "EUSERS",
	syscall.EINVAL: "EINVAL",
	syscall.ENOMEM: "ENOMEM",
	syscall.EAGAIN: "EAGAIN",
}

// errnoName returns errno's symbolic name, or err's text when there is no
// errno.
func errnoName(errno syscall.Errno, err error) string {
	if n, ok := errnoNames[errno]; ok {
		return n
	}
	if errno != 0 {
		return fmt.Sprintf("errno %d (%v)", int(errno), errno)
	}
	return err.Error()
}
