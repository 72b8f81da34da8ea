package test

// Warm starts (issue 20, package runtime/warm): an extension whose manifest
// has a preload list is forked from its group's template into its own
// sandbox. These tests run the real CLI as root and compare a warm member
// with a cold one: the sandbox a process sees from inside, the escape probe
// line for line, isolation between two warm members, and every fallback.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// warmReport prints, one "key: value" line each, what a process sees of its
// sandbox: ids, capabilities, no_new_privs and seccomp (status), mounts
// (without mount ids and device numbers), cgroups, rlimits, umask, groups,
// directory, environment, arguments, hostname, pids, descriptors, shared
// writable mappings, and the errno of system calls the sandbox's seccomp
// filter or capabilities decide (each harmless where allowed).
const warmReport = `
import ctypes, os, resource, socket, sys
preloaded = "json" in sys.modules
out = []
def put(k, v): out.append("%s: %s" % (k, v))
for l in open("/proc/self/status"):
    k, _, v = l.partition(":")
    if k in ("Uid", "Gid", "Groups", "NSpid", "NStgid", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb",
             "NoNewPrivs", "Seccomp", "Seccomp_filters", "Umask"):
        put("status." + k, " ".join(v.split()))
for l in open("/proc/self/mountinfo"):
    f = l.split()
    sep = f.index("-")
    put("mount", " ".join([f[3], f[4], f[5]] + f[sep + 1:sep + 2] + f[sep + 3:]))
for l in open("/proc/self/cgroup"):
    put("cgroup", l.strip())
for name in sorted(n for n in dir(resource) if n.startswith("RLIMIT_")):
    put("rlimit." + name, resource.getrlimit(getattr(resource, name)))
put("uid_map", " ".join(open("/proc/self/uid_map").read().split()))
put("gid_map", " ".join(open("/proc/self/gid_map").read().split()))
put("setgroups", open("/proc/self/setgroups").read().strip())
put("groups", os.getgroups())
put("cwd", os.getcwd())
put("env", sorted(k for k in os.environ))
put("argv", sys.argv)
put("hostname", socket.gethostname())
put("pids", sorted(p for p in os.listdir("/proc") if p.isdigit()))
put("fds", sorted(os.listdir("/proc/self/fd")))
put("oom_score_adj", open("/proc/self/oom_score_adj").read().strip())
put("shared_writable", [l.split()[-1] for l in open("/proc/self/maps") if l.split()[1] == "rw-s" and "/dev/shm" not in l])
libc = ctypes.CDLL(None, use_errno=True)
calls = {
    "unshare_user": (272, 0x10000000), "unshare_ns": (272, 0x00020000), "setns": (308, -1, 0),
    "mount": (165, 0, 0, 0, 0, 0), "umount2": (166, 0, 0), "pivot_root": (155, 0, 0),
    "ptrace_peek": (101, 2, 1, 0, 0), "process_vm_readv": (310, 1, 0, 0, 0, 0, 0),
    "keyctl": (250, 0), "add_key": (248, 0, 0, 0, 0, 0), "bpf": (321, 0, 0, 0),
    "perf_event_open": (298, 0, 0, -1, -1, 0), "clone3": (435, 0, 0), "kexec_load": (246, 0, 0, 0, 0),
    "open_by_handle_at": (304, -1, 0, 0), "init_module": (175, 0, 0, 0), "chroot": (161, 0),
    "sethostname": (170, 0, 0), "setuid_1000": (105, 1000), "userfaultfd": (323, 0),
    "io_uring_setup": (425, 0, 0), "syslog": (103, 3, 0, 0), "acct": (163, 0), "swapoff": (168, 0),
    "personality_query": (135, 0xffffffff),
}
if os.uname().machine == "x86_64":
    for name, args in sorted(calls.items()):
        r = libc.syscall(*[ctypes.c_long(a) for a in args])
        put("syscall." + name, "ok" if r >= 0 else os.strerror(ctypes.get_errno()))
put("preloaded", preloaded)
print("\n".join(out))
`

