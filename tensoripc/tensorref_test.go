package tensoripc

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// As pyisolate's tensor_serializer emits them.
const (
	cpuRefJSON = `{"__type__": "TensorRef", "device": "cpu", "strategy": "file_system",
 "manager_path": "/tmp/torch-shm-file-abc", "storage_key": "/torch_123_456_0", "storage_size": 96,
 "dtype": "torch.float32", "tensor_size": [4, 6], "tensor_stride": [6, 1], "tensor_offset": 0, "requires_grad": false}`
	cudaRefJSON = `{"__type__": "TensorRef", "device": "cuda", "device_idx": 0, "tensor_size": [2, 3],
 "tensor_stride": [3, 1], "tensor_offset": 2, "dtype": "torch.float16", "handle": "AAECAwQ=", "storage_size": 64,
 "storage_offset": 512, "requires_grad": true, "ref_counter_handle": "L3RvcmNoX3JjXzE=", "ref_counter_offset": 3,
 "event_handle": null, "event_sync_required": true}`
)

func TestTensorRefRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want TensorRef
	}{
		{"cpu", cpuRefJSON, TensorRef{Device: "cpu", DType: "torch.float32", Size: []int64{4, 6}, Stride: []int64{6, 1},
			StorageSize: 96, CPU: &CPUStorage{Strategy: "file_system", ManagerPath: "/tmp/torch-shm-file-abc", StorageKey: "/torch_123_456_0"}}},
		{"cpu borrowed", strings.Replace(cpuRefJSON, `"file_system"`, `"file_system_borrowed"`, 1), TensorRef{Device: "cpu", DType: "torch.float32",
			Size: []int64{4, 6}, Stride: []int64{6, 1}, StorageSize: 96,
			CPU: &CPUStorage{Strategy: "file_system_borrowed", ManagerPath: "/tmp/torch-shm-file-abc", StorageKey: "/torch_123_456_0"}}},
		{"cuda without event", cudaRefJSON, TensorRef{Device: "cuda", DType: "torch.float16", Size: []int64{2, 3}, Stride: []int64{3, 1},
			Offset: 2, StorageSize: 64, RequiresGrad: true, CUDA: &CUDAStorage{Handle: []byte{0, 1, 2, 3, 4}, StorageOffset: 512,
				RefCounterHandle: []byte("/torch_rc_1"), RefCounterOffset: 3, EventSyncRequired: true}}},
		{"cuda with event", strings.Replace(cudaRefJSON, `"event_handle": null`, `"event_handle": "/w=="`, 1), TensorRef{Device: "cuda",
			DType: "torch.float16", Size: []int64{2, 3}, Stride: []int64{3, 1}, Offset: 2, StorageSize: 64, RequiresGrad: true,
			CUDA: &CUDAStorage{Handle: []byte{0, 1, 2, 3, 4}, StorageOffset: 512, RefCounterHandle: []byte("/torch_rc_1"),
				RefCounterOffset: 3, EventHandle: []byte{0xff}, EventSyncRequired: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := DecodeTensorRef([]byte(tt.in))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if !reflect.DeepEqual(*r, tt.want) {
				t.Fatalf("decoded %+v\nwant    %+v", *r, tt.want)
			}
			out, err := json.Marshal(r)
			if err != nil {
				t.Fatalf("encode: %v", err)
			}
			var a, b map[string]any // same keys and values as the Python side's
			if err := json.Unmarshal([]byte(tt.in), &a); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(out, &b); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(a, b) {
				t.Errorf("re-encoded %s\nwant       %s", out, tt.in)
			}
		})
	}
}

func TestTensorRefDecodeErrors(t *testing.T) {
	set := func(doc, field, value string) string {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(doc), &m); err != nil {
			panic(err)
		}
		if value == "" {
			delete(m, field)
		} else {
			m[field] = json.RawMessage(value)
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	tests := []struct {
		name, in, field string
	}{
		{"unknown field", set(cpuRefJSON, "shape", "[1]"), "shape"},
		{"cuda field in cpu form", set(cpuRefJSON, "device_idx", "0"), "device_idx"},
		{"cpu field in cuda form", set(cudaRefJSON, "strategy", `"file_system"`), "strategy"},
		{"missing storage_key", set(cpuRefJSON, "storage_key", ""), "storage_key"},
		{"missing event_handle", set(cudaRefJSON, "event_handle", ""), "event_handle"},
		{"wrong __type__", set(cpuRefJSON, "__type__", `"TensorValue"`), "__type__"},
		{"missing __type__", set(cpuRefJSON, "__type__", ""), "__type__"},
		{"unknown device", set(cpuRefJSON, "device", `"xpu"`), "device"},
		{"storage_size as string", set(cpuRefJSON, "storage_size", `"96"`), "storage_size"},
		{"fractional offset", set(cpuRefJSON, "tensor_offset", `1.5`), "tensor_offset"},
		{"null tensor_size", set(cpuRefJSON, "tensor_size", `null`), "tensor_size"},
		{"size of strings", set(cpuRefJSON, "tensor_size", `["4"]`), "tensor_size"},
		{"handle not base64", set(cudaRefJSON, "handle", `"!!!"`), "handle"},
		{"event_handle not base64", set(cudaRefJSON, "event_handle", `"%%"`), "event_handle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeTensorRef([]byte(tt.in))
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Errorf("decode error %v, want a FieldError for %q", err, tt.field)
			}
			if err != nil && !strings.Contains(err.Error(), `"`+tt.field+`"`) {
				t.Errorf("error %q does not name %q", err, tt.field)
			}
		})
	}
	if _, err := DecodeTensorRef([]byte(`[1]`)); err == nil {
		t.Errorf("decoding a JSON array succeeded")
	}
}

