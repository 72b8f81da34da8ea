package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestContainerdGroupWithManifest: io.pyisolate.group next to
// io.pyisolate.manifest is accepted when they agree (or the manifest names no
// group) and refused, with one line naming both, when they disagree.
func TestContainerdGroupWithManifest(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("/usr/bin/python3 is not installed")
	}
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		module := filepath.Join(ctrdRepoRoot(t), "examples", "hello", "hello_ext")
		empty := filepath.Join(d.Dir, "empty")
		if err := os.MkdirAll(empty, 0o755); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			id, manifestGroup, group string
			want                     int
			stderr                   string
		}{
			{"agree", `,"group":"ga"`, "ga", 0, ""},
			{"nogroup", "", "gb", 0, ""},
			{"disagree", `,"group":"ga"`, "gc", 1, `io.pyisolate.group: "gc" disagrees with the group "ga" of io.pyisolate.manifest`},
		}
		for _, tt := range tests {
			manifest := fmt.Sprintf(`io.pyisolate.manifest={"name":"hello","module_path":%q%s}`, module, tt.manifestGroup)
			r := d.Ctr(t, tt.want, "run", "--rm", "--runtime", ctrdRuntime, "--annotation", manifest,
				"--annotation", "io.pyisolate.group="+tt.group, "--rootfs", empty, tt.id,
				"/usr/bin/python3", "-c", "import os; print(os.environ['PYISOLATE_GROUP'])")
			if tt.want == 0 && strings.TrimSpace(r.Stdout) != tt.group {
				t.Errorf("%s: the member's group is %q, want %q", tt.id, strings.TrimSpace(r.Stdout), tt.group)
			}
			if tt.stderr != "" && !strings.Contains(r.Stderr, tt.stderr) {
				t.Errorf("%s: ctr said %q, want %q", tt.id, r.Stderr, tt.stderr)
			}
			if tt.want != 0 {
				d.ctr(20*time.Second, "container", "rm", tt.id)
			}
			ctrdAssertClean(t, d, tt.id)
		}
	})
}
