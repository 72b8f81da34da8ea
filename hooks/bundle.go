package hooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	pspec "github.com/pyisolate/pyisolate-oci/spec"
)

// Why the runc/crun faces of these hooks rewrite the bundle before create
// rather than act as OCI hooks:
//
// CDI edits are device nodes, device cgroup rules, mounts and environment.
// An OCI runtime reads config.json once, at create, and has made the
// container's /dev, cgroup and mounts by the time any hook runs
// (createRuntime runs after the namespaces and mounts exist). So CDI must be
// applied to config.json before `runc create`, as podman and containerd do
// in process; `pyisolate hook cdi --bundle DIR` does that.
//
// The group's /dev/shm could in principle be bound into a created container
// from a createRuntime hook, but not reliably: a Go program cannot
// setns(CLONE_NEWNS) into the container's mount namespace (the kernel refuses
// it to a multi-threaded process, and the Go runtime is one; runc's nsenter
// is C run before the Go runtime starts for this reason); a mount made on
// /proc/PID/root/dev/shm from outside lands in the caller's mount namespace,
// not the container's; and with a user namespace and a read-only root the
// container's mount tree is not the host's to change. A bind mount in
// config.json is made by the runtime itself, in the right namespace, before
// pivot_root, with the spec's propagation and id mapping. So `hook shm
// --bundle DIR --dir SHM` rewrites config.json too.
//
// Run as OCI hooks (no --bundle, the container state on stdin) both verbs
// only check that the bundle was prepared, and fail the create with the
// command to run when it was not.

// LoadBundleSpec reads <bundle>/config.json (spec.ReadConfig: a FIFO or
// other non-regular file is refused, not waited on).
func LoadBundleSpec(bundle string) (*specs.Spec, error) {
	p := filepath.Join(bundle, pspec.ConfigFile)
	s, err := pspec.ReadConfig(p)
	if err != nil {
		return nil, fmt.Errorf("read bundle config: %w", err)
	}
	if s == nil {
		return nil, fmt.Errorf("read bundle config: %s: %w", p, os.ErrNotExist)
	}
	return s, nil
}

// WriteBundleSpec replaces <bundle>/config.json with s, atomically (a
// temporary file renamed over it), keeping the file's mode.
func WriteBundleSpec(bundle string, s *specs.Spec) error {
	p := filepath.Join(bundle, pspec.ConfigFile)
	mode := os.FileMode(0o644)
	if fi, err := os.Stat(p); err == nil {
		mode = fi.Mode().Perm()
	}
	data, err := json.MarshalIndent(s, "", "\t")
	if err != nil {
		return fmt.Errorf("encode bundle config %s: %w", p, err)
	}
	tmp, err := os.CreateTemp(bundle, ".config.json.*")
	if err != nil {
		return fmt.Errorf("write bundle config: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write bundle config %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write bundle config %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write bundle config %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), p); err != nil {
		return fmt.Errorf("replace bundle config: %w", err)
	}
	return nil
}

// InjectCDIBundle applies InjectCDI to <bundle>/config.json and writes it
// back when devices were injected. It returns the devices of the spec.
func InjectCDIBundle(ctx context.Context, bundle string, opts CDIOptions) ([]string, error) {
	s, err := LoadBundleSpec(bundle)
	if err != nil {
		return nil, err
	}
	before := s.Annotations[AnnotationCDIInjected]
	devs, err := InjectCDI(ctx, s, opts)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", bundle, err)
	}
	if s.Annotations[AnnotationCDIInjected] != before {
		if err := WriteBundleSpec(bundle, s); err != nil {
			return nil, err
		}
	}
	return devs, nil
}

// ShmMountOptions are the options of the group shm bind mount: read-write,
// no device nodes, no set-id programs. Executable, as /dev/shm is by
// default (some libraries map code from it).
var ShmMountOptions = []string{"rbind", "rw", "nosuid", "nodev"}

// BindGroupShm makes dir, the group's shared memory directory on the host,
// the container's /dev/shm: every /dev/shm mount of the spec is replaced by
// a bind mount of dir. dir must be an absolute path to an existing
// directory. With a user namespace the members' mapped root must be able to
// write it (the group shm is created for the group's mapped ids, or 1777).
func BindGroupShm(s *specs.Spec, dir string) error {
	if s == nil {
		return errors.New("bind group shm: nil spec")
	}
	if !filepath.IsAbs(dir) {
		return fmt.Errorf("bind group shm: %q is not an absolute path", dir)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("bind group shm: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("bind group shm: %s is not a directory", dir)
	}
	s.Mounts = slices.DeleteFunc(s.Mounts, func(m specs.Mount) bool {
		return filepath.Clean(m.Destination) == pspec.ShmMount
	})
	s.Mounts = append(s.Mounts, specs.Mount{
		Destination: pspec.ShmMount, Type: "bind", Source: filepath.Clean(dir),
		Options: slices.Clone(ShmMountOptions),
	})
	return nil
}

// BindGroupShmBundle applies BindGroupShm to <bundle>/config.json.
func BindGroupShmBundle(bundle, dir string) error {
	s, err := LoadBundleSpec(bundle)
	if err != nil {
		return err
	}
	if err := BindGroupShm(s, dir); err != nil {
		return fmt.Errorf("bundle %s: %w", bundle, err)
	}
	return WriteBundleSpec(bundle, s)
}

// ReadState reads the container state an OCI runtime passes to a hook on
// its stdin.
func ReadState(r io.Reader) (*specs.State, error) {
	var st specs.State
	data, err := io.ReadAll(io.LimitReader(r, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("read container state: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("container state on stdin: %w (an OCI hook gets the state JSON on stdin)", err)
	}
	if st.Bundle == "" {
		return nil, errors.New("container state on stdin has no bundle")
	}
	return &st, nil
}

// VerifyCDIInjected checks that every CDI device the spec asks for was
// injected (InjectCDI records them); the error names the missing ones and
// the command that injects them.
func VerifyCDIInjected(s *specs.Spec, opts CDIOptions, bundle string) error {
	want, err := RequestedDevices(s.Annotations, opts.Devices)
	if err != nil {
		return err
	}
	have := InjectedDevices(s)
	var missing []string
	for _, d := range want {
		if !slices.Contains(have, d) {
			missing = append(missing, d)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("CDI devices %s are not injected into %s: CDI edits must be in config.json before create; run `pyisolate hook cdi --bundle %s` before `runc create`",
			strings.Join(missing, ", "), filepath.Join(bundle, pspec.ConfigFile), bundle)
	}
	return nil
}

// VerifyGroupShm checks that the spec binds dir at /dev/shm.
func VerifyGroupShm(s *specs.Spec, dir, bundle string) error {
	for _, m := range s.Mounts {
		if filepath.Clean(m.Destination) == pspec.ShmMount {
			if m.Type == "bind" || slices.Contains(m.Options, "bind") || slices.Contains(m.Options, "rbind") {
				if filepath.Clean(m.Source) == filepath.Clean(dir) {
					return nil
				}
			}
			return fmt.Errorf("%s in %s is %s %s, not the group shm %s: run `pyisolate hook shm --bundle %s --dir %s` before `runc create`",
				pspec.ShmMount, filepath.Join(bundle, pspec.ConfigFile), m.Type, m.Source, dir, bundle, dir)
		}
	}
	return fmt.Errorf("%s has no %s mount: run `pyisolate hook shm --bundle %s --dir %s` before `runc create`",
		filepath.Join(bundle, pspec.ConfigFile), pspec.ShmMount, bundle, dir)
}
