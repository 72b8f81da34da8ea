package test

// E2e tests of the bwrap face (issue 21): the binary started as bwrap, run
// by a pyisolate-like host (testdata/bwrapface/host.py, Debian's python3)
// with the argument lists pyisolate 0.10.x builds, as root and as uid 65534
// (rootless), and compared with the real bwrap where the behaviour must
// match (unknown options, exit statuses, death by signal, the probes).
// Names start with bw so that they do not collide with the other files of
// package test.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// bwFixture is one host's world: a directory first on PATH holding the
// bwrap link, the extension's module and venv, a writable directory, the
// fake pyisolate package the child runs, and the user the host runs as.
type bwFixture struct {
	tools                                  *secTools
	base, shimDir, module, venv, work, pkg string
	host                                   string // host.py
	cred                                   *syscall.Credential
	uid                                    int
	env                                    []string // the host's environment
	root                                   string   // the face's state root
	madeRunUser                            string   // /run/user/<uid> made by the test
}

// bwSetup builds the tools and a fixture for uid (0 or 65534).
func bwSetup(t *testing.T, uid int) *bwFixture {
	t.Helper()
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("skipped: /usr/bin/python3 (Debian's) is not installed")
	}
	base, err := os.MkdirTemp("", "pyisolate-bwface-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	fx := &bwFixture{tools: tools, base: base, uid: uid,
		shimDir: filepath.Join(base, "shim"), module: filepath.Join(base, "custom_nodes", "bwface_ext"),
		venv: filepath.Join(base, "venvs", "bwface_ext"), work: filepath.Join(base, "work"),
		pkg: filepath.Join(base, "pkgroot"), host: filepath.Join(base, "host.py")}
	t.Cleanup(func() {
		secUnmountUnder(base)
		os.RemoveAll(base)
		if fx.madeRunUser != "" {
			os.RemoveAll(fx.madeRunUser)
		}
	})
	for _, d := range []string{fx.shimDir, fx.module, filepath.Join(fx.venv, "bin"), fx.work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(fx.work, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(fx.module, 0o777); err != nil { // only the read-only bind may stop a write
		t.Fatal(err)
	}
	if err := os.Symlink("/usr/bin/python3", filepath.Join(fx.venv, "bin", "python")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fx.venv, "pyvenv.cfg"), []byte("home = /usr/bin\ninclude-system-site-packages = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fx.module, "__init__.py"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-r", filepath.Join(tools.repo, "test/testdata/bwrapface/pkgroot"), fx.pkg).CombinedOutput(); err != nil {
		t.Fatalf("copy pkgroot: %v %s", err, out)
	}
	if out, err := exec.Command("cp", filepath.Join(tools.repo, "test/testdata/bwrapface/host.py"), fx.host).CombinedOutput(); err != nil {
		t.Fatalf("copy host.py: %v %s", err, out)
	}
	exec.Command("chmod", "-R", "a+rX", fx.pkg, fx.host).Run()
	// What `pyisolate install --bwrap-shim DIR` makes (tested with the CLI
	// in TestBwrapFaceInstall).
	if err := os.Symlink(tools.pyisolate, filepath.Join(fx.shimDir, "bwrap")); err != nil {
		t.Fatal(err)
	}
	path := fx.shimDir + ":/usr/local/bin:/usr/bin:/bin" // the real bwrap is on PATH too, after the face
	fx.env = []string{"PATH=" + path, "LANG=C.UTF-8", "BWFACE_MARKER=from-host"}
	if uid == 0 {
		fx.root = filepath.Join(base, "state")
		fx.env = append(fx.env, "HOME=/root", "PYISOLATE_ROOT="+fx.root)
	} else {
		fx.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}
		xdg := filepath.Join(base, "xdg")
		if err := os.Mkdir(xdg, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(xdg, uid, uid); err != nil {
			t.Fatal(err)
		}
		fx.root = filepath.Join(xdg, "pyisolate")
		fx.env = append(fx.env, "HOME=/nonexistent", "XDG_RUNTIME_DIR="+xdg)
	}
	// pyisolate's socket directory: /run/user/<uid>/pyisolate.
	runUser := fmt.Sprintf("/run/user/%d", uid)
	if _, err := os.Stat(runUser); os.IsNotExist(err) {
		if err := os.MkdirAll(runUser, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(runUser, uid, uid); err != nil {
			t.Fatal(err)
		}
		fx.madeRunUser = runUser
	}
	return fx
}

// bwHostResult is what host.py prints.
type bwHostResult struct {
	Detect struct {
		Available bool   `json:"available"`
		Model     string `json:"model"`
		Bwrap     string `json:"bwrap"`
		Error     string `json:"error"`
	} `json:"detect"`
	Argv  []string `json:"argv"`
	Child struct {
		Status        map[string]string `json:"status"`
		UID           int               `json:"uid"`
		SessionLeader bool              `json:"session_leader"`
		EnvChild      *string           `json:"env_child"`
		EnvMarker     *string           `json:"env_marker"`
		WriteTmp      string            `json:"write_tmp"`
		WriteUsr      string            `json:"write_usr"`
		WriteModule   string            `json:"write_module"`
		WriteWritable []string          `json:"write_writable"`
		EtcShadow     bool              `json:"etc_shadow"`
		Sys           bool              `json:"sys"`
		WriteSys      string            `json:"write_sys"`
		Shm           string            `json:"shm"`
		HostTCP       string            `json:"host_tcp"`
		TTY           string            `json:"tty"`
	} `json:"child"`
	Reply  map[string]string `json:"reply"`
	Exit   int               `json:"exit"`
	Error  string            `json:"error"`
	Stderr string            `json:"stderr"`
}

// runHost runs host.py with cfg (the module, venv and package are added).
func (fx *bwFixture) runHost(t *testing.T, cfg map[string]any) bwHostResult {
	t.Helper()
	cfg["module"], cfg["venv"], cfg["pkgroot"] = fx.module, fx.venv, fx.pkg
	cfg["python"] = filepath.Join(fx.venv, "bin", "python")
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(fx.base, fmt.Sprintf("cfg-%d.json", time.Now().UnixNano()))
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	argv := append([]string{"/usr/bin/env", "-i"}, fx.env...)
	argv = append(argv, "/usr/bin/python3", fx.host, cfgPath)
	res := secExec(3*time.Minute, fx.cred, nil, argv...)
	if res.code != 0 {
		t.Fatalf("host.py: exit %d (%v)\nstdout:\n%s\nstderr:\n%s", res.code, res.err, res.stdout, res.stderr)
	}
	var out bwHostResult
	if err := json.Unmarshal(res.stdout, &out); err != nil {
		t.Fatalf("host.py output: %v\n%s\nstderr:\n%s", err, res.stdout, res.stderr)
	}
	return out
}

// checkNoLeaks fails t when the face left state, mounts or cgroups.
func (fx *bwFixture) checkNoLeaks(t *testing.T) {
	t.Helper()
	for _, l := range secLeaks(fx.root, fx.base, "bwrap-") {
		t.Errorf("leak: %s", l)
	}
}

// TestBwrapFacePyisolate runs the argument lists pyisolate builds through
// the face, as root and rootless: host-coupled and sealed, with and without
// network and GPU options. The child connects back over its socket, and
// what it reports of its sandbox shows the requested mounts, the
// namespaces, and the hardening bwrap does not give.
func TestBwrapFacePyisolate(t *testing.T) {
	for _, uid := range []int{65534, 0} {
		t.Run(fmt.Sprintf("uid%d", uid), func(t *testing.T) {
			fx := bwSetup(t, uid)
			for _, tc := range []struct {
				name             string
				sealed, net, gpu bool
				exitCode         int
			}{
				{name: "host-coupled"},
				{name: "host-coupled network gpu", net: true, gpu: true, exitCode: 7},
				{name: "sealed", sealed: true},
				{name: "sealed network", sealed: true, net: true},
			} {
				t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
					cfg := map[string]any{"sealed": tc.sealed, "network": tc.net, "gpu": tc.gpu,
						"exit_code": tc.exitCode, "writable_paths": []string{fx.work},
						"sealed_host_ro_paths": []string{fx.pkg}}
					if tc.sealed {
						cfg["env"] = map[string]string{"PYTHONDONTWRITEBYTECODE": "1"}
					}
					out := fx.runHost(t, cfg)
					if out.Error != "" {
						t.Fatalf("host: %s\nargv: %q\nface stderr:\n%s", out.Error, out.Argv, out.Stderr)
					}
					if !out.Detect.Available || out.Detect.Model != "none" || out.Detect.Bwrap != filepath.Join(fx.shimDir, "bwrap") {
						t.Errorf("detection: %+v, want the face, available, model none", out.Detect)
					}
					c := out.Child
					checks := []struct {
						what      string
						got, want any
					}{
						{"exit status", out.Exit, tc.exitCode},
						{"reply", out.Reply["op"], "pong"},
						{"CapEff", c.Status["CapEff"], "0000000000000000"},
						{"CapBnd", c.Status["CapBnd"], "0000000000000000"},
						{"NoNewPrivs", c.Status["NoNewPrivs"], "1"},
						{"Seccomp", c.Status["Seccomp"], "2"},
						{"session leader (--new-session)", c.SessionLeader, true},
						{"/dev/tty", c.TTY, "ENXIO"},
						{"PYISOLATE_CHILD", deref(c.EnvChild), "1"},
						{"host's environment inherited", c.EnvMarker != nil, !tc.sealed},
						{"write /tmp", c.WriteTmp, "ok"},
						{"write /usr", c.WriteUsr, "EROFS"},
						{"write module", c.WriteModule, "EROFS"},
						{"write writable path", strings.Join(c.WriteWritable, ","), "ok"},
						{"/etc/shadow visible", c.EtcShadow, false},
						{"/sys present", c.Sys, tc.gpu},
						{"host tcp reachable", c.HostTCP == "connected", tc.net},
					}
					if tc.gpu {
						checks = append(checks, struct {
							what      string
							got, want any
						}{"write /sys", c.WriteSys, "EROFS"})
					}
					if tc.sealed {
						checks = append(checks, struct {
							what      string
							got, want any
						}{"host /dev/shm (not bound when sealed)", c.Shm, "ENOENT"})
					} else {
						checks = append(checks, struct {
							what      string
							got, want any
						}{"host /dev/shm", c.Shm, "from-host"})
					}
					for _, ch := range checks {
						if fmt.Sprint(ch.got) != fmt.Sprint(ch.want) {
							t.Errorf("%s: got %v, want %v", ch.what, ch.got, ch.want)
						}
					}
					if t.Failed() {
						t.Logf("argv: %q\nchild: %+v\nface stderr:\n%s", out.Argv, c, out.Stderr)
					}
				})
			}
			fx.checkNoLeaks(t)
		})
	}
}

