package tensoripc

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func hexsha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func rowMajor(shape []int64) []int64 {
	st := make([]int64, len(shape))
	n := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		st[i] = n
		n *= shape[i]
	}
	return st
}

func reversed(s []int64) []int64 {
	out := make([]int64, len(s))
	for i := range s {
		out[len(s)-1-i] = s[i]
	}
	return out
}

// gather copies a tensor's elements in row-major order through View.At.
func gather(t *testing.T, v *View) []byte {
	t.Helper()
	size := v.Ref().Size
	var out []byte
	idx := make([]int64, len(size))
	for n := v.NumElements(); n > 0; n-- {
		b, err := v.At(idx...)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b...)
		for i := len(idx) - 1; i >= 0; i-- {
			if idx[i]++; idx[i] < size[i] {
				break
			}
			idx[i] = 0
		}
	}
	return out
}

// TestOpenCPUReadsWhatNumpyWrote: Python writes, Go reads the same bytes.
func TestOpenCPUReadsWhatNumpyWrote(t *testing.T) {
	t.Parallel()
	d := anyDomain(t, Options{})
	py := startPy(t, d.Dir())
	tests := []struct {
		name, dtype string
		shape       []int64
		torchLayout bool // 64-byte refcount header before the storage
	}{
		{"plain", "torch.float32", []int64{3, 4, 5}, false},
		{"torch_%d_1_0", "torch.int64", []int64{2, 3}, true},
		{"bytes", "torch.uint8", []int64{7}, false},
		{"wide", "torch.complex128", []int64{4, 2}, false},
		{"half", "torch.float16", []int64{5, 1, 3}, false},
	}
	for _, tt := range tests {
		t.Run(tt.dtype, func(t *testing.T) {
			name := tt.name
			if strings.Contains(name, "%d") {
				name = fmt.Sprintf(name, py.pid)
			}
			var shape []string
			for _, s := range tt.shape {
				shape = append(shape, fmt.Sprint(s))
			}
			layout := map[bool]string{false: "plain", true: "torch"}[tt.torchLayout]
			out := strings.Fields(py.do(t, fmt.Sprintf("array %s %s %s %s", name, tt.dtype, strings.Join(shape, ","), layout)))
			wantSHA, wantTSHA := out[0], out[1]
			es, _ := DTypeSize(tt.dtype)
			n := int64(1)
			for _, s := range tt.shape {
				n *= s
			}
			// the TensorRef pyisolate would send for this storage
			ref := &TensorRef{Device: "cpu", DType: tt.dtype, Size: tt.shape, Stride: rowMajor(tt.shape), StorageSize: n * es,
				CPU: &CPUStorage{Strategy: StrategyFileSystem, StorageKey: "/" + name}}
			v, err := OpenCPU(ref, d.Dir())
			if err != nil {
				t.Fatalf("OpenCPU: %v", err)
			}
			defer v.Close()
			b, err := v.Bytes()
			if err != nil {
				t.Fatalf("Bytes: %v", err)
			}
			if got := hexsha(b); got != wantSHA {
				t.Errorf("Go read sha256 %s, numpy wrote %s", got, wantSHA)
			}
			// the transposed (non-contiguous) view of the same storage
			tref := *ref
			tref.Size, tref.Stride = reversed(tt.shape), reversed(ref.Stride)
			tv, err := OpenCPU(&tref, d.Dir())
			if err != nil {
				t.Fatalf("OpenCPU transposed: %v", err)
			}
			defer tv.Close()
			if _, err := tv.Bytes(); (err != nil) != (len(tt.shape) > 1) {
				t.Errorf("Bytes of the transposed view: %v; want an error exactly when it is not contiguous", err)
			}
			if got := hexsha(gather(t, tv)); got != wantTSHA {
				t.Errorf("Go strided read sha256 %s, numpy's a.T %s", got, wantTSHA)
			}
		})
	}
}

func TestOpenCPUErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "small"), make([]byte, 10), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "torch_1_2_3"), make([]byte, 16), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	ref := func(key string, size int64) *TensorRef {
		return &TensorRef{Device: "cpu", DType: "torch.uint8", Size: []int64{size}, Stride: []int64{1}, StorageSize: size,
			CPU: &CPUStorage{Strategy: StrategyFileSystem, StorageKey: key}}
	}
	tests := []struct {
		name string
		ref  *TensorRef
		want string
	}{
		{"file smaller than storage", ref("/small", 11), "file has 10 bytes"},
		{"torch file without room for its header", ref("/torch_1_2_3", 16), "(+64 header) needs 80"},
		{"missing", ref("/absent", 1), "no such file"},
		{"directory", ref("/adir", 0), "not a regular file"},
		{"invalid ref", ref("/../small", 1), `field "storage_key"`},
		{"cuda ref", &TensorRef{Device: "cuda", CUDA: &CUDAStorage{}}, "not a CPU TensorRef"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := OpenCPU(tt.ref, dir)
			if err == nil {
				v.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("OpenCPU: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	v, err := OpenCPU(ref("/small", 10), dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.At(10); err == nil {
		t.Errorf("At past the end succeeded")
	}
	if _, err := v.At(1, 1); err == nil {
		t.Errorf("At with too many indices succeeded")
	}
	if err := v.Close(); err != nil || v.Close() != nil {
		t.Errorf("Close twice: %v", err)
	}
}

// TestPublishReadByNumpy: Go publishes, a Python numpy consumer reads the
// TensorRef and the segment.
func TestPublishReadByNumpy(t *testing.T) {
	t.Parallel()
	needPython(t, "numpy")
	d := anyDomain(t, Options{})
	shape := []int64{4, 5}
	data := make([]byte, 4*20)
	var sum float64
	for i := 0; i < 20; i++ {
		f := float32(i)*1.5 - 3
		sum += float64(f)
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(f))
	}
	ref, err := Publish(d.Dir(), "go_tensor", data, "torch.float32", shape)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(d.Dir(), "go_tensor"))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != int64(len(data)) {
		t.Fatalf("published file: %v %v", fi, err)
	}
	if err := ref.Validate(d.Dir()); err != nil {
		t.Fatalf("Publish returned an invalid ref: %v", err)
	}
	v, err := OpenCPU(ref, d.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	tref := *ref
	tref.Size, tref.Stride = reversed(ref.Size), reversed(ref.Stride)
	tv, err := OpenCPU(&tref, d.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer tv.Close()
	for _, c := range []struct {
		name string
		ref  *TensorRef
		sha  string
	}{{"contiguous", ref, hexsha(data)}, {"transposed", &tref, hexsha(gather(t, tv))}} {
		in, _ := json.Marshal(c.ref)
		cmd := exec.Command(sysPython, "testdata/shmtool.py", "readref", d.Dir())
		cmd.Stdin = bytes.NewReader(in)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: python readref: %v: %s", c.name, err, out)
		}
		var got struct {
			SHA   string  `json:"sha256"`
			Sum   float64 `json:"sum"`
			Shape []int64 `json:"shape"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%s: python said %s", c.name, out)
		}
		if got.SHA != c.sha || got.Sum != sum || fmt.Sprint(got.Shape) != fmt.Sprint(c.ref.Size) {
			t.Errorf("%s: numpy read sha %s sum %v shape %v; Go published sha %s sum %v shape %v", c.name, got.SHA, got.Sum, got.Shape, c.sha, sum, c.ref.Size)
		}
	}
}

func TestPublishErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Publish(dir, "dup", []byte{1}, "torch.uint8", []int64{1}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, seg, dtype string
		data             []byte
		shape            []int64
		want             string
	}{
		{"exists", "dup", "torch.uint8", []byte{1}, []int64{1}, "file exists"},
		{"torch's own name", "torch_1_2_3", "torch.uint8", []byte{1}, []int64{1}, "torch's own segments"},
		{"escape", "../x", "torch.uint8", []byte{1}, []int64{1}, `field "storage_key"`},
		{"unknown dtype", "a", "torch.float8", []byte{1}, []int64{1}, `field "dtype"`},
		{"length", "b", "torch.int32", []byte{1, 2, 3}, []int64{1}, "3 bytes of data, shape [1] of torch.int32 needs 4"},
		{"negative shape", "c", "torch.uint8", nil, []int64{-1}, "negative dimension"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Publish(dir, tt.seg, tt.data, tt.dtype, tt.shape)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Publish: %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := Publish(dir, "dup", []byte{1}, "torch.uint8", []int64{1}); !errors.Is(err, os.ErrExist) {
		t.Errorf("Publish over an existing segment: %v, want os.ErrExist", err)
	}
	ref, err := Publish(dir, "/empty", nil, "torch.float32", []int64{0, 3})
	if err != nil {
		t.Fatal(err)
	}
	v, err := OpenCPU(ref, dir)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := v.Bytes(); err != nil || len(b) != 0 {
		t.Errorf("empty tensor bytes %v, %v", b, err)
	}
	v.Close()
}

func BenchmarkOpenCPU(b *testing.B) {
	for _, size := range []int{1 << 20, 64 << 20} {
		b.Run(HumanBytes(int64(size)), func(b *testing.B) {
			dir := b.TempDir()
			if _, err := os.Stat("/dev/shm"); err == nil { // page-cache-free like the group's tmpfs
				if d, err := os.MkdirTemp("/dev/shm", "tensoripc-bench"); err == nil {
					dir = d
					defer os.RemoveAll(d)
				}
			}
			ref, err := Publish(dir, "bench", make([]byte, size), "torch.uint8", []int64{int64(size)})
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				v, err := OpenCPU(ref, dir)
				if err != nil {
					b.Fatal(err)
				}
				if bs, err := v.Bytes(); err != nil || len(bs) != size {
					b.Fatal(err)
				}
				v.Close()
			}
		})
	}
}

// TestPublishLayouts: a torch_ name gets torch's layout (header with the
// publisher's reference, storage after it) and a descriptor torch accepts;
// another name the plain layout and a descriptor torch refuses. Go and
// numpy read both back.
func TestPublishLayouts(t *testing.T) {
	t.Parallel()
	needPython(t, "numpy")
	dir := anyDomain(t, Options{}).Dir()
	data := []byte("0123456789abcdef0123456789ABCDEF")
	tests := []struct {
		name        string
		header      int
		strategy    string
		managerPath string
	}{
		{"torch_go_layout", TorchHeaderSize, StrategyFileSystemBorrowed, ""},
		{"plain_layout", 0, StrategyFileSystem, NoTorchManagerPath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ref, err := Publish(dir, tt.name, data, "torch.int32", []int64{2, 4})
			if err != nil {
				t.Fatal(err)
			}
			if ref.CPU.Strategy != tt.strategy || ref.CPU.ManagerPath != tt.managerPath {
				t.Errorf("strategy %q, manager_path %q; want %q, %q", ref.CPU.Strategy, ref.CPU.ManagerPath, tt.strategy, tt.managerPath)
			}
			file, err := os.ReadFile(filepath.Join(dir, tt.name))
			if err != nil {
				t.Fatal(err)
			}
			if len(file) != tt.header+len(data) || !bytes.Equal(file[tt.header:], data) {
				t.Fatalf("file holds %q, want %d header bytes then the data", file, tt.header)
			}
			if tt.header > 0 && binary.NativeEndian.Uint32(file) != 1 {
				t.Errorf("refcount in the header = %d, want 1 (the publisher's)", binary.NativeEndian.Uint32(file))
			}
			v, err := OpenCPU(ref, dir)
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			if b, _ := v.Bytes(); !bytes.Equal(b, data) {
				t.Errorf("Go read %q", b)
			}
			in, _ := json.Marshal(ref)
			cmd := exec.Command(sysPython, "testdata/shmtool.py", "readref", dir)
			cmd.Stdin = bytes.NewReader(in)
			out, err := cmd.CombinedOutput()
			if err != nil || !strings.Contains(string(out), hexsha(data)) {
				t.Errorf("numpy read: %v: %s, want sha256 %s", err, out, hexsha(data))
			}
		})
	}
}

// TestNoTorchManagerPathInPythonWriters: the Python writers of plain
// segments (the demo, the hand-off benchmark) use NoTorchManagerPath.
func TestNoTorchManagerPathInPythonWriters(t *testing.T) {
	for _, f := range []string{"../examples/demo/pyisolate_demo/wire.py", "../test/testdata/tipc/handoff.py"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `NO_TORCH_MANAGER = "`+NoTorchManagerPath+`"`) || !strings.Contains(string(b), `"manager_path": NO_TORCH_MANAGER`) {
			t.Errorf("%s does not send manager_path %s for its plain segments", f, NoTorchManagerPath)
		}
	}
}