// warmManifest is the fixture's manifest running code with python -c, with
// preload when it is not nil.
func warmManifest(fx *secFixture, code string, preload []string) map[string]any {
	m := fx.secManifest([]string{"/usr/bin/python3", "-c", code})
	m["name"] = "warmtest"
	m["limits"] = map[string]any{"memory": "512Mi", "pids": 64}
	if preload != nil {
		m["preload"] = preload
	}
	return m
}

// warmTest is a warm-start test's tools and fixture; the ids it hands out
// are checked for leaks, and the state root for templates, when the test
// ends.
type warmTest struct {
	t     *testing.T
	tools *secTools
	fx    *secFixture
	ids   []string
}

// newWarmTest builds the tools and a fixture (skipping without root).
func newWarmTest(t *testing.T) *warmTest {
	t.Helper()
	tools := secSetup(t)
	secNeedPyisolate(t, tools)
	w := &warmTest{t: t, tools: tools, fx: newSecFixture(t, tools)}
	t.Cleanup(func() {
		for _, id := range w.ids {
			secCheckNoLeaks(t, w.fx.root, w.fx.base, id)
		}
		warmCheckNoTemplates(t, w.fx.root)
	})
	return w
}

// id returns a new container id made of name.
func (w *warmTest) id(name string) string {
	id := secID(name)
	w.ids = append(w.ids, id)
	return id
}

// run runs manifest m from the bundle fx.base/name as a new container.
func (w *warmTest) run(name string, m map[string]any) secRunResult {
	return warmRun(w.t, w.tools, w.fx, filepath.Join(w.fx.base, name), w.id(name), m)
}

// warmWaitFile waits up to 10 s for path to exist (a member says it runs).
func warmWaitFile(t *testing.T, path string) {
	t.Helper()
	for i := 0; i < 400; i++ {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("%s did not appear in 10 s", path)
}

// warmRun runs the bundle with manifest m under id and returns the result.

func warmRun(t *testing.T, tools *secTools, fx *secFixture, bundle, id string, m map[string]any) secRunResult {
	t.Helper()
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	writeManifest(t, bundle, m)
	argv := []string{tools.pyisolate, "run", "--root", fx.root, "--id", id, bundle}
	return secExec(secRunTimeout, nil, fx.strayFiles(), argv...)
}

// warmDiff compares two reports line by line, leaving out the keys in skip,
// and returns the differences.
func warmDiff(cold, warm string, skip ...string) []string {
	keep := func(s string) []string {
		var out []string
		for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
			k, _, _ := strings.Cut(l, ": ")
			skipped := false
			for _, p := range skip {
				if k == p {
					skipped = true
				}
			}
			if !skipped {
				out = append(out, l)
			}
		}
		return out
	}
	c, w := keep(cold), keep(warm)
	var diff []string
	for i := 0; i < max(len(c), len(w)); i++ {
		var a, b string
		if i < len(c) {
			a = c[i]
		}
		if i < len(w) {
			b = w[i]
		}
		if a != b {
			diff = append(diff, "cold: "+a+"\n    warm: "+b)
		}
	}
	return diff
}

// warmUsed checks from a run's stderr and report that it started warm.
func warmUsed(t *testing.T, r secRunResult) {
	t.Helper()
	if strings.Contains(string(r.stderr), "warm start not used") {
		t.Fatalf("the run started cold: %s", r.stderr)
	}
}

