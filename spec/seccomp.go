package spec

import (
	"slices"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// StrictDenied are syscalls the container default profile allows but the
// pyisolate sandbox refuses: an extension has no business tracing or reading
// the memory of other processes.
var StrictDenied = []string{"ptrace", "process_vm_readv", "process_vm_writev"}

// defaultSeccomp returns the container default seccomp profile (containerd's,
// derived from Docker's default deny list) for s, less StrictDenied, for the
// native system call ABI only. It must be called after
// s.Process.Capabilities is set: syscalls gated by a capability are allowed
// only when that capability is in the bounding set, and the builder drops
// all.
//
// containerd lists the compat ABIs too (on amd64 SCMP_ARCH_X86 and
// SCMP_ARCH_X32, for 32-bit programs). An extension has no use for them,
// they are a known kernel attack surface, and each one in the filter costs
// libcontainer's init about 7 ms to compile on every start (20 ms of 24 on
// a 2-core VM). With no architectures listed libseccomp builds the filter
// for the native ABI alone, and its bad-architecture action (SCMP_ACT_KILL)
// ends a thread that makes a compat system call.
func defaultSeccomp(s *specs.Spec) *specs.LinuxSeccomp {
	p := seccomp.DefaultProfile(s)
	p.Architectures = nil
	kept := p.Syscalls[:0]
	for _, rule := range p.Syscalls {
		if rule.Action == specs.ActAllow {
			rule.Names = slices.DeleteFunc(slices.Clone(rule.Names), func(n string) bool {
				return slices.Contains(StrictDenied, n)
			})
			if len(rule.Names) == 0 {
				continue
			}
		}
		kept = append(kept, rule)
	}
	p.Syscalls = kept
	return p
}

// Allowed reports whether a seccomp profile allows syscall name outright
// (without argument conditions). It is meant for tests and reports.
func Allowed(p *specs.LinuxSeccomp, name string) bool {
	if p == nil {
		return true
	}
	for _, rule := range p.Syscalls {
		if rule.Action == specs.ActAllow && len(rule.Args) == 0 && slices.Contains(rule.Names, name) {
			return true
		}
	}
	return p.DefaultAction == specs.ActAllow
}
