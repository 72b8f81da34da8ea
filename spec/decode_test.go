package spec

import (
	"encoding/json"
	"errors"
	"math"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// doc returns a minimal valid manifest with extra members appended.
func doc(extra string) string {
	return `{"name":"x","module_path":"/m"` + extra + `}`
}

// wantFieldError checks that err is a *FieldError on field whose message
// contains msg.
func wantFieldError(t *testing.T, err error, field, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s: ...%s...", field, msg)
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		t.Fatalf("error %q (%T) is not a *FieldError", err, err)
	}
	if fe.Field != field || !strings.Contains(fe.Msg, msg) {
		t.Fatalf("error %q: want field %q and a message containing %q", err, field, msg)
	}
}

func TestDecodeManifestComplete(t *testing.T) {
	data := `{
	  "name": "ComfyUI-Impact_Pack.v2",
	  "module_path": "/home/alice/ComfyUI/custom_nodes/impact",
	  "venv": "/opt/venvs/impact",
	  "python": "/opt/venvs/impact/bin/python3",
	  "share_torch": true,
	  "share_cuda_ipc": true,
	  "execution_model": "sealed",
	  "sandbox": {"network": true, "writable_paths": ["/srv/out"], "readonly_paths": ["/srv/models", "/srv/in"]},
	  "env": {"HF_HOME": "/srv/models/hf", "_X1": ""},
	  "group": "comfy",
	  "limits": {"memory": "2Gi", "pids": 128, "cpus": 1.5, "shm_size": 1073741824, "tmp_size": "256Mi"},
	  "gpus": ["nvidia.com/gpu=0", "nvidia.com/gpu=all"],
	  "command": ["/opt/venvs/impact/bin/python3", "-m", "impact", "--flag"]
	}`
	m, err := DecodeManifest([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	want := &Manifest{
		Name:           "ComfyUI-Impact_Pack.v2",
		ModulePath:     "/home/alice/ComfyUI/custom_nodes/impact",
		Venv:           "/opt/venvs/impact",
		Python:         "/opt/venvs/impact/bin/python3",
		ShareTorch:     true,
		ShareCUDAIPC:   true,
		ExecutionModel: Sealed,
		Sandbox: Sandbox{
			Network:       true,
			WritablePaths: []string{"/srv/out"},
			ReadonlyPaths: []string{"/srv/models", "/srv/in"},
		},
		Env:     map[string]string{"HF_HOME": "/srv/models/hf", "_X1": ""},
		Group:   "comfy",
		Limits:  Limits{Memory: 2 << 30, Pids: 128, CPUs: 1.5, ShmSize: 1 << 30, TmpSize: 256 << 20},
		GPUs:    []string{"nvidia.com/gpu=0", "nvidia.com/gpu=all"},
		Command: []string{"/opt/venvs/impact/bin/python3", "-m", "impact", "--flag"},
	}
	if !reflect.DeepEqual(m, want) {
		t.Fatalf("got  %+v\nwant %+v", m, want)
	}
	// Round trip.
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	m2, err := DecodeManifest(out)
	if err != nil {
		t.Fatalf("re-decode %s: %v", out, err)
	}
	if !reflect.DeepEqual(m, m2) {
		t.Fatalf("round trip: got %+v, want %+v", m2, m)
	}
}

func TestDecodeManifestDefaults(t *testing.T) {
	tests := []struct {
		name, data string
		want       Manifest
	}{
		{"minimal", `{"name":"n","module_path":"/m"}`, Manifest{
			Name: "n", ModulePath: "/m", Python: "/usr/bin/python3", ExecutionModel: HostCoupled, Group: "n",
		}},
		{"venv python", `{"name":"n","module_path":"/m","venv":"/v/"}`, Manifest{
			Name: "n", ModulePath: "/m", Venv: "/v/", Python: "/v/bin/python", ExecutionModel: HostCoupled, Group: "n",
		}},
		{"nulls are absent", `{"name":"n","module_path":"/m","venv":null,"sandbox":null,"limits":{"memory":null},"env":null,"gpus":null,"command":null}`, Manifest{
			Name: "n", ModulePath: "/m", Python: "/usr/bin/python3", ExecutionModel: HostCoupled, Group: "n",
		}},
		{"empty collections become nil", `{"name":"n","module_path":"/m","env":{},"gpus":[],"sandbox":{"writable_paths":[],"readonly_paths":[]},"limits":{"cpus":-0}}`, Manifest{
			Name: "n", ModulePath: "/m", Python: "/usr/bin/python3", ExecutionModel: HostCoupled, Group: "n",
		}},
		{"preload", `{"name":"n","module_path":"/m","preload":["torch","numpy.linalg","_x"]}`, Manifest{
			Name: "n", ModulePath: "/m", Python: "/usr/bin/python3", ExecutionModel: HostCoupled, Group: "n",
			Preload: []string{"torch", "numpy.linalg", "_x"},
		}},
		{"empty preload becomes nil", `{"name":"n","module_path":"/m","preload":[]}`, Manifest{
			Name: "n", ModulePath: "/m", Python: "/usr/bin/python3", ExecutionModel: HostCoupled, Group: "n",
		}},
		{"explicit host-coupled", `{"name":"n","module_path":"/m","execution_model":"host-coupled","group":"g"}`, Manifest{
			Name: "n", ModulePath: "/m", Python: "/usr/bin/python3", ExecutionModel: HostCoupled, Group: "g",
		}},
		{"zero limits", `{"name":"n","module_path":"/m","limits":{"memory":0,"pids":0,"cpus":0,"shm_size":"0"}}`, Manifest{
			Name: "n", ModulePath: "/m", Python: "/usr/bin/python3", ExecutionModel: HostCoupled, Group: "n",
		}},
		{"smallest memory", `{"name":"n","module_path":"/m","limits":{"memory":"4Mi","cpus":0.01}}`, Manifest{
			Name: "n", ModulePath: "/m", Python: "/usr/bin/python3", ExecutionModel: HostCoupled, Group: "n",
			Limits: Limits{Memory: 4 << 20, CPUs: 0.01},
		}},
		{"leading and trailing space", " \n" + `{"name":"n","module_path":"/m"}` + "\n\t ", Manifest{
			Name: "n", ModulePath: "/m", Python: "/usr/bin/python3", ExecutionModel: HostCoupled, Group: "n",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeManifest([]byte(tt.data))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*m, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", *m, tt.want)
			}
		})
	}
}

func TestDecodeManifestErrors(t *testing.T) {
	long := strings.Repeat("a", 65)
	tests := []struct {
		name, data, field, msg string
	}{
		// Document.
		{"empty", ``, "", "empty document"},
		{"spaces only", "  \n", "", "empty document"},
		{"not an object", `[]`, "", "must be a JSON object, got an array"},
		{"null document", `null`, "", "must be a JSON object, got null"},
		{"string document", `"x"`, "", "must be a JSON object"},
		{"syntax", "{\n\"name\": \"x\",\n}", "", "invalid JSON at line 3, column 1"},
		{"truncated", `{"name":"x"`, "", "unexpected end of input"},
		{"trailing data", doc("") + ` {}`, "", "invalid JSON at line 1, column 33 (offset 33): invalid character '{' after top-level value"},
		{"trailing garbage", doc("") + "\nx", "", "invalid JSON at line 2, column 1"},
		{"too large", doc(`,"env":{"A":"` + strings.Repeat("a", MaxManifestSize) + `"}`), "", "at most"},

		// Unknown and duplicate fields.
		{"unknown field", `{"name":"x","module_path":"/m","sandbx":{}}`, "", `unknown field "sandbx"`},
		{"unknown sandbox field", doc(`,"sandbox":{"netwrok":true}`), "sandbox", `unknown field "netwrok"`},
		{"unknown limits field", doc(`,"limits":{"mem":1}`), "limits", `unknown field "mem"`},
		{"case-variant field", `{"NAME":"x","module_path":"/m"}`, "", `did you mean "name"`},
		{"duplicate field", `{"name":"x","name":"y","module_path":"/m"}`, "", `duplicate field "name"`},
		{"duplicate nested field", doc(`,"limits":{"pids":1,"pids":2}`), "limits", `duplicate field "pids"`},
		{"duplicate env key", doc(`,"env":{"A":"1","A":"2"}`), "env", `duplicate key "A"`},

		// Wrong types: each field.
		{"name type", `{"name":5,"module_path":"/m"}`, "name", "must be a string, got number 5"},
		{"module_path type", `{"name":"x","module_path":true}`, "module_path", "must be a string, got boolean true"},
		{"venv type", doc(`,"venv":["/v"]`), "venv", "must be a string, got an array"},
		{"python type", doc(`,"python":{}`), "python", "must be a string, got an object"},
		{"share_torch type", doc(`,"share_torch":"yes"`), "share_torch", `must be a boolean (true or false), got string "yes"`},
		{"share_cuda_ipc type", doc(`,"share_cuda_ipc":1`), "share_cuda_ipc", "must be a boolean"},
		{"execution_model type", doc(`,"execution_model":1`), "execution_model", "must be a string"},
		{"sandbox type", doc(`,"sandbox":[]`), "sandbox", "must be an object, got an array"},
		{"network type", doc(`,"sandbox":{"network":"no"}`), "sandbox.network", "must be a boolean"},
		{"writable_paths type", doc(`,"sandbox":{"writable_paths":"/w"}`), "sandbox.writable_paths", "must be an array of strings"},
		{"writable_paths item type", doc(`,"sandbox":{"writable_paths":["/w",1]}`), "sandbox.writable_paths[1]", "must be a string, got number 1"},
		{"readonly_paths null item", doc(`,"sandbox":{"readonly_paths":[null]}`), "sandbox.readonly_paths[0]", "must not be null"},
		{"env type", doc(`,"env":["A=1"]`), "env", "must be an object of strings"},
		{"env value type", doc(`,"env":{"A":1}`), `env["A"]`, "must be a string, got number 1"},
		{"env null value", doc(`,"env":{"A":null}`), `env["A"]`, "must not be null"},
		{"group type", doc(`,"group":false`), "group", "must be a string"},
		{"limits type", doc(`,"limits":"big"`), "limits", "must be an object"},
		{"memory type", doc(`,"limits":{"memory":true}`), "limits.memory", "must be a size"},
		{"memory fraction", doc(`,"limits":{"memory":1.5}`), "limits.memory", "invalid size 1.5: must be a whole number"},
		{"memory exponent", doc(`,"limits":{"memory":1e9}`), "limits.memory", "invalid size 1e9: must be a whole number"},
		{"memory negative", doc(`,"limits":{"memory":-1}`), "limits.memory", "must not be negative"},
		{"memory overflow", doc(`,"limits":{"memory":9223372036854775808}`), "limits.memory", "too large"},
		{"memory bad unit", doc(`,"limits":{"memory":"12XB"}`), "limits.memory", `invalid size "12XB"`},
		{"memory string overflow", doc(`,"limits":{"memory":"8388608Ti"}`), "limits.memory", "too large"},
		{"pids type", doc(`,"limits":{"pids":"1"}`), "limits.pids", `must be an integer, got string "1"`},
		{"pids fraction", doc(`,"limits":{"pids":1.5}`), "limits.pids", "must be an integer, got number 1.5"},
		{"pids overflow", doc(`,"limits":{"pids":1e30}`), "limits.pids", "must be an integer"},
		{"pids big", doc(`,"limits":{"pids":99999999999999999999}`), "limits.pids", "out of range"},
		{"cpus type", doc(`,"limits":{"cpus":"2"}`), "limits.cpus", "must be a number"},
		{"cpus overflow", doc(`,"limits":{"cpus":1e400}`), "limits.cpus", "out of range"},
		{"shm_size type", doc(`,"limits":{"shm_size":[]}`), "limits.shm_size", "must be a size"},
		{"shm_size bad", doc(`,"limits":{"shm_size":"1.5Gi"}`), "limits.shm_size", `invalid size "1.5Gi"`},
		{"gpus type", doc(`,"gpus":"nvidia.com/gpu=0"`), "gpus", "must be an array of strings"},
		{"command type", doc(`,"command":"/bin/sh -c x"`), "command", "must be an array of strings"},
		{"command item type", doc(`,"command":["/bin/x",true]`), "command[1]", "must be a string"},

		// name and group.
		{"name missing", `{"module_path":"/m"}`, "name", "is required"},
		{"name empty", `{"name":"","module_path":"/m"}`, "name", "is required"},
		{"name semicolon", `{"name":"a;b","module_path":"/m"}`, "name", `contains ';'`},
		{"name slash", `{"name":"a/b","module_path":"/m"}`, "name", `contains '/'`},
		{"name substitution", `{"name":"$(x)","module_path":"/m"}`, "name", `contains '$'`},
		{"name dotdot", `{"name":"..","module_path":"/m"}`, "name", "must not start with '.' or '-'"},
		{"name dot", `{"name":".hidden","module_path":"/m"}`, "name", "must not start with '.' or '-'"},
		{"name dash", `{"name":"-rf","module_path":"/m"}`, "name", "must not start with '.' or '-'"},
		{"name space", `{"name":"a b","module_path":"/m"}`, "name", `contains ' '`},
		{"name non-ASCII", `{"name":"café","module_path":"/m"}`, "name", `contains 'é'`},
		{"name NUL", `{"name":"a\u0000","module_path":"/m"}`, "name", `contains '\x00'`},
		{"name 65 chars", `{"name":"` + long + `","module_path":"/m"}`, "name", "65 characters long, at most 64"},
		{"group semicolon", doc(`,"group":"a;b"`), "group", `contains ';'`},
		{"group slash", doc(`,"group":"a/b"`), "group", `contains '/'`},
		{"group dotdot", doc(`,"group":".."`), "group", "must not start"},
		{"group 65 chars", doc(`,"group":"` + long + `"`), "group", "65 characters long"},

		// Paths.
		{"module_path missing", `{"name":"x"}`, "module_path", "is required"},
		{"module_path relative", `{"name":"x","module_path":"custom_nodes/x"}`, "module_path", `path "custom_nodes/x" is not absolute`},
		{"module_path dotdot", `{"name":"x","module_path":"/a/../etc"}`, "module_path", `contains '..'`},
		{"module_path NUL", `{"name":"x","module_path":"/a\u0000b"}`, "module_path", "NUL"},
		{"venv relative", doc(`,"venv":".venv"`), "venv", `path ".venv" is not absolute`},
		{"python relative", doc(`,"python":"python3"`), "python", `path "python3" is not absolute`},
		{"writable relative", doc(`,"sandbox":{"writable_paths":["/ok","foo"]}`), "sandbox.writable_paths[1]", `path "foo" is not absolute`},
		{"writable empty", doc(`,"sandbox":{"writable_paths":[""]}`), "sandbox.writable_paths[0]", "path is empty"},
		{"readonly relative", doc(`,"sandbox":{"readonly_paths":["./models"]}`), "sandbox.readonly_paths[0]", "is not absolute"},
		{"readonly dotdot", doc(`,"sandbox":{"readonly_paths":["/srv/.."]}`), "sandbox.readonly_paths[0]", `contains '..'`},

		// execution_model.
		{"execution_model unknown", doc(`,"execution_model":"isolated"`), "execution_model", `unknown value "isolated"`},
		{"execution_model case", doc(`,"execution_model":"Sealed"`), "execution_model", "unknown value"},

		// env.
		{"env key digit", doc(`,"env":{"1A":"x"}`), `env["1A"]`, "not a valid variable name"},
		{"env key dash", doc(`,"env":{"A-B":"x"}`), `env["A-B"]`, "not a valid variable name"},
		{"env key equals", doc(`,"env":{"A=B":"x"}`), `env["A=B"]`, "not a valid variable name"},
		{"env key empty", doc(`,"env":{"":"x"}`), `env[""]`, "not a valid variable name"},
		{"env value NUL", doc(`,"env":{"A":"a\u0000b"}`), `env["A"]`, "NUL"},

		// limits.
		{"memory too small", doc(`,"limits":{"memory":"1Mi"}`), "limits.memory", "1Mi is too small: Python cannot start in less than 4Mi"},
		{"memory one below", doc(`,"limits":{"memory":4194303}`), "limits.memory", "too small"},
		{"pids negative", doc(`,"limits":{"pids":-1}`), "limits.pids", "must not be negative"},
		{"cpus negative", doc(`,"limits":{"cpus":-0.5}`), "limits.cpus", "must not be negative"},
		{"cpus too small", doc(`,"limits":{"cpus":0.001}`), "limits.cpus", "too small"},
		{"cpus too large", doc(`,"limits":{"cpus":100000}`), "limits.cpus", "too large"},
		{"shm_size negative", doc(`,"limits":{"shm_size":-5}`), "limits.shm_size", "must not be negative"},
		{"tmp_size negative", doc(`,"limits":{"tmp_size":-5}`), "limits.tmp_size", "must not be negative"},
		{"tmp_size bad", doc(`,"limits":{"tmp_size":"1g"}`), "limits.tmp_size", `unknown unit "g"`},

		// gpus.
		{"gpu no class", doc(`,"gpus":["nvidia.com=0"]`), "gpus[0]", "no '/'"},
		{"gpu no equals", doc(`,"gpus":["nvidia.com/gpu"]`), "gpus[0]", "no '='"},
		{"gpu bare", doc(`,"gpus":["0"]`), "gpus[0]", "not a fully qualified CDI device name"},
		{"gpu vendor no dot", doc(`,"gpus":["nvidia/gpu=0"]`), "gpus[0]", `bad vendor "nvidia"`},
		{"gpu vendor upper", doc(`,"gpus":["NVIDIA.com/gpu=0"]`), "gpus[0]", "bad vendor"},
		{"gpu vendor empty label", doc(`,"gpus":["nvidia..com/gpu=0"]`), "gpus[0]", "bad vendor"},
		{"gpu class empty", doc(`,"gpus":["nvidia.com/=0"]`), "gpus[0]", "bad class"},
		{"gpu class slash", doc(`,"gpus":["nvidia.com/a/b=0"]`), "gpus[0]", "bad class"},
		{"gpu name empty", doc(`,"gpus":["nvidia.com/gpu="]`), "gpus[0]", "bad device name"},
		{"gpu name space", doc(`,"gpus":["nvidia.com/gpu=a b"]`), "gpus[0]", "bad device name"},
		{"gpu second bad", doc(`,"gpus":["nvidia.com/gpu=0","x"]`), "gpus[1]", "not a fully qualified"},
		{"gpu duplicate", doc(`,"gpus":["nvidia.com/gpu=0","nvidia.com/gpu=1","nvidia.com/gpu=0"]`), "gpus[2]", "listed twice (also gpus[0])"},

		// command.
		{"command empty", doc(`,"command":[]`), "command", "must not be empty"},
		{"command relative", doc(`,"command":["python3","-m","x"]`), "command[0]", `program "python3" is not an absolute path`},
		{"preload not a module", doc(`,"preload":["torch","os/path"]`), "preload[1]", `"os/path" is not a module name`},
		{"preload leading dot", doc(`,"preload":[".torch"]`), "preload[0]", "is not a module name"},
		{"preload twice", doc(`,"preload":["torch","numpy","torch"]`), "preload[2]", `module "torch" is listed twice`},
		{"preload type", doc(`,"preload":"torch"`), "preload", "must be an array of strings"},
		{"command NUL", doc(`,"command":["/bin/x","a\u0000"]`), "command[1]", "NUL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := DecodeManifest([]byte(tt.data))
			if m != nil {
				t.Errorf("got a manifest with the error")
			}
			wantFieldError(t, err, tt.field, tt.msg)
		})
	}
}

