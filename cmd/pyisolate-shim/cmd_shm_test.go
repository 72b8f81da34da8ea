package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestDisplayText(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"torch_123_abc", "torch_123_abc"},
		{"with space", "with space"},
		{"café_張", "café_張"},
		{"", ""},
		{"\x1b[2J\x1b[31mred", `"\x1b[2J\x1b[31mred"`},
		{"two\nlines", `"two\nlines"`},
		{"tab\there", `"tab\there"`},
		{"cr\rover", `"cr\rover"`},
		{"bidi\u202eevil", `"bidi\u202eevil"`},
		{"bad\xffutf8", `"bad\xffutf8"`},
		{"bell\a", `"bell\a"`},
		{`"looks quoted"`, `"\"looks quoted\""`},
	} {
		if got := displayText(tc.in); got != tc.want {
			t.Errorf("displayText(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestWriteSegmentTable: names, owners and mappers chosen by an extension
// reach the table quoted when they hold control or non-printable
// characters; the table keeps one row per segment and its columns.
func TestWriteSegmentTable(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	rows := []shmSegment{
		{Group: "g", Name: "torch_1", Owner: "ext-a", Size: 1 << 20, Created: now.Add(-5 * time.Second), MappedBy: []string{"host"}},
		{Group: "g", Name: "evil\x1b]0;owned\a\nFAKE ROW\ttab", Owner: "ext\x1b[8m", Size: 4096, Created: now, MappedBy: []string{"a\nb", "host"},
			State: "kept", StateDetail: "owner ext\x1b[8m exited"},
	}
	var out bytes.Buffer
	if err := writeSegmentTable(&out, rows, now); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, bad := range []string{"\x1b", "\a", "\t"} {
		if strings.Contains(text, bad) {
			t.Errorf("table holds %q:\n%s", bad, text)
		}
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("want a header and 2 rows, got %d lines:\n%s", len(lines), text)
	}
	for _, want := range []string{
		strconv.Quote(rows[1].Name), strconv.Quote(rows[1].Owner), `"a\nb",host`, strconv.Quote("kept: owner ext\x1b[8m exited"),
	} {
		if !strings.Contains(lines[2], want) {
			t.Errorf("row %q lacks %s", lines[2], want)
		}
	}
	if f := strings.Fields(lines[1]); len(f) < 6 || f[1] != "torch_1" || f[2] != "ext-a" {
		t.Errorf("a plain row changed: %q", lines[1])
	}
}

// TestCLIShmLsQuotesNames: a segment whose name holds escape sequences and
// a newline, made in a real group, is listed quoted by `shm ls` and `shm
// gc`; --json keeps the name as it is (JSON escapes it).
func TestCLIShmLsQuotesNames(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a group mounts a tmpfs")
	}
	root, err := os.MkdirTemp("/run", "pyisolate-clitest-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(root)
	member := exec.Command("sleep", "60")
	if err := member.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		member.Process.Kill()
		member.Wait()
		// The member is gone: gc ends the group and unmounts its tmpfs.
		code, out, stderr := cli(t, "shm", "gc", "--root", root)
		if code != 0 || !strings.Contains(out, "ended") {
			t.Errorf("shm gc: %d %q %q", code, out, stderr)
		}
		if strings.Contains(out, "\x1b") {
			t.Errorf("shm gc printed a raw escape: %q", out)
		}
	}()
	code, out, stderr := cli(t, "shm", "path", "--root", root, "--join", "--group", "clitest-quote",
		"--pid", strconv.Itoa(member.Process.Pid), "--shm-size", "4Mi")
	if code != 0 {
		t.Fatalf("shm path --join: %d %s", code, stderr)
	}
	shm, _, _ := strings.Cut(strings.TrimPrefix(out, "shm="), "\n")
	name := "evil\x1b[2J\x1b]0;owned\a\nFAKE"
	if err := os.WriteFile(filepath.Join(shm, name), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, stderr = cli(t, "shm", "ls", "--root", root, "--group", "clitest-quote")
	if code != 0 {
		t.Fatalf("shm ls: %d %s", code, stderr)
	}
	if strings.ContainsAny(out, "\x1b\a") || strings.Count(out, "\n") != 2 || !strings.Contains(out, strconv.Quote(name)) {
		t.Errorf("shm ls: want the header and one row with the name quoted, got %q", out)
	}
	code, out, _ = cli(t, "shm", "ls", "--root", root, "--group", "clitest-quote", "--json")
	var segs []shmSegment
	if err := json.Unmarshal([]byte(out), &segs); code != 0 || err != nil || len(segs) != 1 || segs[0].Name != name {
		t.Errorf("shm ls --json: %d %v %+v", code, err, segs)
	}
}
