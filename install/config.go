package install

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// RuntimeType is the containerd runtime type of pyisolate's shim; containerd
// resolves it to the binary containerd-shim-pyisolate-v1 on its PATH.
const RuntimeType = "io.containerd.pyisolate.v1"

// DefaultRuntimeName is the runtime table key, which is also the Kubernetes
// RuntimeClass handler.
const DefaultRuntimeName = "pyisolate"

// RuntimesPath returns the keys of containerd's CRI runtimes table for a
// config version: 1 (containerd 1.x, deprecated), 2 (containerd 1.x and,
// migrated, 2.x) or 3 (containerd 2.x).
func RuntimesPath(version int) ([]string, error) {
	switch version {
	case 1:
		return []string{"plugins", "cri", "containerd", "runtimes"}, nil
	case 2:
		return []string{"plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"}, nil
	case 3:
		return []string{"plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"}, nil
	}
	return nil, fmt.Errorf("unsupported containerd config version %d (want 1, 2 or 3)", version)
}

// PodAnnotations are the pod annotation patterns containerd's CRI plugin
// passes through to the OCI specs of the pod's containers (containerd matches
// them with filepath.Match, so "*" stops at "/"): pyisolate's manifests
// (io.pyisolate.*; per container io.pyisolate.manifest.<container-name>) and
// CDI device requests (cdi.k8s.io/*), which the shim's CDI hook resolves.
var PodAnnotations = []string{"io.pyisolate.*", "cdi.k8s.io/*"}

