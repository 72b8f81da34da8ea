package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// bundleRequest is what the spec and run commands need to turn a bundle into
// a sandbox spec.
type bundleRequest struct {
	// Bundle is the bundle directory.
	Bundle string
	// ID is the container id.
	ID string
	// Group overrides the manifest's group when set.
	Group string
	// Rootfs is used when the bundle has no rootfs directory of its own.
	Rootfs string
	// Restriction, when set, replaces the detected restriction model (to
	// preview a degraded spec).
	Restriction spec.Restriction
	// ShmDir and SocketDir are the group's directories, when known.
	ShmDir, SocketDir string
	// Root is the runtime's state directory (the host profile is cached there).
	Root string
	// Manifest, when set, is the bundle's manifest as spec.LoadBundle
	// returned it; prepareSpec then does not read and check the bundle
	// again.
	Manifest *spec.Manifest
}

// bundleError marks errors in the user's bundle or manifest (exit status 2),
// as opposed to host or runtime failures.
type bundleError struct{ err error }

func (e *bundleError) Error() string { return e.err.Error() }
func (e *bundleError) Unwrap() error { return e.err }

// prepareSpec loads the bundle's manifest, detects the host and builds the
// sandbox spec. The manifest is returned with its defaults applied.
func prepareSpec(ctx context.Context, r bundleRequest) (*specs.Spec, *spec.Manifest, error) {
	bundle, err := filepath.Abs(r.Bundle)
	if err != nil {
		return nil, nil, &bundleError{fmt.Errorf("bundle %q: %w", r.Bundle, err)}
	}
	m := r.Manifest
	if m == nil {
		if m, _, err = spec.LoadBundle(bundle); err != nil {
			return nil, nil, &bundleError{err}
		}
	}
	if m == nil {
		return nil, nil, &bundleError{fmt.Errorf("bundle %s: no %s and no io.pyisolate.* annotations in config.json", bundle, spec.ManifestFile)}
	}
	if r.Group != "" {
		m.Group = r.Group
		if err := m.Validate(); err != nil {
			return nil, nil, &bundleError{fmt.Errorf("--group: %w", err)}
		}
	}
	prof, err := runtime.DetectCached(ctx, r.Root)
	if err != nil {
		return nil, nil, fmt.Errorf("detect host: %w", err)
	}
	host := prof.SpecHost()
	if r.Restriction != "" {
		host.Restriction = r.Restriction
	}
	rootfs := filepath.Join(bundle, "rootfs")
	if fi, err := os.Stat(rootfs); err != nil || !fi.IsDir() {
		rootfs = r.Rootfs
	}
	o := spec.Options{
		ID:        r.ID,
		Rootfs:    rootfs,
		ShmDir:    r.ShmDir,
		SocketDir: r.SocketDir,
		HostEnv:   os.Environ(),
	}
	if prof.Rootless {
		// Container root is the caller; limits go below the delegated
		// cgroup when there is one (else Build drops them).
		o.UIDMappings, o.GIDMappings, _ = runtime.RootlessIDMappings()
		if d := prof.RootlessMode; d != nil && d.CgroupDelegation != nil && r.ID != "" {
			o.CgroupsPath = d.CgroupDelegation.ContainerCgroupPath(r.ID)
		}
	}
	s, err := spec.Build(m, host, o)
	if err != nil {
		return nil, nil, &bundleError{err}
	}
	return s, m, nil
}
