package spec

import (
	"errors"
	"fmt"
	"math"
	"path"
	"regexp"
	"slices"
	"strings"
)

// ApplyDefaults fills the fields a manifest may leave out: Group defaults to
// Name, Python to <Venv>/bin/python when Venv is set and to /usr/bin/python3
// otherwise, ExecutionModel to host-coupled. Empty lists and an empty env
// become nil, so that a decoded manifest equals its own re-encoding.
// DecodeManifest calls it after Validate.
func (m *Manifest) ApplyDefaults() {
	if m.Group == "" {
		m.Group = m.Name
	}
	if m.Python == "" {
		m.Python = m.python()
	}
	if m.ExecutionModel == "" {
		m.ExecutionModel = HostCoupled
	}
	if len(m.Env) == 0 {
		m.Env = nil
	}
	if len(m.GPUs) == 0 {
		m.GPUs = nil
	}
	if len(m.Preload) == 0 {
		m.Preload = nil
	}
	if len(m.Sandbox.WritablePaths) == 0 {
		m.Sandbox.WritablePaths = nil
	}
	if len(m.Sandbox.ReadonlyPaths) == 0 {
		m.Sandbox.ReadonlyPaths = nil
	}
	if m.Limits.CPUs == 0 {
		m.Limits.CPUs = 0 // turns -0 into 0
	}
}

// Validate checks a manifest without touching the file system: names, that
// paths are absolute, the execution model, env, limits, GPU names and the
// command. It accepts a manifest before or after ApplyDefaults. The first
// problem found is returned as a *FieldError. Use it on a Manifest built in
// Go; DecodeManifest calls it. CheckPaths checks the paths on the host.
func (m *Manifest) Validate() error {
	checks := []func() error{
		func() error { return validateName("name", m.Name, true) },
		func() error { return validatePath("module_path", m.ModulePath, true) },
		func() error { return validatePath("venv", m.Venv, false) },
		func() error { return validatePath("python", m.Python, false) },
		m.validateExecutionModel,
		func() error { return validatePaths("sandbox.writable_paths", m.Sandbox.WritablePaths) },
		func() error { return validatePaths("sandbox.readonly_paths", m.Sandbox.ReadonlyPaths) },
		m.validateEnv,
		func() error { return validateName("group", m.Group, false) },
		m.Limits.validate,
		m.validateGPUs,
		m.validateCommand,
		m.validatePreload,
	}
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// MaxNameLength is the longest name or group a manifest may have.
const MaxNameLength = 64

// validateName checks a name or group: 1..64 of [A-Za-z0-9._-], not starting
// with '.' or '-'.
func validateName(field, s string, required bool) error {
	switch {
	case s == "" && required:
		return fieldErr(field, "is required")
	case s == "":
		return nil
	}
	if err := CheckName(s); err != nil {
		return &FieldError{Field: field, Msg: err.Error()}
	}
	return nil
}

// CheckName checks a non-empty extension name or isolation group name by
// the manifest's rule: 1 to MaxNameLength letters, digits, '.', '_' and '-',
// not starting with '.' or '-'. The CLI checks its --group flag with it, so
// that a group has one rule wherever it is given.
func CheckName(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > MaxNameLength:
		return fmt.Errorf("%q... is %d characters long, at most %d are allowed", s[:16], len(s), MaxNameLength)
	}
	for _, r := range s {
		if !isNameChar(r) {
			return fmt.Errorf("%q contains %q: only letters, digits, '.', '_' and '-' are allowed", s, r)
		}
	}
	if s[0] == '.' || s[0] == '-' {
		return fmt.Errorf("%q must not start with '.' or '-'", s)
	}
	return nil
}

// isNameChar reports whether r may appear in a name.
func isNameChar(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
		r == '.' || r == '_' || r == '-'
}

// validatePath checks the text of a host path: absolute, no NUL byte and no
// ".." element. CheckPath checks it on the host.
func validatePath(field, p string, required bool) error {
	switch {
	case p == "" && required:
		return fieldErr(field, "is required")
	case p == "":
		return nil
	}
	return checkPathText(field, p)
}

// checkPathText refuses a path that is relative, holds a NUL byte or has a
// ".." element.
func checkPathText(field, p string) error {
	switch {
	case strings.IndexByte(p, 0) >= 0:
		return fieldErr(field, "path %q contains a NUL byte", p)
	case !path.IsAbs(p):
		return fieldErr(field, "path %q is not absolute", p)
	case hasDotDot(p):
		return fieldErr(field, "path %q contains '..'", p)
	}
	return nil
}

// hasDotDot reports whether a slash-separated path has a ".." element.
func hasDotDot(p string) bool {
	return slices.Contains(strings.Split(p, "/"), "..")
}

// validatePaths checks each path of a list; the list may be empty.
func validatePaths(field string, ps []string) error {
	for i, p := range ps {
		at := fmt.Sprintf("%s[%d]", field, i)
		if p == "" {
			return fieldErr(at, "path is empty")
		}
		if err := checkPathText(at, p); err != nil {
			return err
		}
	}
	return nil
}

// validateExecutionModel accepts "", host-coupled and sealed.
func (m *Manifest) validateExecutionModel() error {
	switch m.ExecutionModel {
	case "", HostCoupled, Sealed:
		return nil
	}
	return fieldErr("execution_model", "unknown value %q: want %q or %q", string(m.ExecutionModel), HostCoupled, Sealed)
}

