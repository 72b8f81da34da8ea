package spec

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// ForbiddenPaths are host paths that no path of a manifest may be, or be an
// ancestor of: binding one of them (or a directory holding one) would hand
// the extension the host's configuration, its users' homes or its kernel and
// device interfaces. "/" is among them, so "/" itself is refused; a path
// below one of them, such as /home/alice/ComfyUI/custom_nodes/x, is allowed
// unless it lies in ForbiddenTrees.
var ForbiddenPaths = []string{"/", "/etc", "/root", "/home", "/var", "/run", "/proc", "/sys", "/dev", "/boot", "/tmp"}

// ForbiddenTrees are host directories below which no path of a manifest may
// lie: kernel interfaces (/proc, /sys), devices (/dev: devices come only
// through CDI, see Manifest.GPUs), the boot files (/boot), the host's
// configuration (/etc: the sandbox gets its own short allow list) and its
// runtime sockets (/run: a bound containerd or docker socket is a way out).
var ForbiddenTrees = []string{"/proc", "/sys", "/dev", "/boot", "/etc", "/run"}

// ReadonlyTrees are the system directories the sandbox binds read-only; no
// writable path may lie in them.
var ReadonlyTrees = []string{"/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"}

// treeReasons explain why a forbidden tree is refused.
var treeReasons = map[string]string{
	"/proc": "kernel interfaces are never bound",
	"/sys":  "kernel interfaces are never bound",
	"/dev":  "devices come only through CDI, see gpus",
	"/boot": "boot files are never bound",
	"/etc":  "the sandbox's /etc is a fixed allow list",
	"/run":  "runtime sockets such as containerd's are never bound",
}

// pathPolicy is the set of forbidden paths a check uses. Tests build their
// own; CheckPath and CheckPaths use ForbiddenPaths and ForbiddenTrees.
type pathPolicy struct {
	forbidden []string
	trees     []string
}

// defaultPolicy is the policy of ForbiddenPaths and ForbiddenTrees.
func defaultPolicy() pathPolicy {
	return pathPolicy{forbidden: ForbiddenPaths, trees: ForbiddenTrees}
}

// reason says why the clean absolute path p is forbidden, or returns "".
// With inodes set it also compares p with each forbidden directory by device
// and inode, to catch a bind mount; p must then be free of symlinks.
func (pol pathPolicy) reason(p string, inodes bool) string {
	for _, t := range pol.trees {
		if within(p, t) {
			why := treeReasons[t]
			if why == "" {
				why = "nothing below it is ever bound"
			}
			return fmt.Sprintf("it is or lies under %s: %s", t, why)
		}
	}
	for _, f := range pol.forbidden {
		if p == f {
			return "it is a protected system path"
		}
		if within(f, p) {
			return "it contains " + f
		}
	}
	if !inodes {
		return ""
	}
	// A bind mount (or a hard link) can show a forbidden path under another
	// name.
	for _, f := range append(pol.forbidden[:len(pol.forbidden):len(pol.forbidden)], pol.trees...) {
		if sameFile(p, f) {
			return fmt.Sprintf("it is %s under another name: a bind mount or a hard link", f)
		}
	}
	return ""
}

