// Package sandbox is the one core every face of pyisolate-oci calls (the
// `pyisolate run` CLI, the containerd shim, and the OCI CLI and bwrap faces
// to come): it turns a bundle, a container id and a face's options into a
// prepared container — its spec, its isolation group membership, its devices
// and a release function — and owns the rules that must not drift between
// faces: the single reader of a bundle's config.json and manifest, the
// plain/extension decision, the group rule, the rootfs rule, host detection,
// the policy for plain containers and the checks of an extension's client
// request.
//
// The faces only parse their input, call Prepare, create the container with
// package runtime, and map the errors (IsUserError: the bundle's, manifest's
// or request's fault) and I/O to their own conventions.
package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pyisolate/pyisolate-oci/hooks"
	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/runtime/detect"
	"github.com/pyisolate/pyisolate-oci/runtime/group"
	"github.com/pyisolate/pyisolate-oci/runtime/warm"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// NewRuntime is the runtime of state root root as every face uses it: a
// container it reclaims (the orphan of a dead `pyisolate run`) leaves its
// isolation group too.
func NewRuntime(root string) *runtime.Runtime {
	return &runtime.Runtime{Root: root, ReleaseGroup: releaseMember}
}

// releaseMember is group.ReleaseMember, and when the group ended the
// deletion of its warm-start templates (package warm).
func releaseMember(ctx context.Context, root, name, id string) error {
	ended, err := group.ReleaseMember(ctx, root, name, id)
	if err != nil || !ended {
		return err
	}
	return warm.StopGroup(ctx, NewRuntime(root), name)
}

// Groups opens and leaves isolation groups for a face: `pyisolate run` opens
// its group for one container, the shim keeps a group open (and watched) for
// all the members it serves.
type Groups interface {
	// Join adds member id to group name, creating the group (sized by m's
	// limits) when no live group of that name exists.
	Join(ctx context.Context, name, id string, m *spec.Manifest) (*group.Group, error)
	// Leave records that member id left group name.
	Leave(ctx context.Context, name, id string)
}

// Request is what a face asks Prepare for.
type Request struct {
	// Bundle is the bundle directory (made absolute by Prepare).
	Bundle string
	// ID is the container id, already reserved by the caller
	// (runtime.Runtime.Reserve or Lock).
	ID string
	// Runtime is the runtime whose state root holds the container.
	Runtime *runtime.Runtime
	// Loaded, when set, is the bundle as Load returned it: Prepare does not
	// read it again.
	Loaded *Loaded
	// Group, when set, overrides the manifest's group (`run --group`).
	Group string
	// Policy is the node's level for a plain container (tightened by its
	// io.pyisolate.policy annotation).
	Policy spec.Policy
	// Groups opens the groups of extensions.
	Groups Groups
	// ClientProcess makes the client's config.json process (args, env,
	// terminal, console size) the extension's process, as a containerd
	// client writes it; otherwise the manifest's command runs with HostEnv.
	ClientProcess bool
	// HostEnv is the environment a host-coupled extension inherits when
	// ClientProcess is not set.
	HostEnv []string
}

// Loaded is a bundle as read from disk.
type Loaded struct {
	// Manifest is the extension's manifest, nil for a plain bundle.
	Manifest *spec.Manifest
	// Config is the bundle's config.json, nil when it has none.
	Config *specs.Spec
}

// Container is a prepared container: what runtime.Create needs, and what a
// face keeps until the container is deleted.
type Container struct {
	// Spec is the spec the container runs with.
	Spec *specs.Spec
	// Manifest is the extension's manifest, nil for a plain container.
	Manifest *spec.Manifest
	// Group is the extension's isolation group, nil for a plain container.
	Group *group.Group
	// GroupName is Group's name, "" for a plain container.
	GroupName string
	// Policy is the level a plain container runs under, "" for an
	// extension (its manifest's sandbox).
	Policy spec.Policy
	// Host is the host profile the spec was built for.
	Host spec.Host
	// RootfsDirs are directories to create in the empty root filesystem
	// before the mounts (runtime.CreateOptions.RootfsDirs): an explicit
	// request's --dir.
	RootfsDirs []string

	groups Groups
	id     string
}

