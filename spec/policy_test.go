package spec

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ctrDefaultSpec is roughly what `ctr run --rootfs DIR` hands a runtime:
// containerd's default capabilities, private namespaces, a read-only sysfs,
// its default device rules, no seccomp profile.
func ctrDefaultSpec() *specs.Spec {
	c1, c5, c136 := int64(1), int64(5), int64(136)
	m3, m0 := int64(3), int64(0)
	caps := slices.Clone(HardenedCapabilities)
	return &specs.Spec{
		Version:  specs.Version,
		Hostname: "box",
		Root:     &specs.Root{Path: "/tmp/rootfs"},
		Process: &specs.Process{
			Args: []string{"/bin/sh", "-c", "echo hi"},
			Env:  []string{"PATH=/bin"},
			Cwd:  "/",
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
		},
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/data", Type: "bind", Source: "/var/lib/kubelet/pods/x/volumes/data", Options: []string{"rbind", "ro"}},
		},
		Annotations: map[string]string{"a": "b"},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
				{Type: specs.MountNamespace}, {Type: specs.NetworkNamespace},
			},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{
					{Allow: false, Access: "rwm"},
					{Allow: true, Type: "c", Major: &c1, Minor: &m3, Access: "rwm"},
					{Allow: true, Type: "c", Major: &c5, Minor: &m0, Access: "rwm"},
					{Allow: true, Type: "c", Major: &c136, Access: "rwm"},
					{Allow: true, Type: "c", Access: "m"},
				},
			},
		},
	}
}

func TestApplyPolicyRefuses(t *testing.T) {
	i := func(n int64) *int64 { return &n }
	for _, tc := range []struct {
		name   string
		change func(s *specs.Spec)
		hc     HostChecks
		field  string
		reason string
	}{
		{"privileged devices", func(s *specs.Spec) {
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Access: "rwm"})
		}, HostChecks{}, "linux.resources.devices[5]", "allows every device"},
		{"capability", func(s *specs.Spec) {
			s.Process.Capabilities.Bounding = append(s.Process.Capabilities.Bounding, "CAP_SYS_ADMIN")
		}, HostChecks{}, "process.capabilities.bounding", "CAP_SYS_ADMIN is outside"},
		{"ambient capability", func(s *specs.Spec) {
			s.Process.Capabilities.Ambient = []string{"CAP_NET_ADMIN"}
		}, HostChecks{}, "process.capabilities.ambient", "CAP_NET_ADMIN"},
		{"host network", func(s *specs.Spec) {
			s.Linux.Namespaces = slices.DeleteFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace })
		}, HostChecks{}, "linux.namespaces", "no network namespace"},
		{"host pid", func(s *specs.Spec) {
			s.Linux.Namespaces = s.Linux.Namespaces[1:]
		}, HostChecks{}, "linux.namespaces", "no pid namespace"},
		{"host ipc by path", func(s *specs.Spec) {
			s.Linux.Namespaces[1].Path = "/proc/1/ns/ipc"
		}, HostChecks{IsHostNamespace: func(t specs.LinuxNamespaceType, p string) bool { return p == "/proc/1/ns/ipc" }},
			"linux.namespaces", "ipc namespace /proc/1/ns/ipc is the host's"},
		{"host device node", func(s *specs.Spec) {
			s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/kvm", Type: "c", Major: 10, Minor: 232}}
		}, HostChecks{}, "linux.devices[0]", "host device /dev/kvm"},
		{"device rule", func(s *specs.Spec) {
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices,
				specs.LinuxDeviceCgroup{Allow: true, Type: "b", Major: i(7), Minor: i(0), Access: "rw"})
		}, HostChecks{}, "linux.resources.devices[5]", "host device b 7:0 rw"},
		{"/dev/mem rule", func(s *specs.Spec) {
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices,
				specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: i(1), Minor: i(1), Access: "r"})
		}, HostChecks{}, "linux.resources.devices[5]", "c 1:1 r"},
		{"bind of /", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/host", Type: "bind", Source: "/", Options: []string{"rbind"}})
		}, HostChecks{}, "mounts[/host]", "binds host path /"},
		{"bind of /etc by option", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/e", Type: "none", Source: "/etc/", Options: []string{"bind"}})
		}, HostChecks{}, "mounts[/e]", "binds host path /etc/"},
		{"bind of a symlink to /root", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/r", Type: "bind", Source: "/tmp/link"})
		}, HostChecks{Resolve: func(p string) string {
			if p == "/tmp/link" {
				return "/root"
			}
			return p
		}}, "mounts[/r]", "(/root and its ancestors"},
		{"read-write sysfs", func(s *specs.Spec) {
			s.Mounts[1].Options = []string{"nosuid", "rw"}
		}, HostChecks{}, "mounts[/sys]", "sysfs mounted read-write"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := ctrDefaultSpec()
			tc.change(s)
			_, err := ApplyPolicy(s, PolicyHardened, fullHost(), tc.hc)
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("want a *PolicyError, got %v", err)
			}
			if pe.Field != tc.field || !strings.Contains(err.Error(), tc.reason) ||
				!strings.Contains(err.Error(), "; refused by policy hardened") || strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q: want field %q, %q, one line ending with the policy", err, tc.field, tc.reason)
			}
			// Faithful runs it as asked.
			out, err := ApplyPolicy(s, PolicyFaithful, fullHost(), tc.hc)
			if err != nil {
				t.Fatalf("faithful: %v", err)
			}
			s.Annotations[AnnotationPolicyOut] = "faithful"
			s.Annotations[AnnotationRestriction] = "none"
			if !reflect.DeepEqual(out, s) {
				t.Errorf("faithful changed the request")
			}
		})
	}
}

