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
// derived from Docker's default deny list) for s, less StrictDenied. It must
// be called after s.Process.Capabilities is set: syscalls gated by a
// capability are allowed only when that capability is in the bounding set,
// and the builder drops all.
func defaultSeccomp(s *specs.Spec) *specs.LinuxSeccomp {
	p := seccomp.DefaultProfile(s)
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
