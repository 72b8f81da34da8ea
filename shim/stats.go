package shim

import (
	v1 "github.com/containerd/cgroups/v3/cgroup1/stats"
	v2 "github.com/containerd/cgroups/v3/cgroup2/stats"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"google.golang.org/protobuf/types/known/anypb"
)

// metricsAny converts libcontainer's cgroup statistics to the metrics type
// containerd expects from a runc shim (cgroups v1 or v2 Metrics): CPU,
// memory and pids. It is deliberately minimal.
func metricsAny(st *libcontainer.Stats) (*anypb.Any, error) {
	cg := st.CgroupStats
	if cg == nil {
		cg = cgroups.NewStats()
	}
	var m any
	if cgroups.IsCgroup2UnifiedMode() {
		m = &v2.Metrics{
			Pids: &v2.PidsStat{Current: cg.PidsStats.Current, Limit: cg.PidsStats.Limit},
			CPU: &v2.CPUStat{
				UsageUsec:  cg.CpuStats.CpuUsage.TotalUsage / 1000,
				UserUsec:   cg.CpuStats.CpuUsage.UsageInUsermode / 1000,
				SystemUsec: cg.CpuStats.CpuUsage.UsageInKernelmode / 1000,
			},
			Memory: &v2.MemoryStat{
				Usage:      cg.MemoryStats.Usage.Usage,
				UsageLimit: cg.MemoryStats.Usage.Limit,
				MaxUsage:   cg.MemoryStats.Usage.MaxUsage,
				SwapUsage:  cg.MemoryStats.SwapUsage.Usage,
			},
		}
	} else {
		m = &v1.Metrics{
			Pids: &v1.PidsStat{Current: cg.PidsStats.Current, Limit: cg.PidsStats.Limit},
			CPU: &v1.CPUStat{Usage: &v1.CPUUsage{
				Total:  cg.CpuStats.CpuUsage.TotalUsage,
				Kernel: cg.CpuStats.CpuUsage.UsageInKernelmode,
				User:   cg.CpuStats.CpuUsage.UsageInUsermode,
				PerCPU: cg.CpuStats.CpuUsage.PercpuUsage,
			}},
			Memory: &v1.MemoryStat{
				Cache: cg.MemoryStats.Cache,
				Usage: &v1.MemoryEntry{
					Usage: cg.MemoryStats.Usage.Usage, Limit: cg.MemoryStats.Usage.Limit,
					Max: cg.MemoryStats.Usage.MaxUsage, Failcnt: cg.MemoryStats.Usage.Failcnt,
				},
				Swap: &v1.MemoryEntry{Usage: cg.MemoryStats.SwapUsage.Usage, Limit: cg.MemoryStats.SwapUsage.Limit},
			},
		}
	}
	return typeurl.MarshalAnyToProto(m)
}