func TestApplyPolicyHardenedKeepsAndFloors(t *testing.T) {
	in := ctrDefaultSpec()
	before, _ := cloneSpec(in)
	out, err := ApplyPolicy(in, PolicyHardened, fullHost(), HostChecks{})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(in, before) {
		t.Fatal("ApplyPolicy modified its input")
	}
	if !reflect.DeepEqual(out.Process.Capabilities, in.Process.Capabilities) {
		t.Errorf("capabilities within the allow list were changed: %+v", out.Process.Capabilities)
	}
	if !reflect.DeepEqual(out.Mounts, in.Mounts) || !reflect.DeepEqual(out.Linux.Namespaces, in.Linux.Namespaces) {
		t.Error("mounts or namespaces were changed")
	}
	if !out.Process.NoNewPrivileges || out.Linux.Seccomp == nil || !slices.Contains(out.Linux.MaskedPaths, "/proc/kcore") {
		t.Errorf("floors missing: nnp %v, seccomp %v, masked %v", out.Process.NoNewPrivileges, out.Linux.Seccomp != nil, out.Linux.MaskedPaths)
	}
	if out.Linux.Sysctl["net.ipv4.ip_unprivileged_port_start"] != "0" {
		t.Errorf("sysctls %v", out.Linux.Sysctl)
	}
	want := "no-new-privileges,seccomp-default,masked-paths,unprivileged-ports"
	if got := out.Annotations[AnnotationFloors]; got != want {
		t.Errorf("%s = %q, want %q", AnnotationFloors, got, want)
	}
	if out.Annotations[AnnotationPolicyOut] != "hardened" || out.Annotations[AnnotationHardened] != "true" || out.Annotations["a"] != "b" {
		t.Errorf("annotations %v", out.Annotations)
	}

	// A request that already has what the floors give is not changed, and
	// a GPU device with its rule is allowed.
	in = out
	major := int64(195)
	in.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/nvidia0", Type: "c", Major: 195, Minor: 0}}
	in.Linux.Resources.Devices = append(in.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Type: "c", Major: &major, Access: "rw"})
	out, err = ApplyPolicy(in, PolicyHardened, fullHost(), HostChecks{})
	if err != nil {
		t.Fatal(err)
	}
	if f, ok := out.Annotations[AnnotationFloors]; ok {
		t.Errorf("floors applied twice: %q", f)
	}

	// Seccomp cannot be loaded here: the spec says it is degraded.
	h := fullHost()
	h.Seccomp = false
	out, err = ApplyPolicy(ctrDefaultSpec(), PolicyHardened, h, HostChecks{})
	if err != nil || out.Annotations[AnnotationDegraded] != "seccomp" {
		t.Errorf("no seccomp on the host: %v, %v", err, out.Annotations)
	}
}

