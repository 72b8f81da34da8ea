package spec

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

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
	"preload": schemaStrings,
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
