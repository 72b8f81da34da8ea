package detect

// Cgroup limits for a rootless runtime.
//
// An ordinary user can set memory, pids and CPU limits only in a cgroup v2
// subtree delegated to it: systemd does that for a unit with Delegate=yes
// run by the user's manager (`systemd-run --user --scope -p Delegate=yes
// CMD`), making the unit's cgroup and its cgroup.procs,
// cgroup.subtree_control and cgroup.threads files the user's. The runtime
// then finds the delegation from where it runs (/proc/self/cgroup) and puts
// each container in <delegated>/pyisolate/<id>.
//
// cgroup v2 lets a cgroup hand controllers to its children only while it
// holds no process itself, and the delegated cgroup holds the runtime (and
// whatever else the scope runs). As Podman does, the processes of the
// delegated cgroup are first moved into a leaf of it
// (<delegated>/pyisolate-runner), then the controllers are enabled for the
// children.
//
// Without a delegation (cgroup v1 or hybrid hosts, a login session's scope,
// which belongs to root) there are no limits: the spec says so in
// io.pyisolate.degraded (cgroup-limits), and run and detect print the remedy.

import (
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// CgroupDelegation is a cgroup v2 subtree delegated to a rootless runtime.
type CgroupDelegation struct {
	// Path is the delegated cgroup, relative to the cgroup2 mount
	// ("/user.slice/user-1000.slice/user@1000.service/app.slice/run-u7.scope").
	Path string `json:"path"`
	// Dir is its directory on the host (Profile.CgroupV2Path + Path).
	Dir string `json:"dir"`
	// Controllers are the controllers available in it (cgroup.controllers).
	Controllers []string `json:"controllers"`
}

// rootlessCgroupControllers are the controllers a delegation must offer for
// the sandbox's limits: memory and pids (the CPU weight and quota need cpu,
// which is enabled when there).
var rootlessCgroupControllers = []string{"memory", "pids"}

// DelegationRemedy is what a user can do to get limits rootless.
const DelegationRemedy = "run pyisolate in a delegated cgroup v2 scope of your systemd user manager: " +
	"'systemd-run --user --scope -p Delegate=yes pyisolate run ...' (or Delegate=yes in the service unit that starts it); " +
	"if the memory or pids controller is missing there, delegate them to user managers: " +
	"'sudo systemctl edit user@.service' with '[Service]' 'Delegate=cpu cpuset io memory pids', then log in again; " +
	"cgroup v1 and hybrid hosts need cgroup v2 first: boot with systemd.unified_cgroup_hierarchy=1"

// containerCgroupParent is the cgroup below the delegation that holds the
// containers; delegatedRunnerLeaf is where the delegation's own processes go.
const (
	containerCgroupParent = "pyisolate"
	delegatedRunnerLeaf   = "pyisolate-runner"
)

// ContainerCgroupPath is the cgroup of container id under delegation d.
func (d *CgroupDelegation) ContainerCgroupPath(id string) string {
	return path.Join(d.Path, containerCgroupParent, id)
}

// findDelegation returns the delegated cgroup v2 subtree this process runs
// in, or nil and the reason there is none.
func findDelegation(env detectEnv, euid int, p *Profile) (*CgroupDelegation, string) {
	if p.CgroupVersion != CgroupV2 {
		layout := p.CgroupVersion
		if layout == "" {
			layout = "not mounted"
		}
		return nil, fmt.Sprintf("cgroups are %s here; an unprivileged user can set limits only in a delegated cgroup v2 (unified) subtree", layout)
	}
	own := ""
	for _, line := range strings.Split(readString(env.path("/proc/self/cgroup")), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			own = strings.TrimSpace(rest)
		}
	}
	if own == "" || !strings.HasPrefix(own, "/") {
		return nil, "/proc/self/cgroup names no cgroup v2 path"
	}
	d := &CgroupDelegation{Path: path.Clean(own), Dir: env.path(filepath.Join(p.CgroupV2Path, own))}
	for _, f := range []string{"cgroup.procs", "cgroup.subtree_control"} {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(d.Dir, f), &st); err != nil {
			return nil, fmt.Sprintf("cgroup %s: %v", d.Path, err)
		}
		if int(st.Uid) != euid {
			return nil, fmt.Sprintf("this process's cgroup %s is not delegated to uid %d (its %s belongs to uid %d)", d.Path, euid, f, st.Uid)
		}
	}
	d.Controllers = strings.Fields(readString(filepath.Join(d.Dir, "cgroup.controllers")))
	var missing []string
	for _, c := range rootlessCgroupControllers {
		if !slices.Contains(d.Controllers, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Sprintf("the delegated cgroup %s lacks the %s controller(s) (cgroup.controllers: %q)",
			d.Path, strings.Join(missing, ", "), strings.Join(d.Controllers, " "))
	}
	return d, ""
}

