package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/pyisolate/pyisolate-oci/gpu"
	"github.com/pyisolate/pyisolate-oci/hooks"
	"github.com/pyisolate/pyisolate-oci/runtime/detect"
	"github.com/pyisolate/pyisolate-oci/spec"
	"github.com/pyisolate/pyisolate-oci/tensoripc"
)

// gpuReadiness reports the machine's GPU and CUDA IPC readiness for detect,
// with the devices `pyisolate cdi generate` would write (the same code);
// tests replace it.
var gpuReadiness = func(ctx context.Context) hooks.CUDAReport {
	return hooks.Readiness(ctx, hooks.ReadinessOptions{Generate: generatedDevices})
}

// detectDriverRoot is the driver root detect generates for (tests set a
// fake one).
var detectDriverRoot = "/"

// generatedDevices returns the devices `pyisolate cdi generate` would write
// on this machine now.
func generatedDevices(ctx context.Context) ([]string, error) {
	s, err := gpu.Generate(ctx, gpu.Options{DriverRoot: detectDriverRoot, NVML: cdiNVML})
	if err != nil {
		return nil, err
	}
	return s.Devices, nil
}

// detectReport is detect's JSON: the host profile's fields, and the GPU
// readiness under "gpu".
type detectReport struct {
	*detect.Profile
	GPU hooks.CUDAReport `json:"gpu"`
}

func init() {
	register("detect", "show what this host allows: restriction model, cgroups, seccomp, /dev/shm, GPUs and CUDA IPC", detectMain)
}

// detectMain is "pyisolate detect [--json]". It exits 0 when detection
// worked, restricted host or not, and 1 when it failed.
func detectMain(args []string) int {
	return runDetect(context.Background(), args, os.Stdout, detect.Host)
}

// runDetect is detectMain with its output and detector given.
func runDetect(ctx context.Context, args []string, w io.Writer, detect func(context.Context) (*detect.Profile, error)) int {
	fs := newFlagSet("detect", "[--json]\n\nShows what this host allows: restriction model, cgroups, seccomp, /dev/shm, GPUs and CUDA IPC.")
	asJSON := fs.Bool("json", false, "print the host profile as JSON")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "detect: unexpected argument %q", fs.Arg(0))
	}
	p, err := detect(ctx)
	if err != nil {
		return fail(1, "detect: %v", err)
	}
	gpu := gpuReadiness(ctx)
	if *asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		err = enc.Encode(detectReport{Profile: p, GPU: gpu})
	} else {
		_, err = io.WriteString(w, formatProfile(p)+gpu.String())
	}
	if err != nil {
		return fail(1, "detect: %v", err)
	}
	return 0
}

// degradationText explains what each degradation takes away.
var degradationText = map[spec.Degradation]string{
	spec.DropUserNamespace: "no user namespace: extensions run as host uid 65534",
	spec.DropNamespaces:    "no mount, pid, ipc, uts, cgroup or network namespace",
	spec.DropCgroupLimits:  "no memory, pids or CPU limits",
	spec.DropSeccomp:       "no seccomp filter",
}

