package spec

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// realDir returns dir with its symlinks resolved (t.TempDir may itself lie
// behind one).
func realDir(t *testing.T, dir string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// symlink makes link point to target.
func symlink(t *testing.T, target, link string) string {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	return link
}

// mkdir makes a directory and its parents.
func mkdir(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// writeFile writes a file with mode perm.
func writeFile(t *testing.T, file string, perm os.FileMode) string {
	t.Helper()
	if err := os.WriteFile(file, []byte("#!/bin/sh\n"), perm); err != nil {
		t.Fatal(err)
	}
	return file
}

func TestCheckPathForbidden(t *testing.T) {
	links := t.TempDir()
	type tc struct {
		name, path, msg string
	}
	var tests []tc
	for _, f := range ForbiddenPaths {
		tests = append(tests, tc{"direct " + f, f, "is forbidden"})
		tests = append(tests, tc{"trailing slash " + f, strings.TrimSuffix(f, "/") + "/", "is forbidden"})
		link := symlink(t, f, filepath.Join(links, "to"+strings.ReplaceAll(f, "/", "_")))
		tests = append(tests, tc{"symlink to " + f, link, `resolves through a symlink to "` + f + `", which is forbidden`})
	}
	tests = append(tests,
		// Ancestors: "/" contains every forbidden path.
		tc{"ancestor /", "/", `"/" is forbidden (it is a protected system path)`},
		tc{"ancestor // ", "//", "is forbidden"},
		tc{"ancestor /.", "/.", "is forbidden"},
		tc{"ancestor via symlink", symlink(t, "/", filepath.Join(links, "root")), `resolves through a symlink to "/"`},
		tc{"ancestor via relative symlink", symlink(t, "../../../../../../../../../..", filepath.Join(links, "up")), `resolves through a symlink to "/"`},
		tc{"two-step symlink", symlink(t, filepath.Join(links, "to_etc"), filepath.Join(links, "hop")), `resolves through a symlink to "/etc"`},
		// Trees.
		tc{"under /proc", "/proc/self", "lies under /proc: kernel interfaces"},
		tc{"under /proc, root link", "/proc/1/root", "lies under /proc"},
		tc{"under /sys", "/sys/kernel", "lies under /sys"},
		tc{"under /dev", "/dev/null", "lies under /dev: devices come only through CDI"},
		tc{"under /dev/shm", "/dev/shm", "lies under /dev"},
		tc{"under /boot", "/boot/vmlinuz", "lies under /boot"},
		tc{"symlink to /proc/self", symlink(t, "/proc/self", filepath.Join(links, "self")), "lies under /proc"},
		tc{"symlink to /dev/null", symlink(t, "/dev/null", filepath.Join(links, "null")), `resolves through a symlink to "/dev/null"`},
		tc{"missing path through symlink to /proc", filepath.Join(links, "to_proc", "no", "such"), `resolves through a symlink to "/proc/no/such"`},
		tc{"dangling symlink to /boot", symlink(t, "/boot/no-such-kernel", filepath.Join(links, "kernel")), `resolves through a symlink to "/boot/no-such-kernel"`},
		// Text.
		tc{"dotdot escape", "/srv/../etc", `path "/srv/../etc" contains '..'`},
		tc{"dotdot at end", "/home/alice/..", "contains '..'"},
		tc{"dotdot in tempdir", filepath.Join(links, "a") + "/../../../etc", "contains '..'"},
		tc{"relative", "etc", `path "etc" is not absolute`},
		tc{"dot relative", "./models", "is not absolute"},
		tc{"empty", "", "path is empty"},
		tc{"NUL", "/srv/a\x00b", "NUL"},
	)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CheckPath("sandbox.readonly_paths[0]", tt.path, "")
			if got != "" {
				t.Errorf("resolved %q with an error", got)
			}
			wantFieldError(t, err, "sandbox.readonly_paths[0]", tt.msg)
		})
	}
}

func TestCheckPathErrorText(t *testing.T) {
	_, err := CheckPath("sandbox.readonly_paths[0]", "/etc", "")
	want := `manifest: sandbox.readonly_paths[0]: "/etc" is forbidden (`
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %v, want it to start with %q", err, want)
	}
	link := symlink(t, "/etc", filepath.Join(t.TempDir(), "x"))
	_, err = CheckPath("module_path", link, "")
	want = `manifest: module_path: "` + link + `" resolves through a symlink to "/etc", which is forbidden (`
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Fatalf("error %v, want it to start with %q", err, want)
	}
}