func TestDecodeManifestErrorText(t *testing.T) {
	tests := []struct{ data, want string }{
		{doc(`,"sandbox":{"writable_paths":["/a","foo"]}`), `manifest: sandbox.writable_paths[1]: path "foo" is not absolute`},
		{doc(`,"limits":{"memory":"12XB"}`), `manifest: limits.memory: invalid size "12XB"`},
		{doc(`,"sandbx":{}`), `manifest: unknown field "sandbx"`},
	}
	for _, tt := range tests {
		_, err := DecodeManifest([]byte(tt.data))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("error %v, want it to start with %q", err, tt.want)
		}
	}
}

func TestDecodeManifestValidValues(t *testing.T) {
	valid := []string{
		// names
		`{"name":"a","module_path":"/m"}`,
		`{"name":"A-b_c.9","module_path":"/m"}`,
		`{"name":"0start","module_path":"/m"}`,
		`{"name":"` + strings.Repeat("z", 64) + `","module_path":"/m"}`,
		doc(`,"group":"ComfyUI-Manager"`),
		// paths
		doc(`,"venv":"/opt/venv/","python":"/usr/local/bin/python3.12"`),
		doc(`,"sandbox":{"writable_paths":["/srv/a..b","/srv/.x"],"readonly_paths":["/srv/./y"]}`),
		// gpus
		doc(`,"gpus":["nvidia.com/gpu=0","nvidia.com/gpu=all","amd.com/gpu=GPU-1:2","example.co.uk/class_x=dev.1","vendor-1.io/c.d=0_1"]`),
		// env
		doc(`,"env":{"_":"","a":"ü=x","PYTHONPATH":"/x:/y"}`),
		// command
		doc(`,"command":["/bin/sh"]`),
		doc(`,"command":["/bin/sh","-c","echo $HOME; ls"]`),
		// limits
		doc(`,"limits":{"memory":9223372036854775807,"pids":4194304,"cpus":8192,"shm_size":"8388607Ti"}`),
	}
	for _, data := range valid {
		if _, err := DecodeManifest([]byte(data)); err != nil {
			t.Errorf("%s: %v", data, err)
		}
	}
}

