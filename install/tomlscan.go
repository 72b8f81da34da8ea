package install

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
)

// The installer edits containerd's config.toml as text so that every byte of
// the user's file outside the installer's block survives (comments, order,
// formatting): TOML libraries decode and re-encode, which loses comments. The
// text is still parsed with a real TOML decoder before and after the edit
// (see verify); this scanner only finds table headers and whole-line comments
// without being fooled by strings, multi-line strings or multi-line arrays.

// tomlLine is one table header or whole-line comment of a TOML document.
type tomlLine struct {
	// start and end are the byte offsets of the whole line, end past its
	// newline (or len(data) on a last line without one).
	start, end int
	// header is true for "[table]" and "[[array]]" lines, false for comments.
	header bool
	// array is true for "[[array of tables]]".
	array bool
	// keys is the header's dotted key, unquoted; nil for comments.
	keys []string
	// text is the line without its line ending.
	text string
}

// scanTOML returns the table headers and whole-line comments of data in
// order. It fails on an unterminated string or a malformed header key; full
// syntax checking is left to the TOML decoder.
func scanTOML(data []byte) ([]tomlLine, error) {
	var out []tomlLine
	depth := 0 // open [ and { inside values
	lineStart := 0
	atLineStart := true
	lineEnd := func(i int) int {
		if j := bytes.IndexByte(data[i:], '\n'); j >= 0 {
			return i + j + 1
		}
		return len(data)
	}
	text := func(s, e int) string {
		return strings.TrimRight(string(data[s:e]), "\r\n")
	}
	i := 0
	for i < len(data) {
		c := data[i]
		if atLineStart {
			if c == ' ' || c == '\t' {
				i++
				continue
			}
			atLineStart = false
			if depth == 0 && c == '[' {
				e := lineEnd(i)
				keys, array, err := parseHeader(text(i, e))
				if err != nil {
					return nil, fmt.Errorf("line %d: %w", lineNumber(data, i), err)
				}
				out = append(out, tomlLine{start: lineStart, end: e, header: true, array: array, keys: keys, text: text(lineStart, e)})
				i, lineStart, atLineStart = e, e, true
				continue
			}
			if depth == 0 && c == '#' {
				e := lineEnd(i)
				out = append(out, tomlLine{start: lineStart, end: e, text: text(lineStart, e)})
				i, lineStart, atLineStart = e, e, true
				continue
			}
		}
		switch c {
		case '\n':
			i++
			lineStart, atLineStart = i, true
		case '#':
			j := bytes.IndexByte(data[i:], '\n')
			if j < 0 {
				i = len(data)
			} else {
				i += j // the newline itself is handled above
			}
		case '"', '\'':
			e, err := skipString(data, i)
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", lineNumber(data, i), err)
			}
			i = e
		case '[', '{':
			depth++
			i++
		case ']', '}':
			if depth > 0 {
				depth--
			}
			i++
		default:
			i++
		}
	}
	return out, nil
}

// skipString returns the offset just past the string that starts at data[i].
func skipString(data []byte, i int) (int, error) {
	q := data[i]
	triple := string([]byte{q, q, q})
	if bytes.HasPrefix(data[i:], []byte(triple)) {
		j := i + 3
		for j < len(data) {
			if q == '"' && data[j] == '\\' {
				j += 2
				continue
			}
			if bytes.HasPrefix(data[j:], []byte(triple)) {
				j += 3
				// Up to two quotes may directly precede the closing delimiter.
				for k := 0; k < 2 && j < len(data) && data[j] == q; k++ {
					j++
				}
				return j, nil
			}
			j++
		}
		return 0, fmt.Errorf("unterminated multi-line string")
	}
	j := i + 1
	for j < len(data) {
		switch data[j] {
		case '\\':
			if q == '"' {
				j += 2
				continue
			}
		case '\n':
			return 0, fmt.Errorf("unterminated string")
		case q:
			return j + 1, nil
		}
		j++
	}
	return 0, fmt.Errorf("unterminated string")
}

// parseHeader parses a header line ("[a."b".c] # comment") into its keys.
func parseHeader(line string) (keys []string, array bool, err error) {
	s := strings.TrimSpace(line)
	open, close := "[", "]"
	if strings.HasPrefix(s, "[[") {
		open, close, array = "[[", "]]", true
	}
	s = s[len(open):]
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" {
			return nil, false, fmt.Errorf("unterminated table header %q", line)
		}
		var k string
		switch s[0] {
		case '"':
			e, err := skipString([]byte(s), 0)
			if err != nil || strings.HasPrefix(s, `"""`) {
				return nil, false, fmt.Errorf("bad quoted key in %q", line)
			}
			k, err = strconv.Unquote(s[:e])
			if err != nil {
				return nil, false, fmt.Errorf("bad quoted key in %q: %v", line, err)
			}
			s = s[e:]
		case '\'':
			e := strings.IndexByte(s[1:], '\'')
			if e < 0 {
				return nil, false, fmt.Errorf("bad literal key in %q", line)
			}
			k, s = s[1:1+e], s[2+e:]
		default:
			e := 0
			for e < len(s) && isBareKeyChar(s[e]) {
				e++
			}
			if e == 0 {
				return nil, false, fmt.Errorf("bad key in table header %q", line)
			}
			k, s = s[:e], s[e:]
		}
		keys = append(keys, k)
		s = strings.TrimLeft(s, " \t")
		switch {
		case strings.HasPrefix(s, "."):
			s = s[1:]
		case strings.HasPrefix(s, close):
			rest := strings.TrimSpace(s[len(close):])
			if rest != "" && !strings.HasPrefix(rest, "#") {
				return nil, false, fmt.Errorf("text after table header %q", line)
			}
			return keys, array, nil
		default:
			return nil, false, fmt.Errorf("bad table header %q", line)
		}
	}
}

func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func lineNumber(data []byte, off int) int {
	return bytes.Count(data[:off], []byte("\n")) + 1
}

// formatKey writes keys as a TOML dotted key, quoting where needed.
func formatKey(keys []string) string {
	parts := make([]string, len(keys))
	for i, k := range keys {
		bare := k != ""
		for j := 0; j < len(k); j++ {
			if !isBareKeyChar(k[j]) {
				bare = false
				break
			}
		}
		if bare {
			parts[i] = k
		} else {
			parts[i] = strconv.Quote(k)
		}
	}
	return strings.Join(parts, ".")
}

func equalKeys(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// hasPrefixKeys reports whether keys starts with prefix.
func hasPrefixKeys(keys, prefix []string) bool {
	return len(keys) >= len(prefix) && equalKeys(keys[:len(prefix)], prefix)
}
