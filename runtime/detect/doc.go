// Package detect finds out what a host allows a container runtime: the
// restriction model (decided by real user-namespace probes, not guessed),
// cgroups, seccomp, openat2, /dev/shm, rootless facts and cgroup v2
// delegation, each problem with its remedy (Host; Cached keeps the profile
// under a state root). Profile.SpecHost is what package spec builds for.
package detect