func TestTensorRefValidate(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	cpu := func(edit func(r *TensorRef)) *TensorRef {
		r := &TensorRef{Device: "cpu", DType: "torch.float32", Size: []int64{4, 6}, Stride: []int64{6, 1}, StorageSize: 96,
			CPU: &CPUStorage{Strategy: "file_system", StorageKey: "/seg"}}
		edit(r)
		return r
	}
	cuda := func(edit func(c *CUDAStorage)) *TensorRef {
		r := &TensorRef{Device: "cuda", DType: "torch.uint8", Size: []int64{8}, Stride: []int64{1}, StorageSize: 8,
			CUDA: &CUDAStorage{Handle: []byte{1}, RefCounterHandle: []byte{2}}}
		edit(r.CUDA)
		return r
	}
	tests := []struct {
		name  string
		ref   *TensorRef
		field string // "" = valid
	}{
		{"valid", cpu(func(r *TensorRef) {}), ""},
		{"valid key without slash", cpu(func(r *TensorRef) { r.CPU.StorageKey = "seg" }), ""},
		{"exact fit with offset", cpu(func(r *TensorRef) { r.Size = []int64{3, 6}; r.Offset = 6 }), ""},
		{"transposed", cpu(func(r *TensorRef) { r.Size = []int64{6, 4}; r.Stride = []int64{1, 6} }), ""},
		{"expanded stride 0", cpu(func(r *TensorRef) { r.Size = []int64{1000, 24}; r.Stride = []int64{0, 1} }), ""},
		{"no elements, no storage", cpu(func(r *TensorRef) { r.Size = []int64{0, 6}; r.StorageSize = 0 }), ""},
		{"scalar", cpu(func(r *TensorRef) { r.Size, r.Stride, r.StorageSize = nil, nil, 4 }), ""},
		{"every dtype size", cpu(func(r *TensorRef) { r.DType = "torch.complex128"; r.StorageSize = 384 }), ""},
		{"unknown dtype", cpu(func(r *TensorRef) { r.DType = "float32" }), "dtype"},
		{"negative storage_size", cpu(func(r *TensorRef) { r.StorageSize = -1 }), "storage_size"},
		{"negative offset", cpu(func(r *TensorRef) { r.Offset = -1 }), "tensor_offset"},
		{"stride count", cpu(func(r *TensorRef) { r.Stride = []int64{1} }), "tensor_stride"},
		{"negative size", cpu(func(r *TensorRef) { r.Size = []int64{-4, 6} }), "tensor_size"},
		{"negative stride", cpu(func(r *TensorRef) { r.Stride = []int64{-6, 1} }), "tensor_stride"},
		{"one element past the storage", cpu(func(r *TensorRef) { r.Offset = 1 }), "storage_size"},
		{"bigger dtype than storage", cpu(func(r *TensorRef) { r.DType = "torch.float64" }), "storage_size"},
		{"extent overflows", cpu(func(r *TensorRef) { r.Size = []int64{1 << 62, 4}; r.Stride = []int64{1 << 62, 1} }), "tensor_size"},
		{"bytes overflow", cpu(func(r *TensorRef) { r.Size = []int64{1 << 61}; r.Stride = []int64{1} }), "tensor_size"},
		{"empty key", cpu(func(r *TensorRef) { r.CPU.StorageKey = "/" }), "storage_key"},
		{"dotdot key", cpu(func(r *TensorRef) { r.CPU.StorageKey = "/.." }), "storage_key"},
		{"path key", cpu(func(r *TensorRef) { r.CPU.StorageKey = "/../etc/passwd" }), "storage_key"},
		{"nested key", cpu(func(r *TensorRef) { r.CPU.StorageKey = "a/b" }), "storage_key"},
		{"double slash key", cpu(func(r *TensorRef) { r.CPU.StorageKey = "//seg" }), "storage_key"},
		{"NUL key", cpu(func(r *TensorRef) { r.CPU.StorageKey = "/se\x00g" }), "storage_key"},
		{"symlink key", cpu(func(r *TensorRef) { r.CPU.StorageKey = "/link" }), "storage_key"},
		{"bad strategy", cpu(func(r *TensorRef) { r.CPU.Strategy = "file_descriptor" }), "strategy"},
		{"cpu without storage", cpu(func(r *TensorRef) { r.CPU = nil }), "device"},
		{"cpu with cuda storage", cpu(func(r *TensorRef) { r.CUDA = &CUDAStorage{} }), "device"},
		{"valid cuda", cuda(func(c *CUDAStorage) {}), ""},
		{"cuda device_idx", cuda(func(c *CUDAStorage) { c.DeviceIdx = -1 }), "device_idx"},
		{"cuda empty handle", cuda(func(c *CUDAStorage) { c.Handle = nil }), "handle"},
		{"cuda storage_offset", cuda(func(c *CUDAStorage) { c.StorageOffset = -8 }), "storage_offset"},
		{"cuda ref counter", cuda(func(c *CUDAStorage) { c.RefCounterHandle = nil }), "ref_counter_handle"},
		{"cuda ref counter offset", cuda(func(c *CUDAStorage) { c.RefCounterOffset = -1 }), "ref_counter_offset"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.ref.Validate(dir)
			if tt.field == "" {
				if err != nil {
					t.Errorf("Validate: %v, want valid", err)
				}
				return
			}
			var fe *FieldError
			if !errors.As(err, &fe) || fe.Field != tt.field {
				t.Errorf("Validate: %v, want an error for field %q", err, tt.field)
			}
		})
	}
	if err := (&TensorRef{Device: "cpu", DType: "torch.uint8", CPU: &CPUStorage{Strategy: "file_system", StorageKey: "x"}}).Validate(""); err == nil {
		t.Errorf("Validate of a CPU ref without a shm directory succeeded")
	}
}

