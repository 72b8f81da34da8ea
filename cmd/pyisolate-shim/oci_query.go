package main

// The OCI face's other verbs: state, list, ps, features, events, pause,
// resume, update.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/opencontainers/cgroups"
	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/capabilities"
	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	"github.com/opencontainers/runc/types"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/opencontainers/runtime-spec/specs-go/features"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/sandbox"
	"github.com/pyisolate/pyisolate-oci/spec"
)

func init() {
	ociVerbs["state"] = ociVerb{"print a container's OCI state (JSON)", ociState}
	ociVerbs["list"] = ociVerb{"list containers", ociList}
	ociVerbs["ps"] = ociVerb{"list a container's processes", ociPs}
	ociVerbs["features"] = ociVerb{"print the OCI features this runtime has (JSON)", ociFeatures}
	ociVerbs["events"] = ociVerb{"print a container's resource statistics (JSON)", ociEvents}
	ociVerbs["pause"] = ociVerb{"freeze every process of a container", ociPause}
	ociVerbs["resume"] = ociVerb{"thaw a paused container", ociResume}
	ociVerbs["update"] = ociVerb{"change a running container's cgroup limits", ociUpdate}
	ociVerbs["checkpoint"] = ociVerb{"not supported", ociUnsupported("checkpoint")}
	ociVerbs["restore"] = ociVerb{"not supported", ociUnsupported("restore")}
}

func ociUnsupported(verb string) func(*ociGlobal, []string) error {
	return func(*ociGlobal, []string) error {
		return fmt.Errorf("%s is not supported by %s", verb, OCIName)
	}
}