// sameFile reports whether a and b both exist and are the same file. a is
// not followed if it is a symlink; b is.
func sameFile(a, b string) bool {
	fa, err := os.Lstat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// within reports whether the clean absolute path p is root or lies below it.
func within(p, root string) bool {
	if root == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == root || strings.HasPrefix(p, root+"/")
}

// bundleRoot is a bundle directory as given (made absolute) and resolved.
// The zero value means "no bundle": nothing escapes it.
type bundleRoot struct {
	abs, real string
}

// newBundleRoot resolves a bundle directory; "" gives the zero bundleRoot.
func newBundleRoot(bundle string) (bundleRoot, error) {
	if bundle == "" {
		return bundleRoot{}, nil
	}
	abs, err := filepath.Abs(bundle)
	if err != nil {
		return bundleRoot{}, fmt.Errorf("bundle %s: %w", bundle, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return bundleRoot{}, fmt.Errorf("bundle: %w", err)
	}
	return bundleRoot{abs: abs, real: real}, nil
}

// contains reports whether the clean path p lies textually in the bundle.
func (b bundleRoot) contains(p string) bool {
	return b.abs != "" && (within(p, b.abs) || within(p, b.real))
}

// CheckPath checks one host path of a manifest and returns it resolved: with
// every symlink followed, so that it names the file that was checked. field
// names the path in errors ("sandbox.readonly_paths[0]"); bundle is the
// bundle directory, or "" for none. The path is refused (with a *FieldError
// naming field and the path) when:
//   - it is empty, relative, holds a NUL byte or has a ".." element;
//   - its clean text, or its resolved path, is forbidden: equal to or an
//     ancestor of one of ForbiddenPaths, under one of ForbiddenTrees, or the
//     same directory as one of them (a bind mount);
//   - its text lies in the bundle but it resolves outside it (an escape
//     through a symlink);
//   - it does not exist.
//
// When the path does not exist the forbidden checks still see through the
// symlinks of its longest existing prefix, so that the error names the
// forbidden target rather than a missing file.
func CheckPath(field, p, bundle string) (resolved string, err error) {
	b, err := newBundleRoot(bundle)
	if err != nil {
		return "", err
	}
	resolved, _, err = defaultPolicy().check(field, p, b)
	return resolved, err
}

// check is CheckPath with a policy; it also returns the resolved file's
// information.
func (pol pathPolicy) check(field, p string, b bundleRoot) (string, fs.FileInfo, error) {
	if p == "" {
		return "", nil, fieldErr(field, "path is empty")
	}
	if err := checkPathText(field, p); err != nil {
		return "", nil, err
	}
	clean := filepath.Clean(p)
	if why := pol.reason(clean, false); why != "" {
		return "", nil, fieldErr(field, "%q is forbidden (%s)", p, why)
	}
	resolved, exists, err := resolve(clean)
	if err != nil {
		return "", nil, fieldErr(field, "cannot resolve %q: %v", p, err)
	}
	if why := pol.reason(resolved, true); why != "" {
		if resolved == clean {
			return "", nil, fieldErr(field, "%q is forbidden (%s)", p, why)
		}
		return "", nil, fieldErr(field, "%q resolves through a symlink to %q, which is forbidden (%s)", p, resolved, why)
	}
	if b.contains(clean) && !within(resolved, b.real) {
		return "", nil, fieldErr(field, "%q escapes the bundle %s through a symlink (it resolves to %q)", p, b.abs, resolved)
	}
	if !exists {
		if resolved != clean {
			return "", nil, fieldErr(field, "%q does not exist (it resolves to %q)", p, resolved)
		}
		return "", nil, fieldErr(field, "%q does not exist", p)
	}
	fi, err := os.Stat(resolved)
	if err != nil {
		return "", nil, fieldErr(field, "cannot stat %q: %v", p, err)
	}
	if fi.Mode()&(fs.ModeSocket|fs.ModeDevice|fs.ModeNamedPipe) != 0 {
		return "", nil, fieldErr(field, "%q is a socket, device or pipe: only files and directories are bound", p)
	}
	return resolved, fi, nil
}

// maxLinkHops bounds the dangling symlinks resolve follows.
const maxLinkHops = 255

// resolve follows every symlink of the clean absolute path p. When p exists
// it returns filepath.EvalSymlinks(p) and true. When it does not, it
// resolves the longest existing prefix, follows a dangling symlink found
// there, and appends the rest of the text, returning false. (For a missing
// path the result is only used to name a forbidden target or an escape in an
// error; ".." in a dangling link's target is applied lexically.)
func resolve(p string) (string, bool, error) {
	for range maxLinkHops {
		r, err := filepath.EvalSymlinks(p)
		if err == nil {
			return r, true, nil
		}
		if !isMissing(err) {
			return "", false, err
		}
		base, rest, err := existingPrefix(p)
		if err != nil {
			return "", false, err
		}
		first, remaining, _ := strings.Cut(rest, "/")
		target, err := os.Readlink(filepath.Join(base, first))
		if err != nil {
			// The first missing element is not a symlink: nothing to follow.
			return filepath.Join(base, rest), false, nil
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(base, target)
		}
		p = filepath.Join(target, remaining)
	}
	return "", false, errors.New("too many levels of symbolic links")
}

// existingPrefix splits the clean absolute path p, which does not exist, into
// its longest existing prefix (resolved) and the rest of the text.
func existingPrefix(p string) (base, rest string, err error) {
	dir := p
	for dir != "/" {
		rest = filepath.Join(filepath.Base(dir), rest)
		dir = filepath.Dir(dir)
		r, err := filepath.EvalSymlinks(dir)
		if err == nil {
			return r, rest, nil
		}
		if !isMissing(err) {
			return "", "", err
		}
	}
	return "/", rest, nil
}

// isMissing reports whether err says a path (or one of its parents) does
// not exist.
func isMissing(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// CheckPaths checks every host path of m with CheckPath against the bundle
// directory (or "" for none): module_path and venv must be directories,
// python an executable file (its directory and its installation prefix,
// which the builder binds, are checked too), sandbox.writable_paths and
// sandbox.readonly_paths must exist, and no path may be listed twice.
//
// When every check passes, CheckPaths replaces the path fields of m with
// their resolved, symlink-free paths, so that the builder binds what was
// checked. Python keeps its base name unresolved (a venv's bin/python is a
// symlink, and Python finds the venv's pyvenv.cfg through that name); only
// its directory is resolved. On error m is unchanged.
//
// Resolving closes the check-then-use gap only partly: a user who can write
// to a directory on the path could still swap an element for a symlink
// between this check and the bind mount. Closing it fully needs the mount to
// use the file opened here (O_PATH and /proc/self/fd) or openat2 with
// RESOLVE_NO_SYMLINKS, which is the runtime's job.
func CheckPaths(m *Manifest, bundle string) error {
	return defaultPolicy().checkManifest(m, bundle)
}

// checkManifest is CheckPaths with a policy.
func (pol pathPolicy) checkManifest(m *Manifest, bundle string) error {
	b, err := newBundleRoot(bundle)
	if err != nil {
		return err
	}
	module, err := pol.checkDir("module_path", m.ModulePath, b)
	if err != nil {
		return err
	}
	var venv string
	if m.Venv != "" {
		if venv, err = pol.checkDir("venv", m.Venv, b); err != nil {
			return err
		}
	}
	python, err := pol.checkPython(m.python(), b)
	if err != nil {
		return err
	}
	seen := map[string]string{}
	writable, err := pol.checkList("sandbox.writable_paths", m.Sandbox.WritablePaths, b, seen)
	if err != nil {
		return err
	}
	for i, w := range writable {
		for _, t := range ReadonlyTrees {
			if within(w, t) {
				return fieldErr(fmt.Sprintf("sandbox.writable_paths[%d]", i),
					"%q lies in %s, which the sandbox binds read-only", m.Sandbox.WritablePaths[i], t)
			}
		}
	}
	readonly, err := pol.checkList("sandbox.readonly_paths", m.Sandbox.ReadonlyPaths, b, seen)
	if err != nil {
		return err
	}
	m.ModulePath, m.Venv, m.Python = module, venv, python
	m.Sandbox.WritablePaths, m.Sandbox.ReadonlyPaths = writable, readonly
	return nil
}

// checkDir checks a path that must be a directory.
func (pol pathPolicy) checkDir(field, p string, b bundleRoot) (string, error) {
	if p == "" {
		return "", fieldErr(field, "is required")
	}
	resolved, fi, err := pol.check(field, p, b)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", fieldErr(field, "%q is not a directory", p)
	}
	return resolved, nil
}

// checkPython checks the interpreter: the file, its directory and the
// installation prefix the builder binds. It returns the path with its
// directory resolved and its base name kept.
func (pol pathPolicy) checkPython(p string, b bundleRoot) (string, error) {
	const field = "python"
	_, fi, err := pol.check(field, p, b)
	if err != nil {
		return "", err
	}
	switch {
	case fi.IsDir():
		return "", fieldErr(field, "%q is a directory, not an interpreter", p)
	case fi.Mode()&0o111 == 0:
		return "", fieldErr(field, "%q is not executable", p)
	}
	clean := filepath.Clean(p)
	dir, _, err := pol.check(field, filepath.Dir(clean), b)
	if err != nil {
		return "", err
	}
	python := filepath.Join(dir, filepath.Base(clean))
	if prefix := pythonPrefix(python); prefix != "" {
		if _, _, err := pol.check(field, prefix, b); err != nil {
			var fe *FieldError
			if errors.As(err, &fe) {
				return "", fieldErr(field, "%s; it is the installation prefix of %q, which would be bound read-only", fe.Msg, python)
			}
			return "", err
		}
	}
	return python, nil
}

// checkList checks a list of paths that must exist. seen maps the resolved
// paths already checked to their field, to refuse one listed twice.
func (pol pathPolicy) checkList(field string, ps []string, b bundleRoot, seen map[string]string) ([]string, error) {
	if ps == nil {
		return nil, nil
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		at := fmt.Sprintf("%s[%d]", field, i)
		resolved, _, err := pol.check(at, p, b)
		if err != nil {
			return nil, err
		}
		if other, dup := seen[resolved]; dup {
			return nil, fieldErr(at, "%q is also listed as %s (both are %q)", p, other, resolved)
		}
		seen[resolved] = at
		out[i] = resolved
	}
	return out, nil
}
