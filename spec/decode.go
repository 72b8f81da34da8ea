package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// FieldError is a manifest error about one field. Field is the field's path
// in JSON form ("sandbox.writable_paths[1]", "limits.memory", `env["A B"]`),
// or an annotation key such as io.pyisolate.memory, or empty when the error
// concerns the whole document. Callers test for it with errors.As.
type FieldError struct {
	// Field is the path of the offending field; empty for the document.
	Field string
	// Msg says what is wrong with it.
	Msg string
}

// Error returns "manifest: FIELD: MSG", or "manifest: MSG" without a field.
func (e *FieldError) Error() string {
	if e.Field == "" {
		return "manifest: " + e.Msg
	}
	return "manifest: " + e.Field + ": " + e.Msg
}

// fieldErr builds a *FieldError with a formatted message.
func fieldErr(field, format string, a ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// MaxManifestSize is the largest manifest DecodeManifest accepts, in bytes.
const MaxManifestSize = 1 << 20

// MinMemory is the smallest memory limit a manifest may set: the Python
// interpreter does not start in less.
const MinMemory ByteSize = 4 << 20

// MaxCPUs is the largest CPU quota a manifest may set, in cores. It keeps
// the cgroup quota (cpus × 100000 µs) far from overflowing.
const MaxCPUs = 8192

// MinCPUs is the smallest non-zero CPU quota, in cores: the kernel refuses
// a CFS quota below 1 ms per 100 ms period.
const MinCPUs = 0.01

// DecodeManifest decodes and validates a pyisolate manifest (the content of
// pyisolate.json). Decoding is strict: unknown fields (field names are
// case-sensitive), duplicate fields, values of the wrong type, and data after
// the JSON object are errors. A JSON null for a field means the field is
// absent; null inside a list or in env is an error. Defaults are then applied
// (see ApplyDefaults) and the result validated (see Validate). Every error is
// a *FieldError naming the field.
//
// DecodeManifest reads no files: call CheckPaths (or use LoadBundle) to check
// the paths on the host.
func DecodeManifest(data []byte) (*Manifest, error) {
	if len(data) > MaxManifestSize {
		return nil, fieldErr("", "manifest is %d bytes, at most %d are allowed", len(data), MaxManifestSize)
	}
	if len(bytes.Trim(data, jsonSpace)) == 0 {
		return nil, fieldErr("", "empty document, want a JSON object")
	}
	if err := checkSyntax(data); err != nil {
		return nil, &FieldError{Msg: err.Error()}
	}
	if err := checkDocument(data); err != nil {
		return nil, err
	}
	var m Manifest
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		// checkDocument has already refused everything Decode refuses; this
		// is a second line of defence.
		return nil, jsonFieldError(data, err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	m.ApplyDefaults()
	return &m, nil
}

// jsonFieldError turns an error of encoding/json into a *FieldError.
func jsonFieldError(data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	var fe *FieldError
	switch {
	case errors.As(err, &fe):
		return fe
	case errors.As(err, &se), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return &FieldError{Msg: describeSyntaxError(data, err).Error()}
	case errors.As(err, &te):
		return fieldErr(te.Field, "must be %s, got JSON %s", goTypeName(te.Type.String()), te.Value)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fieldErr("", "unknown field %s", name)
	}
	return fieldErr("", "%v", err)
}

// goTypeName names a Go type of the manifest the way a JSON user thinks of it.
func goTypeName(t string) string {
	switch t {
	case "string", "spec.ExecutionModel":
		return "a string"
	case "bool":
		return "a boolean"
	case "int64", "spec.ByteSize":
		return "an integer"
	case "float64":
		return "a number"
	case "[]string":
		return "an array of strings"
	case "map[string]string":
		return "an object of strings"
	}
	return "a value of Go type " + t
}

// jsonSpace is the white space JSON allows between tokens.
const jsonSpace = " \t\r\n"

// checkSyntax checks that data is exactly one JSON value, white space around
// it aside. Its errors give the line, column and offset of the problem.
func checkSyntax(data []byte) error {
	var raw json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return describeSyntaxError(data, err)
	}
	return nil
}

// describeSyntaxError says where a syntax error of encoding/json is. The
// scanner's offset counts the offending byte, so the byte is at offset-1.
func describeSyntaxError(data []byte, err error) error {
	var se *json.SyntaxError
	if !errors.As(err, &se) || se.Offset >= int64(len(data)) && strings.HasPrefix(se.Error(), "unexpected end") {
		if errors.As(err, &se) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return errors.New("invalid JSON: unexpected end of input")
		}
		return err
	}
	line, col := lineCol(data, se.Offset-1)
	return fmt.Errorf("invalid JSON at line %d, column %d (offset %d): %s", line, col, se.Offset, se.Error())
}

