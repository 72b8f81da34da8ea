package detect

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/pyisolate/pyisolate-oci/runtime"
)

// RootlessMode is what Detect found about a rootless runtime: how ids map,
// where state and group shared memory live, and whether limits can be set.
type RootlessMode struct {
	// UID and GID are the caller's effective ids: container root.
	UID int `json:"uid"`
	GID int `json:"gid"`
	// StateRoot is the default state root for this user (DefaultStateRoot).
	StateRoot string `json:"state_root"`
	// IDMapping says how container ids map to host ids.
	IDMapping string `json:"id_mapping"`
	// GroupShm says where a group's shared memory lives and whether it is
	// zero-copy.
	GroupShm string `json:"group_shm"`
	// GroupShmTmpfs reports that it is memory (a private directory on the
	// host's /dev/shm tmpfs), not the file-backed fallback.
	GroupShmTmpfs bool `json:"group_shm_tmpfs"`
	// CgroupDelegation is the delegated cgroup v2 subtree limits go to; nil
	// when there is none (limits are then not enforced).
	CgroupDelegation *CgroupDelegation `json:"cgroup_delegation,omitempty"`
	// NoDelegationReason says why there is none.
	NoDelegationReason string `json:"no_delegation_reason,omitempty"`
	// NotEnforced lists the limits a spec keeps out without a delegation.
	NotEnforced []string `json:"not_enforced,omitempty"`
}

// rootlessWarningPrefix starts the warnings detectRootless adds, so that a
// cached profile's can be replaced.
const rootlessWarningPrefix = "rootless: "

// detectRootless fills p.Rootless and p.RootlessMode for a runtime run by a
// user other than root (f.euid), with the warnings and remedies of what
// rootless mode cannot do here. As root it leaves p alone.
func detectRootless(env detectEnv, f hostFacts, p *Profile) {
	kept := p.Warnings[:0]
	for _, w := range p.Warnings {
		if !strings.HasPrefix(w, rootlessWarningPrefix) {
			kept = append(kept, w)
		}
	}
	p.Warnings = kept
	if f.euid < 0 || f.euid == 0 && !f.partialUserNS {
		p.Rootless, p.RootlessMode = false, nil
		return
	}
	p.Rootless = true
	egid := f.euid
	if ids := strings.Fields(parseStatus([]byte(readString(env.path("/proc/self/status"))))["Gid"]); len(ids) >= 2 {
		if n, err := strconv.Atoi(ids[1]); err == nil {
			egid = n
		}
	}
	m := &RootlessMode{UID: f.euid, GID: egid, StateRoot: runtime.DefaultStateRootFor(f.euid, true, os.Getenv("XDG_RUNTIME_DIR"), "pyisolate")}
	_, _, m.IDMapping = runtime.RootlessIDMappingsFor(f.euid, egid, env.path("/etc"), exec.LookPath)
	shm := env.path(ShmPath)
	if st, err := env.statfs(shm); err == nil && st.Tmpfs && env.writable(shm) {
		m.GroupShmTmpfs = true
		m.GroupShm = fmt.Sprintf("a private 0700 directory on the tmpfs %s per state root, bound at /dev/shm in every member: "+
			"zero-copy; limits.shm_size is watched (warnings near it), not enforced by the kernel", ShmPath)
	} else {
		m.GroupShm = fmt.Sprintf("%s is no writable tmpfs: a group's shared memory is file-backed (tensors are copied through the page cache)", ShmPath)
		p.Warnings = append(p.Warnings, rootlessWarningPrefix+"group shared memory will be file-backed: "+ShmPath+" is no writable tmpfs"+
			WarningRemedySep+"mount a tmpfs at /dev/shm (every distribution does by default), or run pyisolate as root")
	}
	m.CgroupDelegation, m.NoDelegationReason = findDelegation(env, f.euid, p)
	if m.CgroupDelegation == nil {
		m.NotEnforced = []string{"limits.memory", "limits.pids", "limits.cpus", "the CPU weight"}
		p.Warnings = append(p.Warnings, rootlessWarningPrefix+"memory, pids and CPU limits are not enforced ("+m.NoDelegationReason+
			"); specs say cgroup-limits in io.pyisolate.degraded"+WarningRemedySep+DelegationRemedy)
	}
	p.RootlessMode = m
}
