package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// The test binary is also the container init: libcontainer re-executes
// /proc/self/exe (a sealed copy of it) as "<binary> init". This runs in
// package initialisation, before the testing package parses flags, as runc's
// own init.go does; it does not return.
//
// It also keeps the main goroutine on the main thread: libcontainer runs a
// goroutine that locks its thread and joins the container's mount namespace,
// and such a goroutine landing on the main thread (which Go cannot end)
// would leave this process in that namespace.
func init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		Init()
	}
	goruntime.LockOSThread()
}

// needRoot skips tests that create real containers when not run as root.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("lifecycle tests create real containers (namespaces, cgroups, mounts) and need root")
	}
}

// testRuntime returns a Runtime with a fresh state root and checks, when the
// test ends, that nothing of its containers is left on the machine.
func testRuntime(t *testing.T) *Runtime {
	t.Helper()
	needRoot(t)
	root, err := os.MkdirTemp("/run", "pyisolate-test-")
	if err != nil {
		t.Fatal(err)
	}
	r := &Runtime{Root: root}
	t.Cleanup(func() {
		assertClean(t, r)
		os.RemoveAll(root)
	})
	return r
}

// testID is a container id unique to the test.
func testID(t *testing.T) string {
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, t.Name())
	return fmt.Sprintf("%s-%d", name, os.Getpid())
}

// testSpec is a bwrap-style sandbox built by hand: an empty read-only rootfs,
// read-only binds of the system directories, fresh /proc, tmpfs /dev and
// /tmp, new pid/mount/ipc/uts/network/cgroup namespaces and a user namespace
// mapping container root to host uid 100000.
func testSpec(rootfs string, args ...string) *specs.Spec {
	ro := []string{"rbind", "ro", "nosuid", "nodev"}
	mounts := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/tmp", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "nodev", "mode=1777"}},
	}
	for _, p := range []string{"/usr", "/lib", "/lib64", "/bin", "/sbin"} {
		if _, err := os.Stat(p); err == nil {
			mounts = append(mounts, specs.Mount{Destination: p, Type: "bind", Source: p, Options: ro})
		}
	}
	return &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: rootfs, Readonly: true},
		Process: &specs.Process{
			Args:            args,
			Env:             []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"},
			Cwd:             "/",
			NoNewPrivileges: true,
			Capabilities:    &specs.LinuxCapabilities{Bounding: []string{}, Effective: []string{}, Permitted: []string{}},
			Rlimits:         []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		},
		Hostname: "sandbox",
		Mounts:   mounts,
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.MountNamespace}, {Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace}, {Type: specs.NetworkNamespace}, {Type: specs.CgroupNamespace},
				{Type: specs.UserNamespace},
			},
			UIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
			GIDMappings: []specs.LinuxIDMapping{{ContainerID: 0, HostID: 100000, Size: 65536}},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
			MaskedPaths:   []string{"/proc/kcore", "/proc/sysrq-trigger"},
			ReadonlyPaths: []string{"/proc/sys"},
		},
	}
}

// newSpec makes the empty rootfs of id and a testSpec on it.
func newSpec(t *testing.T, r *Runtime, id string, args ...string) *specs.Spec {
	t.Helper()
	rootfs, err := r.EmptyRootfs(id)
	if err != nil {
		t.Fatal(err)
	}
	return testSpec(rootfs, args...)
}

func withoutNamespace(s *specs.Spec, typ specs.LinuxNamespaceType) {
	ns := s.Linux.Namespaces[:0]
	for _, n := range s.Linux.Namespaces {
		if n.Type != typ {
			ns = append(ns, n)
		}
	}
	s.Linux.Namespaces = ns
}

// assertClean fails the test if anything of r's containers is left: files
// under its root, mounts, cgroup directories or processes.
func assertClean(t *testing.T, r *Runtime) {
	t.Helper()
	root := r.root()
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || p == root || p == filepath.Join(root, rootfsDir) {
			return nil
		}
		t.Errorf("left under state root: %s", p)
		return nil
	})
	for _, f := range []string{"/proc/self/mountinfo", "/proc/1/mountinfo"} {
		mi, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(mi), "\n") {
			if strings.Contains(l, root) {
				t.Errorf("mount left in %s: %s", f, l)
			}
		}
	}
	ents, _ := os.ReadDir(cgroupMountRoot)
	for _, e := range ents {
		dir := filepath.Join(cgroupMountRoot, e.Name(), DefaultCgroupParent)
		sub, _ := os.ReadDir(dir)
		for _, s := range sub {
			if strings.HasSuffix(s.Name(), fmt.Sprintf("-%d", os.Getpid())) {
				t.Errorf("cgroup left: %s", filepath.Join(dir, s.Name()))
			}
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cg, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cgroup"))
		if err != nil {
			continue
		}
		if strings.Contains(string(cg), fmt.Sprintf("-%d\n", os.Getpid())) {
			cmd, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
			t.Errorf("process left: pid %s (%q) in %s", p.Name(), cmd, cg)
		}
	}
}

