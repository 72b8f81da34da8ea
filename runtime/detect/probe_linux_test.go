package detect

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// needProbeRoot skips tests that need uid 0 with CAP_SYS_ADMIN and CAP_SETUID.
func needProbeRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the probes switch a thread to uid 65534")
	}
	f, err := readFacts(hostEnv())
	if err != nil {
		t.Fatal(err)
	}
	if !f.sysAdmin {
		t.Skip("needs CAP_SYS_ADMIN")
	}
}

// statfsType returns the filesystem magic of path.
func statfsType(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatalf("statfs %s: %v", path, err)
	}
	return int64(st.Type)
}

// cgroupByStatfs decides the cgroup version from filesystem magics, not from
// mountinfo as Detect does.
func cgroupByStatfs(t *testing.T) string {
	switch statfsType(t, "/sys/fs/cgroup") {
	case unix.CGROUP2_SUPER_MAGIC:
		return CgroupV2
	case unix.TMPFS_MAGIC:
		var st unix.Statfs_t
		if unix.Statfs("/sys/fs/cgroup/unified", &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return CgroupHybrid
		}
		return CgroupV1
	}
	return ""
}

// unprivilegedByUnshare asks util-linux whether uid 65534 can create user,
// mount and pid namespaces; ok is false when setpriv or unshare is missing.
func unprivilegedByUnshare(t *testing.T) (allowed, ok bool) {
	t.Helper()
	setpriv, err1 := exec.LookPath("setpriv")
	unshare, err2 := exec.LookPath("unshare")
	if err1 != nil || err2 != nil {
		return false, false
	}
	cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
		unshare, "--user", "--map-root-user", "--mount", "--pid", "--fork", "true")
	out, err := cmd.CombinedOutput()
	t.Logf("setpriv ... unshare: %v %s", err, out)
	return err == nil, true
}

func TestDetectReal(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	p, err := Host(ctx)
	if err != nil {
		t.Fatalf("Detect: %v", err)
	}
	t.Logf("Detect took %v: %+v", time.Since(start), p)

	if os.Geteuid() == 0 && readInt("/proc/sys/user/max_user_namespaces") > 0 {
		f, err := readFacts(hostEnv())
		if err != nil {
			t.Fatal(err)
		}
		if f.sysAdmin && p.Restriction != spec.RestrictionNone {
			t.Errorf("root with CAP_SYS_ADMIN and user namespaces enabled: restriction %q (%s), want none", p.Restriction, p.RestrictionReason)
		}
	}
	if want := cgroupByStatfs(t); p.CgroupVersion != want {
		t.Errorf("cgroup version %q, statfs says %q", p.CgroupVersion, want)
	}
	if p.CgroupVersion != "" && p.CgroupRoot != "/sys/fs/cgroup" {
		t.Errorf("cgroup root %q", p.CgroupRoot)
	}
	if p.CgroupVersion == CgroupHybrid && statfsType(t, p.CgroupV2Path) != unix.CGROUP2_SUPER_MAGIC {
		t.Errorf("cgroup v2 path %q is not cgroup2", p.CgroupV2Path)
	}

	var shm unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &shm); err != nil {
		t.Fatalf("statfs /dev/shm: %v", err)
	}
	if !p.Shm.Exists || p.Shm.SizeBytes != shm.Blocks*uint64(shm.Bsize) || p.Shm.SizeBytes == 0 {
		t.Errorf("shm %+v, statfs size %d", p.Shm, shm.Blocks*uint64(shm.Bsize))
	}
	if os.Geteuid() == 0 && !p.Shm.Writable {
		t.Errorf("shm not writable as root: %+v", p.Shm)
	}

	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	if rel := unix.ByteSliceToString(u.Release[:]); p.Kernel != rel {
		t.Errorf("kernel %q, uname says %q", p.Kernel, rel)
	}
	for _, path := range p.Paths {
		if _, err := os.Lstat(path); err != nil {
			t.Errorf("listed path %s: %v", path, err)
		}
	}
	if !slices.Contains(p.Paths, "/usr") {
		t.Errorf("paths %q lack /usr", p.Paths)
	}
	if st := readString("/proc/self/status"); strings.Contains(st, "\nSeccomp:") != p.Seccomp {
		t.Errorf("seccomp %v, but /proc/self/status has a Seccomp line: %v", p.Seccomp, !p.Seccomp)
	}
	if os.Geteuid() == 0 {
		if allowed, ok := unprivilegedByUnshare(t); ok && allowed != p.Unprivileged {
			t.Errorf("unprivileged = %v (%s), setpriv+unshare says %v", p.Unprivileged, p.UnprivilegedReason, allowed)
		}
	}
}

func TestProbeReal(t *testing.T) {
	needProbeRoot(t)
	ctx := context.Background()
	for _, k := range []probeKind{probeUserNS, probeNamespaces, probeUnprivileged} {
		if err := probeNamespacesFor(ctx, k); err != nil && k != probeUnprivileged {
			t.Errorf("%s: %v", k, err)
		} else {
			t.Logf("%s: %v", k, err)
		}
	}
}