func deref(s *string) string {
	if s == nil {
		return "<unset>"
	}
	return *s
}

// bwExec runs a bwrap command line (argv[0] is the program) as the fixture's
// user with its environment.
func (fx *bwFixture) bwExec(argv ...string) secRunResult {
	full := append(append([]string{"/usr/bin/env", "-i"}, fx.env...), argv...)
	return secExec(time.Minute, fx.cred, nil, full...)
}

// bwProbeBinds are the binds of pyisolate's probes.
var bwProbeBinds = []string{"--ro-bind", "/usr", "/usr", "--ro-bind", "/bin", "/bin",
	"--ro-bind", "/lib", "/lib", "--ro-bind", "/lib64", "/lib64"}

// TestBwrapFaceCompat compares the face with the real bwrap, rootless (as
// pyisolate runs bwrap) and as root: pyisolate's two probes succeed with
// nothing on stdout; unknown options and a missing command fail with exit
// 1 and one line in bwrap's words; the command's exit status and death by
// signal come back as bwrap reports them.
func TestBwrapFaceCompat(t *testing.T) {
	realBwrap, ok := secLookPath("bwrap")
	if !ok {
		t.Skip("skipped: the real bwrap is not installed (Debian package bubblewrap): nothing to compare with")
	}
	for _, uid := range []int{65534, 0} {
		t.Run(fmt.Sprintf("uid%d", uid), func(t *testing.T) {
			fx := bwSetup(t, uid)
			face := filepath.Join(fx.shimDir, "bwrap")
			if uid == 0 {
				// Root's bwrap keeps every capability: compare nothing but
				// what the face must match anyway.
				realBwrap = ""
			}
			probe := append(append([]string{"--unshare-user-try", "--dev", "/dev", "--proc", "/proc"}, bwProbeBinds...), "/usr/bin/true")
			degraded := append(append([]string{"--dev", "/dev", "--proc", "/proc"}, bwProbeBinds...), "/usr/bin/true")
			base := append(append([]string{"--unshare-user", "--unshare-pid", "--new-session", "--die-with-parent",
				"--dev", "/dev", "--proc", "/proc"}, bwProbeBinds...), "--unshare-net")
			for _, tc := range []struct {
				name       string
				args       []string
				code       int
				stderrHas  string // one line, holding this
				noStdout   bool
				sameAsReal bool
			}{
				{name: "probe", args: probe, code: 0, noStdout: true, sameAsReal: true},
				{name: "degraded probe", args: degraded, code: 0, noStdout: true, sameAsReal: true},
				{name: "unknown option", args: append([]string{"--unshare-foo"}, probe...), code: 1, stderrHas: "bwrap: Unknown option --unshare-foo", sameAsReal: true},
				{name: "option pyisolate does not use", args: append([]string{"--cap-add", "ALL"}, probe...), code: 1, stderrHas: "bwrap: Unknown option --cap-add"},
				{name: "single dash", args: []string{"-x", "/usr/bin/true"}, code: 1, stderrHas: "bwrap: Unknown option -x", sameAsReal: true},
				{name: "missing argument", args: []string{"--ro-bind", "/usr"}, code: 1, stderrHas: "bwrap: --ro-bind takes two arguments", sameAsReal: true},
				{name: "missing source", args: append(append([]string{}, base...), "--ro-bind", "/nonexistent-bwface", "/x", "/usr/bin/true"), code: 1, stderrHas: "Can't find source path /nonexistent-bwface", sameAsReal: true},
				{name: "exit status", args: append(append([]string{}, base...), "/bin/sh", "-c", "exit 7"), code: 7, sameAsReal: true},
				{name: "stdout passed through", args: append(append([]string{}, base...), "--", "/bin/echo", "hello"), code: 0, sameAsReal: true},
				{name: "read-write bind of /etc refused", args: append(append([]string{}, base...), "--bind", "/etc", "/etc", "/usr/bin/true"), code: 1, stderrHas: "--bind /etc /etc"},
				{name: "bind of / refused", args: append(append([]string{}, base...), "--ro-bind", "/", "/host", "/usr/bin/true"), code: 1, stderrHas: "--ro-bind / /host"},
			} {
				t.Run(strings.ReplaceAll(tc.name, " ", "_"), func(t *testing.T) {
					got := fx.bwExec(append([]string{face}, tc.args...)...)
					if got.code != tc.code {
						t.Fatalf("face: exit %d, want %d; stderr:\n%s", got.code, tc.code, got.stderr)
					}
					if tc.noStdout && len(got.stdout) > 0 {
						t.Errorf("face printed on stdout: %q", got.stdout)
					}
					if tc.stderrHas != "" {
						lines := strings.Split(strings.TrimRight(string(got.stderr), "\n"), "\n")
						if len(lines) != 1 || !strings.Contains(lines[0], tc.stderrHas) {
							t.Errorf("face stderr %q, want one line holding %q", got.stderr, tc.stderrHas)
						}
					}
					if !tc.sameAsReal || realBwrap == "" {
						return
					}
					want := fx.bwExec(append([]string{realBwrap}, tc.args...)...)
					if want.code != got.code || string(want.stdout) != string(got.stdout) {
						t.Errorf("face: exit %d stdout %q; real bwrap: exit %d stdout %q", got.code, got.stdout, want.code, want.stdout)
					}
					if tc.stderrHas != "" && !strings.Contains(string(want.stderr), tc.stderrHas) {
						t.Errorf("real bwrap says %q, not %q: the face's words are not bwrap's", want.stderr, tc.stderrHas)
					}
				})
			}
			fx.checkNoLeaks(t)
		})
	}
}