// TestWarmIdenticalSandbox: a warm member and a cold one of the same
// manifest see the same sandbox, line for line, except what the design
// says differs (package runtime/warm): the uid and gid maps read from
// inside (relative to the template's user namespace: the same host ids) and
// the number of seccomp filters (the template's, which allows a superset,
// below the member's own). The filter's effect is compared through the
// errno of the system calls it decides.
func TestWarmIdenticalSandbox(t *testing.T) {
	w := newWarmTest(t)
	tools, fx := w.tools, w.fx
	coldID, warmID := w.id("warmcold"), w.id("warmwarm")
	cold := warmRun(t, tools, fx, filepath.Join(fx.base, "cold"), coldID, warmManifest(fx, warmReport, nil))
	if cold.code != 0 {
		t.Fatalf("cold run: %s", cold)
	}
	warm := warmRun(t, tools, fx, filepath.Join(fx.base, "warm"), warmID, warmManifest(fx, warmReport, []string{"json"}))
	if warm.code != 0 {
		t.Fatalf("warm run: %s", warm)
	}
	warmUsed(t, warm)
	if !strings.Contains(string(warm.stdout), "preloaded: True") || !strings.Contains(string(cold.stdout), "preloaded: False") {
		t.Fatalf("the warm member did not come from the template that imported json:\ncold:\n%s\nwarm:\n%s", cold.stdout, warm.stdout)
	}
	if !strings.Contains(string(warm.stdout), "status.Seccomp_filters: 2") {
		t.Errorf("the warm member does not carry the template's filter and its own:\n%s", warm.stdout)
	}
	for _, want := range []string{"status.CapEff: 0000000000000000", "status.CapBnd: 0000000000000000", "status.NoNewPrivs: 1", "status.Seccomp: 2", "pids: ['1']"} {
		if !strings.Contains(string(warm.stdout), want) {
			t.Errorf("warm member: no %q in its report:\n%s", want, warm.stdout)
		}
	}
	// The root filesystem's host path names the container.
	coldOut := strings.ReplaceAll(string(cold.stdout), coldID, "ID")
	warmOut := strings.ReplaceAll(string(warm.stdout), warmID, "ID")
	if d := warmDiff(coldOut, warmOut, "uid_map", "gid_map", "status.Seccomp_filters", "preloaded"); len(d) > 0 {
		t.Errorf("the warm member's sandbox differs from the cold one's (%d lines):\n    %s", len(d), strings.Join(d, "\n    "))
	}
	for _, l := range strings.Split(string(warm.stdout), "\n") {
		if strings.HasPrefix(l, "uid_map: ") && l != "uid_map: 0 0 65536" {
			t.Errorf("warm member: %s, want 0 0 65536 (root of the template's namespace)", l)
		}
	}
}

// TestWarmProbe: the escape probe (test/probe), exec'd by a warm member,
// reports what it reports in a cold one, line for line.
func TestWarmProbe(t *testing.T) {
	w := newWarmTest(t)
	fx := w.fx
	args, _ := json.Marshal(fx.probeArgs(fx.probe))
	quoted, _ := json.Marshal(string(args)) // a JSON string is a Python string literal here
	code := "import json, os; a = json.loads(" + string(quoted) + "); os.execv(a[0], a)"
	cold := w.run("warmprobecold", warmManifest(fx, code, nil))
	warm := w.run("warmprobewarm", warmManifest(fx, code, []string{"json"}))
	if cold.code != 0 || warm.code != 0 {
		t.Fatalf("probe runs failed:\ncold %s\nwarm %s", cold, warm)
	}
	warmUsed(t, warm)
	crs, err := secParseProbe(cold.stdout)
	if err != nil {
		t.Fatal(err)
	}
	wrs, err := secParseProbe(warm.stdout)
	if err != nil {
		t.Fatal(err)
	}
	if len(crs) != len(wrs) {
		t.Fatalf("cold probe: %d checks, warm probe: %d", len(crs), len(wrs))
	}
	for i := range crs {
		c, w := crs[i], wrs[i]
		// A pid or a random name in a detail is not a difference of the
		// sandbox; blocked and check are compared exactly.
		if c.Check != w.Check || c.Blocked != w.Blocked {
			t.Errorf("probe line %d: cold %s blocked=%v (%s), warm %s blocked=%v (%s)", i, c.Check, c.Blocked, c.Detail, w.Check, w.Blocked, w.Detail)
		} else if c.Detail != w.Detail {
			t.Logf("probe %s: same result, details differ: cold %q, warm %q", c.Check, c.Detail, w.Detail)
		}
		if !w.Blocked {
			t.Errorf("warm member: %s is NOT blocked: %s", w.Check, w.Detail)
		}
	}
	t.Logf("probe: %d checks, the same result cold and warm", len(crs))
}

