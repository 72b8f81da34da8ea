package runtime

import (
	"strings"
	"testing"
)

// TestValidateID: the id rule, with one-line errors naming what is wrong.
// An id longer than a file name allows used to pass (up to 1024 bytes) and
// then fail deep in the runtime with "file name too long".
func TestValidateID(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want string // in the error; "" for a valid id
	}{
		{"abc", ""},
		{"a.b_c+d-e", ""},
		{strings.Repeat("x", MaxIDLength), ""},
		{"", "container id is empty"},
		{strings.Repeat("x", MaxIDLength+1), "129 characters long, at most 128 are allowed"},
		{strings.Repeat("x", 1000), "1000 characters long"},
		{"a/b", `"a/b" contains '/'`},
		{"..", `".." is not allowed`},
		{".", `"." is not allowed`},
		{"a b", `contains ' '`},
		{"rootfs", "is reserved"},
		{"groups", "is reserved"},
	} {
		err := ValidateID(tc.id)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("ValidateID(%.20q): %v", tc.id, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("ValidateID(%.20q) = %v, want an error with %q", tc.id, err, tc.want)
		case err != nil && strings.Contains(err.Error(), "\n"):
			t.Errorf("ValidateID(%.20q): error of more than one line: %q", tc.id, err)
		}
	}
	// A group name follows the same rule except that the state root's
	// reserved names are fine: groups live in a directory of their own.
	if err := CheckName("group name", "rootfs"); err != nil {
		t.Errorf("group rootfs: %v", err)
	}
}