func TestValidateGoManifest(t *testing.T) {
	base := func() Manifest { return Manifest{Name: "x", ModulePath: "/m"} }
	tests := []struct {
		name       string
		edit       func(m *Manifest)
		field, msg string
	}{
		{"valid", func(m *Manifest) {}, "", ""},
		{"valid nil command", func(m *Manifest) { m.Command = nil }, "", ""},
		{"empty command", func(m *Manifest) { m.Command = []string{} }, "command", "must not be empty"},
		{"zero manifest", func(m *Manifest) { *m = Manifest{} }, "name", "is required"},
		{"NaN cpus", func(m *Manifest) { m.Limits.CPUs = math.NaN() }, "limits.cpus", "finite"},
		{"Inf cpus", func(m *Manifest) { m.Limits.CPUs = math.Inf(1) }, "limits.cpus", "finite"},
		{"negative memory", func(m *Manifest) { m.Limits.Memory = -1 }, "limits.memory", "must not be negative"},
		{"negative shm", func(m *Manifest) { m.Limits.ShmSize = -1 }, "limits.shm_size", "must not be negative"},
		{"relative venv", func(m *Manifest) { m.Venv = "v" }, "venv", "not absolute"},
		{"bad model", func(m *Manifest) { m.ExecutionModel = "x" }, "execution_model", "unknown value"},
		{"env key", func(m *Manifest) { m.Env = map[string]string{"B": "", "A B": ""} }, `env["A B"]`, "not a valid variable name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := base()
			tt.edit(&m)
			err := m.Validate()
			if tt.field == "" && tt.msg == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantFieldError(t, err, tt.field, tt.msg)
		})
	}
}

