package hooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	pspec "github.com/pyisolate/pyisolate-oci/spec"
)

func TestRequestedDevices(t *testing.T) {
	tests := []struct {
		name    string
		ann     map[string]string
		extra   []string
		want    []string
		wantErr string
	}{
		{name: "none", ann: map[string]string{"io.pyisolate.x": "y"}, want: nil},
		{
			name: "keys sorted, names in order, extra last, no duplicates",
			ann: map[string]string{
				"cdi.k8s.io/b":  "vendor.com/gpu=2,vendor.com/gpu=1",
				"cdi.k8s.io/a":  "vendor.com/gpu=0",
				"not.cdi/other": "junk",
			},
			extra: []string{"vendor.com/gpu=1", "other.org/net=eth0"},
			want:  []string{"vendor.com/gpu=0", "vendor.com/gpu=2", "vendor.com/gpu=1", "other.org/net=eth0"},
		},
		{name: "bad annotation value", ann: map[string]string{"cdi.k8s.io/x": "gpu0"}, wantErr: `annotation cdi.k8s.io/x: invalid CDI device name "gpu0"`},
		{name: "bad extra", extra: []string{"nvidia.com/gpu"}, wantErr: `CDI device "nvidia.com/gpu"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := RequestedDevices(tt.ann, tt.extra)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// cdiFixture is a CDI spec dir with one vendor spec whose device "dev0" has
// a fake device node, a mount, env and a hook, and whose spec-wide edits
// add env.
type cdiFixture struct {
	specDir, hostNode, mountSrc, marker string
}

func newCDIFixture(t *testing.T) cdiFixture {
	t.Helper()
	tmp := t.TempDir()
	f := cdiFixture{specDir: filepath.Join(tmp, "cdi"), mountSrc: filepath.Join(tmp, "data"), marker: filepath.Join(tmp, "marker")}
	f.hostNode = fakeDevice(t, tmp, "fake0")
	writeFile(t, f.mountSrc, "hello.txt", "hi\n")
	writeFile(t, f.specDir, "example.yaml", fmt.Sprintf(`cdiVersion: "0.6.0"
kind: example.com/fake
containerEdits:
  env: ["FAKE_VENDOR=1"]
devices:
- name: dev0
  containerEdits:
    env: ["FAKE_DEVICE=dev0"]
    deviceNodes:
    - path: /dev/fake0
      hostPath: %s
    mounts:
    - hostPath: %s
      containerPath: /opt/fake
      options: ["ro", "bind"]
    hooks:
    - hookName: createContainer
      path: /bin/sh
      args: ["sh", "-c", "cat > %s"]
- name: dev1
  containerEdits:
    env: ["FAKE_DEVICE1=dev1"]
`, f.hostNode, f.mountSrc, f.marker))
	return f
}

func TestInjectCDI(t *testing.T) {
	f := newCDIFixture(t)
	const dev = "example.com/fake=dev0"
	tests := []struct {
		name        string
		restriction pspec.Restriction
		gpus        string
		opts        func(CDIOptions) CDIOptions
		wantDevs    []string
		wantErr     string
		check       func(t *testing.T, s *specs.Spec)
	}{
		{
			name: "manifest gpus annotation", restriction: pspec.RestrictionSysctl, gpus: `"` + dev + `"`,
			wantDevs: []string{dev},
			check: func(t *testing.T, s *specs.Spec) {
				i := slices.IndexFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == "/dev/fake0" })
				if i < 0 {
					t.Fatalf("no /dev/fake0 in devices %+v", s.Linux.Devices)
				}
				if d := s.Linux.Devices[i]; d.Type != "c" || d.Major != 1 || d.Minor != 3 {
					t.Errorf("device %+v, want c 1:3", d)
				}
				if !deviceAllowed(s.Linux.Resources, s.Linux.Devices[i]) {
					t.Errorf("device cgroup does not allow /dev/fake0: %+v", s.Linux.Resources.Devices)
				}
				if r := s.Linux.Resources.Devices[0]; r.Allow {
					t.Errorf("first rule %+v, want Build's deny-all kept first", r)
				}
				checkCommonEdits(t, s, f)
			},
		},
		{
			name: "user namespace: host-path device becomes a bind mount", restriction: pspec.RestrictionNone, gpus: `"` + dev + `"`,
			wantDevs: []string{dev},
			check: func(t *testing.T, s *specs.Spec) {
				if slices.ContainsFunc(s.Linux.Devices, func(d specs.LinuxDevice) bool { return d.Path == "/dev/fake0" }) {
					t.Errorf("/dev/fake0 still a device entry in a user namespace spec")
				}
				i := slices.IndexFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/dev/fake0" })
				if i < 0 || s.Mounts[i].Source != f.hostNode || slices.Contains(s.Mounts[i].Options, "nodev") {
					t.Fatalf("no bind of %s at /dev/fake0 (without nodev): %+v", f.hostNode, s.Mounts)
				}
				if !deviceAllowed(s.Linux.Resources, specs.LinuxDevice{Type: "c", Major: 1, Minor: 3}) {
					t.Errorf("device cgroup does not allow 1:3: %+v", s.Linux.Resources.Devices)
				}
				checkCommonEdits(t, s, f)
			},
		},
		{
			name: "opts.Devices without annotation", restriction: pspec.RestrictionSysctl,
			opts:     func(o CDIOptions) CDIOptions { o.Devices = []string{"example.com/fake=dev1"}; return o },
			wantDevs: []string{"example.com/fake=dev1"},
			check: func(t *testing.T, s *specs.Spec) {
				if v, _ := envOf(s, "FAKE_DEVICE1"); v != "dev1" {
					t.Errorf("FAKE_DEVICE1 = %q", v)
				}
			},
		},
		{name: "nothing asked", restriction: pspec.RestrictionSysctl, wantDevs: nil},
		{
			name: "unknown device", restriction: pspec.RestrictionSysctl, gpus: `"example.com/fake=dev9"`,
			wantErr: "unknown CDI device example.com/fake=dev9: no CDI spec in " + f.specDir,
		},
		{
			name: "unknown vendor in default dirs", restriction: pspec.RestrictionSysctl, gpus: `"nvidia.com/gpu=0"`,
			opts:    func(o CDIOptions) CDIOptions { o.SpecDirs = []string{t.TempDir()}; return o },
			wantErr: "unknown CDI device nvidia.com/gpu=0",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := buildSpec(t, gpuManifest(t, tt.gpus), tt.restriction)
			opts := CDIOptions{SpecDirs: []string{f.specDir}}
			if tt.opts != nil {
				opts = tt.opts(opts)
			}
			got, err := InjectCDI(context.Background(), s, opts)
			if tt.wantErr != "" {
				var ue *UnknownDeviceError
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &ue) {
					t.Fatalf("err = %v, want an UnknownDeviceError with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tt.wantDevs) {
				t.Fatalf("devices %v, want %v", got, tt.wantDevs)
			}
			if tt.check != nil {
				tt.check(t, s)
			}
			// A second call changes nothing.
			before, _ := json.Marshal(s)
			again, err := InjectCDI(context.Background(), s, opts)
			if err != nil || !slices.Equal(again, tt.wantDevs) {
				t.Fatalf("second call: %v, %v", again, err)
			}
			if after, _ := json.Marshal(s); string(after) != string(before) {
				t.Errorf("second InjectCDI changed the spec:\n%s\n%s", before, after)
			}
		})
	}
}

// checkCommonEdits checks the env, mount and hook of dev0.
func checkCommonEdits(t *testing.T, s *specs.Spec, f cdiFixture) {
	t.Helper()
	for k, v := range map[string]string{"FAKE_VENDOR": "1", "FAKE_DEVICE": "dev0"} {
		if got, _ := envOf(s, k); got != v {
			t.Errorf("env %s = %q, want %q", k, got, v)
		}
	}
	if !slices.ContainsFunc(s.Mounts, func(m specs.Mount) bool { return m.Destination == "/opt/fake" && m.Source == f.mountSrc }) {
		t.Errorf("no mount of %s at /opt/fake: %+v", f.mountSrc, s.Mounts)
	}
	if s.Hooks == nil || len(s.Hooks.CreateContainer) != 1 || !strings.Contains(strings.Join(s.Hooks.CreateContainer[0].Args, " "), f.marker) {
		t.Errorf("createContainer hook missing: %+v", s.Hooks)
	}
	if got := s.Annotations[AnnotationCDIInjected]; got != "example.com/fake=dev0" {
		t.Errorf("%s = %q", AnnotationCDIInjected, got)
	}
}

func TestInjectCDIMalformedSpec(t *testing.T) {
	tests := []struct {
		name, file, content, wantInErr string
	}{
		{"bad yaml", "broken.yaml", "cdiVersion: \"0.6.0\"\nkind: [unclosed\n", "broken.yaml"},
		{"invalid spec: no kind", "nokind.json", `{"cdiVersion":"0.6.0","devices":[{"name":"x","containerEdits":{"env":["A=1"]}}]}`, "nokind.json"},
		{"invalid device name", "badname.yaml", "cdiVersion: \"0.6.0\"\nkind: example.com/fake\ndevices:\n- name: \"bad name!\"\n  containerEdits:\n    env: [\"A=1\"]\n", "badname.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := writeFile(t, dir, tt.file, tt.content)
			writeFile(t, dir, "good.yaml", "cdiVersion: \"0.6.0\"\nkind: example.com/good\ndevices:\n- name: a\n  containerEdits:\n    env: [\"GOOD=1\"]\n")
			s := &specs.Spec{Process: &specs.Process{}, Linux: &specs.Linux{},
				Annotations: map[string]string{"cdi.k8s.io/t": "example.com/good=a"}}
			_, err := InjectCDI(context.Background(), s, CDIOptions{SpecDirs: []string{dir}})
			var se *SpecFileError
			if err == nil || !errors.As(err, &se) || se.Path != p || !strings.Contains(err.Error(), tt.wantInErr) {
				t.Fatalf("err = %v, want a SpecFileError naming %s", err, p)
			}
		})
	}
}

func TestInjectCDICanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s := &specs.Spec{Annotations: map[string]string{"cdi.k8s.io/t": "example.com/x=a"}}
	if _, err := InjectCDI(ctx, s, CDIOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
}

func TestDeviceAllowed(t *testing.T) {
	i := func(v int64) *int64 { return &v }
	dev := specs.LinuxDevice{Type: "c", Major: 195, Minor: 0}
	tests := []struct {
		name  string
		rules []specs.LinuxDeviceCgroup
		want  bool
	}{
		{"no rules", nil, true},
		{"deny all", []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}, false},
		{"deny all then allow", []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}, {Allow: true, Type: "c", Major: i(195), Minor: i(0), Access: "rwm"}}, true},
		{"allow then deny major", []specs.LinuxDeviceCgroup{{Allow: true, Type: "c", Major: i(195), Access: "rw"}, {Allow: false, Type: "c", Major: i(195), Access: "rwm"}}, false},
		{"allow other minor", []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}, {Allow: true, Type: "c", Major: i(195), Minor: i(1), Access: "rwm"}}, false},
		{"allow read only", []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}, {Allow: true, Type: "c", Major: i(195), Minor: i(0), Access: "r"}}, false},
		{"block rule", []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}, {Allow: true, Type: "b", Major: i(195), Minor: i(0), Access: "rwm"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r *specs.LinuxResources
			if tt.rules != nil {
				r = &specs.LinuxResources{Devices: tt.rules}
			}
			if got := deviceAllowed(r, dev); got != tt.want {
				t.Fatalf("deviceAllowed = %v, want %v", got, tt.want)
			}
			s := &specs.Spec{Linux: &specs.Linux{Devices: []specs.LinuxDevice{dev}, Resources: r}}
			allowDeviceNodes(s)
			if !deviceAllowed(s.Linux.Resources, dev) {
				t.Fatalf("allowDeviceNodes left %+v denied: %+v", dev, s.Linux.Resources)
			}
		})
	}
}
