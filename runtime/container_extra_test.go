package runtime

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestTakeRuntimeAnnotations(t *testing.T) {
	tests := []struct {
		name   string
		labels []string
		kept   []string
		taken  map[string]string
	}{
		{name: "none", labels: []string{"bundle=/b", "a=1"}, kept: []string{"bundle=/b", "a=1"}},
		{name: "out and degraded", labels: []string{"bundle=/b", "io.pyisolate.out.policy=faithful", "a=1", "io.pyisolate.degraded=userns"},
			kept: []string{"bundle=/b", "a=1"}, taken: map[string]string{"io.pyisolate.out.policy": "faithful", "io.pyisolate.degraded": "userns"}},
		{name: "inputs stay", labels: []string{"io.pyisolate.policy=hardened", "io.pyisolate.group=g"},
			kept: []string{"io.pyisolate.policy=hardened", "io.pyisolate.group=g"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kept, taken := takeRuntimeAnnotations(tc.labels)
			if len(kept) != len(tc.kept) {
				t.Fatalf("kept %v, want %v", kept, tc.kept)
			}
			for i := range kept {
				if kept[i] != tc.kept[i] {
					t.Errorf("kept %v, want %v", kept, tc.kept)
				}
			}
			if !maps.Equal(taken, tc.taken) {
				t.Errorf("taken %v, want %v", taken, tc.taken)
			}
		})
	}
}

// TestHookStateAnnotations: a hook reads the OCI state with the config's
// annotations, exactly (runtime-tools' hooks_stdin); State reports the
// runtime's own decisions too.
func TestHookStateAnnotations(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	ctx := context.Background()
	dir := t.TempDir()
	s := newSpec(t, r, id, "true")
	s.Annotations = map[string]string{"org.example": "client", "io.pyisolate.out.policy": "faithful"}
	s.Hooks = &specs.Hooks{Poststop: []specs.Hook{{Path: "/bin/sh", Args: []string{"sh", "-c", "cat > " + filepath.Join(dir, "state.json")}}}}
	c, err := r.Create(ctx, id, s, CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Delete(ctx, true)
	st, err := c.State()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(st.Annotations, s.Annotations) {
		t.Errorf("State().Annotations = %v, want %v", st.Annotations, s.Annotations)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, false); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		t.Fatalf("poststop hook: %v", err)
	}
	var hs specs.State
	if err := json.Unmarshal(b, &hs); err != nil {
		t.Fatalf("poststop hook's state %q: %v", b, err)
	}
	if want := map[string]string{"org.example": "client"}; !maps.Equal(hs.Annotations, want) {
		t.Errorf("the hook's state has annotations %v, want the config's %v", hs.Annotations, want)
	}
}

// TestRootfsUnderPrivateRoot: a state root below a directory others cannot
// walk (Docker's exec root is 0700) keeps its root filesystems where a
// container in a user namespace reaches them, and removes them after.
func TestRootfsUnderPrivateRoot(t *testing.T) {
	needRoot(t)
	private, err := os.MkdirTemp("/tmp", "pyisolate-private-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(private)
	r := &Runtime{Root: filepath.Join(private, "state")}
	defer assertClean(t, r)
	if base := r.rootfsBase(); filepath.Dir(base) != FallbackRootfsDir {
		t.Fatalf("rootfs base %s, want one under %s", base, FallbackRootfsDir)
	}
	if base := (&Runtime{Root: "/run/pyisolate-test-x"}).rootfsBase(); base != "/run/pyisolate-test-x/rootfs" {
		t.Errorf("rootfs base of a root under /run: %s", base)
	}
	id := testID(t)
	ctx := context.Background()
	st, err := r.Run(ctx, id, newSpec(t, r, id, "true"), CreateOptions{})
	if err != nil || st.Code != 0 {
		t.Fatalf("run in a user namespace with the state root under a 0700 directory: %+v, %v", st, err)
	}
	if _, err := os.Stat(r.rootfsBase()); !os.IsNotExist(err) {
		t.Errorf("the root's rootfs base %s is left: %v", r.rootfsBase(), err)
	}
}
