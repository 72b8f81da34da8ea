package test

// The static binary (`make static`) where no libc exists: a busybox-static
// root holding only busybox and pyisolate, entered with a private mount
// namespace and pivot_root (not chroot, under which the kernel refuses user
// namespaces), in which pyisolate detects the host and runs an extension.
// Names start with static so that they do not collide with the other files
// of package test.

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	staticOnce sync.Once
	staticBin  string // the static binary; "" with staticSkip or staticErr
	staticSkip string // why the static binary cannot be built here
	staticErr  error  // the build failed
)

// staticBinary builds the static pyisolate with `make static` into a
// temporary directory, once per test process, so that the test checks what
// the Makefile builds. It skips (with the reason) when not root, when make
// is missing or when libseccomp.a is missing (libseccomp-dev).
func staticBinary(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipped: the static binary test needs root (mount namespaces, pivot_root, containers)")
	}
	staticOnce.Do(func() { staticBin, staticSkip, staticErr = staticBuild() })
	if staticSkip != "" {
		t.Skip("skipped: " + staticSkip)
	}
	if staticErr != nil {
		t.Fatalf("make static: %v", staticErr)
	}
	return staticBin
}

func staticBuild() (bin, skip string, err error) {
	if _, err := exec.LookPath("make"); err != nil {
		return "", "make is not installed (scripts/install-deps.sh installs it)", nil
	}
	cc, err := exec.Command("go", "env", "CC").Output()
	if err != nil {
		return "", "", fmt.Errorf("go env CC: %w", err)
	}
	lib, err := exec.Command(strings.TrimSpace(string(cc)), "-print-file-name=libseccomp.a").Output()
	if p := strings.TrimSpace(string(lib)); err != nil || !filepath.IsAbs(p) {
		return "", "libseccomp.a not found: install libseccomp-dev (scripts/install-deps.sh does)", nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", "", err
	}
	repo := filepath.Dir(wd) // tests run in test/
	// One directory per test process; those of dead processes are removed.
	old, _ := filepath.Glob(filepath.Join(os.TempDir(), "pyisolate-static.*"))
	for _, d := range old {
		if _, err := os.Stat("/proc/" + strings.TrimPrefix(filepath.Ext(d), ".")); err != nil {
			os.RemoveAll(d)
		}
	}
	dir := filepath.Join(os.TempDir(), fmt.Sprintf("pyisolate-static.%d", os.Getpid()))
	cmd := exec.Command("make", "-C", repo, "--no-print-directory", "static", "STATIC_BIN="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("%v\n%s", err, out)
	}
	return filepath.Join(dir, "pyisolate"), "", nil
}

// staticELF returns nil when the ELF file at path is static: no program
// interpreter (PT_INTERP) and no shared library it needs (DT_NEEDED).
func staticELF(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s has a program interpreter (it is dynamically linked)", path)
		}
	}
	libs, err := f.ImportedLibraries()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if len(libs) > 0 {
		return fmt.Errorf("%s needs shared libraries %q", path, libs)
	}
	return nil
}

// staticApplets are the busybox commands the root offers.
var staticApplets = []string{"sh", "cat", "grep", "ls", "true", "echo", "id", "touch", "kill", "sleep", "test"}

// staticRoot makes a root filesystem that holds no libc: /bin/busybox
// (static) and its applets, /usr/bin with one applet (so that /usr exists for
// the manifest's interpreter prefix, but /usr/lib does not), /pyisolate, an
// extension module at /ext/mod, a manifest bundle at /bundle whose process is
// a shell script, and empty mount points. It returns the root.
func staticRoot(t *testing.T, pyisolate string) string {
	t.Helper()
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		t.Skip("skipped: busybox is not installed (busybox-static; scripts/install-deps.sh installs it)")
	}
	if err := staticELF(busybox); err != nil {
		t.Skipf("skipped: busybox is not static (install busybox-static): %v", err)
	}
	root, err := os.MkdirTemp("", "pyisolate-static-root-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Chmod(root, 0o755))
	for _, d := range []string{"bin", "usr/bin", "proc", "sys", "dev", "run", "tmp", "oldroot", "ext/mod", "bundle"} {
		must(os.MkdirAll(filepath.Join(root, d), 0o755))
	}
	must(secCopyFile(busybox, filepath.Join(root, "bin/busybox"), 0o755))
	for _, a := range staticApplets {
		must(os.Symlink("busybox", filepath.Join(root, "bin", a)))
	}
	must(os.Symlink("../../bin/busybox", filepath.Join(root, "usr/bin/sh")))
	must(secCopyFile(pyisolate, filepath.Join(root, "pyisolate"), 0o755))
	must(os.WriteFile(filepath.Join(root, "ext/mod/__init__.py"), nil, 0o644))
	writeManifest(t, filepath.Join(root, "bundle"), map[string]any{
		"name":        "static-ext",
		"module_path": "/ext/mod",
		"python":      "/usr/bin/sh",
		"command":     []string{"/bin/sh", "-c", "echo extension ran"},
	})
	// Nothing in the tree is a shared library or needs one.
	must(filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		name := d.Name()
		if strings.Contains(name, ".so") || strings.HasPrefix(name, "ld-") || strings.HasPrefix(name, "libc") {
			return fmt.Errorf("%s looks like a shared library", p)
		}
		if f, err := elf.Open(p); err == nil {
			f.Close()
			return staticELF(p)
		}
		return nil
	}))
	return root
}