// PrepareDelegation readies delegation d for containers: the processes of
// the delegated cgroup move into its leaf pyisolate-runner, then the memory,
// pids and (when delegated) cpu controllers are enabled for its children
// and for <delegated>/pyisolate, the parent of the containers' cgroups.
// Doing it again is harmless.
func PrepareDelegation(d *CgroupDelegation) error {
	if err := moveProcsToLeaf(d.Dir, filepath.Join(d.Dir, delegatedRunnerLeaf)); err != nil {
		return fmt.Errorf("delegated cgroup %s: %w", d.Path, err)
	}
	ctrls := slices.Clone(rootlessCgroupControllers)
	if slices.Contains(d.Controllers, "cpu") {
		ctrls = append(ctrls, "cpu")
	}
	parent := filepath.Join(d.Dir, containerCgroupParent)
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("delegated cgroup %s: %w", d.Path, err)
	}
	for _, dir := range []string{d.Dir, parent} {
		if err := enableControllers(dir, ctrls); err != nil {
			return fmt.Errorf("delegated cgroup %s: %w", d.Path, err)
		}
	}
	return nil
}

// moveProcsToLeaf moves every process of cgroup dir into the cgroup leaf
// (created when missing), so that dir may enable controllers for its
// children. A process that exits meanwhile is skipped.
func moveProcsToLeaf(dir, leaf string) error {
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	for i := 0; i < 8; i++ {
		procs := strings.Fields(readString(filepath.Join(dir, "cgroup.procs")))
		if len(procs) == 0 {
			return nil
		}
		for _, pid := range procs {
			err := os.WriteFile(filepath.Join(leaf, "cgroup.procs"), []byte(pid), 0)
			if err != nil && !errors.Is(err, syscall.ESRCH) {
				return fmt.Errorf("move process %s to %s: %w", pid, leaf, err)
			}
		}
		if fakeCgroupFS(dir) {
			return nil // tests: a plain directory does not move processes
		}
	}
	return fmt.Errorf("processes keep appearing in %s", dir)
}

// enableControllers writes "+c" for each controller to dir's
// cgroup.subtree_control, skipping those already enabled.
func enableControllers(dir string, ctrls []string) error {
	on := strings.Fields(readString(filepath.Join(dir, "cgroup.subtree_control")))
	var add []string
	for _, c := range ctrls {
		if !slices.Contains(on, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(add, " ")), 0); err != nil {
		return fmt.Errorf("enable %s in %s: %w", strings.Join(add, " "), dir, err)
	}
	return nil
}

// cgroup2Magic is CGROUP2_SUPER_MAGIC, statfs's f_type of cgroup2.
const cgroup2Magic = 0x63677270

// fakeCgroupFS reports whether dir is not on cgroup2 (a test's directory).
func fakeCgroupFS(dir string) bool {
	var fs unix.Statfs_t
	return unix.Statfs(dir, &fs) != nil || int64(fs.Type) != cgroup2Magic
}