func TestApplyDefaultsValidates(t *testing.T) {
	m := Manifest{Name: "x", ModulePath: "/m", Venv: "/v"}
	m.ApplyDefaults()
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if m.Python != "/v/bin/python" || m.Group != "x" || m.ExecutionModel != HostCoupled {
		t.Fatalf("defaults not applied: %+v", m)
	}
}

// TestSchemaMatchesStruct keeps manifestSchema in step with the json tags
// and Go types of Manifest.
func TestSchemaMatchesStruct(t *testing.T) {
	kindOf := map[reflect.Type]kind{
		reflect.TypeFor[string]():            kindString,
		reflect.TypeFor[ExecutionModel]():    kindString,
		reflect.TypeFor[bool]():              kindBool,
		reflect.TypeFor[int64]():             kindInt,
		reflect.TypeFor[float64]():           kindFloat,
		reflect.TypeFor[ByteSize]():          kindSize,
		reflect.TypeFor[[]string]():          kindStrings,
		reflect.TypeFor[map[string]string](): kindStringMap,
	}
	var walk func(at string, typ reflect.Type, s *schema)
	walk = func(at string, typ reflect.Type, s *schema) {
		if len(s.fields) != typ.NumField() {
			t.Errorf("%s: schema has %d fields, %s has %d", at, len(s.fields), typ, typ.NumField())
		}
		for i := range typ.NumField() {
			f := typ.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			sub, ok := s.fields[name]
			if !ok {
				t.Errorf("%s: field %s (json %q) missing from the schema", at, f.Name, name)
				continue
			}
			if f.Type.Kind() == reflect.Struct {
				if sub.kind != kindObject {
					t.Errorf("%s.%s: want kindObject", at, name)
				}
				walk(joinField(at, name), f.Type, sub)
				continue
			}
			if k, ok := kindOf[f.Type]; !ok || k != sub.kind {
				t.Errorf("%s.%s: schema kind %d does not match Go type %s", at, name, sub.kind, f.Type)
			}
		}
	}
	walk("", reflect.TypeFor[Manifest](), manifestSchema)
}

func TestJSONFieldErrorFallback(t *testing.T) {
	// Errors of encoding/json that the document checker normally pre-empts.
	var m Manifest
	err := json.Unmarshal([]byte(`{"limits":{"pids":"x"}}`), &m)
	wantFieldError(t, jsonFieldError(nil, err), "limits.pids", "must be an integer, got JSON string")

	dec := json.NewDecoder(strings.NewReader(`{"bogus":1}`))
	dec.DisallowUnknownFields()
	err = dec.Decode(&m)
	wantFieldError(t, jsonFieldError(nil, err), "", `unknown field "bogus"`)

	err = json.Unmarshal([]byte("{\n  x"), &m)
	wantFieldError(t, jsonFieldError([]byte("{\n  x"), err), "", "invalid JSON at line 2, column 3")
}

