package runtime

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestDefaultStateRootFor(t *testing.T) {
	tests := []struct {
		name     string
		euid     int
		rootless bool
		xdg      string
		want     string
	}{
		{"root", 0, false, "/run/user/0", DefaultRoot},
		{"user with XDG_RUNTIME_DIR", 1000, true, "/run/user/1000", "/run/user/1000/pyisolate"},
		{"user without it", 1000, true, "", filepath.Join(os.TempDir(), "pyisolate-1000")},
		{"relative XDG_RUNTIME_DIR is ignored", 1000, true, "run/user", filepath.Join(os.TempDir(), "pyisolate-1000")},
		{"root of a user namespace (rootless Podman)", 0, true, "/run/user/1000", "/run/user/1000/pyisolate"},
		{"root of a user namespace without it", 0, true, "", filepath.Join(os.TempDir(), "pyisolate-0")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := DefaultStateRootFor(tc.euid, tc.rootless, tc.xdg, "pyisolate"); got != tc.want {
				t.Errorf("DefaultStateRootFor(%d, %q) = %q, want %q", tc.euid, tc.xdg, got, tc.want)
			}
		})
	}
}

// TestEnsureRootlessDir: the state root is the caller's own 0700
// directory; one planted by another user, or a symbolic link, is refused
// with an error naming it.
func TestEnsureRootlessDir(t *testing.T) {
	base := t.TempDir()
	mine := filepath.Join(base, "a", "pyisolate")
	if err := EnsureRootlessDir(mine); err != nil {
		t.Fatalf("new root: %v", err)
	}
	if fi, err := os.Stat(mine); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("new root mode %v (%v), want 0700", fi.Mode(), err)
	}
	if err := os.Chmod(mine, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := EnsureRootlessDir(mine); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(mine); fi.Mode().Perm() != 0o700 {
		t.Errorf("an open root was left %v, want 0700", fi.Mode().Perm())
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(mine, link); err != nil {
		t.Fatal(err)
	}
	if err := EnsureRootlessDir(link); err == nil || !strings.Contains(err.Error(), link) {
		t.Errorf("a symbolic link as root: %v, want an error naming it", err)
	}
	if os.Geteuid() == 0 {
		other := filepath.Join(base, "other")
		if err := os.Mkdir(other, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(other, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		if err := EnsureRootlessDir(other); err == nil || !strings.Contains(err.Error(), "belongs to uid 4242") {
			t.Errorf("a root owned by another user: %v, want refused", err)
		}
	}
}

func TestRootlessIDMappings(t *testing.T) {
	etc := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("subuid", "other:100000:65536\n# comment\n4321:200000:65536\n4321:900000:10\n")
	write("subgid", "4321:300000:1000\n")
	found := func(string) (string, error) { return "/usr/bin/newuidmap", nil }
	missing := func(string) (string, error) { return "", errors.New("not found") }
	one := func(id uint32) []specs.LinuxIDMapping {
		return []specs.LinuxIDMapping{{ContainerID: 0, HostID: id, Size: 1}}
	}

	uids, gids, note := RootlessIDMappingsFor(4321, 4322, etc, missing)
	if len(uids) != 1 || uids[0] != one(4321)[0] || len(gids) != 1 || gids[0] != one(4322)[0] {
		t.Errorf("without newuidmap: %v %v, want the single mapping of 4321/4322", uids, gids)
	}
	if !strings.Contains(note, "uidmap") {
		t.Errorf("note %q does not name the missing package", note)
	}
	uids, gids, note = RootlessIDMappingsFor(4321, 4322, etc, found)
	wantU := append(one(4321), specs.LinuxIDMapping{ContainerID: 1, HostID: 200000, Size: 65536})
	wantG := append(one(4322), specs.LinuxIDMapping{ContainerID: 1, HostID: 300000, Size: 1000})
	if len(uids) != 2 || uids[1] != wantU[1] || len(gids) != 2 || gids[1] != wantG[1] {
		t.Errorf("with newuidmap and ranges: %v %v, want %v %v", uids, gids, wantU, wantG)
	}
	if !strings.Contains(note, "200000-265535") {
		t.Errorf("note %q", note)
	}
	uids, _, note = RootlessIDMappingsFor(5555, 5555, etc, found)
	if len(uids) != 1 || !strings.Contains(note, "no range") {
		t.Errorf("a user without ranges: %v (%q), want the single mapping", uids, note)
	}
}

// TestLinkGroupsDir: <root>/groups becomes a link to a private 0700
// directory in the shared-memory tmpfs, kept while usable, replaced when
// stale; on no tmpfs nothing is linked (file-backed groups, said by
// tensoripc).
