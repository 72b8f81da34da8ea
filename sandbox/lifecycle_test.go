package sandbox

import (
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

func TestRecordedOf(t *testing.T) {
	cases := []struct {
		ann  map[string]string
		want Recorded
	}{
		{map[string]string{spec.AnnotationGroup: "g"}, Recorded{Group: "g"}},
		{map[string]string{spec.AnnotationPolicyOut: "faithful"}, Recorded{Policy: spec.PolicyFaithful}},
		{map[string]string{spec.AnnotationPolicyOut: "bogus"}, Recorded{Policy: spec.PolicyHardened}},
		{nil, Recorded{Policy: spec.PolicyHardened}},
	}
	for _, c := range cases {
		got := RecordedOf(runtime.State{Annotations: c.ann})
		if got != c.want {
			t.Errorf("RecordedOf(%v) = %+v, want %+v", c.ann, got, c.want)
		}
		if got.Extension() != (c.want.Group != "") {
			t.Errorf("Extension() of %+v = %v", got, got.Extension())
		}
	}
}

func TestExecSpec(t *testing.T) {
	caps := &specs.LinuxCapabilities{Bounding: []string{"CAP_SYS_ADMIN"}, Effective: []string{"CAP_SYS_ADMIN"}}
	ps := specs.Process{Args: []string{"sh"}, Capabilities: caps, ApparmorProfile: "unconfined"}
	ext, err := ExecSpec(ps, Recorded{Group: "g"})
	if err != nil || ext.Capabilities != nil || !ext.NoNewPrivileges || ext.ApparmorProfile != "" {
		t.Errorf("extension exec = %+v, %v; want the sandbox's capabilities, no_new_privileges, no profile", ext, err)
	}
	if _, err := ExecSpec(ps, Recorded{Policy: spec.PolicyHardened}); err == nil || !IsUserError(err) {
		t.Errorf("hardened exec with CAP_SYS_ADMIN: %v, want a user error", err)
	}
	f, err := ExecSpec(ps, Recorded{Policy: spec.PolicyFaithful})
	if err != nil || f.Capabilities != caps || f.NoNewPrivileges {
		t.Errorf("faithful exec = %+v, %v; want it as asked", f, err)
	}
}

func TestCheckUpdate(t *testing.T) {
	i := func(v int64) *int64 { return &v }
	cur := &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i(100)}, Pids: &specs.LinuxPids{Limit: i(10)}}
	cases := []struct {
		name string
		rec  Recorded
		next *specs.LinuxResources
		ok   bool
	}{
		{"lower memory", Recorded{Group: "g"}, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i(50)}}, true},
		{"raise memory", Recorded{Group: "g"}, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i(200)}}, false},
		{"remove memory", Recorded{Group: "g"}, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i(-1)}}, false},
		{"raise pids", Recorded{Group: "g"}, &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i(11)}}, false},
		{"cpu only", Recorded{Group: "g"}, &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0"}}, true},
		{"plain raises", Recorded{Policy: spec.PolicyHardened}, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i(200)}}, true},
	}
	for _, c := range cases {
		if err := CheckUpdate(c.rec, cur, c.next); (err == nil) != c.ok {
			t.Errorf("%s: %v, want ok %v", c.name, err, c.ok)
		}
	}
}
