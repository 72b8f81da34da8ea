package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBwrapShim(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "pkg", BinaryName)
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	shim := filepath.Join(dir, "shim")
	other := filepath.Join(dir, "other")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(other, "bwrap"), []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	o := BwrapShimOptions{Dir: shim, Binary: bin, PATH: other + ":" + shim}

	res, err := InstallBwrapShim(o)
	if err != nil || !res.Changed {
		t.Fatalf("install: %+v %v", res, err)
	}
	if target, err := os.Readlink(filepath.Join(shim, "bwrap")); err != nil || target != bin {
		t.Fatalf("link -> %q, %v; want %s", target, err, bin)
	}
	if !strings.Contains(res.PathLine, shim) || len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "before") {
		t.Errorf("path line %q, notes %q", res.PathLine, res.Notes)
	}
	// Again: unchanged.
	if res, err := InstallBwrapShim(o); err != nil || res.Changed {
		t.Errorf("second install: %+v %v", res, err)
	}
	// A real bwrap in the directory is never replaced, nor removed.
	real := BwrapShimOptions{Dir: other, Binary: bin}
	if _, err := InstallBwrapShim(real); err == nil || !strings.Contains(err.Error(), "left alone") {
		t.Errorf("install over a real bwrap: %v", err)
	}
	if _, err := UninstallBwrapShim(real); err == nil {
		t.Errorf("uninstall of a real bwrap succeeded")
	}
	if _, err := os.Stat(filepath.Join(other, "bwrap")); err != nil {
		t.Errorf("the real bwrap is gone: %v", err)
	}
	// Uninstall removes the link, then has nothing to do.
	if res, err := UninstallBwrapShim(o); err != nil || !res.Changed {
		t.Errorf("uninstall: %+v %v", res, err)
	}
	if _, err := os.Lstat(filepath.Join(shim, "bwrap")); !os.IsNotExist(err) {
		t.Errorf("link left: %v", err)
	}
	if res, err := UninstallBwrapShim(o); err != nil || res.Changed {
		t.Errorf("second uninstall: %+v %v", res, err)
	}
}