// TestWarmMembersIsolated: two warm members of one group alive at once see
// only their own pid namespace, share no writable mapping, and cannot
// reach each other's memory.
func TestWarmMembersIsolated(t *testing.T) {
	w := newWarmTest(t)
	fx := w.fx
	code := `
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
print("pids", sorted(p for p in os.listdir("/proc") if p.isdigit()))
print("shared_writable", [l.split()[-1] for l in open("/proc/self/maps") if l.split()[1] == "rw-s" and "/dev/shm" not in l])
# The other member's pid from the host would be needed to reach it; none
# is visible here: every pid but 1 fails, and ptrace is refused outright.
r = libc.syscall(ctypes.c_long(101), ctypes.c_long(16), ctypes.c_long(1), 0, 0)
print("ptrace_attach_1", os.strerror(ctypes.get_errno()) if r < 0 else "ok")
# The template's environment block, which every member's memory holds,
# carries nothing of a member's own environment.
print("environ_secret", b"secret-" in open("/proc/self/environ", "rb").read(), os.environ["MEMBER_SECRET"])
sys.stdout.flush()
time.sleep(1.5)
`
	res := make([]secRunResult, 2)
	var wg sync.WaitGroup
	for i := range res {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == 1 {
				time.Sleep(300 * time.Millisecond)
			}
			m := warmManifest(fx, code, []string{"json"})
			m["env"] = map[string]string{"MEMBER_SECRET": fmt.Sprintf("secret-%d", i)}
			res[i] = w.run(fmt.Sprintf("warmiso%d", i), m)
		}()
	}
	wg.Wait()
	for i, r := range res {
		if r.code != 0 {
			t.Fatalf("member %d: %s", i, r)
		}
		warmUsed(t, r)
		out := string(r.stdout)
		for _, want := range []string{"pids ['1']", "shared_writable []", "ptrace_attach_1 Operation not permitted",
			fmt.Sprintf("environ_secret False secret-%d", i)} {
			if !strings.Contains(out, want) {
				t.Errorf("member %d: no %q in:\n%s", i, want, out)
			}
		}
	}
}

