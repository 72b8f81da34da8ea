package detect

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/pyisolate/pyisolate-oci/tensoripc"
)

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
