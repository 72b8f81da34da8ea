package shim

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/pyisolate/pyisolate-oci/spec"
)

func optionsAny(t *testing.T, o *runtimeoptions.Options) *anypb.Any {
	t.Helper()
	b, err := proto.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	return &anypb.Any{TypeUrl: "containerd.runtimeoptions.v1.Options", Value: b}
}

func TestPolicyFromOptions(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name string
		opts *anypb.Any
		want spec.Policy
		err  string
	}{
		{"none", nil, spec.PolicyHardened, ""},
		{"empty any", &anypb.Any{}, spec.PolicyHardened, ""},
		{"path faithful", optionsAny(t, &runtimeoptions.Options{ConfigPath: write("f.toml", "policy = \"faithful\"\n")}), spec.PolicyFaithful, ""},
		{"body hardened", optionsAny(t, &runtimeoptions.Options{ConfigBody: []byte(`policy = "hardened"`)}), spec.PolicyHardened, ""},
		{"no policy key", optionsAny(t, &runtimeoptions.Options{ConfigBody: []byte("# nothing\n")}), spec.PolicyHardened, ""},
		{"unknown level", optionsAny(t, &runtimeoptions.Options{ConfigPath: write("u.toml", `policy = "lax"`)}), "", `policy: unknown policy "lax"`},
		{"unknown key", optionsAny(t, &runtimeoptions.Options{ConfigBody: []byte(`polcy = "faithful"`)}), "", "ConfigBody"},
		{"missing file", optionsAny(t, &runtimeoptions.Options{ConfigPath: filepath.Join(dir, "nope.toml")}), "", "runtime options ConfigPath"},
		{"runc options", &anypb.Any{TypeUrl: "containerd.runc.v1.Options"}, "", "pyisolate takes runtimeoptions.v1.Options"},
	} {
		got, err := policyFromOptions(tc.opts)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%s: %q, %v; want %q, %q", tc.name, got, err, tc.want, tc.err)
		}
	}
}
