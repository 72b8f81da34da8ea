package group

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func needRootForGroup(t *testing.T) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("skipped: group tests mount a tmpfs and need root")
	}
}

// sleeper starts a process standing in for a member's init.
func sleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	c := exec.Command("sleep", "60")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Process.Kill(); _, _ = c.Process.Wait() })
	return c
}

func mounted(t *testing.T, dir string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

func TestGroupLifecycle(t *testing.T) {
	needRootForGroup(t)
	ctx := context.Background()
	root := t.TempDir()
	a, b := sleeper(t), sleeper(t)

	g, err := Open(ctx, root, "g1", "host", a.Process.Pid, Options{ShmSize: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if !mounted(t, g.ShmDir()) {
		t.Fatalf("%s is not a mount point", g.ShmDir())
	}
	if fi, err := os.Stat(g.SocketDir()); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Fatalf("socket dir: %v %v", fi, err)
	}
	g2, err := Open(ctx, root, "g1", "ext", b.Process.Pid, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if g2.ShmDir() != g.ShmDir() {
		t.Fatalf("second member got %s, first %s", g2.ShmDir(), g.ShmDir())
	}
	// A segment written by the first member is visible through the second.
	if err := os.WriteFile(filepath.Join(g.ShmDir(), "seg"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(g2.ShmDir(), "seg")); err != nil {
		t.Fatal(err)
	}
	if names, _ := List(root); len(names) != 1 || names[0] != "g1" {
		t.Fatalf("List = %v", names)
	}

	if ended, err := g2.Leave(ctx, "ext"); err != nil || ended {
		t.Fatalf("Leave(ext) = %v, %v; want the group to live on", ended, err)
	}
	if !mounted(t, g.ShmDir()) {
		t.Fatal("group ended while a member lives")
	}
	if ended, err := g.Leave(ctx, "host"); err != nil || !ended {
		t.Fatalf("Leave(host) = %v, %v; want the group ended", ended, err)
	}
	if mounted(t, g.ShmDir()) {
		t.Fatal("tmpfs still mounted after the last member left")
	}
	if _, err := os.Stat(g.Dir); !os.IsNotExist(err) {
		t.Fatalf("group dir left behind: %v", err)
	}
}

func TestGroupStaleIsRecreated(t *testing.T) {
	needRootForGroup(t)
	ctx := context.Background()
	root := t.TempDir()
	// A member whose process is gone without leaving: a crashed runtime.
	live := sleeper(t)
	g, err := Open(ctx, root, "g2", "crashed", live.Process.Pid, Options{ShmSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(g.ShmDir(), "leaked"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = live.Process.Kill()
	_, _ = live.Process.Wait()

	fresh := sleeper(t)
	g2, err := Open(ctx, root, "g2", "new", fresh.Process.Pid, Options{ShmSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g2.Destroy(ctx) })
	if _, err := os.Stat(filepath.Join(g2.ShmDir(), "leaked")); !os.IsNotExist(err) {
		t.Fatalf("stale group's segment survived: %v", err)
	}
	if !mounted(t, g2.ShmDir()) {
		t.Fatal("recreated group not mounted")
	}
}

func TestGroupBadName(t *testing.T) {
	for _, name := range []string{"", "../x", "a/b", ".."} {
		if _, err := Open(context.Background(), t.TempDir(), name, "m", os.Getpid(), Options{}); err == nil {
			t.Errorf("Open(%q) accepted", name)
		}
	}
}

// TestGroupLeaveAfterEnded: a member whose container exited can find the
// group already ended by another member; leaving is then no error.
func TestGroupLeaveAfterEnded(t *testing.T) {
	needRootForGroup(t)
	ctx := context.Background()
	root := t.TempDir()
	a, b := sleeper(t), sleeper(t)
	g1, err := Open(ctx, root, "g3", "host", a.Process.Pid, Options{ShmSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	g2, err := Open(ctx, root, "g3", "ext", b.Process.Pid, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Process.Kill() // the extension's container exits first...
	_, _ = b.Process.Wait()
	if ended, err := g1.Leave(ctx, "host"); err != nil || !ended {
		t.Fatalf("Leave(host) = %v, %v; want the group ended (no member alive)", ended, err)
	}
	// ...and its runtime leaves after the host's ended the group.
	if ended, err := g2.Leave(ctx, "ext"); err != nil || !ended {
		t.Fatalf("Leave(ext) after the end = %v, %v; want ended, no error", ended, err)
	}
	if _, err := os.Stat(filepath.Join(root, "groups", "g3")); !os.IsNotExist(err) {
		t.Fatalf("group dir left: %v", err)
	}
}
