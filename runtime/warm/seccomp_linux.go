package warm

import (
	"fmt"
	goruntime "runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ptraceSeccompGetFilter is PTRACE_SECCOMP_GET_FILTER (linux/ptrace.h).
const ptraceSeccompGetFilter = 0x420c

// copySeccompFilter returns the most recent seccomp filter of process pid
// (a container's init, stopped in libcontainer's created state after it
// loaded the filter) as raw struct sock_filter instructions. It attaches
// with ptrace, which needs CAP_SYS_ADMIN, and leaves the process stopped
// and traced: the caller kills it.
func copySeccompFilter(pid int) ([]byte, error) {
	// Every ptrace request must come from the thread that attached.
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	if err := unix.PtraceAttach(pid); err != nil {
		return nil, fmt.Errorf("copy the seccomp filter: attach to %d: %w", pid, err)
	}
	detached := false
	defer func() {
		if !detached {
			_ = unix.PtraceDetach(pid)
		}
	}()
	for {
		var ws unix.WaitStatus
		if _, err := wait4(pid, &ws); err != nil {
			return nil, fmt.Errorf("copy the seccomp filter: wait for %d to stop: %w", pid, err)
		}
		if ws.Stopped() {
			break
		}
		if ws.Exited() || ws.Signaled() {
			detached = true
			return nil, fmt.Errorf("copy the seccomp filter: process %d exited", pid)
		}
	}
	n, _, errno := unix.Syscall6(unix.SYS_PTRACE, ptraceSeccompGetFilter, uintptr(pid), 0, 0, 0, 0)
	if errno != 0 {
		return nil, fmt.Errorf("copy the seccomp filter of %d: %w", pid, errno)
	}
	if n == 0 || n > 1<<16 {
		return nil, fmt.Errorf("copy the seccomp filter of %d: %d instructions", pid, n)
	}
	prog := make([]unix.SockFilter, n)
	if _, _, errno := unix.Syscall6(unix.SYS_PTRACE, ptraceSeccompGetFilter, uintptr(pid), 0,
		uintptr(unsafe.Pointer(&prog[0])), 0, 0); errno != 0 {
		return nil, fmt.Errorf("copy the seccomp filter of %d: %w", pid, errno)
	}
	raw := unsafe.Slice((*byte)(unsafe.Pointer(&prog[0])), int(n)*int(unsafe.Sizeof(prog[0])))
	return append([]byte(nil), raw...), nil
}
