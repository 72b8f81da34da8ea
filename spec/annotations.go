package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Annotation keys of the manifest, for bundles that carry it in config.json
// rather than in pyisolate.json. Either AnnotationManifest holds the whole
// manifest as JSON, or the per-field keys below hold one field each (the
// fields without a key, such as env, sandbox paths and command, need
// AnnotationManifest). The two forms do not mix, except that
// AnnotationFieldGroup may accompany AnnotationManifest when they agree.
const (
	// AnnotationPrefix starts every pyisolate annotation.
	AnnotationPrefix = "io.pyisolate."
	// AnnotationOutPrefix starts the annotations the spec builder writes on
	// its output; ManifestFromAnnotations ignores them.
	AnnotationOutPrefix = "io.pyisolate.out."
	// AnnotationManifest holds the whole manifest as JSON.
	AnnotationManifest = "io.pyisolate.manifest"
	// AnnotationFieldName holds the name field.
	AnnotationFieldName = "io.pyisolate.name"
	// AnnotationFieldModulePath holds the module_path field.
	AnnotationFieldModulePath = "io.pyisolate.module_path"
	// AnnotationFieldVenv holds the venv field.
	AnnotationFieldVenv = "io.pyisolate.venv"
	// AnnotationFieldPython holds the python field.
	AnnotationFieldPython = "io.pyisolate.python"
	// AnnotationFieldGroup holds the group field.
	AnnotationFieldGroup = "io.pyisolate.group"
	// AnnotationFieldExecutionModel holds the execution_model field.
	AnnotationFieldExecutionModel = "io.pyisolate.execution_model"
	// AnnotationFieldShareTorch holds share_torch: "true" or "false".
	AnnotationFieldShareTorch = "io.pyisolate.share_torch"
	// AnnotationFieldShareCUDAIPC holds share_cuda_ipc: "true" or "false".
	AnnotationFieldShareCUDAIPC = "io.pyisolate.share_cuda_ipc"
	// AnnotationFieldNetwork holds sandbox.network: "true" or "false".
	AnnotationFieldNetwork = "io.pyisolate.network"
	// AnnotationFieldGPUs holds the gpus field, comma separated.
	AnnotationFieldGPUs = "io.pyisolate.gpus"
	// AnnotationFieldPreload holds the preload field, comma separated.
	AnnotationFieldPreload = "io.pyisolate.preload"
	// AnnotationFieldMemory holds limits.memory, as a size string.
	AnnotationFieldMemory = "io.pyisolate.memory"
	// AnnotationFieldPids holds limits.pids, as a decimal integer.
	AnnotationFieldPids = "io.pyisolate.pids"
	// AnnotationFieldCPUs holds limits.cpus, as a decimal number.
	AnnotationFieldCPUs = "io.pyisolate.cpus"
	// AnnotationFieldShmSize holds limits.shm_size, as a size string.
	AnnotationFieldShmSize = "io.pyisolate.shm_size"
	// AnnotationFieldTmpSize holds limits.tmp_size, as a size string.
	AnnotationFieldTmpSize = "io.pyisolate.tmp_size"
)

// annotationField maps one per-field annotation to the manifest.
type annotationField struct {
	key   string                            // annotation key
	field string                            // JSON path of the field it sets
	set   func(m *Manifest, v string) error // parses v into m
}

// annotationFields lists the per-field annotations, in manifest order.
var annotationFields = []annotationField{
	{AnnotationFieldName, "name", func(m *Manifest, v string) error { m.Name = v; return nil }},
	{AnnotationFieldModulePath, "module_path", func(m *Manifest, v string) error { m.ModulePath = v; return nil }},
	{AnnotationFieldVenv, "venv", func(m *Manifest, v string) error { m.Venv = v; return nil }},
	{AnnotationFieldPython, "python", func(m *Manifest, v string) error { m.Python = v; return nil }},
	{AnnotationFieldShareTorch, "share_torch", func(m *Manifest, v string) error { return parseBool(v, &m.ShareTorch) }},
	{AnnotationFieldShareCUDAIPC, "share_cuda_ipc", func(m *Manifest, v string) error { return parseBool(v, &m.ShareCUDAIPC) }},
	{AnnotationFieldExecutionModel, "execution_model", func(m *Manifest, v string) error {
		m.ExecutionModel = ExecutionModel(v)
		return nil
	}},
	{AnnotationFieldNetwork, "sandbox.network", func(m *Manifest, v string) error { return parseBool(v, &m.Sandbox.Network) }},
	{AnnotationFieldGroup, "group", func(m *Manifest, v string) error { m.Group = v; return nil }},
	{AnnotationFieldMemory, "limits.memory", func(m *Manifest, v string) (err error) {
		m.Limits.Memory, err = ParseByteSize(v)
		return err
	}},
	{AnnotationFieldPids, "limits.pids", func(m *Manifest, v string) (err error) {
		if m.Limits.Pids, err = strconv.ParseInt(v, 10, 64); err != nil {
			return fmt.Errorf("must be an integer, got %q", v)
		}
		return nil
	}},
	{AnnotationFieldCPUs, "limits.cpus", func(m *Manifest, v string) (err error) {
		if m.Limits.CPUs, err = strconv.ParseFloat(v, 64); err != nil {
			return fmt.Errorf("must be a number, got %q", v)
		}
		return nil
	}},
	{AnnotationFieldShmSize, "limits.shm_size", func(m *Manifest, v string) (err error) {
		m.Limits.ShmSize, err = ParseByteSize(v)
		return err
	}},
	{AnnotationFieldTmpSize, "limits.tmp_size", func(m *Manifest, v string) (err error) {
		m.Limits.TmpSize, err = ParseByteSize(v)
		return err
	}},
	{AnnotationFieldGPUs, "gpus", func(m *Manifest, v string) (err error) {
		m.GPUs, err = splitList(v)
		return err
	}},
	{AnnotationFieldPreload, "preload", func(m *Manifest, v string) (err error) {
		m.Preload, err = splitList(v)
		return err
	}},
}

