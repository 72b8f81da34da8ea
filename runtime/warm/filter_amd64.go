package warm

import "golang.org/x/sys/unix"

// filterArg reports whether the traced process pid, stopped at a system
// call's entry, is loading a seccomp filter, and the address of the
// program: seccomp(SECCOMP_SET_MODE_FILTER, flags, prog) or
// prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog).
func filterArg(pid int) (uintptr, bool, error) {
	var regs unix.PtraceRegs
	if err := unix.PtraceGetRegs(pid, &regs); err != nil {
		return 0, false, err
	}
	switch {
	case regs.Orig_rax == unix.SYS_SECCOMP && regs.Rdi == unix.SECCOMP_SET_MODE_FILTER:
		return uintptr(regs.Rdx), true, nil
	case regs.Orig_rax == unix.SYS_PRCTL && regs.Rdi == unix.PR_SET_SECCOMP && regs.Rsi == unix.SECCOMP_MODE_FILTER:
		return uintptr(regs.Rdx), true, nil
	}
	return 0, false, nil
}
