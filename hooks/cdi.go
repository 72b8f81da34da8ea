package hooks

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"tags.cncf.io/container-device-interface/pkg/cdi"
	"tags.cncf.io/container-device-interface/pkg/parser"
)

// AnnotationCDIInjected records, comma separated, the fully qualified CDI
// devices InjectCDI has injected into a spec. It makes InjectCDI idempotent
// (a bundle rewritten twice gets its devices once) and lets the `hook cdi`
// check at createRuntime that a bundle was prepared.
const AnnotationCDIInjected = "io.pyisolate.out.cdi-injected"

// DefaultSpecDirs are the CDI spec directories searched when CDIOptions
// names none: the static /etc/cdi and the dynamic /var/run/cdi, which takes
// precedence for devices defined in both (the CDI specification's order).
var DefaultSpecDirs = []string{cdi.DefaultStaticDir, cdi.DefaultDynamicDir}

// CDIOptions are the inputs of InjectCDI besides the spec.
type CDIOptions struct {
	// SpecDirs are the CDI spec directories, lowest priority first. Empty
	// means DefaultSpecDirs.
	SpecDirs []string
	// Devices are fully qualified CDI device names (vendor.com/class=name)
	// requested besides those in the spec's cdi.k8s.io/* annotations.
	Devices []string
}

// specDirs returns the directories to search.
func (o CDIOptions) specDirs() []string {
	if len(o.SpecDirs) > 0 {
		return o.SpecDirs
	}
	return DefaultSpecDirs
}

// UnknownDeviceError is returned by InjectCDI when requested devices are
// defined by no CDI spec in the directories searched.
type UnknownDeviceError struct {
	// Devices are the unresolved fully qualified names.
	Devices []string
	// SpecDirs are the directories that were searched.
	SpecDirs []string
	// Known are the devices the directories do define, for the message.
	Known []string
}

// Error names the devices, the directories and what is there instead.
func (e *UnknownDeviceError) Error() string {
	known := "none"
	if len(e.Known) > 0 {
		known = strings.Join(e.Known, ", ")
	}
	return fmt.Sprintf("unknown CDI device %s: no CDI spec in %s defines it (devices defined there: %s); "+
		"for NVIDIA GPUs generate a spec with `%s`",
		strings.Join(e.Devices, ", "), strings.Join(e.SpecDirs, ", "), known, GenerateCommand)
}

// SpecFileError is returned by InjectCDI when a CDI spec file in the
// directories searched cannot be loaded (bad YAML or JSON, an invalid spec, a
// device defined twice at the same priority).
type SpecFileError struct {
	// Path is the spec file.
	Path string
	// Err is what is wrong with it.
	Err error
}

// Error names the file.
func (e *SpecFileError) Error() string {
	return fmt.Sprintf("CDI spec file %s: %v", e.Path, e.Err)
}

// Unwrap returns the underlying error.
func (e *SpecFileError) Unwrap() error { return e.Err }

// RequestedDevices returns the CDI devices a container asks for: those of
// the cdi.k8s.io/* annotations (parsed with the CDI library; keys in sorted
// order, names in the order written), then extra, without duplicates. A
// name that is not fully qualified is an error naming it.
func RequestedDevices(annotations map[string]string, extra []string) ([]string, error) {
	var out []string
	seen := map[string]bool{}
	add := func(d string) {
		if !seen[d] {
			seen[d] = true
			out = append(out, d)
		}
	}
	// cdi.ParseAnnotations walks a map, so its order is random; device order
	// matters (CUDA ordinals), so parse one key at a time in sorted order.
	keys := slices.Sorted(maps.Keys(annotations))
	for _, k := range keys {
		if !strings.HasPrefix(k, cdi.AnnotationPrefix) {
			continue
		}
		_, devs, err := cdi.ParseAnnotations(map[string]string{k: annotations[k]})
		if err != nil {
			return nil, fmt.Errorf("annotation %s: %w", k, err)
		}
		for _, d := range devs {
			add(d)
		}
	}
	for _, d := range extra {
		if _, _, _, err := parser.ParseQualifiedName(d); err != nil {
			return nil, fmt.Errorf("CDI device %q: %w", d, err)
		}
		add(d)
	}
	return out, nil
}