// parseBool accepts exactly "true" and "false".
func parseBool(v string, dst *bool) error {
	switch v {
	case "true":
		*dst = true
	case "false":
		*dst = false
	default:
		return fmt.Errorf(`must be "true" or "false", got %q`, v)
	}
	return nil
}

// splitList splits a comma-separated list, trimming spaces around items. An
// empty string is an empty list; an empty item is an error.
func splitList(v string) ([]string, error) {
	if strings.TrimSpace(v) == "" {
		return nil, nil
	}
	items := strings.Split(v, ",")
	for i := range items {
		items[i] = strings.TrimSpace(items[i])
		if items[i] == "" {
			return nil, fmt.Errorf("item %d of %q is empty", i+1, v)
		}
	}
	return items, nil
}

// isInputAnnotation reports whether key is an io.pyisolate.* annotation that
// ManifestFromAnnotations reads (not one the builder writes).
// io.pyisolate.policy is the runtime's, not the manifest's: it tightens the
// policy of a plain container (see Policy).
func isInputAnnotation(key string) bool {
	return strings.HasPrefix(key, AnnotationPrefix) && key != AnnotationPolicy &&
		key != AnnotationDegraded && !strings.HasPrefix(key, AnnotationOutPrefix)
}

// ManifestFromAnnotations reads a manifest from OCI annotations: either
// io.pyisolate.manifest with the whole manifest as JSON (decoded like
// DecodeManifest), or the per-field io.pyisolate.* keys (AnnotationField*).
// ok is false, with a nil manifest and error, when a holds no io.pyisolate.*
// key. The keys the builder writes (io.pyisolate.degraded and
// io.pyisolate.out.*) are ignored; any other unknown io.pyisolate.* key is an
// error naming it, and so is mixing the two forms. Errors about a per-field
// key name the key ("io.pyisolate.memory", "io.pyisolate.gpus[1]").
// Defaults are applied and the manifest is validated; paths are not checked
// on the host (see CheckPaths).
func ManifestFromAnnotations(a map[string]string) (m *Manifest, ok bool, err error) {
	var keys []string
	for k := range a {
		if isInputAnnotation(k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, false, nil
	}
	slices.Sort(keys)
	if err := checkAnnotationKeys(keys); err != nil {
		return nil, true, err
	}
	if v, whole := a[AnnotationManifest]; whole {
		m, err := DecodeManifest([]byte(v))
		if err != nil {
			return nil, true, fmt.Errorf("annotation %s: %w", AnnotationManifest, err)
		}
		if g, ok := a[AnnotationFieldGroup]; ok {
			if err := groupWithManifest(m, []byte(v), g); err != nil {
				return nil, true, err
			}
		}
		return m, true, nil
	}
	m, err = manifestFromFieldAnnotations(a)
	return m, true, err
}

// groupWithManifest applies io.pyisolate.group next to io.pyisolate.manifest
// (containerd users and pod specs add the group annotation to whatever
// manifest a bundle carries): a manifest without its own group takes it; one
// with a group must name the same one.
func groupWithManifest(m *Manifest, doc []byte, group string) error {
	var own struct {
		Group string `json:"group"`
	}
	_ = json.Unmarshal(doc, &own) // DecodeManifest has accepted doc
	if own.Group != "" {
		if own.Group != group {
			return fieldErr(AnnotationFieldGroup, "%q disagrees with the group %q of %s", group, own.Group, AnnotationManifest)
		}
		return nil
	}
	m.Group = group
	if err := m.Validate(); err != nil {
		return renameToAnnotation(err)
	}
	return nil
}

// checkAnnotationKeys refuses unknown keys and a mix of the whole-manifest
// key with per-field keys other than the group, which may accompany it
// (groupWithManifest). keys are sorted input annotation keys.
func checkAnnotationKeys(keys []string) error {
	whole := slices.Contains(keys, AnnotationManifest)
	for _, k := range keys {
		if k == AnnotationManifest || k == AnnotationFieldGroup {
			continue
		}
		if !slices.ContainsFunc(annotationFields, func(f annotationField) bool { return f.key == k }) {
			return fieldErr("", "unknown annotation %q", k)
		}
		if whole {
			return fieldErr(k, "cannot be combined with %s: put every field in the JSON manifest", AnnotationManifest)
		}
	}
	return nil
}

// manifestFromFieldAnnotations builds a manifest from per-field keys.
func manifestFromFieldAnnotations(a map[string]string) (*Manifest, error) {
	m := &Manifest{}
	for _, f := range annotationFields {
		v, ok := a[f.key]
		if !ok {
			continue
		}
		if err := f.set(m, v); err != nil {
			return nil, &FieldError{Field: f.key, Msg: err.Error()}
		}
	}
	if err := m.Validate(); err != nil {
		return nil, renameToAnnotation(err)
	}
	m.ApplyDefaults()
	return m, nil
}

// renameToAnnotation rewrites the field of a validation error into the
// annotation key that set it: limits.memory → io.pyisolate.memory,
// gpus[1] → io.pyisolate.gpus[1].
func renameToAnnotation(err error) error {
	var fe *FieldError
	if !errors.As(err, &fe) {
		return err
	}
	for _, f := range annotationFields {
		if rest, ok := strings.CutPrefix(fe.Field, f.field); ok && (rest == "" || rest[0] == '[') {
			return &FieldError{Field: f.key + rest, Msg: fe.Msg}
		}
	}
	return err
}