func TestProbeRefusalCarriesErrno(t *testing.T) {
	needProbeRoot(t)
	ctx := context.Background()
	// As 65534, mapping uid 0 is refused: the uid_map write fails with EPERM.
	for _, target := range []string{probeTarget(), missingProbeTarget} {
		err := asNobody(func() error { return runProbe(ctx, target, probeAllFlags, 0, 0) })
		var inc *inconclusiveError
		if err == nil || errors.As(err, &inc) || errnoOf(err) != syscall.EPERM {
			t.Errorf("%s: mapping uid 0 as nobody: %v, want a refusal with EPERM", target, err)
		}
	}
}

func TestProbeWithoutTrue(t *testing.T) {
	needProbeRoot(t)
	if err := runProbe(context.Background(), missingProbeTarget, probeAllFlags, 0, 0); err != nil {
		t.Errorf("probe with ENOENT target: %v", err)
	}
}

func TestProbeCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := runProbe(ctx, probeTarget(), unix.CLONE_NEWUSER, os.Geteuid(), os.Getegid())
	var inc *inconclusiveError
	if !errors.As(err, &inc) {
		t.Errorf("probe with a cancelled context: %v, want inconclusive", err)
	}
}

// TestAsNobodyLeavesProcessAlone checks that the credential switch stays on
// the probe's thread: every thread is still root afterwards, and the dumpable
// flag is unchanged.
func TestAsNobodyLeavesProcessAlone(t *testing.T) {
	needProbeRoot(t)
	before, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var inner string
	err = asNobody(func() error {
		inner = readString("/proc/thread-self/status")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if uid := parseStatus([]byte(inner))["Uid"]; uid != "65534\t65534\t65534\t65534" {
		t.Errorf("probe thread Uid %q, want 65534 everywhere", uid)
	}
	if parseStatus([]byte(inner))["CapEff"] != "0000000000000000" {
		t.Errorf("probe thread keeps capabilities: %q", parseStatus([]byte(inner))["CapEff"])
	}
	after, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil || after != before {
		t.Errorf("dumpable %d before, %d after (%v)", before, after, err)
	}
	if os.Geteuid() != 0 || os.Getuid() != 0 {
		t.Errorf("process uid %d/%d after the probe", os.Getuid(), os.Geteuid())
	}
	// The locked thread exits shortly after its goroutine ends.
	deadline := time.Now().Add(2 * time.Second)
	for {
		nobody := nobodyThreads(t)
		if len(nobody) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("threads still uid 65534: %v", nobody)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// nobodyThreads lists this process's threads whose uids are not all 0.
func nobodyThreads(t *testing.T) []string {
	t.Helper()
	tasks, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, st := range tasks {
		b, err := os.ReadFile(st)
		if err != nil {
			continue // exited meanwhile
		}
		if uid := parseStatus(b)["Uid"]; uid != "0\t0\t0\t0" {
			out = append(out, st+": "+uid)
		}
	}
	return out
}

// Environment of TestDetectHelper, the test binary re-run in a prepared
// process to detect from there.
const (
	helperEnv  = "PYISOLATE_DETECT_HELPER" // "sysctl", "plain" or "reaper"
	helperNext = "PYISOLATE_DETECT_NEXT"   // "nocaps": after sysctl, detect as uid 65534
	helperOut  = "PYISOLATE_DETECT_OUT"    // file to write the profile to
)

// TestDetectHelper is not a test: TestDetectRealModels runs the test binary
// with it. "sysctl" sets user.max_user_namespaces=0 in its own user namespace
// (only that namespace and its children see it), then detects or, with
// PYISOLATE_DETECT_NEXT=nocaps, runs "plain" as uid 65534 there; "reaper"
// reaps every child with wait4(-1) meanwhile, as a containerd shim does;
// then each detects and writes the profile as JSON.
func TestDetectHelper(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		t.Skip("helper process of TestDetectRealModels")
	}
	if mode == "reaper" {
		// Like a containerd shim: reap every child as soon as it exits.
		go func() {
			for {
				var ws unix.WaitStatus
				if _, err := unix.Wait4(-1, &ws, 0, nil); err == unix.ECHILD {
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	if mode == "sysctl" {
		if err := os.WriteFile("/proc/sys/user/max_user_namespaces", []byte("0\n"), 0); err != nil {
			t.Fatal(err)
		}
		if os.Getenv(helperNext) == "nocaps" {
			cmd := exec.Command(os.Args[0], "-test.run=^TestDetectHelper$")
			cmd.Env = append(os.Environ(), helperEnv+"=plain")
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: spec.NobodyID, Gid: spec.NobodyID}}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("as uid 65534: %v\n%s", err, out)
			}
			return
		}
	}
	p, err := Host(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(os.Getenv(helperOut), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// copyTestBinary copies the test binary into a new directory that uid 65534
// can use, and returns the copy.
func copyTestBinary(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pyisolate-detect-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "runtime.test")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// runDetectHelper runs TestDetectHelper from bin, a copy of the test binary,
// and returns the profile it detected.
func runDetectHelper(t *testing.T, bin string, attr *syscall.SysProcAttr, env ...string) *Profile {
	t.Helper()
	dir := filepath.Dir(bin)
	out := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+".json")
	cmd := exec.Command(bin, "-test.run=^TestDetectHelper$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append(env, helperOut+"="+out)...)
	cmd.SysProcAttr = attr
	if log, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("helper %q: %v\n%s", env, err, log)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var p Profile
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatal(err)
	}
	t.Logf("%q: %+v", env, p)
	return &p
}

// TestDetectRealModels makes this machine restricted where it can without
// touching the host: in a user namespace of its own with
// user.max_user_namespaces=0 (sysctl, and no-caps as uid 65534 there), and
// as uid 65534 on the host (rootless).
func TestDetectRealModels(t *testing.T) {
	needProbeRoot(t)
	if err := probeNamespacesFor(context.Background(), probeUnprivileged); err != nil {
		t.Skipf("unprivileged user namespaces are blocked here: %v", err)
	}
	bin := copyTestBinary(t)
	nobody := &syscall.Credential{Uid: spec.NobodyID, Gid: spec.NobodyID}
	userns := func() *syscall.SysProcAttr {
		return &syscall.SysProcAttr{
			Cloneflags:                 syscall.CLONE_NEWUSER,
			UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: spec.NobodyID, HostID: spec.NobodyID, Size: 1}},
			GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: spec.NobodyID, HostID: spec.NobodyID, Size: 1}},
			GidMappingsEnableSetgroups: true,
		}
	}
	tests := []struct {
		name    string
		attr    *syscall.SysProcAttr
		env     []string
		want    spec.Restriction
		reason  string
		warning string
	}{
		{"sysctl", userns(), []string{helperEnv + "=sysctl"}, spec.RestrictionSysctl, "ENOSPC with user.max_user_namespaces=0", ""},
		{"no-caps", userns(), []string{helperEnv + "=sysctl", helperNext + "=nocaps"}, spec.RestrictionNoCaps, "lacks CAP_SYS_ADMIN", "user.max_user_namespaces=0"},
		{"rootless", &syscall.SysProcAttr{Credential: nobody}, []string{helperEnv + "=plain"}, spec.RestrictionNone, "rootless", "delegat"},
		{"none beside a reaper", nil, []string{helperEnv + "=reaper"}, spec.RestrictionNone, "work for the runtime", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := runDetectHelper(t, bin, tc.attr, tc.env...)
			if p.Restriction != tc.want || !strings.Contains(p.RestrictionReason, tc.reason) {
				t.Errorf("restriction %q (%s), want %q (%s)", p.Restriction, p.RestrictionReason, tc.want, tc.reason)
			}
			if tc.warning != "" && !strings.Contains(strings.Join(p.Warnings, "\n"), tc.warning) {
				t.Errorf("warnings %q lack %q", p.Warnings, tc.warning)
			}
			if p.Remedy != RemedyFor(tc.want) {
				t.Errorf("remedy %q", p.Remedy)
			}
		})
	}
}

// TestProbeUnprivilegedNonDumpable checks the unprivileged probe in a
// non-dumpable process, as any earlier exec with SysProcAttr.Credential
// leaves it, and that the flag is kept.
func TestProbeUnprivilegedNonDumpable(t *testing.T) {
	needProbeRoot(t)
	if err := probeNamespacesFor(context.Background(), probeUnprivileged); err != nil {
		t.Skipf("unprivileged user namespaces are blocked here: %v", err)
	}
	prev, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_DUMPABLE, uintptr(prev), 0, 0, 0) })
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := probeNamespacesFor(context.Background(), probeUnprivileged); err != nil {
		t.Errorf("unprivileged probe in a non-dumpable process: %v", err)
	}
	if d, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0); err != nil || d != 0 {
		t.Errorf("dumpable = %d (%v) after the probe, want 0 kept", d, err)
	}
}