// lineCol converts a byte offset of data into a 1-based line and column.
func lineCol(data []byte, offset int64) (line, col int) {
	if offset > int64(len(data)) {
		offset = int64(len(data))
	}
	if offset < 0 {
		offset = 0
	}
	before := data[:offset]
	line = bytes.Count(before, []byte("\n")) + 1
	col = int(offset) - (bytes.LastIndexByte(before, '\n') + 1) + 1
	return line, col
}

// The document checker walks the JSON tokens of a manifest against a schema
// of its fields, before encoding/json decodes it. It gives errors the exact
// field path (with list indexes), refuses duplicate fields and the
// case-insensitive field matching encoding/json would otherwise allow, and
// parses sizes where their field name is known.

// kind is the JSON shape of a manifest field.
type kind uint8

const (
	kindString    kind = iota // a string
	kindBool                  // true or false
	kindInt                   // an integer that fits int64
	kindFloat                 // any finite number
	kindSize                  // a ByteSize: integer or string with a unit
	kindStrings               // an array of strings
	kindStringMap             // an object whose values are strings
	kindObject                // an object with the fields of schema.fields
)

// schema describes a manifest field.
type schema struct {
	kind   kind
	fields map[string]*schema // for kindObject
}

var (
	schemaString    = &schema{kind: kindString}
	schemaBool      = &schema{kind: kindBool}
	schemaInt       = &schema{kind: kindInt}
	schemaFloat     = &schema{kind: kindFloat}
	schemaSize      = &schema{kind: kindSize}
	schemaStrings   = &schema{kind: kindStrings}
	schemaStringMap = &schema{kind: kindStringMap}
)

// manifestSchema mirrors the json tags of Manifest, Sandbox and Limits
// (a test keeps them in step).
var manifestSchema = &schema{kind: kindObject, fields: map[string]*schema{
	"name":            schemaString,
	"module_path":     schemaString,
	"venv":            schemaString,
	"python":          schemaString,
	"share_torch":     schemaBool,
	"share_cuda_ipc":  schemaBool,
	"execution_model": schemaString,
	"sandbox": {kind: kindObject, fields: map[string]*schema{
		"network":        schemaBool,
		"writable_paths": schemaStrings,
		"readonly_paths": schemaStrings,
	}},
	"env":   schemaStringMap,
	"group": schemaString,
	"limits": {kind: kindObject, fields: map[string]*schema{
		"memory":   schemaSize,
		"pids":     schemaInt,
		"cpus":     schemaFloat,
		"shm_size": schemaSize,
		"tmp_size": schemaSize,
	}},
	"gpus":    schemaStrings,
	"command": schemaStrings,
}}

// checker walks the tokens of one JSON document.
type checker struct {
	data []byte
	dec  *json.Decoder
}

// checkDocument checks that data is one JSON object matching manifestSchema.
func checkDocument(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	c := &checker{data: data, dec: dec}
	tok, err := c.token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fieldErr("", "must be a JSON object, got %s", describe(tok))
	}
	if err := c.object("", manifestSchema); err != nil {
		return err
	}
	return nil
}

// token reads the next token, turning syntax errors into *FieldError.
func (c *checker) token() (json.Token, error) {
	tok, err := c.dec.Token()
	if err != nil {
		return nil, jsonFieldError(c.data, err)
	}
	return tok, nil
}

// object checks the members of an object whose '{' was read, and its '}'.
func (c *checker) object(at string, s *schema) error {
	seen := map[string]bool{}
	for c.dec.More() {
		tok, err := c.token()
		if err != nil {
			return err
		}
		key, _ := tok.(string) // the decoder only yields string keys
		if seen[key] {
			return fieldErr(at, "duplicate field %q", key)
		}
		seen[key] = true
		sub, ok := s.fields[key]
		if !ok {
			return unknownField(at, key, s)
		}
		if err := c.value(joinField(at, key), sub, true); err != nil {
			return err
		}
	}
	_, err := c.token() // '}'
	return err
}

