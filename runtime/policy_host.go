package runtime

import (
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// PolicyHostChecks answers the policy's host questions (spec.HostChecks) for
// a runtime that runs in the host's namespaces: a namespace path is the
// host's when it is the same namespace as this process's, and paths are
// resolved with their symlinks.
func PolicyHostChecks() spec.HostChecks {
	return spec.HostChecks{
		IsHostNamespace: func(t specs.LinuxNamespaceType, path string) bool {
			name := map[specs.LinuxNamespaceType]string{
				specs.PIDNamespace: "pid", specs.IPCNamespace: "ipc", specs.NetworkNamespace: "net",
				specs.UTSNamespace: "uts", specs.MountNamespace: "mnt", specs.CgroupNamespace: "cgroup",
				specs.UserNamespace: "user",
			}[t]
			if name == "" {
				return false
			}
			var a, b os.FileInfo
			var err error
			if a, err = os.Stat(path); err != nil {
				return false
			}
			if b, err = os.Stat("/proc/self/ns/" + name); err != nil {
				return false
			}
			return os.SameFile(a, b)
		},
		Resolve: func(p string) string {
			if r, err := filepath.EvalSymlinks(p); err == nil {
				return r
			}
			return p
		},
	}
}
