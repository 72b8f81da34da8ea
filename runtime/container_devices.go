package runtime

// libcontainer's cgroup managers apply device rules through a backend that
// this package registers (cgroup v1 devices.allow/deny, cgroup v2 eBPF).
import _ "github.com/opencontainers/cgroups/devices"