func TestRunExitStatus(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		sharePID bool // no PID namespace: the process is not a namespace init
		code     int
		signal   syscall.Signal
		stdout   string
		stderr   string
	}{
		{name: "true", args: []string{"/bin/true"}, code: 0},
		{name: "exit3", args: []string{"sh", "-c", "exit 3"}, code: 3},
		{name: "selfkill", args: []string{"sh", "-c", "kill -KILL $$"}, sharePID: true, code: 137, signal: unix.SIGKILL},
		{name: "stdout", args: []string{"sh", "-c", "echo hello; echo oops >&2"}, stdout: "hello\n", stderr: "oops\n"},
		{name: "hostname", args: []string{"hostname"}, stdout: "sandbox\n"},
		{name: "uid", args: []string{"sh", "-c", "id -u; grep -h 'CapEff\\|NoNewPrivs' /proc/self/status"},
			stdout: "0\nCapEff:\t0000000000000000\nNoNewPrivs:\t1\n"},
		{name: "readonly-root", args: []string{"sh", "-c", "touch /x 2>/dev/null && echo writable; touch /tmp/x && echo tmp-ok"}, stdout: "tmp-ok\n"},
		{name: "no-network", args: []string{"sh", "-c", "ls /sys/class/net 2>/dev/null; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '"}, stdout: "lo\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := testRuntime(t)
			id := testID(t)
			s := newSpec(t, r, id, tc.args...)
			if tc.sharePID {
				// Without a PID namespace of its own, a user namespace
				// may not mount a fresh /proc: drop both.
				withoutNamespace(s, specs.PIDNamespace)
				withoutNamespace(s, specs.UserNamespace)
				s.Linux.UIDMappings, s.Linux.GIDMappings = nil, nil
			}
			var stdout, stderr bytes.Buffer
			st, err := r.Run(context.Background(), id, s, CreateOptions{Stdout: &stdout, Stderr: &stderr})
			if err != nil {
				t.Fatalf("Run: %v (stderr %q)", err, stderr.String())
			}
			if st.Code != tc.code || st.Signal != tc.signal || st.OOMKilled {
				t.Errorf("status = %+v, want code %d signal %d", st, tc.code, tc.signal)
			}
			if stdout.String() != tc.stdout {
				t.Errorf("stdout = %q, want %q", stdout.String(), tc.stdout)
			}
			if stderr.String() != tc.stderr {
				t.Errorf("stderr = %q, want %q", stderr.String(), tc.stderr)
			}
		})
	}
}