func quoteList(l []string) string {
	q := make([]string, len(l))
	for i, s := range l {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// beginMarker and endMarker delimit the block the installer owns.
func beginMarker(name string) string {
	return fmt.Sprintf("# >>> pyisolate runtime %q: added by 'pyisolate install', removed by 'pyisolate uninstall'; edits inside are overwritten", name)
}

func endMarker(name string) string {
	return fmt.Sprintf("# <<< pyisolate runtime %q", name)
}

// DefaultRuntime is containerd's built-in CRI runtime, which a config that
// declares any runtimes table must declare too: containerd 1.x decodes the
// runtimes table over its defaults by replacing the whole map, so a config
// with only pyisolate's entry loses "runc" and the CRI plugin refuses to load
// ("no corresponding runtime configured in containerd.runtimes for
// default_runtime_name runc"). Measured with containerd 1.6.20.
const DefaultRuntime = "runc"

// DefaultRuntimeType is the runtime type of DefaultRuntime.
const DefaultRuntimeType = "io.containerd.runc.v2"

// Block returns the managed block (markers included) that declares runtime
// name with runtimeType for a config version, and, with withDefault,
// containerd's default runtime (see DefaultRuntime).
//
// A configPath other than "" is written as the runtime's options
// (ConfigPath, which containerd hands the shim in runtimeoptions.v1.Options):
// the file holding the node's policy for this handler.
func Block(version int, name, runtimeType string, withDefault bool, configPath string) (string, error) {
	path, err := RuntimesPath(version)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString(beginMarker(name) + "\n")
	fmt.Fprintf(&b, "[%s]\n  runtime_type = %q\n  pod_annotations = [%s]\n",
		formatKey(append(append([]string{}, path...), name)), runtimeType, quoteList(PodAnnotations))
	if configPath != "" {
		fmt.Fprintf(&b, "[%s]\n  ConfigPath = %q\n", formatKey(append(append([]string{}, path...), name, "options")), configPath)
	}
	if withDefault {
		fmt.Fprintf(&b, "# containerd's default runtime, declared because a runtimes table replaces containerd's built-in one\n[%s]\n  runtime_type = %q\n",
			formatKey(append(append([]string{}, path...), DefaultRuntime)), DefaultRuntimeType)
	}
	b.WriteString(endMarker(name) + "\n")
	return b.String(), nil
}

// ConfigInfo is what the installer reads from a containerd config.
type ConfigInfo struct {
	// Empty is true when the document has no keys (missing file, blank, or
	// comments only).
	Empty bool
	// Version is the config's "version" key; 1 when a non-empty config has
	// none (containerd's rule); 0 when Empty.
	Version int
}

// ReadConfigInfo decodes data as TOML and reports its version.
func ReadConfigInfo(data []byte) (ConfigInfo, error) {
	m, err := decode(data)
	if err != nil {
		return ConfigInfo{}, err
	}
	if len(m) == 0 {
		return ConfigInfo{Empty: true}, nil
	}
	v, ok := m["version"]
	if !ok {
		return ConfigInfo{Version: 1}, nil
	}
	n, ok := v.(int64)
	if !ok {
		return ConfigInfo{}, fmt.Errorf("containerd config: version is %T, want an integer", v)
	}
	return ConfigInfo{Version: int(n)}, nil
}

func decode(data []byte) (map[string]any, error) {
	m := map[string]any{}
	if err := toml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("containerd config is not valid TOML: %w", err)
	}
	return m, nil
}

// EditResult describes an edit of a config document.
type EditResult struct {
	// Data is the new document (the input when nothing changed).
	Data []byte
	// Changed is true when Data differs from the input.
	Changed bool
	// Version is the config version the runtime was declared for.
	Version int
	// Unmanaged is true when the runtime was already declared, with our
	// runtime type, outside the installer's block (by hand): left alone.
	Unmanaged bool
}

// AddRuntime returns data with runtime name declared as runtimeType. The
// config version is read from data; defaultVersion is used for an empty
// document, which then gets a "version" line. Bytes outside the installer's
// block are kept as they are; a document that already has the block in the
// wanted form is returned unchanged. It fails, changing nothing, when the
// document is not valid TOML, already declares the runtime differently
// outside the block, or declares it in a form (dotted keys, inline tables)
// that a table cannot be added to.
func AddRuntime(data []byte, name, runtimeType string, defaultVersion int, configPath string) (EditResult, error) {
	info, err := ReadConfigInfo(data)
	if err != nil {
		return EditResult{}, err
	}
	version := info.Version
	if info.Empty {
		if defaultVersion == 0 {
			return EditResult{}, fmt.Errorf("containerd config is empty and its version is unknown")
		}
		version = defaultVersion
	}
	path, err := RuntimesPath(version)
	if err != nil {
		return EditResult{}, err
	}
	table := append(append([]string{}, path...), name)
	lines, err := scanTOML(data)
	if err != nil {
		return EditResult{}, fmt.Errorf("containerd config: %w", err)
	}
	bs, be, found, err := findBlock(data, lines, name)
	if err != nil {
		return EditResult{}, err
	}
	// base is the document without our block: the user's config.
	base := data
	if found {
		base = append(append([]byte{}, data[:bs]...), data[be:]...)
	}
	bm, err := decode(base)
	if err != nil {
		return EditResult{}, fmt.Errorf("containerd config without pyisolate's block: %w", err)
	}
	res := EditResult{Version: version}
	// Declared outside the block (by hand)?
	baseLines := lines
	if found {
		if baseLines, err = scanTOML(base); err != nil {
			return EditResult{}, fmt.Errorf("containerd config: %w", err)
		}
	}
	for _, l := range baseLines {
		if !l.header || !equalKeys(l.keys, table) {
			continue
		}
		if l.array {
			return EditResult{}, fmt.Errorf("containerd config line %d declares %s as an array of tables", lineNumber(base, l.start), formatKey(table))
		}
		got, _ := lookup(bm, table)
		if t, ok := got.(map[string]any); ok && t["runtime_type"] == runtimeType && !found {
			res.Data, res.Unmanaged = data, true
			return res, nil
		}
		return EditResult{}, fmt.Errorf("containerd config line %d already declares runtime %q (runtime_type %v) outside pyisolate's block: remove that table or choose another --runtime-name",
			lineNumber(base, l.start), name, typeOf(got))
	}
	// containerd's default runtime must stay declared (see DefaultRuntime).
	withDefault := false
	if dn, ok := lookup(bm, append(append([]string{}, path[:len(path)-1]...), "default_runtime_name")); !ok || dn == DefaultRuntime {
		if _, ok := lookup(bm, append(append([]string{}, path...), DefaultRuntime)); !ok {
			withDefault = true
		}
	}
	block, err := Block(version, name, runtimeType, withDefault, configPath)
	if err != nil {
		return EditResult{}, err
	}
	var out []byte
	if found {
		if string(data[bs:be]) == block {
			res.Data = data
			return res, nil
		}
		out = append(append(append([]byte{}, data[:bs]...), block...), data[be:]...)
	} else {
		out = append([]byte{}, data...)
		if len(out) > 0 && out[len(out)-1] != '\n' {
			out = append(out, '\n')
		}
		if info.Empty {
			out = append(out, fmt.Sprintf("version = %d\n", version)...)
		}
		if len(out) > 0 {
			out = append(out, '\n')
		}
		out = append(out, block...)
	}
	added := [][]string{table}
	if withDefault {
		added = append(added, append(append([]string{}, path...), DefaultRuntime))
	}
	if err := verifyAdded(base, out, added, runtimeType, info.Empty, version); err != nil {
		return EditResult{}, err
	}
	res.Data, res.Changed = out, true
	return res, nil
}

// RemoveRuntime returns data without the installer's block for runtime name
// (and the blank line the installer put before it). Nothing else changes.
// Removed is false when there was no block. Unmanaged is true when the
// runtime is still declared outside a block afterwards (by hand): the
// installer does not touch that.
func RemoveRuntime(data []byte, name string) (out []byte, removed, unmanaged bool, err error) {
	if _, err := decode(data); err != nil {
		return nil, false, false, err
	}
	lines, err := scanTOML(data)
	if err != nil {
		return nil, false, false, fmt.Errorf("containerd config: %w", err)
	}
	bs, be, found, err := findBlock(data, lines, name)
	if err != nil {
		return nil, false, false, err
	}
	out = data
	if found {
		// The separator AddRuntime added: one blank line before the block.
		if bs >= 2 && data[bs-1] == '\n' && data[bs-2] == '\n' {
			bs--
		} else if bs == 1 && data[0] == '\n' {
			bs = 0
		}
		out = append(append([]byte{}, data[:bs]...), data[be:]...)
		if _, err := decode(out); err != nil {
			return nil, false, false, fmt.Errorf("containerd config would be invalid without the pyisolate block (edited by hand?): %w", err)
		}
	}
	m := mustDecode(out)
	for v := 1; v <= 3; v++ {
		path, _ := RuntimesPath(v)
		if _, ok := lookup(m, append(path, name)); ok {
			unmanaged = true
		}
	}
	return out, found, unmanaged, nil
}

// findBlock locates the installer's block for name: [start, end) covers the
// marker lines and everything between them.
func findBlock(data []byte, lines []tomlLine, name string) (start, end int, found bool, err error) {
	begin, finish := beginMarker(name), endMarker(name)
	bi := -1
	for i, l := range lines {
		if l.header {
			continue
		}
		t := strings.TrimSpace(l.text)
		switch {
		case t == begin || strings.HasPrefix(t, fmt.Sprintf("# >>> pyisolate runtime %q", name)):
			if bi >= 0 || found {
				return 0, 0, false, fmt.Errorf("containerd config line %d: a second pyisolate block for %q: fix the file by hand", lineNumber(data, l.start), name)
			}
			bi = i
		case t == finish:
			if bi < 0 {
				return 0, 0, false, fmt.Errorf("containerd config line %d: pyisolate end marker without a start: fix the file by hand", lineNumber(data, l.start))
			}
			start, end, found = lines[bi].start, l.end, true
			bi = -1
		}
	}
	if bi >= 0 {
		return 0, 0, false, fmt.Errorf("containerd config line %d: pyisolate block is not closed: fix the file by hand", lineNumber(data, lines[bi].start))
	}
	return start, end, found, nil
}

// verifyAdded decodes both documents and checks that the new one is the old
// one plus exactly our runtime entry (and a version key for an empty one).
func verifyAdded(old, new []byte, tables [][]string, runtimeType string, wasEmpty bool, version int) error {
	table := tables[0]
	om, err := decode(old)
	if err != nil {
		return err
	}
	nm, err := decode(new)
	if err != nil {
		return fmt.Errorf("adding the runtime table would make the config invalid (is runtime %q declared with dotted keys or an inline table?): %w", table[len(table)-1], err)
	}
	got, ok := lookup(nm, table)
	t, isMap := got.(map[string]any)
	if !ok || !isMap || t["runtime_type"] != runtimeType {
		return fmt.Errorf("internal error: the edited config does not declare %s", formatKey(table))
	}
	// Remove our entry from the new document (and the parents it created)
	// and compare with the old one.
	for _, t := range tables {
		deleteKey(nm, t, om)
	}
	if wasEmpty {
		if nm["version"] != int64(version) {
			return fmt.Errorf("internal error: the edited config has no version %d", version)
		}
		delete(nm, "version")
	}
	if !reflect.DeepEqual(om, nm) {
		return fmt.Errorf("internal error: editing the config changed other settings")
	}
	return nil
}

// deleteKey removes keys from m, and parents left empty that old lacks.
func deleteKey(m map[string]any, keys []string, old map[string]any) {
	if len(keys) == 1 {
		delete(m, keys[0])
		return
	}
	child, ok := m[keys[0]].(map[string]any)
	if !ok {
		return
	}
	var oldChild map[string]any
	if old != nil {
		oldChild, _ = old[keys[0]].(map[string]any)
	}
	deleteKey(child, keys[1:], oldChild)
	if len(child) == 0 && oldChild == nil {
		if _, had := old[keys[0]]; !had {
			delete(m, keys[0])
		}
	}
}

func lookup(m map[string]any, keys []string) (any, bool) {
	var cur any = m
	for _, k := range keys {
		t, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		cur, ok = t[k]
		if !ok {
			return nil, false
		}
	}
	return cur, true
}

func mustDecode(data []byte) map[string]any {
	m, err := decode(data)
	if err != nil {
		return map[string]any{}
	}
	return m
}

func typeOf(v any) string {
	if t, ok := v.(map[string]any); ok {
		if rt, ok := t["runtime_type"]; ok {
			return fmt.Sprintf("%q", rt)
		}
		return "(none)"
	}
	return fmt.Sprintf("%v", v)
}