// staticEnterScript enters root ($1) from a fresh mount namespace: kernel
// filesystems and tmpfs /run and /tmp mounted beneath it, pivot_root into it,
// the old root detached, then argv ($2...) runs with nothing of the host's
// filesystem reachable. pivot_root rather than chroot: the kernel refuses
// user namespaces to a chrooted process.
const staticEnterScript = `set -e
R=$1; shift
mount --bind "$R" "$R"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
cd "$R"
pivot_root . oldroot
exec /bin/busybox chroot . /bin/sh -c 'umount -l /oldroot && exec "$@"' sh "$@"`

// staticEnter runs argv inside root (see staticEnterScript).
func staticEnter(t *testing.T, root string, timeout time.Duration, argv ...string) secRunResult {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("skipped: unshare(1) is not installed (util-linux)")
	}
	args := append([]string{"unshare", "--mount", "--propagation", "private", "sh", "-c", staticEnterScript, "sh", root}, argv...)
	return secExec(timeout, nil, nil, args...)
}

// TestStaticBinary: `make static` builds a pyisolate that needs no shared
// library (ldd: "not a dynamic executable"); in a root where no libc exists
// (no /lib, /lib64, /usr/lib; only static busybox) it starts, detects the
// host with seccomp built in, and runs an extension in a real sandbox (all
// capabilities dropped, seccomp filter, no_new_privs, its own PID namespace,
// a read-only root) whose exit status, or signal, becomes run's.
func TestStaticBinary(t *testing.T) {
	bin := staticBinary(t)
	if err := staticELF(bin); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(bin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("static binary: %s, %.1f MiB", bin, float64(fi.Size())/(1<<20))
	if ldd, err := exec.LookPath("ldd"); err == nil {
		out, _ := exec.Command(ldd, bin).CombinedOutput()
		if !strings.Contains(string(out), "not a dynamic executable") {
			t.Errorf("ldd %s: %s", bin, out)
		}
	}
	root := staticRoot(t, bin)

	t.Run("no libc in the root", func(t *testing.T) {
		r := staticEnter(t, root, time.Minute, "/bin/sh", "-c",
			`for p in /lib /lib64 /lib32 /usr/lib /usr/lib64 /usr/local /etc/ld.so.cache; do if test -e $p; then echo "present: $p"; fi; done; echo checked`)
		if r.code != 0 || strings.TrimSpace(string(r.stdout)) != "checked" {
			t.Fatalf("entering the root: %s", r)
		}
	})

	t.Run("detect", func(t *testing.T) {
		r := staticEnter(t, root, time.Minute, "/pyisolate", "detect", "--json")
		if r.code != 0 {
			t.Fatalf("detect: %s", r)
		}
		var p struct {
			Restriction    string `json:"restriction"`
			SeccompBuiltIn bool   `json:"seccomp_built_in"`
			Seccomp        bool   `json:"seccomp"`
		}
		if err := json.Unmarshal(r.stdout, &p); err != nil {
			t.Fatalf("detect --json: %v\n%s", err, r)
		}
		if !p.SeccompBuiltIn || !p.Seccomp {
			t.Errorf("seccomp built in %v, kernel %v; want both (libseccomp linked statically)", p.SeccompBuiltIn, p.Seccomp)
		}
		if p.Restriction == "" || p.Restriction == "no-caps" || p.Restriction == "unsupported" {
			t.Errorf("restriction model %q inside the root", p.Restriction)
		}
	})

	// The sandbox as the extension sees it, then its exit.
	const report = `grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; echo "pid $$"; ` +
		`if touch /x 2>/dev/null; then echo "root writable"; else echo "root read-only"; fi; `
	for _, tc := range []struct {
		name string
		exit string // the script's last command
		code int
	}{
		{"exit 0", "exit 0", 0},
		{"exit 7", "exit 7", 7},
		// The extension's init is PID 1 of its namespace, which a signal
		// from inside cannot kill: a child dies of SIGKILL and the shell
		// exits with its status.
		{"child killed", "sh -c 'kill -KILL $$'; exit $?", 137},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := secID("static")
			r := staticEnter(t, root, 2*time.Minute, "/pyisolate", "run", "--root", "/run/pyisolate-test", "--id", id,
				"/bundle", "--", "/bin/sh", "-c", report+tc.exit)
			if r.code != tc.code {
				t.Fatalf("run exited %d, want %d: %s", r.code, tc.code, r)
			}
			for _, want := range []string{"CapEff:\t0000000000000000\n", "NoNewPrivs:\t1\n", "Seccomp:\t2\n", "pid 1\n", "root read-only\n"} {
				if !strings.Contains(string(r.stdout), want) {
					t.Errorf("the extension's report lacks %q: %s", want, r)
				}
			}
		})
	}
}