func TestCheckPathAllowed(t *testing.T) {
	dir := realDir(t, t.TempDir())
	sub := mkdir(t, filepath.Join(dir, "custom_nodes", "x"))
	link := symlink(t, sub, filepath.Join(dir, "link"))
	rel := symlink(t, "custom_nodes/x", filepath.Join(dir, "rel"))
	tests := []struct{ in, want string }{
		{sub, sub},
		{sub + "/", sub},
		{dir + "//custom_nodes/./x", sub},
		{link, sub},
		{rel, sub},
		{"/usr/bin", realDir(t, "/usr/bin")},
	}
	for _, tt := range tests {
		got, err := CheckPath("f", tt.in, "")
		if err != nil || got != tt.want {
			t.Errorf("CheckPath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestCheckPathMissing(t *testing.T) {
	dir := realDir(t, t.TempDir())
	file := writeFile(t, filepath.Join(dir, "file"), 0o644)
	loop := symlink(t, "loop2", filepath.Join(dir, "loop1"))
	symlink(t, "loop1", filepath.Join(dir, "loop2"))
	tests := []struct{ name, path, msg string }{
		{"missing", filepath.Join(dir, "nope"), "does not exist"},
		{"missing parent", filepath.Join(dir, "a", "b", "c"), "does not exist"},
		{"under a file", filepath.Join(file, "x"), "does not exist"},
		{"dangling", symlink(t, filepath.Join(dir, "gone"), filepath.Join(dir, "dangling")), `does not exist (it resolves to "` + filepath.Join(dir, "gone") + `")`},
		{"dangling chain", symlink(t, "dangling/more", filepath.Join(dir, "chain")), `resolves to "` + filepath.Join(dir, "gone", "more") + `"`},
		{"loop", loop, "cannot resolve"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := CheckPath("f", tt.path, "")
			wantFieldError(t, err, "f", tt.msg)
		})
	}
}

func TestCheckPathBundleEscape(t *testing.T) {
	bundle := realDir(t, t.TempDir())
	outside := realDir(t, t.TempDir())
	inside := mkdir(t, filepath.Join(bundle, "rootfs", "opt", "ext"))
	escape := symlink(t, outside, filepath.Join(bundle, "rootfs", "out"))
	relEscape := symlink(t, "../../../..", filepath.Join(inside, "up"))
	stay := symlink(t, "opt/ext", filepath.Join(bundle, "rootfs", "stay"))
	bundleLink := symlink(t, bundle, filepath.Join(outside, "bundle-link"))

	tests := []struct {
		name, path, bundle, want, msg string
	}{
		{"symlink out of the bundle", escape, bundle, "", "escapes the bundle " + bundle + " through a symlink"},
		{"below a symlink out of the bundle", mkdir(t, filepath.Join(outside, "deeper")), bundle, outside + "/deeper", ""},
		{"path below escaping link", filepath.Join(escape, "deeper"), bundle, "", "escapes the bundle"},
		{"relative symlink out of the bundle", relEscape, bundle, "", "escapes the bundle"},
		{"symlink within the bundle", stay, bundle, inside, ""},
		{"plain path in the bundle", inside, bundle, inside, ""},
		{"bundle given through a symlink", filepath.Join(bundleLink, "rootfs", "out"), bundleLink, "", "escapes the bundle"},
		{"path through the bundle's real name", escape, bundleLink, "", "escapes the bundle"},
		{"outside path is not an escape", outside, bundle, outside, ""},
		{"no bundle, no escape check", escape, "", outside, ""},
		{"dotdot out of the bundle", filepath.Join(bundle, "rootfs") + "/../../x", bundle, "", "contains '..'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CheckPath("sandbox.writable_paths[0]", tt.path, tt.bundle)
			if tt.msg == "" {
				if err != nil || got != tt.want {
					t.Fatalf("got %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			wantFieldError(t, err, "sandbox.writable_paths[0]", tt.msg)
		})
	}
	if _, err := CheckPath("f", inside, filepath.Join(outside, "no-bundle")); err == nil || !strings.Contains(err.Error(), "no-bundle") {
		t.Errorf("missing bundle: error %v", err)
	}
}

// TestPolicy checks each rule alone with forbidden paths made in a temporary
// directory: the text check without the resolved check, ancestors below the
// root, trees, and hard links.
func TestPolicy(t *testing.T) {
	dir := realDir(t, t.TempDir())
	real := mkdir(t, filepath.Join(dir, "real"))
	fake := symlink(t, real, filepath.Join(dir, "fake"))
	deep := mkdir(t, filepath.Join(dir, "a", "b", "c"))
	tree := mkdir(t, filepath.Join(dir, "tree", "x"))
	secret := writeFile(t, filepath.Join(dir, "secret"), 0o600)
	hard := filepath.Join(dir, "hard")
	if err := os.Link(secret, hard); err != nil {
		t.Fatal(err)
	}
	pol := pathPolicy{
		forbidden: []string{fake, deep, secret},
		trees:     []string{filepath.Join(dir, "tree")},
	}
	tests := []struct{ name, path, msg string }{
		// fake itself resolves to real, which is allowed: only the text
		// check refuses it.
		{"text of a forbidden symlink", fake, `"` + fake + `" is forbidden (it is a protected system path)`},
		{"ancestor", filepath.Join(dir, "a"), "it contains " + deep},
		{"ancestor of ancestor", dir, "is forbidden (it contains"},
		{"symlink to ancestor", symlink(t, filepath.Join(dir, "a", "b"), filepath.Join(dir, "to-b")), "resolves through a symlink to \"" + filepath.Join(dir, "a", "b") + "\", which is forbidden (it contains " + deep},
		{"tree", tree, "lies under " + filepath.Join(dir, "tree") + ": nothing below it is ever bound"},
		{"hard link", hard, "it is " + secret + " under another name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := pol.check("f", tt.path, bundleRoot{})
			wantFieldError(t, err, "f", tt.msg)
		})
	}
	// The target of a forbidden symlink is the same directory: refused too.
	_, _, err := pol.check("f", real, bundleRoot{})
	wantFieldError(t, err, "f", "it is "+fake+" under another name")
	other := mkdir(t, filepath.Join(dir, "other"))
	if r, _, err := pol.check("f", other, bundleRoot{}); err != nil || r != other {
		t.Errorf("other: %q, %v", r, err)
	}
	if r, _, err := pol.check("f", filepath.Join(deep, "d"), bundleRoot{}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("below a forbidden path: %q, %v; want only 'does not exist'", r, err)
	}
}

// TestBindMountOfForbiddenPath needs root: it bind-mounts a forbidden
// directory elsewhere and checks that the inode comparison refuses it.
func TestBindMountOfForbiddenPath(t *testing.T) {
	dir := realDir(t, t.TempDir())
	target := mkdir(t, filepath.Join(dir, "alias"))
	if err := syscall.Mount("/etc", target, "", syscall.MS_BIND, ""); err != nil {
		t.Skipf("cannot bind-mount (not root?): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(target, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", target, err)
		}
	})
	_, err := CheckPath("f", target, "")
	wantFieldError(t, err, "f", "it is /etc under another name: a bind mount")
}

// manifestTree is a host tree for CheckPaths tests.
type manifestTree struct {
	dir, bundle, module, venv, python, data, models string
}

func newManifestTree(t *testing.T) manifestTree {
	t.Helper()
	dir := realDir(t, t.TempDir())
	tr := manifestTree{
		dir:    dir,
		bundle: mkdir(t, filepath.Join(dir, "bundle")),
		module: mkdir(t, filepath.Join(dir, "bundle", "rootfs", "ext")),
		venv:   mkdir(t, filepath.Join(dir, "venvs", "real-venv")),
		data:   mkdir(t, filepath.Join(dir, "data")),
		models: mkdir(t, filepath.Join(dir, "models")),
	}
	mkdir(t, filepath.Join(tr.venv, "bin"))
	interp := writeFile(t, filepath.Join(dir, "python3.12"), 0o755)
	tr.python = symlink(t, interp, filepath.Join(tr.venv, "bin", "python"))
	return tr
}

func TestCheckPaths(t *testing.T) {
	tr := newManifestTree(t)
	venvLink := symlink(t, tr.venv, filepath.Join(tr.dir, "venv"))
	modelsLink := symlink(t, tr.models, filepath.Join(tr.dir, "models-link"))
	m := &Manifest{
		Name:       "x",
		ModulePath: tr.module,
		Venv:       venvLink,
		Sandbox: Sandbox{
			WritablePaths: []string{tr.data + "/"},
			ReadonlyPaths: []string{modelsLink},
		},
	}
	m.ApplyDefaults()
	if m.Python != venvLink+"/bin/python" {
		t.Fatalf("default python %q", m.Python)
	}
	if err := CheckPaths(m, tr.bundle); err != nil {
		t.Fatal(err)
	}
	want := []struct{ field, got, want string }{
		{"module_path", m.ModulePath, tr.module},
		{"venv", m.Venv, tr.venv},
		// Directory resolved, base name kept (bin/python is a symlink).
		{"python", m.Python, filepath.Join(tr.venv, "bin", "python")},
		{"writable_paths[0]", m.Sandbox.WritablePaths[0], tr.data},
		{"readonly_paths[0]", m.Sandbox.ReadonlyPaths[0], tr.models},
	}
	for _, w := range want {
		if w.got != w.want {
			t.Errorf("%s = %q, want %q", w.field, w.got, w.want)
		}
	}
	// Checking again is a no-op.
	before := *m
	if err := CheckPaths(m, tr.bundle); err != nil || m.ModulePath != before.ModulePath || m.Python != before.Python {
		t.Fatalf("second check: %v, %+v", err, m)
	}
}

func TestCheckPathsErrors(t *testing.T) {
	tr := newManifestTree(t)
	plainFile := writeFile(t, filepath.Join(tr.dir, "plain"), 0o644)
	noExec := writeFile(t, filepath.Join(tr.dir, "noexec"), 0o644)
	outside := mkdir(t, filepath.Join(tr.dir, "outside"))
	escape := symlink(t, outside, filepath.Join(tr.bundle, "rootfs", "escape"))
	etcLink := symlink(t, "/etc", filepath.Join(tr.dir, "etc-link"))

	base := func() *Manifest {
		return &Manifest{Name: "x", ModulePath: tr.module, Python: tr.python}
	}
	tests := []struct {
		name       string
		edit       func(m *Manifest)
		field, msg string
	}{
		{"module_path forbidden", func(m *Manifest) { m.ModulePath = "/home" }, "module_path", `"/home" is forbidden`},
		{"module_path symlink to /etc", func(m *Manifest) { m.ModulePath = etcLink }, "module_path", `resolves through a symlink to "/etc"`},
		{"module_path missing", func(m *Manifest) { m.ModulePath = filepath.Join(tr.dir, "nope") }, "module_path", "does not exist"},
		{"module_path a file", func(m *Manifest) { m.ModulePath = plainFile }, "module_path", "is not a directory"},
		{"module_path empty", func(m *Manifest) { m.ModulePath = "" }, "module_path", "is required"},
		{"module_path escapes", func(m *Manifest) { m.ModulePath = escape }, "module_path", "escapes the bundle"},
		{"venv forbidden", func(m *Manifest) { m.Venv = "/var" }, "venv", "is forbidden"},
		{"venv a file", func(m *Manifest) { m.Venv = plainFile }, "venv", "is not a directory"},
		{"venv relative", func(m *Manifest) { m.Venv = "venv" }, "venv", "not absolute"},
		{"python missing", func(m *Manifest) { m.Python = filepath.Join(tr.dir, "nope", "python") }, "python", "does not exist"},
		{"python a directory", func(m *Manifest) { m.Python = tr.dir }, "python", "is a directory"},
		{"python not executable", func(m *Manifest) { m.Python = noExec }, "python", "is not executable"},
		{"python under /proc", func(m *Manifest) { m.Python = "/proc/self/exe" }, "python", "lies under /proc"},
		{"python default from venv", func(m *Manifest) { m.Python = ""; m.Venv = tr.dir }, "python", "bin/python\" does not exist"},
		{"writable forbidden", func(m *Manifest) { m.Sandbox.WritablePaths = []string{tr.data, "/run"} }, "sandbox.writable_paths[1]", `"/run" is forbidden`},
		{"writable symlink to /etc", func(m *Manifest) { m.Sandbox.WritablePaths = []string{etcLink} }, "sandbox.writable_paths[0]", "resolves through a symlink"},
		{"writable missing", func(m *Manifest) { m.Sandbox.WritablePaths = []string{filepath.Join(tr.dir, "nope")} }, "sandbox.writable_paths[0]", "does not exist"},
		{"writable escapes", func(m *Manifest) { m.Sandbox.WritablePaths = []string{escape} }, "sandbox.writable_paths[0]", "escapes the bundle"},
		{"readonly ancestor", func(m *Manifest) { m.Sandbox.ReadonlyPaths = []string{"/"} }, "sandbox.readonly_paths[0]", `"/" is forbidden`},
		{"readonly dotdot", func(m *Manifest) { m.Sandbox.ReadonlyPaths = []string{tr.data + "/../../etc"} }, "sandbox.readonly_paths[0]", "contains '..'"},
		{"readonly under /sys", func(m *Manifest) { m.Sandbox.ReadonlyPaths = []string{"/sys/fs/cgroup"} }, "sandbox.readonly_paths[0]", "lies under /sys"},
		{"listed twice", func(m *Manifest) {
			m.Sandbox.WritablePaths = []string{tr.data}
			m.Sandbox.ReadonlyPaths = []string{tr.models, tr.data + "/."}
		}, "sandbox.readonly_paths[1]", "is also listed as sandbox.writable_paths[0]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := base()
			tt.edit(m)
			before := *m
			err := CheckPaths(m, tr.bundle)
			wantFieldError(t, err, tt.field, tt.msg)
			if m.ModulePath != before.ModulePath || m.Python != before.Python || m.Venv != before.Venv {
				t.Errorf("manifest changed by a failed check: %+v", m)
			}
		})
	}
}