func TestByteSizeParse(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
		err  string
	}{
		{"0", 0, ""},
		{"1", 1, ""},
		{"1024", 1024, ""},
		{"007", 7, ""},
		{"1Ki", 1 << 10, ""},
		{"512Mi", 512 << 20, ""},
		{"2Gi", 2 << 30, ""},
		{"3Ti", 3 << 40, ""},
		{"1k", 1000, ""},
		{"1K", 1000, ""},
		{"5M", 5e6, ""},
		{"2G", 2e9, ""},
		{"1T", 1e12, ""},
		{"9223372036854775807", math.MaxInt64, ""},
		{"8388607Ti", 8388607 << 40, ""},
		{"9223372036854775808", 0, "too large"},
		{"8388608Ti", 0, "too large"},
		{"9223372036854776T", 0, "too large"},
		{"99999999999999999999999", 0, "too large"},
		{"", 0, "want digits"},
		{"-1", 0, "must not be negative"},
		{"-1Gi", 0, "must not be negative"},
		{"+1", 0, "want digits"},
		{"Mi", 0, "want digits"},
		{" 1", 0, "want digits"},
		{"1 Mi", 0, `unknown unit " Mi"`},
		{"1.5Gi", 0, `unknown unit ".5Gi"`},
		{"12XB", 0, `unknown unit "XB"`},
		{"1KB", 0, `unknown unit "KB"`},
		{"1KiB", 0, `unknown unit "KiB"`},
		{"1B", 0, `unknown unit "B"`},
		{"1mi", 0, `unknown unit "mi"`},
		{"1m", 0, `unknown unit "m"`},
		{"0x10", 0, `unknown unit "x10"`},
		{"1Mi ", 0, "unknown unit"},
	}
	for _, tt := range tests {
		got, err := ParseByteSize(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) || !strings.Contains(err.Error(), `invalid size "`) {
				t.Errorf("ParseByteSize(%q) = %d, %v; want an error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
		}
	}
}

func TestByteSizeJSON(t *testing.T) {
	tests := []struct {
		in   string
		want ByteSize
		err  string
	}{
		{`0`, 0, ""},
		{`1048576`, 1 << 20, ""},
		{`"1Mi"`, 1 << 20, ""},
		{`"1048576"`, 1 << 20, ""},
		{`null`, 42, ""}, // unchanged
		{`-1`, 0, "must not be negative"},
		{`1.5`, 0, "whole number"},
		{`1e3`, 0, "whole number"},
		{`9223372036854775808`, 0, "too large"},
		{`"12XB"`, 0, `invalid size "12XB"`},
		{`true`, 0, "whole number"},
		{`"\u0031Ki"`, 1024, ""},
	}
	for _, tt := range tests {
		b := ByteSize(42)
		err := json.Unmarshal([]byte(tt.in), &b)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("Unmarshal(%s) = %d, %v; want an error containing %q", tt.in, b, err, tt.err)
			}
			continue
		}
		if err != nil || b != tt.want {
			t.Errorf("Unmarshal(%s) = %d, %v; want %d", tt.in, b, err, tt.want)
		}
	}
	out, err := json.Marshal(Limits{Memory: 512 << 20, ShmSize: 1})
	if err != nil || string(out) != `{"memory":536870912,"shm_size":1}` {
		t.Errorf("Marshal = %s, %v", out, err)
	}
}

func TestByteSizeString(t *testing.T) {
	tests := []struct {
		in   ByteSize
		want string
	}{
		{0, "0"},
		{1, "1"},
		{1234, "1234"},
		{1000, "1k"},
		{1024, "1Ki"},
		{512 << 20, "512Mi"},
		{2e9, "2G"},
		{2e12, "2T"},
		{1024000, "1000Ki"},
		{3 << 40, "3Ti"},
		{math.MaxInt64, "9223372036854775807"},
		{-5, "-5"},
	}
	for _, tt := range tests {
		got := tt.in.String()
		if got != tt.want {
			t.Errorf("ByteSize(%d).String() = %q, want %q", int64(tt.in), got, tt.want)
		}
		if tt.in >= 0 {
			if back, err := ParseByteSize(got); err != nil || back != tt.in {
				t.Errorf("ParseByteSize(%q) = %d, %v; want %d", got, back, err, int64(tt.in))
			}
		}
	}
}