func TestPolicyTighten(t *testing.T) {
	for _, tc := range []struct {
		node       Policy
		annotation string
		want       Policy
		err        string
	}{
		{PolicyHardened, "", PolicyHardened, ""},
		{PolicyFaithful, "", PolicyFaithful, ""},
		{PolicyFaithful, "hardened", PolicyHardened, ""},
		{PolicyHardened, "hardened", PolicyHardened, ""},
		{PolicyHardened, "faithful", "", `io.pyisolate.policy: "faithful" would loosen this node's policy "hardened"`},
		{PolicyHardened, "strict", "", `io.pyisolate.policy: unknown policy "strict"`},
	} {
		got, err := tc.node.Tighten(tc.annotation)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s.Tighten(%q) = %q, %v; want %q, %q", tc.node, tc.annotation, got, err, tc.want, tc.err)
		}
	}
}

func TestCheckExtensionRequest(t *testing.T) {
	cri := func() *specs.Spec {
		s := ctrDefaultSpec()
		s.Mounts = []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc"},
			{Destination: "/etc/hosts", Type: "bind", Source: "/var/lib/containerd/sandboxes/x/hosts", Options: []string{"rbind"}},
			{Destination: "/dev/shm", Type: "bind", Source: "/run/containerd/sandboxes/x/shm", Options: []string{"rbind"}},
			// Docker 20.10's way to name the manifest (LoadBundle reads it).
			{Destination: ManifestMountPath, Type: "bind", Source: "/srv/ext/pyisolate.json", Options: []string{"rbind", "ro"}},
		}
		return s
	}
	if err := CheckExtensionRequest(cri(), HostChecks{}); err != nil {
		t.Fatalf("a CRI-like request: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(s *specs.Spec)
		want   string
	}{
		{"privileged", func(s *specs.Spec) {
			s.Linux.Resources.Devices = append(s.Linux.Resources.Devices, specs.LinuxDeviceCgroup{Allow: true, Access: "rwm"})
		}, "linux.resources.devices[5]: allows every device"},
		{"capability", func(s *specs.Spec) { s.Process.Capabilities.Effective = []string{"CAP_SYS_PTRACE"} },
			"process.capabilities.effective: CAP_SYS_PTRACE"},
		{"host network", func(s *specs.Spec) { s.Linux.Namespaces = s.Linux.Namespaces[:4] }, "linux.namespaces: no network namespace"},
		{"extra bind", func(s *specs.Spec) {
			s.Mounts = append(s.Mounts, specs.Mount{Destination: "/data", Type: "bind", Source: "/srv/data"})
		}, "mounts[/data]: binds /srv/data: an extension's paths come from its manifest"},
		{"device", func(s *specs.Spec) {
			s.Linux.Devices = []specs.LinuxDevice{{Path: "/dev/fuse", Type: "c", Major: 10, Minor: 229}}
		}, "linux.devices[0]: host device /dev/fuse"},
	} {
		s := cri()
		tc.change(s)
		err := CheckExtensionRequest(s, HostChecks{})
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) || !strings.Contains(err.Error(), "; refused: an extension runs in its manifest's sandbox") {
			t.Errorf("%s: %v, want %q...", tc.name, err, tc.want)
		}
	}
}