// ociStateJSON is a container's state as runc prints it: the OCI state with
// the creation time and owner.
type ociStateJSON struct {
	OCIVersion  string            `json:"ociVersion"`
	ID          string            `json:"id"`
	Pid         int               `json:"pid"`
	Status      string            `json:"status"`
	Bundle      string            `json:"bundle"`
	Rootfs      string            `json:"rootfs"`
	Created     time.Time         `json:"created"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Owner       string            `json:"owner"`
}

func stateOf(st runtime.State) ociStateJSON {
	status := string(st.Status)
	if st.Status == runtime.StatusUnknown {
		status = string(runtime.StatusStopped)
	}
	return ociStateJSON{
		OCIVersion: specs.Version, ID: st.ID, Pid: st.InitPID, Status: status, Bundle: st.Bundle,
		Rootfs: st.Rootfs, Created: st.Created, Annotations: st.Annotations, Owner: "",
	}
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func ociState(g *ociGlobal, args []string) error {
	c, err := ociLoadOne(g, "state", args)
	if err != nil {
		return err
	}
	st, err := c.State()
	if err != nil {
		return err
	}
	return printJSON(stateOf(st))
}

func ociList(g *ociGlobal, args []string) error {
	fs := ociFlags("list")
	var format string
	var quiet bool
	fs.StringVar(&format, "format", "table", "table or json")
	fs.StringVar(&format, "f", "table", "table or json")
	fs.BoolVar(&quiet, "quiet", false, "print the ids only")
	fs.BoolVar(&quiet, "q", false, "print the ids only")
	pos, err := parseOCIFlags(fs, args, 0)
	if err != nil {
		return err
	}
	if err := needArgs("list", pos, 0, true); err != nil {
		return err
	}
	list, err := sandbox.NewRuntime(g.root).List()
	if err != nil {
		return err
	}
	out := []ociStateJSON{}
	for _, st := range list {
		out = append(out, stateOf(st))
	}
	switch {
	case quiet:
		for _, st := range out {
			fmt.Println(st.ID)
		}
		return nil
	case format == "json":
		return json.NewEncoder(os.Stdout).Encode(out)
	case format != "table":
		return fmt.Errorf("list: invalid format option %q", format)
	}
	w := tabwriter.NewWriter(os.Stdout, 12, 1, 3, ' ', 0)
	fmt.Fprint(w, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER\n")
	for _, st := range out {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", st.ID, st.Pid, st.Status, st.Bundle,
			st.Created.Format(time.RFC3339Nano), st.Owner)
	}
	return w.Flush()
}

func ociPs(g *ociGlobal, args []string) error {
	fs := ociFlags("ps")
	var format string
	fs.StringVar(&format, "format", "table", "table or json")
	fs.StringVar(&format, "f", "table", "table or json")
	pos, err := parseOCIFlags(fs, args, 1)
	if err != nil {
		return err
	}
	if err := needArgs("ps", pos, 1, false); err != nil {
		return err
	}
	_, c, err := g.load(pos[0])
	if err != nil {
		return err
	}
	pids, err := c.Processes()
	if err != nil {
		return err
	}
	switch format {
	case "json":
		if pids == nil {
			pids = []int{}
		}
		return json.NewEncoder(os.Stdout).Encode(pids)
	case "table":
	default:
		return fmt.Errorf("ps: invalid format option %q", format)
	}
	psArgs := pos[1:]
	if len(psArgs) == 0 {
		psArgs = []string{"-ef"}
	}
	out, err := exec.Command("ps", psArgs...).Output()
	if err != nil {
		return fmt.Errorf("ps: %w", err)
	}
	lines := strings.Split(string(out), "\n")
	col := slices.Index(strings.Fields(lines[0]), "PID")
	if col < 0 {
		return errors.New("ps: no PID column in the output of ps")
	}
	fmt.Println(lines[0])
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		if len(f) <= col {
			continue
		}
		if pid, err := strconv.Atoi(f[col]); err == nil && slices.Contains(pids, pid) {
			fmt.Println(line)
		}
	}
	return nil
}

// Annotations of the features output.
const (
	// featurePolicy is the node's policy for plain bundles.
	featurePolicy = "io.pyisolate.policy"
	// featureLibseccomp is the libseccomp version, under runc's key.
	featureLibseccomp = "io.github.seccomp.libseccomp.version"
)

func ociFeatures(g *ociGlobal, args []string) error {
	pos, err := parseOCIFlags(ociFlags("features"), args, 0)
	if err != nil {
		return err
	}
	if err := needArgs("features", pos, 0, true); err != nil {
		return err
	}
	t := true
	feat := features.Features{
		OCIVersionMin: "1.0.0",
		OCIVersionMax: specs.Version,
		Annotations:   map[string]string{featurePolicy: string(g.policy)},
		Hooks:         configs.KnownHookNames(),
		MountOptions:  specconv.KnownMountOptions(),
		Linux: &features.Linux{
			Namespaces:   specconv.KnownNamespaces(),
			Capabilities: capabilities.KnownCapabilities(),
			Cgroup:       &features.Cgroup{V1: &t, V2: &t, Systemd: &t, SystemdUser: &t, Rdma: &t},
			Apparmor:     &features.Apparmor{Enabled: &t},
			Selinux:      &features.Selinux{Enabled: &t},
			MountExtensions: &features.MountExtensions{
				IDMap: &features.IDMap{Enabled: &t},
			},
		},
		PotentiallyUnsafeConfigAnnotations: []string{"bundle", "org.systemd.property.", spec.AnnotationPrefix},
	}
	if seccomp.Enabled {
		feat.Linux.Seccomp = &features.Seccomp{
			Enabled:        &t,
			Actions:        seccomp.KnownActions(),
			Operators:      seccomp.KnownOperators(),
			Archs:          seccomp.KnownArchs(),
			KnownFlags:     seccomp.KnownFlags(),
			SupportedFlags: seccomp.SupportedFlags(),
		}
		major, minor, patch := seccomp.Version()
		feat.Annotations[featureLibseccomp] = fmt.Sprintf("%d.%d.%d", major, minor, patch)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "    ")
	return enc.Encode(feat)
}

func ociEvents(g *ociGlobal, args []string) error {
	fs := ociFlags("events")
	var stats bool
	var interval time.Duration
	fs.BoolVar(&stats, "stats", false, "print the container's statistics once and exit")
	fs.DurationVar(&interval, "interval", 5*time.Second, "statistics interval")
	pos, err := parseOCIFlags(fs, args, 0)
	if err != nil {
		return err
	}
	if err := needArgs("events", pos, 1, true); err != nil {
		return err
	}
	if interval <= 0 {
		return errors.New("duration interval must be greater than 0")
	}
	_, c, err := g.load(pos[0])
	if err != nil {
		return err
	}
	st, err := c.State()
	if err != nil {
		return err
	}
	if st.Status == runtime.StatusStopped {
		return fmt.Errorf("container with id %s is not running", c.ID())
	}
	enc := json.NewEncoder(os.Stdout)
	for {
		s, err := c.Stats()
		if err != nil {
			return err
		}
		if err := enc.Encode(&types.Event{Type: "stats", ID: c.ID(), Data: convertStats(s)}); err != nil {
			return err
		}
		if stats {
			return nil
		}
		time.Sleep(interval)
		if st, err := c.State(); err != nil || st.Status == runtime.StatusStopped {
			return nil
		}
	}
}

// convertStats is runc's conversion of libcontainer's statistics to its
// events' (without Intel RDT).
func convertStats(ls *libcontainer.Stats) *types.Stats {
	cg := ls.CgroupStats
	if cg == nil {
		return nil
	}
	var s types.Stats
	s.Pids.Current = cg.PidsStats.Current
	s.Pids.Limit = cg.PidsStats.Limit
	s.CPU.Usage.Kernel = cg.CpuStats.CpuUsage.UsageInKernelmode
	s.CPU.Usage.User = cg.CpuStats.CpuUsage.UsageInUsermode
	s.CPU.Usage.Total = cg.CpuStats.CpuUsage.TotalUsage
	s.CPU.Usage.Percpu = cg.CpuStats.CpuUsage.PercpuUsage
	s.CPU.Usage.PercpuKernel = cg.CpuStats.CpuUsage.PercpuUsageInKernelmode
	s.CPU.Usage.PercpuUser = cg.CpuStats.CpuUsage.PercpuUsageInUsermode
	s.CPU.Throttling.Periods = cg.CpuStats.ThrottlingData.Periods
	s.CPU.Throttling.ThrottledPeriods = cg.CpuStats.ThrottlingData.ThrottledPeriods
	s.CPU.Throttling.ThrottledTime = cg.CpuStats.ThrottlingData.ThrottledTime
	s.CPUSet = types.CPUSet(cg.CPUSetStats)
	mem := func(d cgroups.MemoryData) types.MemoryEntry {
		return types.MemoryEntry{Limit: d.Limit, Usage: d.Usage, Max: d.MaxUsage, Failcnt: d.Failcnt}
	}
	s.Memory.Cache = cg.MemoryStats.Cache
	s.Memory.Kernel = mem(cg.MemoryStats.KernelUsage)
	s.Memory.KernelTCP = mem(cg.MemoryStats.KernelTCPUsage)
	s.Memory.Swap = mem(cg.MemoryStats.SwapUsage)
	s.Memory.Usage = mem(cg.MemoryStats.Usage)
	s.Memory.Raw = cg.MemoryStats.Stats
	blk := func(es []cgroups.BlkioStatEntry) []types.BlkioEntry {
		out := make([]types.BlkioEntry, 0, len(es))
		for _, e := range es {
			out = append(out, types.BlkioEntry(e))
		}
		return out
	}
	s.Blkio.IoServiceBytesRecursive = blk(cg.BlkioStats.IoServiceBytesRecursive)
	s.Blkio.IoServicedRecursive = blk(cg.BlkioStats.IoServicedRecursive)
	s.Blkio.IoQueuedRecursive = blk(cg.BlkioStats.IoQueuedRecursive)
	s.Blkio.IoServiceTimeRecursive = blk(cg.BlkioStats.IoServiceTimeRecursive)
	s.Blkio.IoWaitTimeRecursive = blk(cg.BlkioStats.IoWaitTimeRecursive)
	s.Blkio.IoMergedRecursive = blk(cg.BlkioStats.IoMergedRecursive)
	s.Blkio.IoTimeRecursive = blk(cg.BlkioStats.IoTimeRecursive)
	s.Blkio.SectorsRecursive = blk(cg.BlkioStats.SectorsRecursive)
	s.Hugetlb = map[string]types.Hugetlb{}
	for k, v := range cg.HugetlbStats {
		s.Hugetlb[k] = types.Hugetlb{Usage: v.Usage, Max: v.MaxUsage, Failcnt: v.Failcnt}
	}
	s.NetworkInterfaces = ls.Interfaces
	return &s
}

func ociPause(g *ociGlobal, args []string) error {
	return ociOnContainer(g, "pause", args, (*runtime.Container).Pause)
}

func ociResume(g *ociGlobal, args []string) error {
	return ociOnContainer(g, "resume", args, (*runtime.Container).Resume)
}

// ociOnContainer runs a verb that takes one container id and no flags of its
// own: fn on the loaded container.
func ociOnContainer(g *ociGlobal, verb string, args []string, fn func(*runtime.Container) error) error {
	c, err := ociLoadOne(g, verb, args)
	if err != nil {
		return err
	}
	return fn(c)
}

// ociLoadOne parses the arguments of a verb that takes one container id and
// no flags of its own, and loads that container.
func ociLoadOne(g *ociGlobal, verb string, args []string) (*runtime.Container, error) {
	pos, err := parseOCIFlags(ociFlags(verb), args, 0)
	if err != nil {
		return nil, err
	}
	if err := needArgs(verb, pos, 1, true); err != nil {
		return nil, err
	}
	_, c, err := g.load(pos[0])
	return c, err
}

func ociUpdate(g *ociGlobal, args []string) error {
	fs := ociFlags("update")
	var resources, memory, memSwap, memRes, cpus, mems string
	var shares, period uint64
	var quota, pids int64
	var weight uint
	fs.StringVar(&resources, "resources", "", "file with an OCI linux.resources section (- for stdin)")
	fs.StringVar(&resources, "r", "", "file with an OCI linux.resources section (- for stdin)")
	fs.StringVar(&memory, "memory", "", "memory limit (bytes, or with a k, m, g suffix; -1 for none)")
	fs.StringVar(&memSwap, "memory-swap", "", "memory plus swap limit")
	fs.StringVar(&memRes, "memory-reservation", "", "memory soft limit")
	fs.StringVar(&cpus, "cpuset-cpus", "", "CPUs to run on")
	fs.StringVar(&mems, "cpuset-mems", "", "memory nodes to use")
	fs.Uint64Var(&shares, "cpu-share", 0, "CPU shares")
	fs.Uint64Var(&period, "cpu-period", 0, "CFS period (µs)")
	fs.Int64Var(&quota, "cpu-quota", 0, "CFS quota (µs)")
	fs.Int64Var(&pids, "pids-limit", 0, "maximum number of processes")
	fs.UintVar(&weight, "blkio-weight", 0, "block I/O weight (10 to 1000)")
	pos, err := parseOCIFlags(fs, args, 0)
	if err != nil {
		return err
	}
	if err := needArgs("update", pos, 1, true); err != nil {
		return err
	}
	_, c, err := g.load(pos[0])
	if err != nil {
		return err
	}
	res := &specs.LinuxResources{}
	if resources != "" {
		var data []byte
		if resources == "-" {
			data, err = readAllStdin()
		} else {
			data, err = os.ReadFile(resources)
		}
		if err != nil {
			return fmt.Errorf("update: --resources: %w", err)
		}
		if err := json.Unmarshal(data, res); err != nil {
			return fmt.Errorf("update: --resources: %w", err)
		}
	} else {
		res.Memory = &specs.LinuxMemory{}
		for _, m := range []struct {
			v   string
			dst **int64
		}{{memory, &res.Memory.Limit}, {memSwap, &res.Memory.Swap}, {memRes, &res.Memory.Reservation}} {
			if m.v == "" {
				continue
			}
			n, err := parseBytes(m.v)
			if err != nil {
				return fmt.Errorf("update: %w", err)
			}
			*m.dst = &n
		}
		res.CPU = &specs.LinuxCPU{Cpus: cpus, Mems: mems}
		if shares != 0 {
			res.CPU.Shares = &shares
		}
		if period != 0 {
			res.CPU.Period = &period
		}
		if quota != 0 {
			res.CPU.Quota = &quota
		}
		if pids != 0 {
			res.Pids = &specs.LinuxPids{Limit: &pids}
		}
		if weight != 0 {
			w := uint16(weight)
			res.BlockIO = &specs.LinuxBlockIO{Weight: &w}
		}
	}
	st, err := c.State()
	if err != nil {
		return err
	}
	if err := sandbox.CheckUpdate(sandbox.RecordedOf(st), c.Resources(), res); err != nil {
		return err
	}
	return c.Update(res)
}

// readAllStdin reads stdin to its end.
func readAllStdin() ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(os.Stdin)
	return b.Bytes(), err
}

// parseBytes reads a size: a number of bytes with an optional k, m, g or t
// suffix (powers of 1024, as runc's), or -1 for none.
func parseBytes(s string) (int64, error) {
	if s == "-1" {
		return -1, nil
	}
	t := strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(strings.ToLower(s), "b"), "i"))
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k':
			mult = 1 << 10
		case 'm':
			mult = 1 << 20
		case 'g':
			mult = 1 << 30
		case 't':
			mult = 1 << 40
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q", s)
	}
	return n * mult, nil
}
