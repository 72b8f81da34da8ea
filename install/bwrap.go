package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// BwrapShimName is the name of the bubblewrap face's link: pyisolate runs
// "bwrap" from PATH.
const BwrapShimName = "bwrap"

// BwrapShimOptions configure InstallBwrapShim and UninstallBwrapShim.
type BwrapShimOptions struct {
	// Dir receives the link <Dir>/bwrap. The user puts it first on PATH.
	Dir string
	// Binary is the pyisolate binary the link points to (absolute, links
	// resolved).
	Binary string
	// DryRun changes nothing.
	DryRun bool
	// PATH is the search path to check the link against (os.Getenv("PATH")
	// when empty).
	PATH string
}

// BwrapShimResult reports what InstallBwrapShim or UninstallBwrapShim did.
type BwrapShimResult struct {
	// Link is <Dir>/bwrap; Changed is true when it was made or removed.
	Link    string
	Changed bool
	// PathLine is the shell line that puts Dir first on PATH.
	PathLine string
	// Notes are remarks for the user (another bwrap earlier on PATH).
	Notes []string
}

// InstallBwrapShim makes <Dir>/bwrap a symbolic link to the pyisolate
// binary (Dir is created, 0755, when missing). A link that already points
// there is left alone; any other file of that name is refused, never
// replaced: it may be the real bwrap.
func InstallBwrapShim(o BwrapShimOptions) (*BwrapShimResult, error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil || o.Dir == "" {
		return nil, fmt.Errorf("bwrap shim directory %q: want a directory", o.Dir)
	}
	if !filepath.IsAbs(o.Binary) {
		return nil, fmt.Errorf("bwrap shim: binary %q is not an absolute path", o.Binary)
	}
	link := filepath.Join(dir, BwrapShimName)
	res := &BwrapShimResult{Link: link, PathLine: fmt.Sprintf(`export PATH=%s:"$PATH"`, shellQuote(dir))}
	if target, err := os.Readlink(link); err == nil {
		if sameTarget(target, link, o.Binary) {
			res.Notes = pathNotes(dir, o.PATH)
			return res, nil
		}
		return nil, fmt.Errorf("%s exists and points to %s, not to %s: remove it first", link, target, o.Binary)
	} else if _, serr := os.Lstat(link); serr == nil {
		return nil, fmt.Errorf("%s exists and is not a link to pyisolate (the real bwrap?): it is left alone; choose another directory", link)
	} else if !errors.Is(serr, fs.ErrNotExist) {
		return nil, fmt.Errorf("bwrap shim: %w", serr)
	}
	if !o.DryRun {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("bwrap shim: %w", err)
		}
		if err := os.Symlink(o.Binary, link); err != nil {
			return nil, fmt.Errorf("bwrap shim: %w", err)
		}
	}
	res.Changed = true
	res.Notes = pathNotes(dir, o.PATH)
	return res, nil
}

// UninstallBwrapShim removes <Dir>/bwrap when it is a link to a pyisolate
// binary (Binary, or any file named pyisolate); anything else is left
// alone with an error. A missing link is not an error.
func UninstallBwrapShim(o BwrapShimOptions) (*BwrapShimResult, error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil || o.Dir == "" {
		return nil, fmt.Errorf("bwrap shim directory %q: want a directory", o.Dir)
	}
	link := filepath.Join(dir, BwrapShimName)
	res := &BwrapShimResult{Link: link}
	target, err := os.Readlink(link)
	if err != nil {
		if _, serr := os.Lstat(link); errors.Is(serr, fs.ErrNotExist) {
			return res, nil
		}
		return nil, fmt.Errorf("%s is not a link to pyisolate (the real bwrap?): it is left alone", link)
	}
	if filepath.Base(target) != BinaryName && !sameTarget(target, link, o.Binary) {
		return nil, fmt.Errorf("%s points to %s, not to a pyisolate binary: it is left alone", link, target)
	}
	if !o.DryRun {
		if err := os.Remove(link); err != nil {
			return nil, fmt.Errorf("bwrap shim: %w", err)
		}
	}
	res.Changed = true
	return res, nil
}

// sameTarget reports whether the link target (relative to link's directory)
// is the file binary.
func sameTarget(target, link, binary string) bool {
	if binary == "" {
		return false
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(link), target)
	}
	a, err1 := os.Stat(target)
	b, err2 := os.Stat(binary)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// pathNotes says when dir is not where PATH finds bwrap first.
func pathNotes(dir, path string) []string {
	if path == "" {
		path = os.Getenv("PATH")
	}
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			continue
		}
		if filepath.Clean(d) == dir {
			return nil
		}
		p := filepath.Join(d, BwrapShimName)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return []string{fmt.Sprintf("PATH finds %s before %s: put %s first on PATH", p, dir, dir)}
		}
	}
	return []string{fmt.Sprintf("%s is not on PATH yet", dir)}
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"\\$`!*?[]{}()<>|&;#~") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