// Release leaves the container's group (when it joined one). Call it once
// the container is deleted, or when creating it failed.
func (c *Container) Release(ctx context.Context) {
	if c != nil && c.GroupName != "" && c.groups != nil {
		c.groups.Leave(ctx, c.GroupName, c.id)
		c.GroupName = ""
	}
}

// UserError is a fault of the bundle, the manifest or the request (exit
// status 2 for the CLI, InvalidArgument for containerd), as opposed to a
// failure of the host or the runtime.
type UserError struct{ Err error }

func (e *UserError) Error() string { return e.Err.Error() }
func (e *UserError) Unwrap() error { return e.Err }

// IsUserError reports whether err is (or wraps) a UserError.
func IsUserError(err error) bool {
	var ue *UserError
	return errors.As(err, &ue)
}

func userErr(err error) error {
	if err == nil || IsUserError(err) {
		return err
	}
	return &UserError{Err: err}
}

// Load reads a bundle: its manifest (pyisolate.json or io.pyisolate.*
// annotations) and config.json. It is the one reader of a bundle's files. A
// plain config whose only pyisolate annotation is io.pyisolate.group (which
// only chooses the shim process that serves it) is a plain bundle. A bundle
// with neither file is an error.
func Load(bundle string) (*Loaded, error) {
	abs, err := filepath.Abs(bundle)
	if err != nil {
		return nil, userErr(fmt.Errorf("bundle %q: %w", bundle, err))
	}
	m, plain, err := spec.LoadBundle(abs)
	if err != nil {
		if g, gerr := groupOnlyConfig(abs); gerr == nil && g != nil {
			return &Loaded{Config: g}, nil
		}
		return nil, userErr(err)
	}
	if m == nil && plain == nil {
		return nil, userErr(fmt.Errorf("bundle %s: no %s, no %s", abs, spec.ManifestFile, spec.ConfigFile))
	}
	return &Loaded{Manifest: m, Config: plain}, nil
}

// groupOnlyConfig returns the config of a bundle without pyisolate.json
// whose only pyisolate annotation is io.pyisolate.group, or nil.
func groupOnlyConfig(bundle string) (*specs.Spec, error) {
	if _, err := os.Lstat(filepath.Join(bundle, spec.ManifestFile)); err == nil {
		return nil, nil
	}
	s, err := spec.ReadConfig(filepath.Join(bundle, spec.ConfigFile))
	if err != nil || s == nil {
		return nil, err
	}
	if s.Annotations[spec.AnnotationFieldGroup] == "" {
		return nil, nil
	}
	for k := range s.Annotations {
		if strings.HasPrefix(k, spec.AnnotationPrefix) && !strings.HasPrefix(k, spec.AnnotationOutPrefix) &&
			k != spec.AnnotationFieldGroup && k != spec.AnnotationDegraded && k != spec.AnnotationPolicy {
			return nil, nil
		}
	}
	return s, nil
}

// GroupName is the group rule: the override when set, else the manifest's
// group, else the extension's name.
func GroupName(m *spec.Manifest, override string) string {
	switch {
	case override != "":
		return override
	case m.Group != "":
		return m.Group
	}
	return m.Name
}

// Host returns the host profile for containers under runtime root: detected
// once and cached under the root (detect.Cached).
func Host(ctx context.Context, root string) (*detect.Profile, error) {
	prof, err := detect.Cached(ctx, root)
	if err != nil {
		return nil, fmt.Errorf("detect host: %w", err)
	}
	return prof, nil
}

// Prepare turns req into a prepared container. On error nothing of it is
// left (a group it joined is left, an empty rootfs it made is removed by the
// caller's runtime.Runtime.Delete of the reserved id).
func Prepare(ctx context.Context, req Request) (_ *Container, retErr error) {
	bundle, err := filepath.Abs(req.Bundle)
	if err != nil {
		return nil, userErr(fmt.Errorf("bundle %q: %w", req.Bundle, err))
	}
	ld := req.Loaded
	if ld == nil {
		if ld, err = Load(bundle); err != nil {
			return nil, err
		}
	}
	prof, err := Host(ctx, req.Runtime.Root)
	if err != nil {
		return nil, err
	}
	runtime.Phase("host profile (cached)")
	host := prof.SpecHost()
	if ld.Manifest == nil {
		return preparePlain(ctx, req, ld.Config, host)
	}
	return prepareExtension(ctx, req, bundle, ld, prof)
}

