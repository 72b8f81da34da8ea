package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestContainerdWarm: the containerd shim starts an extension whose
// manifest has a preload list from its group's template (issue 20, package
// runtime/warm): its process had the list imported before its code ran and
// carries the template's filter beneath its own, with no capabilities, as
// pid 1; `ctr task exec` lands in its pid namespace; kill and delete end it;
// and the template ends with the group, leaving nothing.
func TestContainerdWarm(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		t.Skip("/usr/bin/python3 is not installed")
	}
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		module := filepath.Join(ctrdRepoRoot(t), "examples", "hello", "hello_ext")
		empty := filepath.Join(d.Dir, "empty")
		out := filepath.Join(d.Dir, "warm-out")
		for _, dir := range []string{empty, out} {
			if err := os.MkdirAll(dir, 0o777); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chmod(out, 0o777); err != nil {
			t.Fatal(err)
		}
		report := filepath.Join(out, "report")
		manifest := fmt.Sprintf(`io.pyisolate.manifest={"name":"warmc","module_path":%q,"group":"warmc","preload":["json"],`+
			`"sandbox":{"writable_paths":[%q]}}`, module, out)
		code := fmt.Sprintf("import json, sys, time\n"+
			"st = [l.strip() for l in open('/proc/self/status') if l.startswith(('CapEff', 'NoNewPrivs', 'Seccomp'))]\n"+
			"open(%q + '.tmp', 'w').write(repr(('json' in sys.modules, st)))\n"+
			"import os; os.rename(%q + '.tmp', %q)\n"+
			"time.sleep(60)\n", report, report, report)
		id := "warmc"
		d.Ctr(t, 0, "run", "-d", "--runtime", ctrdRuntime, "--annotation", manifest, "--rootfs", empty, id,
			"/usr/bin/python3", "-c", code)
		warmWaitFile(t, report)
		got, _ := os.ReadFile(report)
		want := "(True, ['CapEff:\\t0000000000000000', 'NoNewPrivs:\\t1', 'Seccomp:\\t2', 'Seccomp_filters:\\t2'])"
		if string(got) != want {
			t.Errorf("the member's report: %q, want %q (started warm)\ncontainerd log:\n%s", got, want, d.LogTail(20))
		}
		r := d.Ctr(t, 0, "task", "exec", "--exec-id", "x1", id, "/usr/bin/python3", "-c",
			"import os; print(sorted(p for p in os.listdir('/proc') if p.isdigit()))")
		if !regexp.MustCompile(`^\['1', '[0-9]+'\]$`).MatchString(strings.TrimSpace(r.Stdout)) {
			t.Errorf("exec into the warm member sees %q, want pid 1 and itself", r.Stdout)
		}
		d.Ctr(t, 0, "task", "kill", "-s", "SIGKILL", id)
		for i := 0; i < 200; i++ {
			if d.Tasks(t)[id] == "STOPPED" {
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
		d.Ctr(t, 0, "task", "delete", id)
		d.Ctr(t, 0, "container", "rm", id)
		ctrdAssertClean(t, d, id)
		ents, _ := filepath.Glob(filepath.Join(ctrdStateBase, "default", "pyisolate-warm-*"))
		if dir, err := os.ReadDir(filepath.Join(ctrdStateBase, "default", "warm")); err == nil && len(dir) > 0 {
			ents = append(ents, "warm/")
		}
		if len(ents) > 0 {
			t.Errorf("the group's template was left after its last member: %v", ents)
		}
	})
}
