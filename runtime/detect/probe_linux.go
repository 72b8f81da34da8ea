package detect

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	goruntime "runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// probeTimeout bounds one probe child.
const probeTimeout = 5 * time.Second

// missingProbeTarget is run when the host has no true(1): the child's execve
// then fails with ENOENT, which it can only reach once clone and the id
// mappings have worked.
const missingProbeTarget = "/nonexistent/pyisolate-userns-probe"

// probeAllFlags are the namespaces of probeNamespaces and probeUnprivileged.
const probeAllFlags = unix.CLONE_NEWUSER | unix.CLONE_NEWNS | unix.CLONE_NEWPID

// probeNamespacesFor runs probe k for real: it starts a child of true(1) in
// new namespaces and reports how the kernel answered. It does not re-execute
// this binary, whose argv handling belongs to the command.
func probeNamespacesFor(ctx context.Context, k probeKind) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	target := probeTarget()
	switch k {
	case probeUserNS:
		return runProbe(ctx, target, unix.CLONE_NEWUSER, os.Geteuid(), os.Getegid())
	case probeNamespaces:
		return runProbe(ctx, target, probeAllFlags, os.Geteuid(), os.Getegid())
	case probeUnprivileged:
		return asNobody(func() error { return runProbe(ctx, target, probeAllFlags, spec.NobodyID, spec.NobodyID) })
	}
	return &inconclusiveError{fmt.Errorf("unknown probe %d", int(k))}
}

// runProbe starts target (true(1)) with clone flags and maps uid and gid to 0 in the
// new user namespace, as an unprivileged runtime must (only its own ids). A
// failure is checked against the same child without namespaces: if that
// fails too, the probe is inconclusive.
func runProbe(ctx context.Context, target string, flags uintptr, uid, gid int) error {
	attr := &syscall.SysProcAttr{
		Cloneflags:  flags,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}},
		// An unprivileged process may map its gid only after denying setgroups.
		GidMappingsEnableSetgroups: false,
	}
	err := runChild(ctx, target, attr)
	if err == nil || (target == missingProbeTarget && errors.Is(err, syscall.ENOENT)) {
		return nil
	}
	if ctx.Err() != nil {
		return &inconclusiveError{fmt.Errorf("%s: %w", target, ctx.Err())}
	}
	if cerr := runChild(ctx, target, &syscall.SysProcAttr{}); cerr != nil &&
		(target != missingProbeTarget || !errors.Is(cerr, syscall.ENOENT)) {
		return &inconclusiveError{fmt.Errorf("%s fails even without namespaces: %w", target, cerr)}
	}
	if errnoOf(err) == 0 {
		return &inconclusiveError{fmt.Errorf("%s: %w", target, err)}
	}
	return fmt.Errorf("start %s in new namespaces: %w", target, err)
}

// runChild starts path with no arguments, no environment and no open files
// besides /dev/null, in /, and reaps it. Only starting counts: once Start
// returns, clone, the id mappings and execve have all worked. The exit status
// is ignored, since a containerd shim's reaper may collect it first.
func runChild(ctx context.Context, path string, attr *syscall.SysProcAttr) error {
	cmd := exec.CommandContext(ctx, path)
	cmd.Args = []string{"true"}
	cmd.Env = []string{}
	cmd.Dir = "/"
	cmd.SysProcAttr = attr
	if err := cmd.Start(); err != nil {
		return err
	}
	_ = cmd.Wait()
	return nil
}

// probeTarget returns the absolute path of an executable true(1), or
// missingProbeTarget when there is none.
func probeTarget() string {
	cands := []string{"/bin/true", "/usr/bin/true"}
	if p, err := exec.LookPath("true"); err == nil && len(p) > 0 && p[0] == '/' {
		cands = append([]string{p}, cands...)
	}
	for _, p := range cands {
		// Others' execute bit: the unprivileged probe runs it as 65534.
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o001 != 0 {
			return p
		}
	}
	return missingProbeTarget
}

// nobodyMu serialises asNobody, which changes the process's dumpable flag.
var nobodyMu sync.Mutex

// asNobody runs fn on an OS thread of its own whose real, effective and saved
// uid and gid are 65534, with no supplementary groups and no capabilities,
// so that the clone fn makes is judged as an unprivileged user's.
// (SysProcAttr.Credential cannot do it: Go applies it after clone.)
//
// The thread is locked and never unlocked, so Go ends it with the goroutine:
// no other goroutine ever runs with these credentials, and threads Go starts
// meanwhile come from its template thread, not from this one. It is never the
// main thread (see nobodyGoroutine).
//
// While fn runs the process is dumpable: a child's /proc/PID/uid_map belongs
// to root otherwise, and the unprivileged parent could not write it. Changing
// the uid resets the flag, and so does any earlier start of a child with
// SysProcAttr.Credential (Go's vfork shares the parent's mm), so it is set
// explicitly, and put back afterwards.
func asNobody(fn func() error) error {
	nobodyMu.Lock()
	defer nobodyMu.Unlock()
	prev, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		return &inconclusiveError{fmt.Errorf("prctl(PR_GET_DUMPABLE): %w", err)}
	}
	// 0 and 1 are always accepted: the error is not worth returning.
	defer func() { _ = unix.Prctl(unix.PR_SET_DUMPABLE, uintptr(prev), 0, 0, 0) }()
	done := make(chan error, 1)
	go nobodyGoroutine(fn, done)
	return <-done
}

// onMainThread reports whether the calling thread is the process's main
// thread. A variable for tests.
var onMainThread = func() bool { return unix.Gettid() == unix.Getpid() }

// nobodyGoroutine is asNobody's goroutine: it locks its thread, drops its
// credentials, runs fn and sends the result to done. Go never ends the main
// thread (it parks it when its locked goroutine exits), which would leave the
// process's leader uid 65534 for good; so on the main thread it holds that
// thread, which makes the next goroutine start on another, and hands over.
func nobodyGoroutine(fn func() error, done chan<- error) {
	goruntime.LockOSThread()
	if onMainThread() {
		inner := make(chan error, 1)
		go nobodyGoroutine(fn, inner)
		done <- <-inner
		goruntime.UnlockOSThread()
		return
	}
	if err := dropThreadCredentials(spec.NobodyID); err != nil {
		done <- &inconclusiveError{fmt.Errorf("switch the probe thread to uid %d: %w", spec.NobodyID, err)}
		return
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
		done <- &inconclusiveError{fmt.Errorf("prctl(PR_SET_DUMPABLE): %w", err)}
		return
	}
	done <- fn()
}

// dropThreadCredentials switches the calling thread, and only it, to uid and
// gid id with no groups and no capabilities. The raw syscalls are per thread;
// Go's syscall.Setuid would change every thread.
func dropThreadCredentials(id int) error {
	steps := []struct {
		name       string
		trap       uintptr
		a1, a2, a3 uintptr
	}{
		{"setgroups", unix.SYS_SETGROUPS, 0, 0, 0},
		{"setresgid", unix.SYS_SETRESGID, uintptr(id), uintptr(id), uintptr(id)},
		{"setresuid", unix.SYS_SETRESUID, uintptr(id), uintptr(id), uintptr(id)},
	}
	for _, s := range steps {
		if _, _, e := unix.RawSyscall(s.trap, s.a1, s.a2, s.a3); e != 0 {
			return fmt.Errorf("%s: %w", s.name, e)
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var none [2]unix.CapUserData
	if err := unix.Capset(&hdr, &none[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}