func TestManifestFromAnnotations(t *testing.T) {
	t.Run("none", func(t *testing.T) {
		for _, a := range []map[string]string{
			nil,
			{"org.opencontainers.image.title": "x"},
			{AnnotationDegraded: "user-namespace", AnnotationOutPrefix + "group": "g", "io.pyisolate.out.x": "y"},
		} {
			m, ok, err := ManifestFromAnnotations(a)
			if m != nil || ok || err != nil {
				t.Errorf("%v: got %v, %v, %v; want nil, false, nil", a, m, ok, err)
			}
		}
	})
	t.Run("fields", func(t *testing.T) {
		a := map[string]string{
			AnnotationFieldName:           "ext",
			AnnotationFieldModulePath:     "/m",
			AnnotationFieldVenv:           "/v",
			AnnotationFieldPython:         "/v/bin/python3",
			AnnotationFieldGroup:          "g",
			AnnotationFieldExecutionModel: "sealed",
			AnnotationFieldShareTorch:     "true",
			AnnotationFieldShareCUDAIPC:   "false",
			AnnotationFieldNetwork:        "true",
			AnnotationFieldGPUs:           "nvidia.com/gpu=0, nvidia.com/gpu=1",
			AnnotationFieldPreload:        "torch,numpy",
			AnnotationFieldMemory:         "1Gi",
			AnnotationFieldPids:           "64",
			AnnotationFieldCPUs:           "0.5",
			AnnotationFieldShmSize:        "256Mi",
			AnnotationFieldTmpSize:        "512Mi",
			AnnotationDegraded:            "seccomp",
			AnnotationOutPrefix + "name":  "ignored",
			"org.example.other":           "ignored",
		}
		m, ok, err := ManifestFromAnnotations(a)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		want := &Manifest{
			Name: "ext", ModulePath: "/m", Venv: "/v", Python: "/v/bin/python3", Group: "g",
			ExecutionModel: Sealed, ShareTorch: true, Sandbox: Sandbox{Network: true},
			GPUs:    []string{"nvidia.com/gpu=0", "nvidia.com/gpu=1"},
			Preload: []string{"torch", "numpy"},
			Limits:  Limits{Memory: 1 << 30, Pids: 64, CPUs: 0.5, ShmSize: 256 << 20, TmpSize: 512 << 20},
		}
		if !reflect.DeepEqual(m, want) {
			t.Fatalf("got  %+v\nwant %+v", m, want)
		}
	})
	t.Run("defaults", func(t *testing.T) {
		m, ok, err := ManifestFromAnnotations(map[string]string{AnnotationFieldName: "e", AnnotationFieldModulePath: "/m", AnnotationFieldGPUs: ""})
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		if m.Group != "e" || m.Python != "/usr/bin/python3" || m.ExecutionModel != HostCoupled || m.GPUs != nil {
			t.Fatalf("defaults not applied: %+v", m)
		}
	})
	t.Run("whole manifest", func(t *testing.T) {
		a := map[string]string{AnnotationManifest: doc(`,"env":{"A":"1"},"sandbox":{"readonly_paths":["/srv"]}`), AnnotationDegraded: "x"}
		m, ok, err := ManifestFromAnnotations(a)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		if m.Name != "x" || m.Env["A"] != "1" || m.Sandbox.ReadonlyPaths[0] != "/srv" {
			t.Fatalf("got %+v", m)
		}
	})

	t.Run("group next to the whole manifest", func(t *testing.T) {
		tests := []struct {
			name, manifest, group string
			wantGroup, wantErr    string
		}{
			{"agree", doc(`,"group":"g"`), "g", "g", ""},
			{"manifest without a group takes it", doc(""), "g", "g", ""},
			{"group equal to the name", doc(""), "x", "x", ""},
			{"disagree", doc(`,"group":"g"`), "h", "", `manifest: io.pyisolate.group: "h" disagrees with the group "g" of io.pyisolate.manifest`},
			{"bad group", doc(""), "a/b", "", `manifest: io.pyisolate.group: `},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				m, ok, err := ManifestFromAnnotations(map[string]string{AnnotationManifest: tt.manifest, AnnotationFieldGroup: tt.group})
				if !ok {
					t.Fatal("not recognised as a manifest")
				}
				if tt.wantErr != "" {
					if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) || strings.Contains(err.Error(), "\n") || m != nil {
						t.Fatalf("got %v, %v; want one line starting %q", m, err, tt.wantErr)
					}
					return
				}
				if err != nil || m.Group != tt.wantGroup {
					t.Fatalf("got %+v, %v; want group %q", m, err, tt.wantGroup)
				}
			})
		}
	})

	base := map[string]string{AnnotationFieldName: "e", AnnotationFieldModulePath: "/m"}
	with := func(k, v string) map[string]string {
		a := map[string]string{k: v}
		for bk, bv := range base {
			if _, set := a[bk]; !set {
				a[bk] = bv
			}
		}
		return a
	}
	tests := []struct {
		name       string
		a          map[string]string
		field, msg string
	}{
		{"unknown key", with("io.pyisolate.nmae", "x"), "", `unknown annotation "io.pyisolate.nmae"`},
		{"unknown key alone", map[string]string{"io.pyisolate.env": "A=1"}, "", `unknown annotation "io.pyisolate.env"`},
		{"mixed forms", map[string]string{AnnotationManifest: doc(""), AnnotationFieldMemory: "1Gi"}, AnnotationFieldMemory, "cannot be combined with io.pyisolate.manifest"},
		{"bad bool", with(AnnotationFieldShareTorch, "yes"), AnnotationFieldShareTorch, `must be "true" or "false", got "yes"`},
		{"bad bool case", with(AnnotationFieldNetwork, "True"), AnnotationFieldNetwork, `must be "true" or "false"`},
		{"bad cuda bool", with(AnnotationFieldShareCUDAIPC, "1"), AnnotationFieldShareCUDAIPC, `must be "true" or "false"`},
		{"bad memory", with(AnnotationFieldMemory, "12XB"), AnnotationFieldMemory, `invalid size "12XB"`},
		{"small memory", with(AnnotationFieldMemory, "1Mi"), AnnotationFieldMemory, "too small"},
		{"bad shm", with(AnnotationFieldShmSize, "-1"), AnnotationFieldShmSize, "must not be negative"},
		{"bad tmp", with(AnnotationFieldTmpSize, "-1"), AnnotationFieldTmpSize, "must not be negative"},
		{"bad pids", with(AnnotationFieldPids, "many"), AnnotationFieldPids, `must be an integer, got "many"`},
		{"negative pids", with(AnnotationFieldPids, "-3"), AnnotationFieldPids, "must not be negative"},
		{"bad cpus", with(AnnotationFieldCPUs, "two"), AnnotationFieldCPUs, `must be a number, got "two"`},
		{"inf cpus", with(AnnotationFieldCPUs, "Inf"), AnnotationFieldCPUs, "finite"},
		{"gpus empty item", with(AnnotationFieldGPUs, "nvidia.com/gpu=0,,nvidia.com/gpu=1"), AnnotationFieldGPUs, "item 2"},
		{"gpus bad item", with(AnnotationFieldGPUs, "nvidia.com/gpu=0,gpu1"), AnnotationFieldGPUs + "[1]", "not a fully qualified CDI"},
		{"bad name", with(AnnotationFieldName, "a;b"), AnnotationFieldName, `contains ';'`},
		{"bad group", with(AnnotationFieldGroup, "a/b"), AnnotationFieldGroup, `contains '/'`},
		{"missing module_path", map[string]string{AnnotationFieldName: "e"}, AnnotationFieldModulePath, "is required"},
		{"relative venv", with(AnnotationFieldVenv, "venv"), AnnotationFieldVenv, "not absolute"},
		{"relative python", with(AnnotationFieldPython, "python"), AnnotationFieldPython, "not absolute"},
		{"bad model", with(AnnotationFieldExecutionModel, "open"), AnnotationFieldExecutionModel, "unknown value"},
		{"whole manifest bad", map[string]string{AnnotationManifest: doc(`,"sandbox":{"writable_paths":["w"]}`)}, "sandbox.writable_paths[0]", "not absolute"},
		{"whole manifest broken", map[string]string{AnnotationManifest: `{`}, "", "unexpected end of input"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, ok, err := ManifestFromAnnotations(tt.a)
			if m != nil || !ok {
				t.Errorf("got %v, %v with the error", m, ok)
			}
			wantFieldError(t, err, tt.field, tt.msg)
		})
	}
	_, _, err := ManifestFromAnnotations(map[string]string{AnnotationManifest: `[]`})
	if err == nil || !strings.HasPrefix(err.Error(), "annotation io.pyisolate.manifest: manifest: ") {
		t.Errorf("whole-manifest error %v does not name the annotation", err)
	}
}

