package runtime

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/pyisolate/pyisolate-oci/spec"
	"github.com/pyisolate/pyisolate-oci/tensoripc"
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

// Detect probes the host: it creates user, mount and pid namespaces in
// short-lived children and reads /proc and /sys to decide the restriction
// model, cgroup layout, seccomp support and /dev/shm state. A restricted host
// is not an error; an error means detection itself failed.
func Detect(ctx context.Context) (*Profile, error) {
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
		initialUserNS:  strings.Join(strings.Fields(readString(env.path("/proc/self/uid_map"))), " ") == "0 0 4294967295",
	}
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

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	point, fstype string
	// readOnly: the mount (not only its filesystem) is read-only.
	readOnly bool
}

// parseMountinfo reads the mount point and filesystem type of each line of a
// mountinfo file.
func parseMountinfo(b []byte) ([]mountEntry, error) {
	var ms []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		pre, post, ok := strings.Cut(line, " - ")
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(tail) < 1 {
			return nil, fmt.Errorf("mountinfo line %d: malformed: %q", n, line)
		}
		ro := len(fields) > 5 && slices.Contains(strings.Split(fields[5], ","), "ro")
		ms = append(ms, mountEntry{point: unescapeMount(fields[4]), fstype: tail[0], readOnly: ro})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return ms, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cgroupLayout decides the cgroup version from the mount table: v2 when
// /sys/fs/cgroup is cgroup2; hybrid when v1 hierarchies sit beside a cgroup2
// one; v1 when there are only v1 hierarchies. It returns the root and the
// cgroup2 mount point, and "" for all three when no cgroup is mounted.
func cgroupLayout(ms []mountEntry) (version, root, v2path string) {
	const base = "/sys/fs/cgroup"
	var baseType string
	var v1, v2 []string
	for _, m := range ms {
		switch {
		case m.point == base:
			baseType = m.fstype
			if m.fstype != "cgroup2" {
				v2 = v2[:0] // a later mount over /sys/fs/cgroup hides earlier ones
			}
		case m.fstype == "cgroup":
			v1 = append(v1, m.point)
		case m.fstype == "cgroup2":
			v2 = append(v2, m.point)
		}
	}
	switch {
	case baseType == "cgroup2":
		return CgroupV2, base, base
	case len(v1) > 0 && len(v2) > 0:
		return CgroupHybrid, cgroupRootOf(v1[0], base), v2[len(v2)-1]
	case len(v1) > 0:
		return CgroupV1, cgroupRootOf(v1[0], base), ""
	case len(v2) > 0:
		return CgroupV2, v2[len(v2)-1], v2[len(v2)-1]
	}
	return "", "", ""
}

// cgroupRootOf returns base when the v1 hierarchy mounted at point is below
// it, else the directory holding point.
func cgroupRootOf(point, base string) string {
	if strings.HasPrefix(point, base+"/") {
		return base
	}
	return filepath.Dir(point)
}

// detectCgroups fills the cgroup fields of p from the mount table.
func detectCgroups(env detectEnv, p *Profile) error {
	b, err := os.ReadFile(env.path("/proc/self/mountinfo"))
	if err != nil {
		return fmt.Errorf("detect cgroups: %w", err)
	}
	ms, err := parseMountinfo(b)
	if err != nil {
		return fmt.Errorf("detect cgroups: %w", err)
	}
	p.CgroupVersion, p.CgroupRoot, p.CgroupV2Path = cgroupLayout(ms)
	if p.CgroupVersion == "" {
		p.Warnings = append(p.Warnings, "no cgroup filesystem is mounted: memory, pids and CPU limits cannot be set"+
			WarningRemedySep+"mount cgroup2 at /sys/fs/cgroup ('mount -t cgroup2 none /sys/fs/cgroup')")
		return nil
	}
	p.CgroupReadOnly = cgroupReadOnly(ms, p.CgroupVersion, p.CgroupV2Path)
	if p.CgroupReadOnly {
		p.Warnings = append(p.Warnings, CgroupReadOnlyWarning+WarningRemedySep+CgroupReadOnlyRemedy)
	}
	return nil
}

// CgroupReadOnlyWarning is detect's warning for Profile.CgroupReadOnly.
const CgroupReadOnlyWarning = "the cgroup filesystem is mounted read-only (inside a container that is not privileged): " +
	"no memory, pids or CPU limit can be set, so 'pyisolate run' as root refuses to start extensions"

// CgroupReadOnlyRemedy is what to do about Profile.CgroupReadOnly.
const CgroupReadOnlyRemedy = "run the runtime's container privileged ('docker run --privileged'; in Kubernetes " +
	"securityContext.privileged: true), or run pyisolate on the host (the containerd shim)"

// cgroupReadOnly reports whether a hierarchy the runtime creates cgroups in
// is mounted read-only: the cgroup2 mount for v2, any v1 hierarchy for v1
// and hybrid (libcontainer makes a cgroup in each). The last mount of a
// point wins.
func cgroupReadOnly(ms []mountEntry, version, v2path string) bool {
	ro := map[string]bool{}
	for _, m := range ms {
		switch {
		case version == CgroupV2 && m.fstype == "cgroup2" && m.point == v2path,
			version != CgroupV2 && m.fstype == "cgroup":
			ro[m.point] = m.readOnly
		}
	}
	for _, r := range ro {
		if r {
			return true
		}
	}
	return false
}

// detectSeccomp fills the seccomp fields of p: the kernel supports filters
// when /proc/self/status has a Seccomp field and prctl(PR_GET_SECCOMP)
// answers.
func detectSeccomp(env detectEnv, f hostFacts, p *Profile) {
	p.SeccompBuiltIn = env.seccompBuiltIn
	if f.seccompMode < 0 {
		p.Warnings = append(p.Warnings, "the kernel has no seccomp support (no Seccomp field in /proc/self/status): "+
			"sandboxes run without a syscall filter"+WarningRemedySep+"a kernel built with CONFIG_SECCOMP_FILTER")
		return
	}
	if err := env.seccompPrctl(); err != nil {
		p.Warnings = append(p.Warnings, fmt.Sprintf("prctl(PR_GET_SECCOMP) failed (%v): sandboxes run without a syscall filter", err))
		return
	}
	p.Seccomp = true
	if s := strings.Fields(readString(env.path("/proc/sys/kernel/seccomp/actions_avail"))); len(s) > 0 {
		p.SeccompActions = s
	}
	if !p.SeccompBuiltIn {
		p.Warnings = append(p.Warnings, "this binary was built without seccomp support: sandboxes run without a syscall filter"+
			WarningRemedySep+"build with cgo, libseccomp-dev and '-tags seccomp' ('make build')")
	}
}

// detectOpenat2 warns when the kernel lacks openat2(2) (Linux 5.6+; Ubuntu
// 20.04's 5.4, RHEL 8's 4.18): the runtime opens every path a manifest names
// with it, so manifest bundles cannot run there.
func detectOpenat2(env detectEnv, p *Profile) {
	if env.openat2 == nil {
		return
	}
	if err := env.openat2(); errors.Is(err, syscall.ENOSYS) {
		p.Warnings = append(p.Warnings, "the kernel has no openat2 (Linux 5.6 or newer has it): 'pyisolate run' "+
			"cannot pin a manifest's paths, so manifest bundles fail to start"+WarningRemedySep+
			"boot a 5.6+ kernel (Ubuntu 20.04: the HWE kernel, 'apt install linux-generic-hwe-20.04')")
	}
}

// detectShm inspects /dev/shm: existence, writability, size and free space.
func detectShm(env detectEnv) Shm {
	s := Shm{Path: ShmPath}
	dir := env.path(ShmPath)
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		s.Warning = ShmPath + " does not exist: torch cannot share CPU tensors"
		s.Remedy = "mount a tmpfs there ('mount -t tmpfs -o size=2G tmpfs /dev/shm')"
		return s
	}
	s.Exists = true
	s.Writable = env.writable(dir)
	if st, err := env.statfs(dir); err == nil {
		s.SizeBytes, s.FreeBytes = st.Size, st.Free
	} else {
		s.Warning = fmt.Sprintf("statfs %s: %v", ShmPath, err)
		return s
	}
	switch {
	case !s.Writable:
		s.Warning = ShmPath + " is not writable: torch cannot share CPU tensors"
		s.Remedy = "remount it read-write ('mount -o remount,rw /dev/shm') and check its mode is 1777"
	case s.FreeBytes < ShmMinFree:
		s.Warning = fmt.Sprintf("%s has %s free (less than %s): tensor sharing will fail with ENOSPC",
			ShmPath, tensoripc.HumanBytes(int64(s.FreeBytes)), tensoripc.HumanBytes(ShmMinFree))
		s.Remedy = "enlarge it: 'sudo mount -o remount,size=2G /dev/shm', or 'docker run --shm-size=2g' " +
			"(Kubernetes: an emptyDir with medium: Memory at /dev/shm)"
	}
	return s
}

// existingPaths returns the entries of SystemPaths and EtcAllowList that
// exist under env's root (Stat: a symbolic link counts when its target
// exists; a dangling one cannot be bound).
func existingPaths(env detectEnv) []string {
	out := []string{}
	for _, list := range [][]string{SystemPaths, EtcAllowList} {
		for _, p := range list {
			if _, err := os.Stat(env.path(p)); err == nil {
				out = append(out, p)
			}
		}
	}
	return out
}
