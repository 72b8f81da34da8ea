package runtime

// Control of a running container beyond its lifecycle, as runc's pause,
// resume and update verbs give it (the OCI command-line face calls them).

import (
	"errors"
	"fmt"

	"github.com/opencontainers/cgroups"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Pause freezes every process of the container (the freezer cgroup); its
// status becomes paused.
func (c *Container) Pause() error {
	if err := c.lc.Pause(); err != nil {
		return fmt.Errorf("pause container %s: %w", c.ID(), err)
	}
	return nil
}

// Resume thaws a paused container.
func (c *Container) Resume() error {
	if err := c.lc.Resume(); err != nil {
		return fmt.Errorf("resume container %s: %w", c.ID(), err)
	}
	return nil
}

// Resources returns the container's current cgroup limits as an OCI
// resources section: memory (limit, reservation, swap), pids and CPU
// (shares, quota, period, cpuset). Zero values are left out.
func (c *Container) Resources() *specs.LinuxResources {
	out := &specs.LinuxResources{}
	cg := c.lc.Config().Cgroups
	if cg == nil || cg.Resources == nil {
		return out
	}
	r := cg.Resources
	if r.Memory != 0 || r.MemoryReservation != 0 || r.MemorySwap != 0 {
		out.Memory = &specs.LinuxMemory{}
		if r.Memory != 0 {
			out.Memory.Limit = ptr(r.Memory)
		}
		if r.MemoryReservation != 0 {
			out.Memory.Reservation = ptr(r.MemoryReservation)
		}
		if r.MemorySwap != 0 {
			out.Memory.Swap = ptr(r.MemorySwap)
		}
	}
	if r.PidsLimit != nil && *r.PidsLimit > 0 {
		out.Pids = &specs.LinuxPids{Limit: ptr(*r.PidsLimit)}
	}
	if r.CpuShares != 0 || r.CpuQuota != 0 || r.CpuPeriod != 0 || r.CpusetCpus != "" || r.CpusetMems != "" {
		out.CPU = &specs.LinuxCPU{Cpus: r.CpusetCpus, Mems: r.CpusetMems}
		if r.CpuShares != 0 {
			out.CPU.Shares = ptr(r.CpuShares)
		}
		if r.CpuQuota != 0 {
			out.CPU.Quota = ptr(r.CpuQuota)
		}
		if r.CpuPeriod != 0 {
			out.CPU.Period = ptr(r.CpuPeriod)
		}
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// Update applies new cgroup limits to the running container, as `runc
// update` does: the fields set in res replace the container's (memory
// limit, reservation and swap; CPU shares, quota, period, realtime, cpuset;
// pids limit; block I/O weight; unified cgroup v2 keys), the others are kept.
func (c *Container) Update(res *specs.LinuxResources) error {
	if err := c.update(res); err != nil {
		return fmt.Errorf("update container %s: %w", c.ID(), err)
	}
	return nil
}

func (c *Container) update(res *specs.LinuxResources) error {
	if res == nil {
		return errors.New("no resources given")
	}
	cfg := c.lc.Config()
	if cfg.Cgroups == nil || cfg.Cgroups.Resources == nil {
		return errors.New("the container has no cgroup")
	}
	r := cfg.Cgroups.Resources
	if m := res.Memory; m != nil {
		if m.Limit != nil {
			r.Memory = *m.Limit
			if *m.Limit == -1 && m.Swap == nil {
				r.MemorySwap = 0
			}
		}
		if m.Reservation != nil {
			r.MemoryReservation = *m.Reservation
		}
		if m.Swap != nil {
			r.MemorySwap = *m.Swap
		}
		if m.CheckBeforeUpdate != nil {
			r.MemoryCheckBeforeUpdate = *m.CheckBeforeUpdate
		}
	}
	if p := res.CPU; p != nil {
		if p.Shares != nil {
			r.CpuShares = *p.Shares
			r.CpuWeight = cgroups.ConvertCPUSharesToCgroupV2Value(*p.Shares)
		}
		if p.Quota != nil {
			r.CpuQuota = *p.Quota
		}
		if p.Period != nil {
			r.CpuPeriod = *p.Period
		}
		if p.Burst != nil {
			r.CpuBurst = p.Burst
		}
		if p.RealtimePeriod != nil {
			r.CpuRtPeriod = *p.RealtimePeriod
		}
		if p.RealtimeRuntime != nil {
			r.CpuRtRuntime = *p.RealtimeRuntime
		}
		if p.Idle != nil {
			r.CPUIdle = p.Idle
		}
		if p.Cpus != "" {
			r.CpusetCpus = p.Cpus
		}
		if p.Mems != "" {
			r.CpusetMems = p.Mems
		}
	}
	if res.Pids != nil && res.Pids.Limit != nil {
		r.PidsLimit = res.Pids.Limit
	}
	if b := res.BlockIO; b != nil && b.Weight != nil {
		r.BlkioWeight = *b.Weight
	}
	if len(res.Unified) > 0 {
		if r.Unified == nil {
			r.Unified = map[string]string{}
		}
		for k, v := range res.Unified {
			r.Unified[k] = v
		}
	}
	return c.lc.Set(cfg)
}