func TestDTypeSize(t *testing.T) {
	for dt, n := range map[string]int64{"torch.float64": 8, "torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2,
		"torch.int64": 8, "torch.int32": 4, "torch.int16": 2, "torch.int8": 1, "torch.uint8": 1, "torch.bool": 1,
		"torch.complex64": 8, "torch.complex128": 16} {
		if got, ok := DTypeSize(dt); !ok || got != n {
			t.Errorf("DTypeSize(%s) = %d, %v; want %d", dt, got, ok, n)
		}
	}
	if _, ok := DTypeSize("torch.float8"); ok {
		t.Errorf("DTypeSize knows torch.float8")
	}
}

// TestDTypeSizes: every dtype torch names (1.13 and 2.x) decodes and
// validates with its element size; the storage must hold size*elements.
func TestDTypeSizes(t *testing.T) {
	tests := []struct {
		dtype string
		size  int64
	}{
		{"torch.float64", 8}, {"torch.float32", 4}, {"torch.float16", 2}, {"torch.bfloat16", 2},
		{"torch.int64", 8}, {"torch.int32", 4}, {"torch.int16", 2}, {"torch.int8", 1},
		{"torch.uint64", 8}, {"torch.uint32", 4}, {"torch.uint16", 2}, {"torch.uint8", 1},
		{"torch.bool", 1}, {"torch.complex32", 4}, {"torch.complex64", 8}, {"torch.complex128", 16},
		{"torch.float8_e4m3fn", 1}, {"torch.float8_e5m2", 1}, {"torch.float8_e4m3fnuz", 1},
		{"torch.float8_e5m2fnuz", 1}, {"torch.float8_e8m0fnu", 1}, {"torch.float4_e2m1fn_x2", 1},
		{"torch.qint8", 1}, {"torch.quint8", 1}, {"torch.qint32", 4}, {"torch.quint4x2", 1}, {"torch.quint2x4", 1},
		{"torch.bits1x8", 1}, {"torch.bits2x4", 1}, {"torch.bits4x2", 1}, {"torch.bits8", 1}, {"torch.bits16", 2},
	}
	for _, tt := range tests {
		t.Run(tt.dtype, func(t *testing.T) {
			if got, ok := DTypeSize(tt.dtype); !ok || got != tt.size {
				t.Fatalf("DTypeSize(%s) = %d, %v; want %d", tt.dtype, got, ok, tt.size)
			}
			doc := strings.Replace(cpuRefJSON, `"torch.float32"`, `"`+tt.dtype+`"`, 1)
			doc = strings.Replace(doc, `"storage_size": 96`, fmt.Sprintf(`"storage_size": %d`, 24*tt.size), 1)
			r, err := DecodeTensorRef([]byte(doc))
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			dir := t.TempDir()
			if err := r.Validate(dir); err != nil {
				t.Errorf("validate with storage_size %d: %v", r.StorageSize, err)
			}
			r.StorageSize--
			var fe *FieldError
			if err := r.Validate(dir); !errors.As(err, &fe) || fe.Field != "storage_size" {
				t.Errorf("validate with one byte too few: %v, want a storage_size error", err)
			}
		})
	}
	if len(tests) != len(dtypeSizes) {
		t.Errorf("the table has %d dtypes, this test %d", len(dtypeSizes), len(tests))
	}
}