// TestBwrapFaceSignals: the extension dies with its caller, and the caller
// sees what bwrap's caller sees: SIGTERM to bwrap ends it by that signal and
// the command at once (--die-with-parent); SIGKILL of the command from the
// host gives exit status 137; the face killed with SIGKILL takes the
// command with it, and the next start reclaims what it left. Checked
// against the real bwrap, rootless.
func TestBwrapFaceSignals(t *testing.T) {
	fx := bwSetup(t, 65534)
	face := filepath.Join(fx.shimDir, "bwrap")
	realBwrap, haveReal := secLookPath("bwrap")
	start := func(t *testing.T, bin, marker string) (*exec.Cmd, *bufio.Reader) {
		t.Helper()
		args := append(append([]string{"--unshare-user", "--unshare-pid", "--new-session", "--die-with-parent",
			"--dev", "/dev", "--proc", "/proc"}, bwProbeBinds...),
			"--unshare-net", "/bin/sh", "-c", "echo ready; sleep 300; : "+marker)
		c := exec.Command(bin, args...)
		c.Env = fx.env
		c.SysProcAttr = &syscall.SysProcAttr{Credential: fx.cred, Setpgid: true}
		out, err := c.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			_ = c.Wait()
			bwKillMarked(marker)
		})
		r := bufio.NewReader(out)
		line := make(chan string, 1)
		go func() { l, _ := r.ReadString('\n'); line <- l }()
		select {
		case l := <-line:
			if strings.TrimSpace(l) != "ready" {
				t.Fatalf("%s: first line %q", bin, l)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not start", bin)
		}
		return c, r
	}
	type outcome struct {
		signaled bool
		sig      syscall.Signal
		code     int
		gone     bool // the command died too
	}
	wait := func(t *testing.T, c *exec.Cmd, r *bufio.Reader, marker string) outcome {
		t.Helper()
		done := make(chan error, 1)
		go func() { _, _ = io.Copy(io.Discard, r); done <- c.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatalf("not ended in 30 s")
		}
		ws := c.ProcessState.Sys().(syscall.WaitStatus)
		o := outcome{signaled: ws.Signaled(), code: ws.ExitStatus()}
		if ws.Signaled() {
			o.sig = ws.Signal()
		}
		o.gone = bwWaitGone(marker, 5*time.Second)
		return o
	}
	scenarios := []struct {
		name string
		act  func(t *testing.T, c *exec.Cmd, marker string)
		want outcome
	}{
		{"SIGTERM to bwrap", func(t *testing.T, c *exec.Cmd, marker string) {
			_ = c.Process.Signal(syscall.SIGTERM)
		}, outcome{signaled: true, sig: syscall.SIGTERM, code: -1, gone: true}},
		{"SIGKILL of the command", func(t *testing.T, c *exec.Cmd, marker string) {
			pids := bwMarked(marker)
			if len(pids) == 0 {
				t.Fatal("the command's process is not found")
			}
			for _, p := range pids {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
		}, outcome{code: 137, gone: true}},
	}
	for _, sc := range scenarios {
		t.Run(strings.ReplaceAll(sc.name, " ", "_"), func(t *testing.T) {
			marker := fmt.Sprintf("bwface-sig-%d-%d", os.Getpid(), time.Now().UnixNano())
			c, r := start(t, face, marker)
			sc.act(t, c, marker)
			got := wait(t, c, r, marker)
			if got != sc.want {
				t.Errorf("face: %+v, want %+v", got, sc.want)
			}
			if haveReal {
				marker += "-real"
				c, r := start(t, realBwrap, marker)
				sc.act(t, c, marker)
				if real := wait(t, c, r, marker); real != got {
					t.Errorf("face %+v, real bwrap %+v", got, real)
				}
			}
		})
	}
	t.Run("SIGKILL_of_bwrap", func(t *testing.T) {
		marker := fmt.Sprintf("bwface-kill-%d-%d", os.Getpid(), time.Now().UnixNano())
		c, r := start(t, face, marker)
		_ = c.Process.Signal(syscall.SIGKILL)
		got := wait(t, c, r, marker)
		if !got.gone {
			t.Errorf("the command outlived the face killed with SIGKILL")
		}
		// The next start reclaims the orphan's state.
		if res := fx.bwExec(append(append([]string{face, "--dev", "/dev", "--proc", "/proc"}, bwProbeBinds...), "/usr/bin/true")...); res.code != 0 {
			t.Fatalf("next start: exit %d: %s", res.code, res.stderr)
		}
	})
	fx.checkNoLeaks(t)
}

