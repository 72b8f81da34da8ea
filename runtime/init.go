package runtime

import (
	"os"
	goruntime "runtime"
	"sync"

	"github.com/opencontainers/runc/libcontainer"
	// nsenter is libcontainer's cgo constructor that joins namespaces in the
	// re-executed init before the Go runtime starts.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
	"golang.org/x/sys/unix"
)

// dieWithParentArgv0 is the argv[0] of a container init that must die with
// the process that started it (CreateOptions.DieWithParent). libcontainer
// starts the init as "<our argv[0]> init" and passes it nothing else that
// could carry the request before libcontainer.Init runs; its own
// ParentDeathSignal reaches only the bootstrap process, not the container's
// init, which nsexec clones (a clone does not inherit the parent-death
// signal).
const dieWithParentArgv0 = "pyisolate-init[die-with-parent]"

// argv0Mu serialises starts that change os.Args[0] against all others.
var argv0Mu sync.RWMutex

// withInitArgv0 runs fn, which starts a container init, with os.Args[0] set
// to dieWithParentArgv0 when dwp is set.
func withInitArgv0(dwp bool, fn func() error) error {
	if !dwp {
		argv0Mu.RLock()
		defer argv0Mu.RUnlock()
		return fn()
	}
	argv0Mu.Lock()
	defer argv0Mu.Unlock()
	old := os.Args[0]
	os.Args[0] = dieWithParentArgv0
	defer func() { os.Args[0] = old }()
	return fn()
}

// Init is the container init entry point. The binary calls it, before any flag
// parsing, when it was re-executed as "<binary> init" by libcontainer. It does
// not return.
func Init() {
	if os.Args[0] == dieWithParentArgv0 {
		// libcontainer.Init locks the goroutine to this thread too; it reads
		// the parent-death signal of the thread here, restores it after
		// changing credentials (which clear it) and keeps it across the exec
		// of the container's process.
		goruntime.LockOSThread()
		_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(unix.SIGKILL), 0, 0, 0)
	}
	libcontainer.Init()
}