// unknownField reports an unknown field, with a hint when only its case is
// wrong.
func unknownField(at, key string, s *schema) error {
	for name := range s.fields {
		if strings.EqualFold(name, key) {
			return fieldErr(at, "unknown field %q (field names are case-sensitive: did you mean %q?)", key, name)
		}
	}
	return fieldErr(at, "unknown field %q", key)
}

// value checks one value of shape s at field path at. nullOK says whether a
// JSON null (meaning "absent") is allowed there.
func (c *checker) value(at string, s *schema, nullOK bool) error {
	tok, err := c.token()
	if err != nil {
		return err
	}
	if tok == nil {
		if nullOK {
			return nil
		}
		return fieldErr(at, "must not be null")
	}
	switch s.kind {
	case kindString:
		if _, ok := tok.(string); !ok {
			return typeErr(at, "a string", tok)
		}
	case kindBool:
		if _, ok := tok.(bool); !ok {
			return typeErr(at, "a boolean (true or false)", tok)
		}
	case kindInt:
		return checkInt(at, tok)
	case kindFloat:
		return checkFloat(at, tok)
	case kindSize:
		return checkSize(at, tok)
	case kindStrings:
		return c.list(at, tok)
	case kindStringMap:
		return c.stringMap(at, tok)
	case kindObject:
		if d, ok := tok.(json.Delim); !ok || d != '{' {
			return typeErr(at, "an object", tok)
		}
		return c.object(at, s)
	}
	return nil
}

// list checks an array of strings whose first token is tok.
func (c *checker) list(at string, tok json.Token) error {
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return typeErr(at, "an array of strings", tok)
	}
	for i := 0; c.dec.More(); i++ {
		if err := c.value(fmt.Sprintf("%s[%d]", at, i), schemaString, false); err != nil {
			return err
		}
	}
	_, err := c.token() // ']'
	return err
}

// stringMap checks an object of strings whose first token is tok.
func (c *checker) stringMap(at string, tok json.Token) error {
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return typeErr(at, "an object of strings", tok)
	}
	seen := map[string]bool{}
	for c.dec.More() {
		tok, err := c.token()
		if err != nil {
			return err
		}
		key, _ := tok.(string)
		if seen[key] {
			return fieldErr(at, "duplicate key %q", key)
		}
		seen[key] = true
		if err := c.value(mapField(at, key), schemaString, false); err != nil {
			return err
		}
	}
	_, err := c.token() // '}'
	return err
}

// checkInt checks that tok is an integer that fits int64.
func checkInt(at string, tok json.Token) error {
	n, ok := tok.(json.Number)
	if !ok {
		return typeErr(at, "an integer", tok)
	}
	if _, err := strconv.ParseInt(n.String(), 10, 64); err != nil {
		if errors.Is(err, strconv.ErrRange) {
			return fieldErr(at, "integer %s is out of range", n)
		}
		return fieldErr(at, "must be an integer, got number %s", n)
	}
	return nil
}

// checkFloat checks that tok is a number that fits float64.
func checkFloat(at string, tok json.Token) error {
	n, ok := tok.(json.Number)
	if !ok {
		return typeErr(at, "a number", tok)
	}
	if _, err := strconv.ParseFloat(n.String(), 64); err != nil {
		return fieldErr(at, "number %s is out of range", n)
	}
	return nil
}

// checkSize checks that tok is a valid ByteSize.
func checkSize(at string, tok json.Token) error {
	var err error
	switch v := tok.(type) {
	case json.Number:
		_, err = parseSizeNumber(v.String())
	case string:
		_, err = ParseByteSize(v)
	default:
		return typeErr(at, `a size (an integer, or a string such as "512Mi")`, tok)
	}
	if err != nil {
		return &FieldError{Field: at, Msg: err.Error()}
	}
	return nil
}

// typeErr reports a value of the wrong JSON type.
func typeErr(at, want string, tok json.Token) error {
	return fieldErr(at, "must be %s, got %s", want, describe(tok))
}