// bwMarked returns the pids whose command line holds marker.
func bwMarked(marker string) []int {
	var pids []int
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		cl, err := os.ReadFile(filepath.Join(p, "cmdline"))
		if err != nil || !strings.Contains(string(cl), marker) {
			continue
		}
		// Only the command itself, not a bwrap or face holding it in its
		// arguments.
		if strings.HasPrefix(string(cl), "/bin/sh") {
			if pid, err := strconv.Atoi(filepath.Base(p)); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// bwWaitGone waits until no process holds marker; false after timeout.
func bwWaitGone(marker string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if len(bwMarked(marker)) == 0 {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// bwKillMarked kills what is left of a test's command.
func bwKillMarked(marker string) {
	for _, p := range bwMarked(marker) {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
}

// TestBwrapFaceInstall: `pyisolate install --bwrap-shim DIR` makes the link
// that selects the face and prints the PATH line; with DIR first on PATH,
// `bwrap` is the face even though the real bwrap is on PATH too (the face
// never runs it); uninstall removes the link.
func TestBwrapFaceInstall(t *testing.T) {
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	dir := filepath.Join(t.TempDir(), "bin")
	res := secExec(time.Minute, nil, nil, tools.pyisolate, "install", "--bwrap-shim", dir)
	if res.code != 0 || !strings.Contains(string(res.stdout), "export PATH="+dir) {
		t.Fatalf("install: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	res = secExec(time.Minute, nil, nil, "/usr/bin/env", "PATH="+dir+":/usr/bin:/bin", "bwrap", "--version")
	if res.code != 0 || !strings.Contains(string(res.stdout), "pyisolate-oci") {
		t.Errorf("bwrap --version with the shim first on PATH: exit %d %q %q", res.code, res.stdout, res.stderr)
	}
	res = secExec(time.Minute, nil, nil, tools.pyisolate, "uninstall", "--bwrap-shim", dir)
	if res.code != 0 {
		t.Fatalf("uninstall: exit %d %s", res.code, res.stderr)
	}
	if _, err := os.Lstat(filepath.Join(dir, "bwrap")); !os.IsNotExist(err) {
		t.Errorf("the link is still there: %v", err)
	}
}