// preparePlain applies the policy to a plain container's request.
func preparePlain(ctx context.Context, req Request, plain *specs.Spec, host spec.Host) (*Container, error) {
	node := req.Policy
	if node == "" {
		node = spec.DefaultPolicy
	}
	p, err := node.Tighten(plain.Annotations[spec.AnnotationPolicy])
	if err != nil {
		return nil, userErr(err)
	}
	s, err := spec.ApplyPolicy(plain, p, host, runtime.PolicyHostChecks())
	if err != nil {
		return nil, userErr(err)
	}
	if err := hooks.InjectDevices(ctx, s, hooks.CDIOptions{}, nil); err != nil {
		if hooks.IsUserError(err) {
			return nil, userErr(err)
		}
		return nil, err
	}
	return &Container{Spec: s, Policy: p, Host: host, id: req.ID}, nil
}

// prepareExtension builds an extension's sandbox: the client's request
// checked, the rootfs chosen, the group joined, the spec built from the
// manifest, devices injected.
func prepareExtension(ctx context.Context, req Request, bundle string, ld *Loaded, prof *detect.Profile) (_ *Container, retErr error) {
	m, plain := ld.Manifest, ld.Config
	host := prof.SpecHost()
	if req.Group != "" {
		m.Group = req.Group
		if err := m.Validate(); err != nil {
			return nil, userErr(fmt.Errorf("--group: %w", err))
		}
	}
	if plain != nil {
		if err := spec.CheckExtensionRequest(plain, runtime.PolicyHostChecks()); err != nil {
			return nil, userErr(err)
		}
	}
	// Before the group's tmpfs is made of limits.shm_size.
	if err := spec.CheckHostLimits(m.Limits, host); err != nil {
		return nil, userErr(err)
	}
	rootfs, err := chooseRootfs(req.Runtime, req.ID, bundle, plain)
	if err != nil {
		return nil, err
	}
	c := &Container{Manifest: m, Host: host, groups: req.Groups, id: req.ID}
	name := GroupName(m, "")
	g, err := req.Groups.Join(ctx, name, req.ID, m)
	if err != nil {
		return nil, err
	}
	c.Group, c.GroupName = g, name
	runtime.Phase("isolation group joined")
	defer func() {
		if retErr != nil {
			c.Release(context.WithoutCancel(ctx))
		}
	}()
	opts := spec.Options{ID: req.ID, Rootfs: rootfs, ShmDir: g.ShmDir(), SocketDir: g.SocketDir(), HostEnv: req.HostEnv}
	if plain != nil && plain.Linux != nil {
		opts.CgroupsPath = plain.Linux.CgroupsPath
	}
	if req.ClientProcess && plain != nil && plain.Process != nil {
		opts.HostEnv = plain.Process.Env
	}
	rootlessOptions(&opts, prof, req.ID)
	s, err := spec.Build(m, host, opts)
	if err != nil {
		return nil, userErr(fmt.Errorf("manifest: %w", err))
	}
	runtime.Phase("spec built")
	if req.ClientProcess && plain != nil && plain.Process != nil {
		if len(plain.Process.Args) > 0 {
			s.Process.Args = plain.Process.Args
		}
		s.Process.Terminal = plain.Process.Terminal
		s.Process.ConsoleSize = plain.Process.ConsoleSize
	}
	if plain != nil {
		for k, v := range plain.Annotations {
			// The runtime's outputs are the runtime's to write.
			if strings.HasPrefix(k, spec.AnnotationOutPrefix) || k == spec.AnnotationDegraded {
				continue
			}
			if _, ok := s.Annotations[k]; !ok {
				s.Annotations[k] = v
			}
		}
	}
	ipcNS := func() string { return g.IPCNamespace(ctx, req.ID) }
	if err := hooks.InjectDevices(ctx, s, hooks.CDIOptions{}, ipcNS); err != nil {
		if hooks.IsUserError(err) {
			return nil, userErr(err)
		}
		return nil, err
	}
	runtime.Phase("devices (CDI)")
	if err := prepareRootlessCgroup(prof, s); err != nil {
		return nil, err
	}
	c.Spec = s
	return c, nil
}