// TestLifecycle drives create, state, start, exec, signal, wait and delete
// one step at a time.
func TestLifecycle(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	ctx := context.Background()
	s := newSpec(t, r, id, "sleep", "30")
	c, err := r.Create(ctx, id, s, CreateOptions{Bundle: "/nonexistent/bundle"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Delete(ctx, true)
	st, err := c.State()
	if err != nil {
		t.Fatal(err)
	}
	if st.Status != StatusCreated || st.InitPID <= 0 || st.Bundle != "/nonexistent/bundle" || st.ID != id || st.Created.IsZero() {
		t.Errorf("after Create: state %+v", st)
	}
	if err := c.Delete(ctx, false); err != nil {
		// Deleting a created container is allowed (it is killed); do not.
		t.Logf("delete created: %v", err)
		t.FailNow()
	}
	// Delete of a created container removed it: start again.
	s = newSpec(t, r, id, "sleep", "30")
	if c, err = r.Create(ctx, id, s, CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer c.Delete(ctx, true)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ = c.State(); st.Status != StatusRunning {
		t.Errorf("after Start: status %s", st.Status)
	}
	list, err := r.List()
	if err != nil || len(list) != 1 || list[0].ID != id || list[0].Status != StatusRunning {
		t.Errorf("List = %+v, %v", list, err)
	}

	var out bytes.Buffer
	p, err := c.Exec(ctx, &specs.Process{Args: []string{"cat", "/proc/1/cmdline"}, Cwd: "/",
		Env: []string{"PATH=/usr/bin:/bin"}}, Stdio{Stdout: &out})
	if err != nil {
		t.Fatal(err)
	}
	est, err := p.Wait(ctx)
	if err != nil || est.Code != 0 {
		t.Errorf("exec wait: %+v, %v", est, err)
	}
	if out.String() != "sleep\x0030\x00" {
		t.Errorf("exec output %q", out.String())
	}

	if err := c.Delete(ctx, false); err == nil {
		t.Error("Delete without force of a running container succeeded")
	}
	// sleep as PID 1 has no handler for SIGTERM: the kernel drops it.
	if err := c.Signal(unix.SIGTERM, false); err != nil {
		t.Error(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	if _, err := c.Wait(wctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait after SIGTERM to sleep: %v, want deadline", err)
	}
	cancel()
	if err := c.Signal(unix.SIGKILL, true); err != nil {
		t.Error(err)
	}
	if st, err := c.Wait(ctx); err != nil || st.Code != 137 || st.Signal != unix.SIGKILL {
		t.Errorf("Wait after SIGKILL: %+v, %v", st, err)
	}
	if st, _ = c.State(); st.Status != StatusStopped || st.InitPID != 0 {
		t.Errorf("after exit: state %+v", st)
	}
	if err := c.Delete(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(id); err == nil {
		t.Error("Load after Delete succeeded")
	}
}

// TestSignalTrapped checks that a signal reaches an init with a handler.
func TestSignalTrapped(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	ctx := context.Background()
	s := newSpec(t, r, id, "sh", "-c", `trap "exit 42" TERM; echo ready; while :; do sleep 0.05; done`)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	c, err := r.Create(ctx, id, s, CreateOptions{Stdout: pw})
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Delete(ctx, true)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := pr.Read(buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("read %q, %v", buf, err)
	}
	if err := c.Signal(unix.SIGTERM, false); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Wait(ctx); err != nil || st.Code != 42 {
		t.Errorf("Wait: %+v, %v", st, err)
	}
	if err := c.Delete(ctx, false); err != nil {
		t.Error(err)
	}
}

// TestDeleteLoaded kills and deletes a running container through a second
// handle, as `pyisolate delete --force` does from another process.
func TestDeleteLoaded(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	ctx := context.Background()
	c, err := r.Create(ctx, id, newSpec(t, r, id, "sleep", "30"), CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := r.Load(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Wait(ctx); !errors.Is(err, ErrNotOwner) {
		t.Errorf("Wait on loaded: %v", err)
	}
	if err := r.Delete(ctx, id, false); err == nil {
		t.Error("Delete without force of a running container succeeded")
	}
	start := time.Now()
	if err := r.Delete(ctx, id, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("forced delete took %v", time.Since(start))
	// Reap our child (the owner handle).
	if st, err := c.Wait(ctx); err != nil || st.Signal != unix.SIGKILL {
		t.Errorf("owner Wait: %+v, %v", st, err)
	}
	if err := r.Delete(ctx, id, true); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("second Delete: %v, want not exist", err)
	}
}

// TestDeleteInterrupted cleans up after a creation cut short: a state
// directory without state.json, a cgroup with a process in it and the rootfs.
func TestDeleteInterrupted(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	if _, err := r.EmptyRootfs(id); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(r.root(), id), 0o711); err != nil {
		t.Fatal(err)
	}
	cg := filepath.Join(cgroupMountRoot, "pids", DefaultCgroupParent, id)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Skip("no pids cgroup v1 hierarchy:", err)
	}
	list, _ := r.List()
	if len(list) != 1 || list[0].Status != StatusUnknown {
		t.Errorf("List = %+v", list)
	}
	if err := r.Delete(context.Background(), id, true); err != nil {
		t.Fatal(err)
	}
	if isDir(cg) {
		t.Errorf("cgroup %s left", cg)
	}
}

func TestOOM(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	s := newSpec(t, r, id, "/usr/bin/python3", "-c", "b = bytearray(200 << 20); print('survived')")
	limit := int64(32 << 20)
	s.Linux.Resources.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &limit}
	var stdout bytes.Buffer
	st, err := r.Run(context.Background(), id, s, CreateOptions{Stdout: &stdout})
	if err != nil {
		t.Fatal(err)
	}
	if !st.OOMKilled || st.Code != 137 {
		t.Errorf("status %+v (stdout %q), want OOM kill", st, stdout.String())
	}
}

func TestPidsLimit(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	s := newSpec(t, r, id, "sh", "-c", "for i in $(seq 1 20); do sleep 5 & done; echo all-forked")
	pids := int64(8)
	s.Linux.Resources.Pids = &specs.LinuxPids{Limit: &pids}
	var stdout, stderr bytes.Buffer
	st, err := r.Run(context.Background(), id, s, CreateOptions{Stdout: &stdout, Stderr: &stderr})
	if err != nil {
		t.Fatal(err)
	}
	if st.Code == 0 || strings.Contains(stdout.String(), "all-forked") || !strings.Contains(stderr.String(), "fork") {
		t.Errorf("status %+v, stdout %q, stderr %q: want a fork failure", st, stdout.String(), stderr.String())
	}
}

func TestRunSignalForwarded(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	s := newSpec(t, r, id, "sh", "-c", `trap "exit 7" USR1; while :; do sleep 0.05; done`)
	done := make(chan struct{})
	var st ExitStatus
	var err error
	go func() {
		defer close(done)
		st, err = r.Run(context.Background(), id, s, CreateOptions{})
	}()
	// Run installs its handler before Create: once the container runs,
	// SIGUSR1 to this process is forwarded rather than fatal.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		l, _ := r.List()
		if len(l) == 1 && l[0].Status == StatusRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("container did not start")
		}
	}
	time.Sleep(50 * time.Millisecond) // let the shell install its trap
	if err := unix.Kill(os.Getpid(), unix.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	<-done
	if err != nil || st.Code != 7 {
		t.Errorf("Run: %+v, %v", st, err)
	}
}

func TestRunContextCancel(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	st, err := r.Run(ctx, id, newSpec(t, r, id, "sleep", "30"), CreateOptions{})
	if err != nil || st.Signal != unix.SIGKILL {
		t.Errorf("Run: %+v, %v", st, err)
	}
}

func TestCreateErrors(t *testing.T) {
	r := testRuntime(t)
	ctx := context.Background()
	id := testID(t)
	// A missing binary fails at Start (exec in the init); nothing is left.
	c, err := r.Create(ctx, id, newSpec(t, r, id, "/no/such/binary"), CreateOptions{})
	if err == nil {
		if err = c.Start(ctx); err == nil {
			_, err = c.Wait(ctx)
		}
		c.Delete(ctx, true)
	}
	if err == nil {
		t.Error("running a missing binary succeeded")
	}
	if _, err := r.Create(ctx, "rootfs", testSpec("/x", "true"), CreateOptions{}); err == nil {
		t.Error("reserved id accepted")
	}
	if _, err := r.Create(ctx, "a/b", testSpec("/x", "true"), CreateOptions{}); err == nil {
		t.Error("id with a slash accepted")
	}
	if _, err := r.Create(ctx, id, testSpec("rootfs", "true"), CreateOptions{Bundle: "relative"}); err == nil {
		t.Error("relative bundle accepted")
	}
	// A mount source that does not exist: Create fails and cleans up.
	s := newSpec(t, r, id, "true")
	s.Mounts = append(s.Mounts, specs.Mount{Destination: "/opt", Type: "bind", Source: "/no/such/dir", Options: []string{"rbind", "ro"}})
	if c, err := r.Create(ctx, id, s, CreateOptions{}); err == nil {
		c.Delete(ctx, true)
		t.Error("missing mount source accepted")
	}
	if err := r.Delete(ctx, id, true); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Error(err)
	}
}

func TestExitStatusString(t *testing.T) {
	if s := (ExitStatus{Code: 137, Signal: unix.SIGKILL, OOMKilled: true}).String(); s != "killed by signal 9 (SIGKILL), out of memory" {
		t.Error(s)
	}
	if s := (ExitStatus{Code: 3}).String(); s != "exited with code 3" {
		t.Error(s)
	}
}

func TestAbsSpec(t *testing.T) {
	s := testSpec("rootfs", "true")
	s.Mounts = append(s.Mounts,
		specs.Mount{Destination: "/data", Type: "bind", Source: "data", Options: []string{"rbind", "ro"}},
		specs.Mount{Destination: "/other", Type: "none", Source: "rel", Options: []string{"bind"}},
		specs.Mount{Destination: "/t", Type: "tmpfs", Source: "tmpfs"})
	ls, err := absSpec(s, "/b")
	if err != nil {
		t.Fatal(err)
	}
	n := len(ls.Mounts)
	if ls.Root.Path != "/b/rootfs" || ls.Mounts[n-3].Source != "/b/data" || ls.Mounts[n-2].Source != "/b/rel" || ls.Mounts[n-1].Source != "tmpfs" {
		t.Errorf("absSpec: root %q, mounts %+v", ls.Root.Path, ls.Mounts[n-3:])
	}
	if s.Root.Path != "rootfs" || s.Mounts[n-3].Source != "data" {
		t.Error("absSpec modified its input")
	}
	if _, err := absSpec(s, ""); err == nil {
		t.Error("relative root without a bundle accepted")
	}
}