// bundleDir makes a bundle directory with the given files (name → content).
func bundleDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// configWithAnnotations returns a config.json with these annotations.
func configWithAnnotations(t *testing.T, a map[string]string) string {
	t.Helper()
	out, err := json.Marshal(map[string]any{"ociVersion": "1.2.0", "annotations": a})
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

func TestLoadBundle(t *testing.T) {
	module := t.TempDir()
	python := filepath.Join(t.TempDir(), "python3")
	if err := os.WriteFile(python, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	manifest := `{"name":"from-file","module_path":"` + module + `","python":"` + python + `"}`
	annotations := map[string]string{
		AnnotationFieldName: "from-annotations", AnnotationFieldModulePath: module, AnnotationFieldPython: python,
	}

	t.Run("pyisolate.json", func(t *testing.T) {
		dir := bundleDir(t, map[string]string{ManifestFile: manifest})
		m, s, err := LoadBundle(dir)
		if err != nil || m == nil || s != nil {
			t.Fatal(m, s, err)
		}
		if m.Name != "from-file" || m.Group != "from-file" {
			t.Fatalf("got %+v", m)
		}
	})
	t.Run("annotations", func(t *testing.T) {
		dir := bundleDir(t, map[string]string{ConfigFile: configWithAnnotations(t, annotations)})
		m, s, err := LoadBundle(dir)
		if err != nil || m == nil || s == nil {
			t.Fatal(m, s, err)
		}
		if m.Name != "from-annotations" || s.Annotations[AnnotationFieldName] != "from-annotations" {
			t.Fatalf("got %+v", m)
		}
	})
	t.Run("pyisolate.json wins", func(t *testing.T) {
		bad := map[string]string{AnnotationFieldName: "a;b", "io.pyisolate.unknown": "x"}
		dir := bundleDir(t, map[string]string{ManifestFile: manifest, ConfigFile: configWithAnnotations(t, bad)})
		m, s, err := LoadBundle(dir)
		if err != nil || m == nil || s == nil {
			t.Fatal(m, s, err)
		}
		if m.Name != "from-file" {
			t.Fatalf("got %+v", m)
		}
	})
	t.Run("plain OCI bundle", func(t *testing.T) {
		dir := bundleDir(t, map[string]string{ConfigFile: `{"ociVersion":"1.2.0","process":{"args":["/bin/true"]},"x-unknown":1}`})
		m, s, err := LoadBundle(dir)
		if err != nil || m != nil || s == nil || s.Process.Args[0] != "/bin/true" {
			t.Fatal(m, s, err)
		}
	})
	t.Run("empty bundle", func(t *testing.T) {
		m, s, err := LoadBundle(t.TempDir())
		if err != nil || m != nil || s != nil {
			t.Fatal(m, s, err)
		}
	})
	t.Run("resolves paths", func(t *testing.T) {
		link := filepath.Join(t.TempDir(), "module-link")
		if err := os.Symlink(module, link); err != nil {
			t.Fatal(err)
		}
		real, _ := filepath.EvalSymlinks(module)
		dir := bundleDir(t, map[string]string{ManifestFile: `{"name":"n","module_path":"` + link + `","python":"` + python + `"}`})
		m, _, err := LoadBundle(dir)
		if err != nil {
			t.Fatal(err)
		}
		if m.ModulePath != real {
			t.Fatalf("module_path %q, want %q", m.ModulePath, real)
		}
	})

	errs := []struct {
		name   string
		files  map[string]string
		wants  []string // substrings of the error
		isFErr bool
	}{
		{"broken config.json", map[string]string{ConfigFile: "{\n  \"ociVersion\": \"1.2.0\",\n  \"process\": {,\n}"}, []string{ConfigFile + ": invalid JSON at line 3, column 15 (offset 42)"}, false},
		{"truncated config.json", map[string]string{ConfigFile: `{"ociVersion":`}, []string{ConfigFile + ": invalid JSON: unexpected end of input"}, false},
		{"config.json wrong type", map[string]string{ConfigFile: "{\"ociVersion\": \"1.2.0\",\n\"process\": {\"args\": \"/bin/true\"}}"}, []string{ConfigFile + ": field process.args: JSON string where []string is expected, at line 2"}, false},
		{"config.json trailing data", map[string]string{ConfigFile: `{"ociVersion":"1.2.0"} {}`}, []string{ConfigFile + ": invalid JSON at line 1, column 24 (offset 24): invalid character '{' after top-level value"}, false},
		{"bad pyisolate.json", map[string]string{ManifestFile: `{"name":"x","module_path":"rel"}`}, []string{ManifestFile + ": manifest: module_path: path \"rel\" is not absolute"}, true},
		{"bad annotations", map[string]string{ConfigFile: configWithAnnotations(t, map[string]string{"io.pyisolate.nope": "1"})}, []string{ConfigFile + ` annotations: manifest: unknown annotation "io.pyisolate.nope"`}, true},
		{"forbidden path in pyisolate.json", map[string]string{ManifestFile: `{"name":"x","module_path":"/etc","python":"` + python + `"}`}, []string{ManifestFile + `: manifest: module_path: "/etc" is forbidden`}, true},
		{"missing module in annotations", map[string]string{ConfigFile: configWithAnnotations(t, map[string]string{AnnotationFieldName: "x", AnnotationFieldModulePath: "/nonexistent/pyisolate/module"})}, []string{`annotations: manifest: module_path: "/nonexistent/pyisolate/module" does not exist`}, true},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			dir := bundleDir(t, tt.files)
			m, s, err := LoadBundle(dir)
			if err == nil || m != nil || s != nil {
				t.Fatalf("got %v, %v, %v; want an error", m, s, err)
			}
			for _, w := range tt.wants {
				if !strings.Contains(err.Error(), filepath.Join(dir, w)) && !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), dir) {
				t.Errorf("error %q does not name the bundle file", err)
			}
			var fe *FieldError
			if errors.As(err, &fe) != tt.isFErr {
				t.Errorf("errors.As(%q, *FieldError) = %v, want %v", err, !tt.isFErr, tt.isFErr)
			}
		})
	}

	t.Run("not a directory", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "f")
		os.WriteFile(file, nil, 0o644)
		if _, _, err := LoadBundle(file); err == nil || !strings.Contains(err.Error(), file+": not a directory") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("missing bundle", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "nope")
		if _, _, err := LoadBundle(dir); err == nil || !strings.Contains(err.Error(), dir) {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("pyisolate.json symlink", func(t *testing.T) {
		dir := t.TempDir()
		target := filepath.Join(t.TempDir(), "real.json")
		os.WriteFile(target, []byte(manifest), 0o644)
		os.Symlink(target, filepath.Join(dir, ManifestFile))
		if _, _, err := LoadBundle(dir); err == nil || !strings.Contains(err.Error(), "must be a regular file, not a symlink") {
			t.Fatalf("error %v", err)
		}
	})
	t.Run("pyisolate.json directory", func(t *testing.T) {
		dir := t.TempDir()
		os.Mkdir(filepath.Join(dir, ManifestFile), 0o755)
		if _, _, err := LoadBundle(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("error %v", err)
		}
	})
}

