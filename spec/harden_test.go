package spec

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ctrLikeSpec is roughly what `ctr run --rootfs DIR` hands a runtime.
func ctrLikeSpec() *specs.Spec {
	netns := "/var/run/netns/test"
	major := int64(1)
	return &specs.Spec{
		Version:  specs.Version,
		Hostname: "box",
		Root:     &specs.Root{Path: "/tmp/rootfs"},
		Process: &specs.Process{
			Args: []string{"/bin/sh", "-c", "echo hi"},
			Env:  []string{"PATH=/bin", "FOO=bar"},
			Cwd:  "/work",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: []string{"CAP_CHOWN", "CAP_SYS_ADMIN"}, Effective: []string{"CAP_CHOWN"},
				Permitted: []string{"CAP_CHOWN"},
			},
			Rlimits: []specs.POSIXRlimit{{Type: "RLIMIT_NOFILE", Hard: 1024, Soft: 1024}},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/data", Type: "bind", Source: "/srv/data", Options: []string{"rbind", "ro"}},
		},
		Annotations: map[string]string{"a": "b"},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.NetworkNamespace, Path: netns},
			},
			MaskedPaths: []string{"/proc/custom"},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: true, Type: "c", Major: &major, Access: "rw"}},
			},
			CgroupsPath: "/mine/c1",
		},
	}
}

func TestHardenKeepsCallerSpec(t *testing.T) {
	in := ctrLikeSpec()
	before, _ := cloneSpec(in)
	out, err := Harden(in, fullHost())
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, before) {
		t.Fatal("Harden modified its input")
	}
	if out.Root.Path != "/tmp/rootfs" || out.Root.Readonly {
		t.Errorf("root = %+v, want the caller's, writable", out.Root)
	}
	if !slices.Equal(out.Process.Args, in.Process.Args) || !slices.Equal(out.Process.Env, in.Process.Env) ||
		out.Process.Cwd != "/work" || !reflect.DeepEqual(out.Process.Rlimits, in.Process.Rlimits) {
		t.Errorf("process changed: %+v", out.Process)
	}
	if !reflect.DeepEqual(out.Mounts, in.Mounts) {
		t.Errorf("mounts changed: %+v", out.Mounts)
	}
	if out.Hostname != "box" || out.Linux.CgroupsPath != "/mine/c1" || out.Annotations["a"] != "b" {
		t.Errorf("hostname, cgroups path or annotations changed")
	}

	ro := *in
	ro.Root = &specs.Root{Path: "/tmp/rootfs", Readonly: true}
	out2, err := Harden(&ro, fullHost())
	if err != nil {
		t.Fatal(err)
	}
	if !out2.Root.Readonly {
		t.Error("a read-only root asked by the caller was lost")
	}
}

func TestHardenApplies(t *testing.T) {
	out, err := Harden(ctrLikeSpec(), fullHost())
	if err != nil {
		t.Fatal(err)
	}
	c := out.Process.Capabilities
	if c == nil || len(c.Bounding)+len(c.Effective)+len(c.Permitted)+len(c.Inheritable)+len(c.Ambient) != 0 ||
		c.Bounding == nil {
		t.Errorf("capabilities not all dropped: %+v", c)
	}
	if !out.Process.NoNewPrivileges {
		t.Error("noNewPrivileges not set")
	}
	if out.Linux.Seccomp == nil || Allowed(out.Linux.Seccomp, "ptrace") || !Allowed(out.Linux.Seccomp, "read") {
		t.Error("default seccomp profile missing or wrong")
	}
	for _, p := range []string{"/proc/custom", "/proc/kcore", "/proc/keys", "/proc/interrupts"} {
		if !slices.Contains(out.Linux.MaskedPaths, p) {
			t.Errorf("masked paths lack %s: %v", p, out.Linux.MaskedPaths)
		}
	}
	if !slices.Contains(out.Linux.ReadonlyPaths, "/proc/sys") {
		t.Errorf("readonly paths lack /proc/sys: %v", out.Linux.ReadonlyPaths)
	}
	want := map[specs.LinuxNamespaceType]string{
		specs.PIDNamespace: "", specs.IPCNamespace: "", specs.UTSNamespace: "", specs.MountNamespace: "",
		specs.NetworkNamespace: "/var/run/netns/test",
	}
	if len(out.Linux.Namespaces) != len(want) {
		t.Errorf("namespaces = %+v", out.Linux.Namespaces)
	}
	for _, ns := range out.Linux.Namespaces {
		if p, ok := want[ns.Type]; !ok || p != ns.Path {
			t.Errorf("namespace %+v not expected", ns)
		}
	}
	d := out.Linux.Resources.Devices
	if len(d) != 2 || !isDenyAll(d[0]) || !d[1].Allow {
		t.Errorf("devices = %+v, want deny-all then the caller's rule", d)
	}
	if out.Annotations[AnnotationHardened] != "true" || out.Annotations[AnnotationRestriction] != "none" {
		t.Errorf("annotations = %v", out.Annotations)
	}
	if _, ok := out.Annotations[AnnotationDegraded]; ok {
		t.Error("full host marked degraded")
	}
	// Hardening twice changes nothing more.
	again, err := Harden(out, fullHost())
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(again)
	b, _ := json.Marshal(out)
	if string(a) != string(b) {
		t.Errorf("Harden is not idempotent:\n%s\n%s", a, b)
	}
}

func TestHardenAddsNetworkAndKeepsSeccomp(t *testing.T) {
	s := ctrLikeSpec()
	s.Linux.Namespaces = nil
	own := &specs.LinuxSeccomp{DefaultAction: specs.ActErrno}
	s.Linux.Seccomp = own
	out, err := Harden(s, fullHost())
	if err != nil {
		t.Fatal(err)
	}
	if !hasNamespace(out.Linux, specs.NetworkNamespace) || len(out.Linux.Namespaces) != 5 {
		t.Errorf("namespaces = %+v", out.Linux.Namespaces)
	}
	if !reflect.DeepEqual(out.Linux.Seccomp, own) {
		t.Error("caller's seccomp profile replaced")
	}
}

func TestHardenDegraded(t *testing.T) {
	s := ctrLikeSpec()
	s.Linux = nil
	h := fullHost()
	h.Seccomp = false
	h.Restriction = RestrictionNoCaps
	out, err := Harden(s, h)
	if err != nil {
		t.Fatal(err)
	}
	if out.Linux.Seccomp != nil || len(out.Linux.Namespaces) != 0 {
		t.Errorf("degraded host got seccomp or namespaces: %+v", out.Linux)
	}
	if got := DegradedList(out); !slices.Equal(got, []string{"namespaces", "seccomp"}) {
		t.Errorf("degraded = %v", got)
	}
	if _, err := Harden(ctrLikeSpec(), Host{Restriction: RestrictionUnsupported}); err == nil {
		t.Error("unsupported host accepted")
	}
	for _, bad := range []*specs.Spec{nil, {Root: &specs.Root{Path: "/x"}}, {Process: &specs.Process{Args: []string{"x"}}}} {
		if _, err := Harden(bad, fullHost()); err == nil {
			t.Errorf("Harden(%+v) accepted", bad)
		}
	}
}