// TestCheckPythonPrefix checks that the interpreter's installation prefix,
// which the builder binds read-only, is checked too.
func TestCheckPythonPrefix(t *testing.T) {
	dir := realDir(t, t.TempDir())
	prefix := mkdir(t, filepath.Join(dir, "prefix"))
	mkdir(t, filepath.Join(prefix, "bin"))
	python := writeFile(t, filepath.Join(prefix, "bin", "python3"), 0o755)
	module := mkdir(t, filepath.Join(dir, "module"))
	pol := pathPolicy{forbidden: []string{prefix}}
	m := &Manifest{Name: "x", ModulePath: module, Python: python}
	err := pol.checkManifest(m, "")
	wantFieldError(t, err, "python", "installation prefix of \""+python+"\", which would be bound read-only")

	// The same interpreter reached through a symlinked directory: the
	// directory is resolved before the prefix is taken.
	link := symlink(t, filepath.Join(prefix, "bin"), filepath.Join(dir, "bin-link"))
	m = &Manifest{Name: "x", ModulePath: module, Python: filepath.Join(link, "python3")}
	if err := pol.checkManifest(m, ""); err == nil || !strings.Contains(err.Error(), "installation prefix") {
		t.Fatalf("error %v", err)
	}
	// Without the policy it passes, and python's directory is resolved.
	if err := CheckPaths(m, ""); err != nil || m.Python != python {
		t.Fatalf("got %q, %v; want %q", m.Python, err, python)
	}
}

func TestCheckPathTightenedPolicy(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, tt := range []struct{ path, want string }{
		{"/etc/ssl", "/etc"},
		{"/etc/shadow", "/etc"},
		{"/run/containerd", "/run"},
		{"/tmp", "protected"},
		{sock, "socket"},
		{"/dev/null", "/dev"},
	} {
		_, err := CheckPath("sandbox.readonly_paths[0]", tt.path, "")
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CheckPath(%q) = %v, want an error mentioning %q", tt.path, err, tt.want)
		}
	}
}

func TestCheckPathsWritableSystemTree(t *testing.T) {
	m := &Manifest{Name: "x", ModulePath: t.TempDir(), Sandbox: Sandbox{WritablePaths: []string{"/usr/share"}}}
	m.ApplyDefaults()
	err := CheckPaths(m, "")
	if err == nil || !strings.Contains(err.Error(), "sandbox.writable_paths[0]") || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("CheckPaths = %v, want writable /usr/share refused", err)
	}
}
