//go:build pyisolate_devices

// TODO(go.mod): drop the build constraint above once go.mod requires
// github.com/cilium/ebpf (v0.17.3, already in go.sum), which
// github.com/opencontainers/cgroups/devices imports for cgroup v2 device
// filters. Until then the package builds without it and Create refuses
// containers with device rules (every spec: specconv adds the default ones).

package runtime

// libcontainer's cgroup managers apply device rules through a backend that
// this package registers (cgroup v1 devices.allow/deny, cgroup v2 eBPF).
import _ "github.com/opencontainers/cgroups/devices"