// rootlessOptions sets, for a runtime without root, the id mapping (the
// caller is container root; /etc/subuid ranges through newuidmap when
// present) and the cgroup below the delegated cgroup v2 subtree when there is
// one (else Build drops the limits, said in io.pyisolate.degraded).
func rootlessOptions(o *spec.Options, prof *detect.Profile, id string) {
	if !prof.Rootless {
		return
	}
	o.UIDMappings, o.GIDMappings, _ = runtime.RootlessIDMappings()
	if d := prof.RootlessMode; d != nil && d.CgroupDelegation != nil && id != "" {
		o.CgroupsPath = d.CgroupDelegation.ContainerCgroupPath(id)
	}
}

// prepareRootlessCgroup readies the delegated cgroup v2 subtree a rootless
// spec's limits go to (detect.PrepareDelegation); nothing as root or when
// the spec has no cgroup.
func prepareRootlessCgroup(prof *detect.Profile, s *specs.Spec) error {
	if !prof.Rootless || s.Linux == nil || s.Linux.CgroupsPath == "" ||
		prof.RootlessMode == nil || prof.RootlessMode.CgroupDelegation == nil {
		return nil
	}
	return detect.PrepareDelegation(prof.RootlessMode.CgroupDelegation)
}

// chooseRootfs is the rootfs rule: the client's root.path (relative to the
// bundle), else the bundle's rootfs/, when it is a non-empty directory;
// otherwise an empty rootfs the runtime makes for id (a host-files
// extension: the whole filesystem comes from binds).
func chooseRootfs(rt *runtime.Runtime, id, bundle string, plain *specs.Spec) (string, error) {
	rootfs := filepath.Join(bundle, "rootfs")
	if plain != nil && plain.Root != nil && plain.Root.Path != "" {
		rootfs = plain.Root.Path
		if !filepath.IsAbs(rootfs) {
			rootfs = filepath.Join(bundle, rootfs)
		}
	}
	if !isEmptyDir(rootfs) {
		if fi, err := os.Stat(rootfs); err == nil && fi.IsDir() {
			return rootfs, nil
		}
	}
	return rt.EmptyRootfs(id)
}

// isEmptyDir reports whether p is a directory with no entries.
func isEmptyDir(p string) bool {
	f, err := os.Open(p)
	if err != nil {
		return false
	}
	defer f.Close()
	names, _ := f.Readdirnames(1)
	return len(names) == 0
}

// Preview builds the spec Prepare would build for the extension bundle
// without making anything: no group (a private /dev/shm stands in), no
// rootfs (rootfs names where the empty one would be), host restriction r
// when set instead of the detected one. It is `pyisolate spec`.
func Preview(ctx context.Context, bundle, id, group, root, rootfs string, r spec.Restriction) (*specs.Spec, *spec.Manifest, error) {
	ld, err := Load(bundle)
	if err != nil {
		return nil, nil, err
	}
	m := ld.Manifest
	if m == nil {
		abs, _ := filepath.Abs(bundle)
		return nil, nil, userErr(fmt.Errorf("bundle %s: no %s and no io.pyisolate.* annotations in config.json", abs, spec.ManifestFile))
	}
	if group != "" {
		m.Group = group
		if err := m.Validate(); err != nil {
			return nil, nil, userErr(fmt.Errorf("--group: %w", err))
		}
	}
	prof, err := Host(ctx, root)
	if err != nil {
		return nil, nil, err
	}
	host := prof.SpecHost()
	if r != "" {
		host.Restriction = r
	}
	abs, _ := filepath.Abs(bundle)
	if fi, err := os.Stat(filepath.Join(abs, "rootfs")); err == nil && fi.IsDir() && !isEmptyDir(filepath.Join(abs, "rootfs")) {
		rootfs = filepath.Join(abs, "rootfs")
	}
	o := spec.Options{ID: id, Rootfs: rootfs, HostEnv: os.Environ()}
	rootlessOptions(&o, prof, id)
	s, err := spec.Build(m, host, o)
	if err != nil {
		return nil, nil, userErr(err)
	}
	return s, m, nil
}
