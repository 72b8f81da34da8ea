package runtime

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/opencontainers/runc/libcontainer/configs"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestTakeRlimitAS(t *testing.T) {
	nofile := configs.Rlimit{Type: unix.RLIMIT_NOFILE, Soft: 10, Hard: 20}
	as := configs.Rlimit{Type: unix.RLIMIT_AS, Soft: 1 << 30, Hard: 2 << 30}
	tests := []struct {
		name string
		in   []configs.Rlimit
		rest []configs.Rlimit
		as   *configs.Rlimit
	}{
		{name: "none", in: nil},
		{name: "other", in: []configs.Rlimit{nofile}, rest: []configs.Rlimit{nofile}},
		{name: "as", in: []configs.Rlimit{as}, rest: []configs.Rlimit{}, as: &as},
		{name: "both", in: []configs.Rlimit{as, nofile}, rest: []configs.Rlimit{nofile}, as: &as},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rest, got := takeRlimitAS(tc.in)
			if len(rest) != len(tc.rest) || (len(rest) > 0 && rest[0] != tc.rest[0]) {
				t.Errorf("rest = %v, want %v", rest, tc.rest)
			}
			if (got == nil) != (tc.as == nil) || got != nil && *got != *tc.as {
				t.Errorf("as = %v, want %v", got, tc.as)
			}
		})
	}
}

// TestRlimitAS runs a container with seccomp and a 1 GiB address-space
// limit, which runtime-tools' process_rlimits asks for: the init (a Go
// binary that reserves more than that) must still load the filter, and the
// container's process and an exec'd one must run under exactly the limit.
func TestRlimitAS(t *testing.T) {
	r := testRuntime(t)
	id := testID(t)
	ctx := context.Background()
	s := newSpec(t, r, id, "sh", "-c", "grep 'Max address space' /proc/self/limits; exec sleep 30")
	s.Process.Rlimits = append(s.Process.Rlimits, specs.POSIXRlimit{Type: "RLIMIT_AS", Soft: 1 << 30, Hard: 1 << 30})
	// containerd's default profile with its compat ABIs, as big a filter
	// as runtime-tools' default config: libseccomp allocates while it
	// builds it.
	s.Linux.Seccomp = seccomp.DefaultProfile(s)
	var out bytes.Buffer
	c, err := r.Create(ctx, id, s, CreateOptions{Stdout: &out})
	if err != nil {
		t.Fatalf("create with RLIMIT_AS 1 GiB and seccomp: %v", err)
	}
	defer c.Delete(ctx, true)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// limits execs p, which reads its address-space limit after pause (a
	// tight RLIMIT_AS lands just after an exec starts: rlimit_as.go).
	limits := func(p *specs.Process, pause string) string {
		t.Helper()
		var b bytes.Buffer
		p.Args = []string{"sh", "-c", "sleep " + pause + "; grep 'Max address space' /proc/self/limits"}
		p.Cwd, p.Env = "/", []string{"PATH=/usr/bin:/bin"}
		pr, err := c.Exec(ctx, p, Stdio{Stdout: &b})
		if err != nil {
			t.Fatalf("exec: %v", err)
		}
		if st, err := pr.Wait(ctx); err != nil || st.Code != 0 {
			t.Fatalf("exec: %+v, %v", st, err)
		}
		return strings.Join(strings.Fields(b.String()), " ")
	}
	const want = "Max address space 1073741824 1073741824 bytes"
	// An exec with no rlimits of its own gets the init's.
	if got := limits(&specs.Process{}, "0.5"); got != want {
		t.Errorf("exec, init's rlimits: %q, want %q", got, want)
	}
	// One with its own RLIMIT_AS gets that, and nothing else changes; one
	// that leaves the init room (4 GiB and up) is set before it starts.
	for _, tc := range []struct {
		limit uint64
		pause string
		want  string
	}{
		{2 << 30, "0.5", "Max address space 2147483648 2147483648 bytes"},
		{8 << 30, "0", "Max address space 8589934592 8589934592 bytes"},
	} {
		own := &specs.Process{Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_AS", Soft: tc.limit, Hard: tc.limit}}}
		if got := limits(own, tc.pause); got != tc.want {
			t.Errorf("exec, own RLIMIT_AS %d: %q, want %q", tc.limit, got, tc.want)
		}
	}
	if err := c.Signal(unix.SIGKILL, true); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(strings.Fields(out.String()), " "); got != want {
		t.Errorf("init: %q, want %q", got, want)
	}
	if err := c.Delete(ctx, false); err != nil {
		t.Fatal(err)
	}
}
