package group

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/runtime/detect"
	"golang.org/x/sys/unix"
)

func TestLinkGroupsDir(t *testing.T) {
	if !onTmpfsPath(detect.ShmPath) {
		t.Skip("skipped: /dev/shm is not a tmpfs here")
	}
	shm, err := os.MkdirTemp(detect.ShmPath, "rootless-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })
	root := filepath.Join(t.TempDir(), "pyisolate")
	if err := os.Mkdir(root, 0o700); err != nil {
		t.Fatal(err)
	}
	euid := os.Geteuid()
	if err := linkGroupsDir(root, shm, euid); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(root, runtime.GroupsDir)
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatalf("groups is no link: %v", err)
	}
	if !ownShmDir(shm, target, euid) {
		t.Fatalf("target %s is not a private directory of uid %d on the tmpfs", target, euid)
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(filepath.Join(link, "."), &fs); err != nil || fs.Type != tmpfsMagic {
		t.Errorf("groups does not lead to a tmpfs: type %#x (%v)", fs.Type, err)
	}
	if err := linkGroupsDir(root, shm, euid); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Readlink(link); again != target {
		t.Errorf("a usable link was replaced: %s, then %s", target, again)
	}
	// Stale: the tmpfs directory is gone (a reboot kept the root).
	if err := os.Remove(target); err != nil {
		t.Fatal(err)
	}
	if err := linkGroupsDir(root, shm, euid); err != nil {
		t.Fatal(err)
	}
	if fresh, _ := os.Readlink(link); fresh == target || !ownShmDir(shm, fresh, euid) {
		t.Errorf("a stale link was not renewed: %s", fresh)
	}
	// Not ours: a directory of another uid is not accepted.
	if ownShmDir(shm, target, euid+1) {
		t.Errorf("ownShmDir accepted another uid")
	}
	// A state root without a tmpfs to link to keeps a plain directory.
	plain := filepath.Join(t.TempDir(), "pyisolate")
	if err := os.Mkdir(plain, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := linkGroupsDir(plain, t.TempDir(), euid); err != nil {
		t.Fatal(err)
	}
	if onTmpfsPath(os.TempDir()) {
		return
	}
	if _, err := os.Lstat(filepath.Join(plain, runtime.GroupsDir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a groups link was made without a tmpfs: %v", err)
	}
}

// TestFindDelegation: a delegated cgroup v2 subtree is found from
// /proc/self/cgroup when its files belong to the user and it has the memory
// and pids controllers; otherwise the reason says what is missing.
