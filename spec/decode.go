package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
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