// formatProfile renders p for people: one line per fact, each problem
// followed by a "remedy:" line.
func formatProfile(p *detect.Profile) string {
	var b strings.Builder
	line := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	remedy := func(r string) {
		if r != "" {
			line("  remedy: %s", r)
		}
	}
	line("restriction model: %s (%s)", p.Restriction, p.RestrictionReason)
	remedy(p.Remedy)
	if p.Unprivileged {
		line("unprivileged userns: allowed")
	} else {
		line("unprivileged userns: blocked (%s)", p.UnprivilegedReason)
	}
	if p.Restriction == spec.RestrictionUnsupported {
		return b.String()
	}
	if m := p.RootlessMode; p.Rootless && m != nil {
		line("rootless: yes (uid %d, gid %d; state in %s)", m.UID, m.GID, m.StateRoot)
		line("  ids: %s", m.IDMapping)
		line("  group shm: %s", m.GroupShm)
		if d := m.CgroupDelegation; d != nil {
			line("  cgroup limits: enforced in the delegated cgroup %s (controllers: %s)", d.Path, strings.Join(d.Controllers, " "))
		} else {
			line("  cgroup limits: not enforced (%s): %s", strings.Join(m.NotEnforced, ", "), m.NoDelegationReason)
		}
	} else {
		line("rootless: no (root)")
	}
	line("cgroups: %s", cgroupText(p))
	line("seccomp: %s", seccompText(p))
	line("%s: %s", p.Shm.Path, shmText(p.Shm))
	if p.Shm.Warning != "" {
		line("  warning: %s", p.Shm.Warning)
		remedy(p.Shm.Remedy)
	}
	kernel := p.Kernel
	if p.WSL != 0 {
		kernel += fmt.Sprintf(" (WSL %d)", p.WSL)
	}
	line("kernel: %s", kernel)
	line("host paths: %s", pathsText(p.Paths))
	line("degraded: %s", degradedText(p))
	for _, w := range p.Warnings {
		text, fix, _ := strings.Cut(w, detect.WarningRemedySep)
		line("warning: %s", text)
		remedy(fix)
	}
	return b.String()
}

// cgroupText describes the cgroup layout.
func cgroupText(p *detect.Profile) string {
	switch p.CgroupVersion {
	case detect.CgroupV2:
		return fmt.Sprintf("v2 (unified at %s)", p.CgroupV2Path)
	case detect.CgroupHybrid:
		return fmt.Sprintf("hybrid (v1 controllers at %s + v2 at %s)", p.CgroupRoot, p.CgroupV2Path)
	case detect.CgroupV1:
		return fmt.Sprintf("v1 (controllers at %s)", p.CgroupRoot)
	}
	return "not mounted"
}

// seccompText describes seccomp support.
func seccompText(p *detect.Profile) string {
	if !p.Seccomp {
		return "not supported by the kernel"
	}
	s := "supported"
	if !p.SeccompBuiltIn {
		s = "supported by the kernel, but not built into this binary"
	}
	if len(p.SeccompActions) > 0 {
		s += " (actions: " + strings.Join(p.SeccompActions, " ") + ")"
	}
	return s
}

// shmText describes /dev/shm's size and state.
func shmText(s detect.Shm) string {
	if !s.Exists {
		return "missing"
	}
	state := "writable"
	if !s.Writable {
		state = "not writable"
	}
	return fmt.Sprintf("%s free of %s, %s", tensoripc.HumanBytes(int64(s.FreeBytes)), tensoripc.HumanBytes(int64(s.SizeBytes)), state)
}

// pathsText counts the candidate host paths present and names the missing.
func pathsText(have []string) string {
	all := append(slices.Clone(detect.SystemPaths), detect.EtcAllowList...)
	var missing []string
	for _, p := range all {
		if !slices.Contains(have, p) {
			missing = append(missing, p)
		}
	}
	s := fmt.Sprintf("%d of %d present", len(all)-len(missing), len(all))
	if len(missing) > 0 {
		s += " (missing: " + strings.Join(missing, " ") + ")"
	}
	return s
}

// degradedText lists what the spec builder drops for this host.
func degradedText(p *detect.Profile) string {
	if err := unsandboxable(p, os.Geteuid()); err != nil {
		// The spec builder still has a degraded spec for no-caps (`pyisolate
		// spec --restriction no-caps` prints it), but run does not start it.
		return "no sandbox possible: 'pyisolate run' refuses to start extensions here (see the remedy)"
	}
	drop := spec.HostDegradations(p.SpecHost())
	if len(drop) == 0 {
		return "nothing (full sandbox)"
	}
	parts := make([]string, len(drop))
	for i, d := range drop {
		parts[i] = string(d)
		if t, ok := degradationText[d]; ok {
			parts[i] += " (" + t + ")"
		}
	}
	return strings.Join(parts, ", ")
}