// TestAsNobodyAvoidsMainThread runs asNobody as if its goroutine had landed
// on the main thread: the work must move to another thread, and the thread
// the goroutine held must keep its credentials.
func TestAsNobodyAvoidsMainThread(t *testing.T) {
	needProbeRoot(t)
	first := true
	var heldTid int
	onMainThread = func() bool {
		if first {
			first, heldTid = false, unix.Gettid()
			return true
		}
		return false
	}
	t.Cleanup(func() { onMainThread = func() bool { return unix.Gettid() == unix.Getpid() } })
	var ranTid int
	var uid string
	err := asNobody(func() error {
		ranTid = unix.Gettid()
		uid = parseStatus([]byte(readString("/proc/thread-self/status")))["Uid"]
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if ranTid == heldTid || heldTid == 0 {
		t.Errorf("fn ran on thread %d, the held thread is %d", ranTid, heldTid)
	}
	if uid != "65534\t65534\t65534\t65534" {
		t.Errorf("fn ran with Uid %q", uid)
	}
	if st, err := os.ReadFile(filepath.Join("/proc/self/task", strconv.Itoa(heldTid), "status")); err == nil {
		if u := parseStatus(st)["Uid"]; u != "0\t0\t0\t0" {
			t.Errorf("held thread %d has Uid %q", heldTid, u)
		}
	}
}
