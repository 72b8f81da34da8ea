package gpu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"tags.cncf.io/container-device-interface/pkg/cdi"
)

// RefreshState is what Refresh did with the spec file.
type RefreshState string

const (
	// Written: there was no file; the spec was written.
	Written RefreshState = "written"
	// Refreshed: the file differed (the driver, GPUs or device nodes
	// changed); it was replaced.
	Refreshed RefreshState = "refreshed"
	// Unchanged: the file already held this spec.
	Unchanged RefreshState = "unchanged"
	// Removed: no NVIDIA driver any more; pyisolate's old file was removed.
	Removed RefreshState = "removed"
	// Skipped: nothing to write (no driver) or another file provides the
	// devices; Reason says which.
	Skipped RefreshState = "skipped"
)

// RefreshOptions are the inputs of Refresh.
type RefreshOptions struct {
	// Generate are the generation options.
	Generate Options
	// Path is the spec file to keep current (default DefaultSpecPath).
	Path string
	// SpecDirs are the CDI directories where another file may already
	// define nvidia.com/gpu devices (default /etc/cdi and /var/run/cdi, under
	// the driver root when that is not "/").
	SpecDirs []string
	// DryRun changes nothing.
	DryRun bool
}

// RefreshResult says what Refresh did.
type RefreshResult struct {
	// Path is the spec file.
	Path string
	// State is what was done.
	State RefreshState
	// Reason explains Skipped and Removed.
	Reason string
	// Spec is the generated spec (nil when none was generated).
	Spec *Spec
}

// Refresh keeps the CDI spec file of the node's GPUs current, as an
// installer does at every start (a driver upgrade means a reboot or a
// restart of the installer): it generates the spec and writes it when the
// file is missing or differs. A node without the NVIDIA driver is not an
// error: nothing is written, and a spec pyisolate wrote earlier is removed
// (its devices would be stale). When another file in the CDI directories
// already defines nvidia.com/gpu devices (NVIDIA's GPU operator or an
// administrator's nvidia-ctk), Refresh leaves the devices to it: two files
// defining the same devices in one directory make the CDI library refuse
// both.
func Refresh(ctx context.Context, opts RefreshOptions) (RefreshResult, error) {
	path := opts.Path
	if path == "" {
		path = DefaultSpecPath
	}
	res := RefreshResult{Path: path}
	if owner := otherProvider(specDirs(opts), path); owner != "" {
		res.State, res.Reason = Skipped, fmt.Sprintf("%s already defines %s devices; left to it", owner, Kind)
		return res, nil
	}
	g := opts.Generate
	if g.Format == "" && strings.HasSuffix(path, ".json") {
		g.Format = FormatJSON
	}
	s, err := Generate(ctx, g)
	var noDriver *NoDriverError
	if errors.As(err, &noDriver) && noDriver.Return == nvml.ERROR_LIBRARY_NOT_FOUND {
		res.State, res.Reason = Skipped, "no NVIDIA driver on this node"
		if _, statErr := os.Stat(path); statErr == nil {
			res.State = Removed
			if !opts.DryRun {
				if err := os.Remove(path); err != nil {
					return res, fmt.Errorf("remove stale CDI spec: %w", err)
				}
			}
		}
		return res, nil
	}
	if err != nil {
		return res, err
	}
	res.Spec = s
	data, err := s.Bytes()
	if err != nil {
		return res, err
	}
	old, err := os.ReadFile(path)
	switch {
	case err == nil && bytes.Equal(old, data):
		res.State = Unchanged
		return res, nil
	case err == nil:
		res.State = Refreshed
	case errors.Is(err, os.ErrNotExist):
		res.State = Written
	default:
		return res, fmt.Errorf("read CDI spec: %w", err)
	}
	if opts.DryRun {
		return res, nil
	}
	return res, s.Save(path)
}

// Remove deletes the spec file Refresh writes; a missing file is not an
// error. It reports whether a file was removed.
func Remove(path string, dryRun bool) (bool, error) {
	if path == "" {
		path = DefaultSpecPath
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if dryRun {
		return true, nil
	}
	if err := os.Remove(path); err != nil {
		return false, fmt.Errorf("remove CDI spec: %w", err)
	}
	return true, nil
}

// specDirs returns the directories Refresh looks for other providers in.
func specDirs(o RefreshOptions) []string {
	if len(o.SpecDirs) > 0 {
		return o.SpecDirs
	}
	root := o.Generate.DriverRoot
	if root == "" {
		root = "/"
	}
	return []string{filepath.Join(root, cdi.DefaultStaticDir), filepath.Join(root, cdi.DefaultDynamicDir)}
}

// otherProvider returns a spec file in dirs, other than ours, whose kind is
// nvidia.com/gpu; "" when there is none. Files that do not load are not
// providers.
func otherProvider(dirs []string, ours string) string {
	oursAbs, _ := filepath.Abs(ours)
	for i, d := range dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range entries {
			name := e.Name()
			if !slices.Contains([]string{".yaml", ".yml", ".json"}, filepath.Ext(name)) {
				continue
			}
			p := filepath.Join(d, name)
			if abs, _ := filepath.Abs(p); abs == oursAbs || sameFile(p, ours) {
				continue
			}
			s, err := cdi.ReadSpec(p, i)
			if err != nil {
				continue
			}
			if s.GetVendor()+"/"+s.GetClass() == Kind {
				return p
			}
		}
	}
	return ""
}

// sameFile reports whether a and b are the same file (/var/run is often a
// symlink to /run).
func sameFile(a, b string) bool {
	sa, err := os.Stat(a)
	if err != nil {
		return false
	}
	sb, err := os.Stat(b)
	return err == nil && os.SameFile(sa, sb)
}
