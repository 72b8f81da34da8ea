package runtime

// RLIMIT_AS and the Go init.
//
// libcontainer sets a process's rlimits from the parent as soon as the init
// (or an exec's setns init) reports ready, and the init then goes on to load
// the seccomp filter, still as this Go binary. A Go 1.26 binary reserves
// about 1.1 GiB of PROT_NONE address space at start (the page allocator's
// summaries and scavenger index), so an address-space limit around 1 GiB,
// which runtime-tools' process_rlimits and some clients ask for, makes every
// later mmap of the init fail: loading the filter fails with ENOMEM and the
// container is never created. runc built with an older Go reserves half as
// much and only just fits.
//
// So RLIMIT_AS is held back from libcontainer and set here, from the
// parent, when the container is started, just before its init (which has
// loaded seccomp long before) execs, or when an exec's process is about to
// exec. It is not set at create: an idle init held under it for as long as
// the client waits to start the container fails as soon as the Go runtime
// maps anything more (a new thread's stack), which happened under load. The container's program, which starts with a
// fresh address space at execve, runs under exactly the requested limit.
// For an exec, a limit below rlimitASRoom lands microseconds after the
// program starts (a larger one is libcontainer's, before); the memory bound
// a sandbox relies on is the cgroup's, not this rlimit.

import (
	"fmt"
	"slices"

	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"
)

// rlimitASRoom is the address space above which an RLIMIT_AS leaves the Go
// init room to finish (it maps about 1.5 GiB here): such a limit is set by
// libcontainer as any other.
const rlimitASRoom = 4 << 30

// roomyRlimitAS reports whether as leaves the init room (rlimitASRoom).
func roomyRlimitAS(as *configs.Rlimit) bool {
	return as.Soft >= rlimitASRoom && as.Hard >= rlimitASRoom
}

// takeRlimitAS removes RLIMIT_AS from rl and returns it (nil if absent).
func takeRlimitAS(rl []configs.Rlimit) ([]configs.Rlimit, *configs.Rlimit) {
	i := slices.IndexFunc(rl, func(r configs.Rlimit) bool { return r.Type == unix.RLIMIT_AS })
	if i < 0 {
		return rl, nil
	}
	as := rl[i]
	rest := slices.DeleteFunc(slices.Clone(rl), func(r configs.Rlimit) bool { return r.Type == unix.RLIMIT_AS })
	return rest, &as
}

// setRlimitAS sets as on the process pid; nil sets nothing.
func setRlimitAS(pid int, as *configs.Rlimit) error {
	if as == nil {
		return nil
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_AS, &unix.Rlimit{Cur: as.Soft, Max: as.Hard}, nil); err != nil {
		return fmt.Errorf("process.rlimits: set RLIMIT_AS (soft %d, hard %d) on pid %d: %w", as.Soft, as.Hard, pid, err)
	}
	return nil
}

// inheritedRlimit is a list that changes nothing: this process's own
// RLIMIT_CORE, which a child inherits anyway. libcontainer gives a process
// with an empty list the init's rlimits instead of its parent's.
func inheritedRlimit() []configs.Rlimit {
	var cur unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_CORE, &cur); err != nil {
		return nil
	}
	return []configs.Rlimit{{Type: unix.RLIMIT_CORE, Soft: cur.Cur, Hard: cur.Max}}
}
