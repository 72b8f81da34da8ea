package main

import (
	"slices"
	"testing"
)

// TestParseOCIFlags checks runc's argument order rules: flags after
// positionals for most verbs, none after the id for exec (the command's
// own), and "--".
func TestParseOCIFlags(t *testing.T) {
	cases := []struct {
		name      string
		args      []string
		stopAfter int
		wantPos   []string
		wantAll   bool
	}{
		{"flags first", []string{"--all", "id", "9"}, 0, []string{"id", "9"}, true},
		{"flags after", []string{"id", "9", "--all"}, 0, []string{"id", "9"}, true},
		{"exec stops after the id", []string{"id", "sh", "--all"}, 1, []string{"id", "sh", "--all"}, false},
		{"double dash", []string{"id", "--", "--all"}, 0, []string{"id", "--all"}, false},
		{"none", nil, 0, nil, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fs := ociFlags("kill")
			all := fs.Bool("all", false, "")
			pos, err := parseOCIFlags(fs, c.args, c.stopAfter)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(pos, c.wantPos) || *all != c.wantAll {
				t.Errorf("positionals %q, --all %v; want %q, %v", pos, *all, c.wantPos, c.wantAll)
			}
		})
	}
	if _, err := parseOCIFlags(ociFlags("kill"), []string{"--nope"}, 0); err == nil {
		t.Error("an unknown flag was accepted")
	}
}

func TestParseBytes(t *testing.T) {
	cases := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"1024", 1024, true}, {"64m", 64 << 20, true}, {"1g", 1 << 30, true}, {"2k", 2048, true},
		{"1GiB", 1 << 30, true}, {"-1", -1, true}, {"x", 0, false}, {"-5", 0, false}, {"", 0, false},
	}
	for _, c := range cases {
		got, err := parseBytes(c.in)
		if (err == nil) != c.ok || (c.ok && got != c.want) {
			t.Errorf("parseBytes(%q) = %d, %v; want %d, ok %v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestNeedArgs(t *testing.T) {
	if err := needArgs("state", []string{"a"}, 1, true); err != nil {
		t.Error(err)
	}
	if err := needArgs("state", nil, 1, true); err == nil {
		t.Error("state without an id accepted")
	}
	if err := needArgs("exec", []string{"a", "b"}, 1, false); err != nil {
		t.Error(err)
	}
}