// InjectedDevices returns the devices recorded in the spec's
// AnnotationCDIInjected.
func InjectedDevices(s *specs.Spec) []string {
	if s == nil || s.Annotations[AnnotationCDIInjected] == "" {
		return nil
	}
	return strings.Split(s.Annotations[AnnotationCDIInjected], ",")
}

// InjectCDI resolves the CDI devices the spec asks for (its cdi.k8s.io/*
// annotations, then opts.Devices) from the CDI spec directories and injects
// them into s with the CDI library: device nodes, mounts, environment, OCI
// hooks and additional groups. It returns the names injected, none when
// nothing was asked for.
//
// Besides what the library does, InjectCDI:
//   - fails when any spec file in the directories cannot be loaded, naming
//     the file: a broken higher-priority file (/var/run/cdi) would otherwise
//     silently let a stale lower-priority definition win;
//   - fails on an unknown device, naming it and the directories searched;
//   - makes sure the device cgroup allows every injected device node (the
//     library appends allow rules after the spec's deny-all; InjectCDI adds
//     any that a later deny would shadow);
//   - in a spec with a user namespace, where runtimes bind-mount device nodes
//     from the host path equal to the container path, turns a device whose
//     CDI hostPath differs into a bind mount of that hostPath;
//   - records the names in AnnotationCDIInjected and skips devices already
//     recorded there, so calling it twice changes nothing.
func InjectCDI(ctx context.Context, s *specs.Spec, opts CDIOptions) ([]string, error) {
	if s == nil {
		return nil, errors.New("inject CDI devices: nil spec")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("inject CDI devices: %w", err)
	}
	devs, err := RequestedDevices(s.Annotations, opts.Devices)
	if err != nil {
		return nil, fmt.Errorf("inject CDI devices: %w", err)
	}
	if len(devs) == 0 {
		return nil, nil
	}
	done := InjectedDevices(s)
	var todo []string
	for _, d := range devs {
		if !slices.Contains(done, d) {
			todo = append(todo, d)
		}
	}
	if len(todo) == 0 {
		return devs, nil
	}
	dirs := opts.specDirs()
	cache, err := loadCache(dirs)
	if err != nil {
		return nil, fmt.Errorf("inject CDI devices %s: %w", strings.Join(todo, ", "), err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("inject CDI devices: %w", err)
	}
	hostPaths := deviceHostPaths(cache, todo)
	unresolved, err := cache.InjectDevices(s, todo...)
	if len(unresolved) > 0 {
		return nil, &UnknownDeviceError{Devices: unresolved, SpecDirs: dirs, Known: cache.ListDevices()}
	}
	if err != nil {
		return nil, fmt.Errorf("inject CDI devices %s: %w", strings.Join(todo, ", "), err)
	}
	if hasNamespace(s, specs.UserNamespace) {
		bindHostPathDevices(s, hostPaths)
	}
	allowDeviceNodes(s)
	if s.Annotations == nil {
		s.Annotations = map[string]string{}
	}
	s.Annotations[AnnotationCDIInjected] = strings.Join(append(done, todo...), ",")
	return devs, nil
}

// loadCache reads the CDI spec directories once, without a watch, and fails
// on any spec file that does not load.
func loadCache(dirs []string) (*cdi.Cache, error) {
	cache, err := cdi.NewCache(cdi.WithSpecDirs(dirs...), cdi.WithAutoRefresh(false))
	if err != nil {
		return nil, fmt.Errorf("CDI cache over %s: %w", strings.Join(dirs, ", "), err)
	}
	if errs := cache.GetErrors(); len(errs) > 0 {
		paths := slices.Sorted(maps.Keys(errs))
		var all []error
		for _, p := range paths {
			all = append(all, &SpecFileError{Path: p, Err: errors.Join(errs[p]...)})
		}
		return nil, errors.Join(all...)
	}
	return cache, nil
}

// deviceHostPaths maps the container path of every device node the devices
// (and their specs' common edits) inject to its CDI hostPath, where the two
// differ.
func deviceHostPaths(cache *cdi.Cache, devs []string) map[string]string {
	out := map[string]string{}
	for _, name := range devs {
		d := cache.GetDevice(name)
		if d == nil {
			continue
		}
		for _, n := range d.ContainerEdits.DeviceNodes {
			if n.HostPath != "" && n.HostPath != n.Path {
				out[n.Path] = n.HostPath
			}
		}
		if sp := d.GetSpec(); sp != nil && sp.Spec != nil {
			for _, n := range sp.ContainerEdits.DeviceNodes {
				if n.HostPath != "" && n.HostPath != n.Path {
					out[n.Path] = n.HostPath
				}
			}
		}
	}
	return out
}

// hasNamespace reports whether the spec asks for a namespace of type t.
func hasNamespace(s *specs.Spec, t specs.LinuxNamespaceType) bool {
	_, ok := namespace(s, t)
	return ok
}

// namespace returns the spec's namespace entry of type t.
func namespace(s *specs.Spec, t specs.LinuxNamespaceType) (specs.LinuxNamespace, bool) {
	if s == nil || s.Linux == nil {
		return specs.LinuxNamespace{}, false
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Type == t {
			return ns, true
		}
	}
	return specs.LinuxNamespace{}, false
}

// bindHostPathDevices replaces the device nodes whose host path differs from
// their container path with bind mounts of the host path: in a user
// namespace runtimes cannot mknod and bind-mount the device from its
// container path on the host, which is not where it is.
func bindHostPathDevices(s *specs.Spec, hostPaths map[string]string) {
	if s.Linux == nil || len(hostPaths) == 0 {
		return
	}
	kept := s.Linux.Devices[:0]
	for _, d := range s.Linux.Devices {
		if hp, ok := hostPaths[d.Path]; ok {
			s.Mounts = append(s.Mounts, specs.Mount{
				Destination: d.Path, Type: "bind", Source: hp,
				Options: []string{"bind", "nosuid", "noexec"},
			})
			continue
		}
		kept = append(kept, d)
	}
	s.Linux.Devices = kept
}

// allowDeviceNodes makes the device cgroup allow every block and character
// device node of the spec: for each node whose last matching rule is not an
// allow with read and write, it appends one.
func allowDeviceNodes(s *specs.Spec) {
	if s.Linux == nil {
		return
	}
	for _, d := range s.Linux.Devices {
		if d.Type != "b" && d.Type != "c" {
			continue
		}
		if deviceAllowed(s.Linux.Resources, d) {
			continue
		}
		if s.Linux.Resources == nil {
			s.Linux.Resources = &specs.LinuxResources{}
		}
		major, minor := d.Major, d.Minor
		s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{
			Allow: true, Type: d.Type, Major: &major, Minor: &minor, Access: "rwm",
		})
	}
}

// deviceAllowed evaluates the cgroup rules in order (the last match wins,
// as runc applies them) for read and write access to d.
func deviceAllowed(r *specs.LinuxResources, d specs.LinuxDevice) bool {
	if r == nil {
		return true // no rules: the runtime's defaults, nothing denied here
	}
	allowed := len(r.Devices) == 0
	for _, rule := range r.Devices {
		if rule.Type != "" && rule.Type != "a" && rule.Type != d.Type {
			continue
		}
		if rule.Major != nil && *rule.Major != d.Major {
			continue
		}
		if rule.Minor != nil && *rule.Minor != d.Minor {
			continue
		}
		access := rule.Access
		if access == "" {
			access = "rwm"
		}
		rw := strings.Contains(access, "r") && strings.Contains(access, "w")
		switch {
		case rule.Allow && rw:
			allowed = true
		case !rule.Allow && (strings.ContainsAny(access, "rw")):
			allowed = false
		}
	}
	return allowed
}
