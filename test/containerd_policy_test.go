package test

// The policy for plain containers through containerd 1.6 and 2.x: under
// hardened (no runtime options) `ctr run --privileged`, `--net-host` and a
// bind of host / are refused with one line naming the field and the policy;
// with a runtime config saying faithful (ctr --runtime-config-path, as the
// CRI's runtime options pass it) the same requests run as runc runs them.

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const ctrdPolicyTimeout = 60 * time.Second

func TestContainerdPolicy(t *testing.T) {
	ctrdEach(t, func(t *testing.T, d *ctrdDaemon) {
		for _, tc := range []struct {
			name  string
			flags []string
			want  string
		}{
			{"privileged", []string{"--privileged"}, "linux.resources.devices[0]: allows every device (a privileged container); refused by policy hardened"},
			{"net-host", []string{"--net-host"}, "linux.namespaces: no network namespace: the container would share the host's; refused by policy hardened"},
			{"bind of /", []string{"--mount", "type=bind,src=/,dst=/host,options=rbind:ro"}, "mounts[/host]: binds host path / (/ and its ancestors may not be bound); refused by policy hardened"},
		} {
			id := "refused-" + strings.NewReplacer(" ", "-", "/", "root").Replace(tc.name)
			r := d.ctr(ctrdPolicyTimeout, d.RunArgs(append([]string{"--rm"}, tc.flags...), id, "/bin/true")...)
			// One line of ctr's says it all (containerd 2.x may print a
			// deprecation warning of its own before it).
			oneLine := false
			for _, l := range strings.Split(r.Stderr, "\n") {
				oneLine = oneLine || (strings.HasPrefix(l, "ctr: ") && strings.Contains(l, tc.want))
			}
			if r.Code == 0 || !oneLine {
				t.Errorf("%s under hardened: want one line of ctr saying %q, got %s", tc.name, tc.want, r)
			}
		}
		if tasks := d.Tasks(t); len(tasks) != 0 {
			t.Errorf("refused containers left tasks: %v", tasks)
		}

		// Faithful: run as asked.
		cfg := filepath.Join(d.Dir, "faithful.toml")
		if err := os.WriteFile(cfg, []byte("policy = \"faithful\"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		faithful := []string{"--rm", "--runtime-config-path", cfg}
		r := d.Ctr(t, 0, d.RunArgs(append(faithful, "--net-host"), "faithful-net", "/bin/sh", "-c", "readlink /proc/self/ns/net")...)
		hostNet, _ := os.Readlink("/proc/self/ns/net")
		if strings.TrimSpace(r.Stdout) != hostNet {
			t.Errorf("faithful --net-host: container net ns %q, host %q", strings.TrimSpace(r.Stdout), hostNet)
		}
		r = d.Ctr(t, 0, d.RunArgs(append(faithful, "--privileged"), "faithful-priv", "/bin/grep", "-E", "^(CapBnd|NoNewPrivs|Seccomp):", "/proc/self/status")...)
		if !strings.Contains(r.Stdout, "Seccomp:\t0") || !ctrdHasCap(r.Stdout, "CapBnd", unix.CAP_SYS_ADMIN) {
			t.Errorf("faithful --privileged: want no seccomp and CAP_SYS_ADMIN, got\n%s", r.Stdout)
		}

		// An annotation tightens a faithful node's policy, never loosens a
		// hardened one.
		r = d.ctr(ctrdPolicyTimeout, d.RunArgs([]string{"--rm", "--annotation", "io.pyisolate.policy=faithful", "--net-host"}, "loosened", "/bin/true")...)
		if r.Code == 0 || !strings.Contains(r.Stderr, `io.pyisolate.policy: "faithful" would loosen this node's policy "hardened"`) {
			t.Errorf("an annotation loosening the policy: want a refusal, got %s", r)
		}
		r = d.ctr(ctrdPolicyTimeout, d.RunArgs(append(faithful, "--annotation", "io.pyisolate.policy=hardened", "--net-host"), "tightened2", "/bin/true")...)
		if r.Code == 0 || !strings.Contains(r.Stderr, "refused by policy hardened") {
			t.Errorf("an annotation tightening a faithful node: want the hardened refusal, got %s", r)
		}
	})
}

// ctrdHasCap reports whether the status line field of status has capability
// bit cp.
func ctrdHasCap(status, field string, cp int) bool {
	for _, l := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return err == nil && caps&(1<<cp) != 0
		}
	}
	return false
}