// TestWarmFallback: where a template cannot serve, the member starts cold,
// and the run says why on stderr: a command that is not a Python command
// line, a preload list the template fails to import, a template that died.
func TestWarmFallback(t *testing.T) {
	w := newWarmTest(t)
	tools, fx := w.tools, w.fx
	run := w.run
	t.Run("not-python", func(t *testing.T) {
		m := warmManifest(fx, "", []string{"json"})
		m["command"] = []string{"/bin/sh", "-c", "echo cold-ok"}
		r := run("warmsh", m)
		if r.code != 0 || !strings.Contains(string(r.stdout), "cold-ok") {
			t.Fatalf("run: %s", r)
		}
		if !strings.Contains(string(r.stderr), "warm start not used: the command") || !strings.Contains(string(r.stderr), "starting cold") {
			t.Errorf("stderr does not say why the start was cold: %s", r.stderr)
		}
	})
	t.Run("import-fails", func(t *testing.T) {
		r := run("warmbadimport", warmManifest(fx, "print('cold-ok')", []string{"no_such_module_pyisolate"}))
		if r.code != 0 || !strings.Contains(string(r.stdout), "cold-ok") {
			t.Fatalf("run: %s", r)
		}
		if !strings.Contains(string(r.stderr), "exited while importing no_such_module_pyisolate") ||
			!strings.Contains(string(r.stderr), "ModuleNotFoundError") {
			t.Errorf("stderr does not say the template failed to import: %s", r.stderr)
		}
	})
	t.Run("template-died", func(t *testing.T) {
		// A cold member keeps the group alive; a warm one runs from the
		// template, which is then killed (and the warm member with it);
		// the next member gets a new template.
		groupID := w.id("warmgroup")
		gready, gstop := filepath.Join(fx.work, "group-ready"), filepath.Join(fx.work, "group-stop")
		gdone := make(chan secRunResult, 1)
		go func() {
			gdone <- warmRun(t, tools, fx, filepath.Join(fx.base, "group"), groupID,
				warmManifest(fx, "import os, time\nopen("+strconv.Quote(gready)+", 'w').close()\n"+
					"for i in range(600):\n    if os.path.exists("+strconv.Quote(gstop)+"): break\n    time.sleep(0.1)\n", nil))
		}()
		warmWaitFile(t, gready)
		keeperID := w.id("warmkeeper")
		ready := filepath.Join(fx.work, "keeper-ready")
		done := make(chan secRunResult, 1)
		go func() {
			done <- warmRun(t, tools, fx, filepath.Join(fx.base, "keeper"), keeperID,
				warmManifest(fx, "import time; open("+strconv.Quote(ready)+", 'w').close(); time.sleep(20)", []string{"json"}))
		}()
		tpl := 0
		for i := 0; i < 200 && tpl == 0; i++ {
			time.Sleep(50 * time.Millisecond)
			if _, err := os.Stat(ready); err == nil {
				tpl = warmTemplatePID(t, tools, fx.root)
			}
		}
		if tpl == 0 {
			t.Fatal("no template appeared")
		}
		// The keeper dies with the template (it lives in the template's
		// pid namespace); the kill is the template dying, not a stop.
		if err := syscall.Kill(tpl, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		k := <-done
		if k.code != 137 {
			t.Errorf("the member of a killed template: %s, want exit 137", k)
		}
		r := run("warmafter", warmManifest(fx, "print('after-ok')", []string{"json"}))
		if r.code != 0 || !strings.Contains(string(r.stdout), "after-ok") {
			t.Fatalf("run after the template died: %s", r)
		}
		warmUsed(t, r)
		if !strings.Contains(string(r.stderr), "is not serving (dead or never ready); starting a new one") {
			t.Errorf("the run after the template died does not say it replaced it: %s", r.stderr)
		}
		if err := os.WriteFile(gstop, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if g := <-gdone; g.code != 0 {
			t.Errorf("the group's cold member: %s", g)
		}
	})
}

// warmTemplatePID returns the host pid of a running template's zygote
// under state root root, or 0.
func warmTemplatePID(t testing.TB, tools *secTools, root string) int {
	for _, c := range warmPS(t, tools, root) {
		if strings.HasPrefix(c.ID, "pyisolate-warm-") && c.Status == "running" {
			return c.InitPID
		}
	}
	return 0
}

// warmCheckNoTemplates fails the test when a template container or
// directory is left under root.
func warmCheckNoTemplates(t *testing.T, root string) {
	t.Helper()
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "pyisolate-warm-") || e.Name() == "warm" {
			t.Errorf("left behind under the state root: %s", e.Name())
		}
	}
}

