package spec

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"regexp"
	"testing"
)

// readmeJSON finds the json blocks of README.md.
var readmeJSON = regexp.MustCompile("(?s)```json\n(.*?)```")

// fuzzSeeds are manifests, valid and not, that start the fuzzer off.
var fuzzSeeds = []string{
	`{"name":"x","module_path":"/m"}`,
	`{"name":"a.b-c_d","module_path":"/m","venv":"/v","python":"/v/bin/python3","share_torch":true,
	  "share_cuda_ipc":true,"execution_model":"sealed","sandbox":{"network":true,"writable_paths":["/w"],
	  "readonly_paths":["/r","/s"]},"env":{"A":"1","_b":""},"group":"g","limits":{"memory":"2Gi",
	  "pids":64,"cpus":1.5,"shm_size":1048576},"gpus":["nvidia.com/gpu=0","nvidia.com/gpu=all"],
	  "command":["/bin/sh","-c","x"]}`,
	`{"name":"x","module_path":"/m","limits":{"memory":"12XB"}}`,
	`{"name":"x","module_path":"/m","limits":{"memory":9223372036854775807,"cpus":8192}}`,
	`{"name":"x","module_path":"/m","limits":{"cpus":-0,"shm_size":"0"}}`,
	`{"name":"x","module_path":"/m","env":{},"gpus":[],"sandbox":{"writable_paths":[]}}`,
	`{"name":"x","module_path":"/m","venv":null,"sandbox":null}`,
	`{"name":"x","module_path":"/m","env":{"A":"\u0000"}}`,
	`{"name":"x","module_path":"/a/../b"}`,
	`{"name":"x","module_path":"/m","sandbx":{}}`,
	`{"NAME":"x","module_path":"/m"}`,
	`{"name":"x","name":"y"}`,
	`{"name":"x","module_path":"/m"} {}`,
	`{"name":"\ud800","module_path":"/\xff"}`,
	`{"name":"x","module_path":"/m","command":[]}`,
	`[`, `null`, ``, `"x"`, `{"limits":{"pids":1e400}}`,
}

// FuzzDecodeManifest checks that DecodeManifest never panics, that every
// error is a *FieldError, and that every manifest it accepts validates again
// and survives json.Marshal + DecodeManifest unchanged.
func FuzzDecodeManifest(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	if readme, err := os.ReadFile("README.md"); err == nil {
		for _, b := range readmeJSON.FindAllSubmatch(readme, -1) {
			f.Add(b[1])
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeManifest(data)
		if err != nil {
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Fatalf("error %q (%T) is not a *FieldError", err, err)
			}
			if m != nil {
				t.Fatalf("manifest returned with error %v", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted manifest does not validate: %v\n%s", err, data)
		}
		out, err := json.Marshal(m)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		m2, err := DecodeManifest(out)
		if err != nil {
			t.Fatalf("re-decode of %s: %v\n(input %q)", out, err, data)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("round trip changed the manifest:\n in  %#v\n out %#v", m, m2)
		}
		for _, b := range []ByteSize{m.Limits.Memory, m.Limits.ShmSize, m.Limits.TmpSize} {
			if back, err := ParseByteSize(b.String()); err != nil || back != b {
				t.Fatalf("ByteSize %d: String %q parses to %d, %v", int64(b), b.String(), back, err)
			}
		}
	})
}

// FuzzParseByteSize checks that ParseByteSize never panics, never returns a
// negative size, and that String gives back a size that parses the same.
func FuzzParseByteSize(f *testing.F) {
	for _, s := range []string{"0", "1Ki", "512Mi", "2G", "8388607Ti", "8388608Ti", "12XB", "-1", "", "1.5Gi"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := ParseByteSize(s)
		if err != nil {
			return
		}
		if b < 0 {
			t.Fatalf("ParseByteSize(%q) = %d", s, int64(b))
		}
		if back, err := ParseByteSize(b.String()); err != nil || back != b {
			t.Fatalf("ParseByteSize(%q) = %d; String %q parses to %d, %v", s, int64(b), b.String(), back, err)
		}
	})
}