// TestCheckName: the rule of names and groups, which the CLI applies to
// --group too.
func TestCheckName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"comfy-ext_1.0", ""},
		{strings.Repeat("g", MaxNameLength), ""},
		{"", "is empty"},
		{strings.Repeat("g", 1000), `"gggggggggggggggg"... is 1000 characters long, at most 64 are allowed`},
		{"a/b", `"a/b" contains '/'`},
		{"a+b", `"a+b" contains '+'`},
		{"..", `".." must not start with '.' or '-'`},
		{"-x", `must not start with '.' or '-'`},
	} {
		err := CheckName(tc.in)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("CheckName(%.20q) = %v, want %q", tc.in, err, tc.want)
		}
	}
}

// TestLoadBundleNonRegular: a FIFO, a socket, a device or a directory named
// pyisolate.json or config.json is refused at once, naming the file and the
// rule; before, opening a FIFO without a writer hung forever.
func TestLoadBundleNonRegular(t *testing.T) {
	for _, tt := range []struct {
		name string
		file string
		make func(p string) error
		want string
	}{
		{"fifo manifest", ManifestFile, func(p string) error { return syscall.Mkfifo(p, 0o644) }, "it is a FIFO"},
		{"fifo config", ConfigFile, func(p string) error { return syscall.Mkfifo(p, 0o644) }, "it is a FIFO"},
		{"directory config", ConfigFile, func(p string) error { return os.Mkdir(p, 0o755) }, "it is a directory"},
		{"device config (symlink to /dev/null)", ConfigFile, func(p string) error { return os.Symlink("/dev/null", p) }, "it is a character device"},
		{"socket manifest", ManifestFile, func(p string) error {
			l, err := net.Listen("unix", p)
			if err == nil {
				t.Cleanup(func() { l.Close() })
			}
			return err
		}, "it is a socket"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, tt.file)
			if err := tt.make(p); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				_, _, err := LoadBundle(dir)
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), p+": not a regular file") ||
					!strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
					t.Errorf("error %v; want one line naming %s and %q", err, p, tt.want)
				}
			case <-time.After(5 * time.Second):
				// Unblock the hung open so that the test can end.
				if w, err := os.OpenFile(p, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
					w.Close()
				}
				t.Fatalf("LoadBundle hangs on %s", tt.name)
			}
		})
	}
}

// TestREADMEExample decodes the complete example of README.md, so that the
// reference stays true to the code.
func TestREADMEExample(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := readmeJSON.FindAllSubmatch(readme, -1)
	if len(blocks) == 0 {
		t.Fatal("README.md has no json example")
	}
	for _, b := range blocks {
		if _, err := DecodeManifest(b[1]); err != nil {
			t.Errorf("README example:\n%s\n%v", b[1], err)
		}
	}
}

// TestLoadBundleMountedManifest: a manifest bound at ManifestMountPath (how
// Docker 20.10, which passes no annotations, names an extension) is read
// from the bind's source; anything else mounted there, a second manifest
// or a bad file is refused naming the mount.
func TestLoadBundleMountedManifest(t *testing.T) {
	module := t.TempDir()
	python := filepath.Join(t.TempDir(), "python3")
	if err := os.WriteFile(python, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	host := t.TempDir()
	good := filepath.Join(host, "good.json")
	if err := os.WriteFile(good, []byte(`{"name":"mounted","module_path":"`+module+`","python":"`+python+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(host, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"name":"x","module_path":"/etc","python":"`+python+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(host, "fifo.json")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(host, "huge.json")
	if err := os.WriteFile(huge, make([]byte, MaxManifestSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	config := func(ann map[string]string, mounts ...specs.Mount) string {
		b, err := json.Marshal(map[string]any{"ociVersion": "1.2.0", "annotations": ann, "mounts": mounts})
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	bind := func(src, dst string) specs.Mount {
		return specs.Mount{Destination: dst, Type: "bind", Source: src, Options: []string{"rbind", "ro"}}
	}
	tests := []struct {
		name   string
		config string
		want   string // the manifest's name, or a substring of the error
		err    bool
	}{
		{name: "bind", config: config(nil, bind("/etc/hosts", "/etc/hosts"), bind(good, ManifestMountPath)), want: "mounted"},
		{name: "destination not clean", config: config(nil, bind(good, "//pyisolate.json")), want: "mounted"},
		{name: "elsewhere is plain", config: config(nil, bind(good, "/opt/pyisolate.json")), want: ""},
		{name: "and annotations", config: config(map[string]string{AnnotationFieldName: "a", AnnotationFieldModulePath: module}, bind(good, ManifestMountPath)),
			want: "two manifests", err: true},
		{name: "two binds", config: config(nil, bind(good, ManifestMountPath), bind(good, ManifestMountPath)), want: "a second mount at /pyisolate.json", err: true},
		{name: "not a bind", config: config(nil, specs.Mount{Destination: ManifestMountPath, Type: "tmpfs", Source: "tmpfs"}),
			want: "mounts[0] (/pyisolate.json): a tmpfs mount at /pyisolate.json: the manifest must be a bind of a regular file", err: true},
		{name: "relative source", config: config(nil, bind("good.json", ManifestMountPath)), want: `source "good.json" is not an absolute path`, err: true},
		{name: "a directory (an image's VOLUME)", config: config(nil, bind(host, ManifestMountPath)), want: "it is a directory", err: true},
		{name: "missing", config: config(nil, bind(filepath.Join(host, "none.json"), ManifestMountPath)), want: "no such file", err: true},
		{name: "a FIFO, refused without blocking", config: config(nil, bind(fifo, ManifestMountPath)), want: "it is a FIFO", err: true},
		{name: "too large", config: config(nil, bind(huge, ManifestMountPath)), want: "larger than", err: true},
		{name: "forbidden path", config: config(nil, bind(bad, ManifestMountPath)), want: `the manifest bound at /pyisolate.json (` + bad + `): manifest: module_path: "/etc" is forbidden`, err: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, _, err := LoadBundle(bundleDir(t, map[string]string{ConfigFile: tc.config}))
			switch {
			case tc.err:
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err = %v, want one containing %q", err, tc.want)
				}
			case err != nil:
				t.Fatal(err)
			case tc.want == "" && m != nil:
				t.Fatalf("manifest %+v from a plain bundle", m)
			case tc.want != "" && (m == nil || m.Name != tc.want):
				t.Fatalf("manifest %+v, want %q", m, tc.want)
			}
		})
	}
}