// envKeyRE is the syntax of an environment variable name.
var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// validateEnv checks env keys and values, in key order.
func (m *Manifest) validateEnv() error {
	keys := make([]string, 0, len(m.Env))
	for k := range m.Env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		at := mapField("env", k)
		if !envKeyRE.MatchString(k) {
			return fieldErr(at, "%q is not a valid variable name: want [A-Za-z_][A-Za-z0-9_]*", k)
		}
		if strings.IndexByte(m.Env[k], 0) >= 0 {
			return fieldErr(at, "value contains a NUL byte")
		}
	}
	return nil
}

// validate checks the limits.
func (l Limits) validate() error {
	switch {
	case l.Memory < 0:
		return fieldErr("limits.memory", "must not be negative (got %d)", int64(l.Memory))
	case l.Memory > 0 && l.Memory < MinMemory:
		return fieldErr("limits.memory", "%s is too small: Python cannot start in less than %s", l.Memory, MinMemory)
	case l.Pids < 0:
		return fieldErr("limits.pids", "must not be negative (got %d)", l.Pids)
	case math.IsNaN(l.CPUs) || math.IsInf(l.CPUs, 0):
		return fieldErr("limits.cpus", "must be a finite number (got %v)", l.CPUs)
	case l.CPUs < 0:
		return fieldErr("limits.cpus", "must not be negative (got %v)", l.CPUs)
	case l.CPUs > 0 && l.CPUs < MinCPUs:
		return fieldErr("limits.cpus", "%v is too small: the kernel needs at least %v (or 0 for no limit)", l.CPUs, MinCPUs)
	case l.CPUs > MaxCPUs:
		return fieldErr("limits.cpus", "%v is too large: at most %d", l.CPUs, MaxCPUs)
	case l.ShmSize < 0:
		return fieldErr("limits.shm_size", "must not be negative (got %d)", int64(l.ShmSize))
	case l.TmpSize < 0:
		return fieldErr("limits.tmp_size", "must not be negative (got %d)", int64(l.TmpSize))
	}
	return nil
}

// CDI names: vendor.com/class=name. The vendor is a domain name (lower-case
// labels separated by dots, at least two), the class and the device name
// start with a letter or digit.
var (
	cdiVendorRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$`)
	cdiClassRE  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	cdiDeviceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.:-]*$`)
)

// validateGPUs checks that each GPU is a distinct fully qualified CDI name.
func (m *Manifest) validateGPUs() error {
	seen := map[string]int{}
	for i, g := range m.GPUs {
		at := fmt.Sprintf("gpus[%d]", i)
		if err := checkCDIName(g); err != nil {
			return fieldErr(at, "%q is not a fully qualified CDI device name (vendor.com/class=name): %v", g, err)
		}
		if j, dup := seen[g]; dup {
			return fieldErr(at, "%q is listed twice (also gpus[%d])", g, j)
		}
		seen[g] = i
	}
	return nil
}

// checkCDIName checks the syntax of a fully qualified CDI device name.
func checkCDIName(s string) error {
	kind, device, ok := strings.Cut(s, "=")
	if !ok {
		return errors.New("no '='")
	}
	vendor, class, ok := strings.Cut(kind, "/")
	switch {
	case !ok:
		return errors.New("no '/' between vendor and class")
	case !cdiVendorRE.MatchString(vendor):
		return fmt.Errorf("bad vendor %q: want a lower-case domain name such as nvidia.com", vendor)
	case !cdiClassRE.MatchString(class):
		return fmt.Errorf("bad class %q: want letters, digits, '_', '.' or '-'", class)
	case !cdiDeviceRE.MatchString(device):
		return fmt.Errorf("bad device name %q: want letters, digits, '_', '.', ':' or '-', or \"all\"", device)
	}
	return nil
}

// validateCommand checks the command: non-empty when set, no NUL bytes, an
// absolute program path.
func (m *Manifest) validateCommand() error {
	if m.Command == nil {
		return nil
	}
	if len(m.Command) == 0 {
		return fieldErr("command", "must not be empty (leave it out to run the module)")
	}
	for i, arg := range m.Command {
		if strings.IndexByte(arg, 0) >= 0 {
			return fieldErr(fmt.Sprintf("command[%d]", i), "contains a NUL byte")
		}
	}
	if !path.IsAbs(m.Command[0]) {
		return fieldErr("command[0]", "program %q is not an absolute path", m.Command[0])
	}
	return nil
}

// MaxPreload is the longest preload list a manifest may give.
const MaxPreload = 64

// preloadModule is a dotted Python module name.
var preloadModule = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$`)

// validatePreload checks the preload list: at most MaxPreload distinct
// dotted module names of at most 200 bytes.
func (m *Manifest) validatePreload() error {
	if len(m.Preload) > MaxPreload {
		return fieldErr("preload", "has %d modules, more than %d", len(m.Preload), MaxPreload)
	}
	seen := map[string]bool{}
	for i, mod := range m.Preload {
		if len(mod) > 200 || !preloadModule.MatchString(mod) {
			return fieldErr(fmt.Sprintf("preload[%d]", i), "%q is not a module name (letters, digits and _, dot separated)", mod)
		}
		if seen[mod] {
			return fieldErr(fmt.Sprintf("preload[%d]", i), "module %q is listed twice", mod)
		}
		seen[mod] = true
	}
	return nil
}
