package runtime

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// extraStateFile is the file, in a container's libcontainer state
// directory (removed with it), where the runtime keeps what libcontainer's
// state.json has no place for.
const extraStateFile = "pyisolate.json"

// extraState is what the runtime keeps of a container beside libcontainer.
type extraState struct {
	// Annotations are the runtime's own, its decisions
	// (spec.AnnotationOutPrefix, spec.AnnotationDegraded). State reports
	// them with the spec's; the OCI state that hooks read on stdin does
	// not, as the runtime spec says it carries the config's annotations.
	Annotations map[string]string `json:"annotations,omitempty"`
	// RlimitAS is the init's RLIMIT_AS, set after the init (rlimit_as.go)
	// and the default of processes Exec starts with no rlimits of their own.
	RlimitAS *configs.Rlimit `json:"rlimit_as,omitempty"`
}

// isRuntimeAnnotation reports whether key is one the runtime writes.
func isRuntimeAnnotation(key string) bool {
	return strings.HasPrefix(key, spec.AnnotationOutPrefix) || key == spec.AnnotationDegraded
}

// takeRuntimeAnnotations removes the runtime's annotations from a
// libcontainer config's labels ("key=value") and returns them.
func takeRuntimeAnnotations(labels []string) ([]string, map[string]string) {
	var taken map[string]string
	kept := slices.DeleteFunc(slices.Clone(labels), func(l string) bool {
		k, v, ok := strings.Cut(l, "=")
		if !ok || !isRuntimeAnnotation(k) {
			return false
		}
		if taken == nil {
			taken = map[string]string{}
		}
		taken[k] = v
		return true
	})
	return kept, taken
}

// writeExtraState writes x for the container id (whose state directory
// libcontainer.Create made).
func (r *Runtime) writeExtraState(id string, x extraState) error {
	b, err := json.Marshal(x)
	if err != nil {
		return fmt.Errorf("runtime state of %s: %w", id, err)
	}
	p := filepath.Join(r.root(), id, extraStateFile)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		return fmt.Errorf("runtime state of %s: %w", id, err)
	}
	return nil
}

// readExtraState reads what writeExtraState wrote for id; a container
// created before the file existed has none (the zero value).
func (r *Runtime) readExtraState(id string) (extraState, error) {
	var x extraState
	b, err := os.ReadFile(filepath.Join(r.root(), id, extraStateFile))
	if errors.Is(err, os.ErrNotExist) {
		return x, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &x)
	}
	if err != nil {
		return x, fmt.Errorf("runtime state of %s: %w", id, err)
	}
	return x, nil
}

// withRuntimeAnnotations returns ann with x's annotations added.
func (x extraState) withRuntimeAnnotations(ann map[string]string) map[string]string {
	if len(x.Annotations) == 0 {
		return ann
	}
	out := maps.Clone(ann)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, x.Annotations)
	return out
}