// TestWarmRootless: as an ordinary user (uid 65534, no subordinate ids) a
// member starts warm too, and sees the sandbox a rootless cold member sees.
// Without CAP_SYS_ADMIN the runtime takes the seccomp program libcontainer
// makes from a traced helper (package runtime/warm's own test compares it
// with the loaded filter).
func TestWarmRootless(t *testing.T) {
	tools, fx, u := rlSetup(t, []string{"/bin/true"})
	run := func(name string, preload []string) secRunResult {
		bundle := filepath.Join(fx.base, name)
		if err := os.MkdirAll(bundle, 0o755); err != nil {
			t.Fatal(err)
		}
		writeManifest(t, bundle, warmManifest(fx, warmReport, preload))
		id := secID(name)
		t.Cleanup(func() { rlCheckNoLeaks(t, u, fx, id) })
		return u.exec(tools, secRunTimeout, "run", "--id", id, bundle)
	}
	cold := run("rlcold", nil)
	warm := run("rlwarm", []string{"json"})
	if cold.code != 0 || warm.code != 0 {
		t.Fatalf("runs failed:\ncold %s\nwarm %s", cold, warm)
	}
	warmUsed(t, warm)
	if !strings.Contains(string(warm.stdout), "preloaded: True") {
		t.Fatalf("the rootless member did not start warm:\n%s", warm.stdout)
	}
	for _, want := range []string{"status.CapEff: 0000000000000000", "status.NoNewPrivs: 1", "status.Seccomp: 2", "status.Seccomp_filters: 2", "pids: ['1']", "uid_map: 0 0 1"} {
		if !strings.Contains(string(warm.stdout), want) {
			t.Errorf("rootless warm member: no %q in its report:\n%s", want, warm.stdout)
		}
	}
	coldOut := strings.ReplaceAll(string(cold.stdout), "rlcold", "X")
	warmOut := strings.ReplaceAll(string(warm.stdout), "rlwarm", "X")
	if d := warmDiff(warmIDs(coldOut), warmIDs(warmOut), "uid_map", "gid_map", "status.Seccomp_filters", "preloaded"); len(d) > 0 {
		t.Errorf("the rootless warm member's sandbox differs from the cold one's (%d lines):\n    %s", len(d), strings.Join(d, "\n    "))
	}
	if entries, _ := os.ReadDir(filepath.Join(u.root(), "warm")); len(entries) > 0 {
		t.Errorf("warm templates left after the group ended: %v", entries)
	}
}

// warmIDs replaces the random part of container ids (secID) in a report.
func warmIDs(s string) string {
	return regexp.MustCompile(`X-[0-9]+-[0-9]+`).ReplaceAllString(s, "ID")
}

// TestWarmLifecycle: a warm member is a container like any other to ps,
// exec, pause and kill: running, with its process as init; a process exec'd
// into it (pyisolate-runc exec, libcontainer's setns) lands in its
// namespaces, under its filter; pause freezes it; kill kills it.
func TestWarmLifecycle(t *testing.T) {
	w := newWarmTest(t)
	tools, fx := w.tools, w.fx
	id := w.id("warmlife")
	ready := filepath.Join(fx.work, "life-ready")
	done := make(chan secRunResult, 1)
	go func() {
		done <- warmRun(t, tools, fx, filepath.Join(fx.base, "life"), id,
			warmManifest(fx, "import time; open("+strconv.Quote(ready)+", 'w').close(); time.sleep(30)", []string{"json"}))
	}()
	warmWaitFile(t, ready)
	c := warmState(t, tools, fx.root, id)
	if c.ID == "" {
		t.Fatalf("ps does not list the warm member %s", id)
	}
	status, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(c.InitPID), "status"))
	if c.Status != "running" || !regexp.MustCompile(`NSpid:\t[0-9]+\t[0-9]+\t1\n`).Match(status) {
		t.Errorf("ps: %+v; its process's status:\n%s", c, status)
	}
	runc := ociBin(t)
	x := secExec(secRunTimeout, nil, nil, runc, "--root", fx.root, "exec", id, "/usr/bin/python3", "-c",
		"import os; print(sorted(p for p in os.listdir('/proc') if p.isdigit())); "+
			"print([l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'NoNewPrivs', 'Seccomp:'))])")
	if x.code != 0 || !regexp.MustCompile(`\['1', '[0-9]+'\]\n\['0000000000000000', '1', '2'\]`).Match(x.stdout) {
		t.Errorf("exec into the warm member: %s", x)
	}
	for _, verb := range []string{"pause", "resume"} {
		if r := secExec(secRunTimeout, nil, nil, runc, "--root", fx.root, verb, id); r.code != 0 {
			t.Errorf("%s: %s", verb, r)
		}
	}
	if k := secExec(secRunTimeout, nil, nil, tools.pyisolate, "kill", "--root", fx.root, id, "KILL"); k.code != 0 {
		t.Fatalf("kill: %s", k)
	}
	if r := <-done; r.code != 137 {
		t.Errorf("the killed warm member's run: %s, want exit 137", r)
	}
}