// describe names a JSON token for an error message.
func describe(tok json.Token) string {
	switch v := tok.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean " + strconv.FormatBool(v)
	case json.Number:
		return "number " + v.String()
	case float64:
		return "number " + strconv.FormatFloat(v, 'g', -1, 64)
	case string:
		return "string " + strconv.Quote(v)
	case json.Delim:
		if v == '[' {
			return "an array"
		}
		return "an object"
	}
	return fmt.Sprintf("%v", tok)
}

// joinField appends an object member to a field path.
func joinField(at, key string) string {
	if at == "" {
		return key
	}
	return at + "." + key
}

// mapField appends a map key to a field path: env["KEY"].
func mapField(at, key string) string {
	return at + "[" + strconv.Quote(key) + "]"
}

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

// sizeUnit is a unit of ByteSize.
type sizeUnit struct {
	suffix string
	factor int64
}

// byteUnits are the units of a size, largest first within each family.
var byteUnits = []sizeUnit{
	{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10},
	{"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"K", 1e3}, {"k", 1e3},
}

// ParseByteSize parses a size: digits, optionally followed by a binary unit
// (Ki, Mi, Gi, Ti: powers of 1024) or a decimal one (k or K, M, G, T: powers
// of 1000). There is no fraction, sign, space or "B" suffix. A size that does
// not fit int64 is an error.
func ParseByteSize(s string) (ByteSize, error) {
	digits := strings.TrimLeft(s, "0123456789")
	num, unit := s[:len(s)-len(digits)], digits
	if num == "" {
		if strings.HasPrefix(s, "-") {
			return 0, fmt.Errorf("invalid size %q: must not be negative", s)
		}
		return 0, fmt.Errorf("invalid size %q: want digits and an optional unit, such as 512Mi", s)
	}
	factor := int64(1)
	if unit != "" {
		i := slices.IndexFunc(byteUnits, func(u sizeUnit) bool { return u.suffix == unit })
		if i < 0 {
			return 0, fmt.Errorf("invalid size %q: unknown unit %q (want Ki, Mi, Gi, Ti, k, K, M, G or T)", s, unit)
		}
		factor = byteUnits[i].factor
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n > math.MaxInt64/factor {
		return 0, fmt.Errorf("invalid size %q: too large (at most %d bytes)", s, int64(math.MaxInt64))
	}
	return ByteSize(n * factor), nil
}

// parseSizeNumber parses the JSON number form of a size: digits only.
func parseSizeNumber(s string) (ByteSize, error) {
	if strings.HasPrefix(s, "-") {
		return 0, fmt.Errorf("invalid size %s: must not be negative", s)
	}
	if strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("invalid size %s: must be a whole number of bytes", s)
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %s: too large (at most %d bytes)", s, int64(math.MaxInt64))
	}
	return ByteSize(n), nil
}

// UnmarshalJSON reads a size from a non-negative JSON integer or a string
// accepted by ParseByteSize. null leaves the size unchanged.
func (b *ByteSize) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	var (
		v   ByteSize
		err error
	)
	switch {
	case string(data) == "null":
		return nil
	case len(data) > 0 && data[0] == '"':
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return err
		}
		v, err = ParseByteSize(s)
	default:
		v, err = parseSizeNumber(string(data))
	}
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// MarshalJSON writes the size as a JSON integer of bytes.
func (b ByteSize) MarshalJSON() ([]byte, error) {
	return strconv.AppendInt(nil, int64(b), 10), nil
}

// String writes the size exactly, with the unit that gives the smallest
// number ("512Mi", "2G", "1000Ki", "1234"), in a form ParseByteSize reads.
func (b ByteSize) String() string {
	n, suffix := int64(b), ""
	if b <= 0 {
		return strconv.FormatInt(n, 10)
	}
	for _, u := range byteUnits {
		if u.suffix == "K" {
			continue // "k" is the usual spelling
		}
		if int64(b)%u.factor == 0 && int64(b)/u.factor < n {
			n, suffix = int64(b)/u.factor, u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + suffix
}

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

// ConfigFile is the name of the OCI runtime configuration in a bundle.
const ConfigFile = "config.json"

// MaxConfigSize is the largest config.json LoadBundle reads, in bytes.
const MaxConfigSize = 16 << 20

// LoadBundle reads an OCI bundle directory: its config.json (when present)
// and its manifest. The manifest comes from pyisolate.json when the bundle
// has one; otherwise from the io.pyisolate.* annotations of config.json (see
// ManifestFromAnnotations). When both exist pyisolate.json wins and the
// annotations are not read. When neither gives a manifest LoadBundle returns
// a nil manifest and no error: a plain OCI bundle, for the caller to judge.
// spec is nil when the bundle has no config.json.
//
// config.json is decoded strictly as JSON (syntax errors name the file, the
// line, the column and the offset; trailing data is an error) but, as the OCI runtime
// spec requires, unknown properties are ignored. pyisolate.json must be a
// regular file, not a symlink; config.json a regular file or a symlink to
// one. A FIFO, socket, device or directory under either name is refused
// without blocking (see readBundleFile).
//
// A manifest found is checked with CheckPaths against this bundle, so its
// path fields hold resolved paths on return.
func LoadBundle(bundle string) (*Manifest, *specs.Spec, error) {
	fi, err := os.Stat(bundle)
	if err != nil {
		return nil, nil, fmt.Errorf("bundle: %w", err)
	}
	if !fi.IsDir() {
		return nil, nil, fmt.Errorf("bundle %s: not a directory", bundle)
	}
	spec, err := readConfig(filepath.Join(bundle, ConfigFile))
	if err != nil {
		return nil, nil, err
	}
	m, source, err := bundleManifest(bundle, spec)
	if err != nil {
		return nil, nil, err
	}
	if m == nil {
		return nil, spec, nil
	}
	if err := CheckPaths(m, bundle); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", source, err)
	}
	return m, spec, nil
}

// bundleManifest finds the manifest of a bundle: pyisolate.json, else the
// annotations of spec. source names where it came from, for errors.
func bundleManifest(bundle string, spec *specs.Spec) (m *Manifest, source string, err error) {
	file := filepath.Join(bundle, ManifestFile)
	data, err := readBundleFile(file, MaxManifestSize, false)
	switch {
	case err == nil:
		m, err := DecodeManifest(data)
		if err != nil {
			return nil, file, fmt.Errorf("%s: %w", file, err)
		}
		return m, file, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, file, err
	case spec == nil:
		return nil, "", nil
	}
	source = filepath.Join(bundle, ConfigFile) + " annotations"
	m, _, err = ManifestFromAnnotations(spec.Annotations)
	if err != nil {
		return nil, source, fmt.Errorf("%s: %w", source, err)
	}
	return m, source, nil
}

// readConfig reads and decodes config.json; a missing file gives nil, nil.
func readConfig(file string) (*specs.Spec, error) {
	data, err := readBundleFile(file, MaxConfigSize, true)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := checkSyntax(data); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("%s: %w", file, describeJSONError(data, err))
	}
	return &spec, nil
}

// describeJSONError adds the line and column to an encoding/json error.
func describeJSONError(data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te):
		line, col := lineCol(data, te.Offset-1)
		return fmt.Errorf("field %s: JSON %s where %s is expected, at line %d, column %d (offset %d): %w",
			te.Field, te.Value, te.Type, line, col, te.Offset, err)
	case errors.As(err, &se), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return describeSyntaxError(data, err)
	}
	return err
}

// readBundleFile reads a regular file of a bundle, at most limit bytes.
// followLinks says whether the file may be a symlink. A missing file gives
// an error matching fs.ErrNotExist. Anything but a regular file (a FIFO, a
// device, a socket, a directory) is refused, judged on the opened
// descriptor: the file is opened non-blocking, so that opening a FIFO
// without a writer cannot hang, and without following a final symlink when
// followLinks is false, so that nothing can be swapped in between a check
// and the open.
func readBundleFile(file string, limit int64, followLinks bool) ([]byte, error) {
	flags := os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	if !followLinks {
		flags |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(file, flags, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		// Say why when the open failed on what the file is: a symlink
		// (ELOOP) or a socket (ENXIO).
		stat := os.Stat
		if !followLinks {
			stat = os.Lstat
		}
		if fi, serr := stat(file); serr == nil {
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				return nil, fmt.Errorf("%s: must be a regular file, not a symlink", file)
			case !fi.Mode().IsRegular():
				return nil, fmt.Errorf("%s: not a regular file (it is %s): must be a regular file", file, fileKind(fi.Mode()))
			}
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (it is %s): must be a regular file", file, fileKind(fi.Mode()))
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, limit)
	}
	return data, nil
}

// fileKind names the type of a file that is not a regular one.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	}
	return "not a regular file"
}