// TestWarmLimits: a warm member is held by its container's cgroup as a cold
// one is: over its 64Mi memory limit it is killed (exit 137, "out of
// memory"); it cannot have more processes than its pids limit.
func TestWarmLimits(t *testing.T) {
	w := newWarmTest(t)
	fx := w.fx
	run := func(name, code string, limits map[string]any) secRunResult {
		m := warmManifest(fx, code, []string{"json"})
		m["limits"] = limits
		r := w.run(name, m)
		warmUsed(t, r)
		return r
	}
	r := run("warmoom", "import sys; x = b'x' * (512 << 20); print('allocated', len(x)); sys.exit(3)",
		map[string]any{"memory": "64Mi", "pids": 64})
	if r.code != 137 || !strings.Contains(strings.ToLower(string(r.stderr)), "out of memory") || strings.Contains(string(r.stdout), "allocated") {
		t.Errorf("a warm member over its 64Mi limit: %s; want exit 137 and out of memory", r)
	}
	r = run("warmpids", `
import os, time
n = 0
for i in range(40):
    try:
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
    except OSError as e:
        print("fork failed", e.errno)
        break
print("forked", n)
`, map[string]any{"memory": "256Mi", "pids": 16})
	out := string(r.stdout)
	if r.code != 0 || !strings.Contains(out, "fork failed 11") {
		t.Errorf("a warm member with pids 16 forked freely: %s", r)
	}
}

// TestWarmDiesWithRunner: SIGKILL of `pyisolate run` ends its warm member
// at once (the template's helper sees the connection close), and the next
// run reclaims its container.
func TestWarmDiesWithRunner(t *testing.T) {
	w := newWarmTest(t)
	tools, fx := w.tools, w.fx
	id := w.id("warmorphan")
	ready := filepath.Join(fx.work, "orphan-ready")
	bundle := filepath.Join(fx.base, "orphan")
	if err := os.MkdirAll(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	writeManifest(t, bundle, warmManifest(fx, "import time; open("+strconv.Quote(ready)+", 'w').close(); time.sleep(60)", []string{"json"}))
	cmd := exec.Command(tools.pyisolate, "run", "--root", fx.root, "--id", id, bundle)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	warmWaitFile(t, ready)
	st := warmState(t, tools, fx.root, id)
	if st.Status != "running" || st.InitPID <= 0 {
		t.Fatalf("the warm member is not running: %+v", st)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join("/proc", strconv.Itoa(st.InitPID))); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the warm member (pid %d) outlived its runner by 5 s", st.InitPID)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The next run reclaims the orphan's container (and the group, and with
	// it the template) before it starts.
	if r := w.run("warmnext", warmManifest(fx, "print('next-ok')", []string{"json"})); r.code != 0 {
		t.Fatalf("the next run: %s", r)
	}
}

// warmPSEntry is a container as `pyisolate ps --json` lists it.
type warmPSEntry struct {
	ID      string `json:"id"`
	Status  string `json:"status"`
	InitPID int    `json:"pid"`
}

// warmPS returns the containers `pyisolate ps --json` lists under root.
func warmPS(t testing.TB, tools *secTools, root string) []warmPSEntry {
	t.Helper()
	ps := secExec(secRunTimeout, nil, nil, tools.pyisolate, "ps", "--root", root, "--json")
	var list []warmPSEntry
	if err := json.Unmarshal(ps.stdout, &list); err != nil {
		t.Fatalf("ps --json: %v: %s", err, ps)
	}
	return list
}

// warmState returns container id's entry in `pyisolate ps --json` under
// root (the zero value when it is not listed).
func warmState(t *testing.T, tools *secTools, root, id string) warmPSEntry {
	t.Helper()
	for _, c := range warmPS(t, tools, root) {
		if c.ID == id {
			return c
		}
	}
	return warmPSEntry{}
}
