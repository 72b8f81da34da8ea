package tensoripc

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// TensorRefType is the "__type__" of a TensorRef on the wire.
const TensorRefType = "TensorRef"

// CPU strategies pyisolate emits: "file_system" is torch's file_system
// reduction; "file_system_borrowed" is the same storage with the sender's
// transit reference already dropped.
const (
	StrategyFileSystem         = "file_system"
	StrategyFileSystemBorrowed = "file_system_borrowed"
)

// TensorRef is pyisolate's descriptor of a tensor stored in shared memory, as
// sent in its JSON-RPC messages: a CPU tensor in a file_system segment (CPU is
// set) or a CUDA tensor behind a CUDA IPC handle (CUDA is set).
type TensorRef struct {
	Device       string  // "cpu" or "cuda"
	DType        string  // torch dtype name, e.g. "torch.float32"
	Size         []int64 // tensor_size
	Stride       []int64 // tensor_stride, in elements
	Offset       int64   // tensor_offset: storage offset in elements
	StorageSize  int64   // storage_size: bytes of the storage
	RequiresGrad bool
	CPU          *CPUStorage
	CUDA         *CUDAStorage
}

// CPUStorage is the storage of a CPU TensorRef.
type CPUStorage struct {
	Strategy    string // StrategyFileSystem or StrategyFileSystemBorrowed
	ManagerPath string // torch_shm_manager socket; empty for Go-published segments
	StorageKey  string // shm name, e.g. "/torch_123_456_0": a file of the group's /dev/shm
}

// CUDAStorage is the storage of a CUDA TensorRef (torch's CUDA IPC reduction).
type CUDAStorage struct {
	DeviceIdx         int
	Handle            []byte // cudaIpcMemHandle; base64 on the wire
	StorageOffset     int64  // bytes
	RefCounterHandle  []byte
	RefCounterOffset  int64
	EventHandle       []byte // nil when there is no event (JSON null)
	EventSyncRequired bool
}

// cpuWire and cudaWire are the two JSON forms.
type cpuWire struct {
	Type         string  `json:"__type__"`
	Device       string  `json:"device"`
	Strategy     string  `json:"strategy"`
	ManagerPath  string  `json:"manager_path"`
	StorageKey   string  `json:"storage_key"`
	StorageSize  int64   `json:"storage_size"`
	DType        string  `json:"dtype"`
	TensorSize   []int64 `json:"tensor_size"`
	TensorStride []int64 `json:"tensor_stride"`
	TensorOffset int64   `json:"tensor_offset"`
	RequiresGrad bool    `json:"requires_grad"`
}

type cudaWire struct {
	Type              string  `json:"__type__"`
	Device            string  `json:"device"`
	DeviceIdx         int     `json:"device_idx"`
	Handle            string  `json:"handle"`
	StorageSize       int64   `json:"storage_size"`
	StorageOffset     int64   `json:"storage_offset"`
	DType             string  `json:"dtype"`
	TensorSize        []int64 `json:"tensor_size"`
	TensorStride      []int64 `json:"tensor_stride"`
	TensorOffset      int64   `json:"tensor_offset"`
	RequiresGrad      bool    `json:"requires_grad"`
	RefCounterHandle  string  `json:"ref_counter_handle"`
	RefCounterOffset  int64   `json:"ref_counter_offset"`
	EventHandle       *string `json:"event_handle"`
	EventSyncRequired bool    `json:"event_sync_required"`
}

// FieldError is an invalid TensorRef field.
type FieldError struct {
	Field string // wire name, e.g. "tensor_stride"
	Msg   string
}

// Error names the field: tensorref: field "NAME": MESSAGE.
func (e *FieldError) Error() string { return fmt.Sprintf("tensorref: field %q: %s", e.Field, e.Msg) }

func fieldErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// dtypeSizes maps torch dtype names, as str(dtype) spells them, to element
// sizes in bytes (torch's element_size()). It holds every dtype of torch
// 1.13 and the ones torch 2.x added: the unsigned integers (2.3), the float8
// formats (2.1, fnuz 2.2, e8m0fnu 2.7), float4_e2m1fn_x2 (two values in one
// byte, 2.8) and the bits types. The quantized dtypes are listed with their
// storage's element size; their scale and zero point do not travel in a
// TensorRef. torch 2.x's sub-byte placeholders (int1..int7, uint1..uint7)
// have no storage layout of their own and are not listed.
var dtypeSizes = map[string]int64{
	"torch.float64": 8, "torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2,
	"torch.int64": 8, "torch.int32": 4, "torch.int16": 2, "torch.int8": 1,
	"torch.uint64": 8, "torch.uint32": 4, "torch.uint16": 2, "torch.uint8": 1,
	"torch.bool": 1, "torch.complex32": 4, "torch.complex64": 8, "torch.complex128": 16,
	"torch.float8_e4m3fn": 1, "torch.float8_e5m2": 1, "torch.float8_e4m3fnuz": 1,
	"torch.float8_e5m2fnuz": 1, "torch.float8_e8m0fnu": 1, "torch.float4_e2m1fn_x2": 1,
	"torch.qint8": 1, "torch.quint8": 1, "torch.qint32": 4, "torch.quint4x2": 1, "torch.quint2x4": 1,
	"torch.bits1x8": 1, "torch.bits2x4": 1, "torch.bits4x2": 1, "torch.bits8": 1, "torch.bits16": 2,
}

// DTypeSize returns the element size of a torch dtype name ("torch.float32").
func DTypeSize(dtype string) (int64, bool) {
	n, ok := dtypeSizes[dtype]
	return n, ok
}

// MarshalJSON encodes r in pyisolate's wire form for its device.
func (r TensorRef) MarshalJSON() ([]byte, error) {
	switch {
	case r.Device == "cpu" && r.CPU != nil && r.CUDA == nil:
		return json.Marshal(cpuWire{Type: TensorRefType, Device: "cpu", Strategy: r.CPU.Strategy,
			ManagerPath: r.CPU.ManagerPath, StorageKey: r.CPU.StorageKey, StorageSize: r.StorageSize,
			DType: r.DType, TensorSize: nonNil(r.Size), TensorStride: nonNil(r.Stride),
			TensorOffset: r.Offset, RequiresGrad: r.RequiresGrad})
	case r.Device == "cuda" && r.CUDA != nil && r.CPU == nil:
		c := r.CUDA
		var event *string
		if c.EventHandle != nil {
			e := base64.StdEncoding.EncodeToString(c.EventHandle)
			event = &e
		}
		return json.Marshal(cudaWire{Type: TensorRefType, Device: "cuda", DeviceIdx: c.DeviceIdx,
			Handle: base64.StdEncoding.EncodeToString(c.Handle), StorageSize: r.StorageSize, StorageOffset: c.StorageOffset,
			DType: r.DType, TensorSize: nonNil(r.Size), TensorStride: nonNil(r.Stride),
			TensorOffset: r.Offset, RequiresGrad: r.RequiresGrad, RefCounterHandle: base64.StdEncoding.EncodeToString(c.RefCounterHandle),
			RefCounterOffset: c.RefCounterOffset, EventHandle: event, EventSyncRequired: c.EventSyncRequired})
	}
	return nil, fieldErr("device", "%q needs exactly its own storage (CPU for \"cpu\", CUDA for \"cuda\")", r.Device)
}

func nonNil(s []int64) []int64 {
	if s == nil {
		return []int64{}
	}
	return s
}

var (
	cpuRequired  = []string{"__type__", "device", "strategy", "manager_path", "storage_key", "storage_size", "dtype", "tensor_size", "tensor_stride", "tensor_offset", "requires_grad"}
	cudaRequired = []string{"__type__", "device", "device_idx", "handle", "storage_size", "storage_offset", "dtype", "tensor_size", "tensor_stride", "tensor_offset", "requires_grad", "ref_counter_handle", "ref_counter_offset", "event_handle", "event_sync_required"}
)

// UnmarshalJSON decodes either wire form strictly: unknown and missing
// fields, a wrong "__type__" or device, and values of the wrong type are
// errors naming the field.
func (r *TensorRef) UnmarshalJSON(data []byte) error {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("tensorref: %w", err)
	}
	var typ, device string
	if err := json.Unmarshal(raw["__type__"], &typ); err != nil || typ != TensorRefType {
		return fieldErr("__type__", "must be %q, got %s", TensorRefType, orMissing(raw["__type__"]))
	}
	if err := json.Unmarshal(raw["device"], &device); err != nil {
		return fieldErr("device", "must be \"cpu\" or \"cuda\", got %s", orMissing(raw["device"]))
	}
	var required []string
	var target any
	var cw cpuWire
	var gw cudaWire
	switch device {
	case "cpu":
		required, target = cpuRequired, &cw
	case "cuda":
		required, target = cudaRequired, &gw
	default:
		return fieldErr("device", "must be \"cpu\" or \"cuda\", got %q", device)
	}
	for _, f := range required {
		v, ok := raw[f]
		if !ok {
			return fieldErr(f, "missing from the %s form", device)
		}
		if string(bytes.TrimSpace(v)) == "null" && f != "event_handle" {
			return fieldErr(f, "is null")
		}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(target); err != nil {
		return decodeErr(device, err)
	}
	if device == "cpu" {
		*r = TensorRef{Device: "cpu", DType: cw.DType, Size: cw.TensorSize, Stride: cw.TensorStride,
			Offset: cw.TensorOffset, StorageSize: cw.StorageSize, RequiresGrad: cw.RequiresGrad,
			CPU: &CPUStorage{Strategy: cw.Strategy, ManagerPath: cw.ManagerPath, StorageKey: cw.StorageKey}}
		return nil
	}
	c := &CUDAStorage{DeviceIdx: gw.DeviceIdx, StorageOffset: gw.StorageOffset,
		RefCounterOffset: gw.RefCounterOffset, EventSyncRequired: gw.EventSyncRequired}
	for _, b := range []struct {
		field string
		in    *string
		out   *[]byte
	}{{"handle", &gw.Handle, &c.Handle}, {"ref_counter_handle", &gw.RefCounterHandle, &c.RefCounterHandle}, {"event_handle", gw.EventHandle, &c.EventHandle}} {
		if b.in == nil {
			continue
		}
		v, err := base64.StdEncoding.DecodeString(*b.in)
		if err != nil {
			return fieldErr(b.field, "not base64: %v", err)
		}
		*b.out = v
	}
	*r = TensorRef{Device: "cuda", DType: gw.DType, Size: gw.TensorSize, Stride: gw.TensorStride,
		Offset: gw.TensorOffset, StorageSize: gw.StorageSize, RequiresGrad: gw.RequiresGrad, CUDA: c}
	return nil
}

func orMissing(v json.RawMessage) string {
	if v == nil {
		return "nothing (missing)"
	}
	return string(v)
}

// decodeErr turns encoding/json errors into FieldErrors where it can.
func decodeErr(device string, err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fieldErr(te.Field, "cannot hold JSON %s (%v)", te.Value, err)
	}
	if name, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fieldErr(strings.Trim(name, `"`), "unknown field in the %s form", device)
	}
	return fmt.Errorf("tensorref: %s form: %w", device, err)
}

// DecodeTensorRef decodes one TensorRef strictly (see UnmarshalJSON).
func DecodeTensorRef(data []byte) (*TensorRef, error) {
	var r TensorRef
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// Validate checks r: a known dtype, non-negative sizes, strides, offsets and
// storage size, as many strides as sizes, every reachable element inside the
// storage, and for CPU a storage_key that names a file directly inside
// domainDir (one optional leading "/", no other "/", not "." or "..", not a
// symlink). domainDir is not used for CUDA refs. Errors are *FieldError.
func (r *TensorRef) Validate(domainDir string) error {
	es, ok := DTypeSize(r.DType)
	if !ok {
		known := make([]string, 0, len(dtypeSizes))
		for k := range dtypeSizes {
			known = append(known, k)
		}
		sort.Strings(known)
		return fieldErr("dtype", "unknown dtype %q (known: %s)", r.DType, strings.Join(known, ", "))
	}
	if r.StorageSize < 0 {
		return fieldErr("storage_size", "negative: %d", r.StorageSize)
	}
	if r.Offset < 0 {
		return fieldErr("tensor_offset", "negative: %d", r.Offset)
	}
	if len(r.Size) != len(r.Stride) {
		return fieldErr("tensor_stride", "has %d entries for %d dimensions in tensor_size", len(r.Stride), len(r.Size))
	}
	for i := range r.Size {
		if r.Size[i] < 0 {
			return fieldErr("tensor_size", "dimension %d is negative: %d", i, r.Size[i])
		}
		if r.Stride[i] < 0 {
			return fieldErr("tensor_stride", "dimension %d is negative: %d", i, r.Stride[i])
		}
	}
	need, err := extentBytes(r.Size, r.Stride, r.Offset, es)
	if err != nil {
		return err
	}
	if need > r.StorageSize {
		return fieldErr("storage_size", "%d bytes, but tensor_size %v, tensor_stride %v and tensor_offset %d of %s reach byte %d", r.StorageSize, r.Size, r.Stride, r.Offset, r.DType, need)
	}
	switch {
	case r.Device == "cpu" && r.CPU != nil && r.CUDA == nil:
		s := r.CPU.Strategy
		if s != StrategyFileSystem && s != StrategyFileSystemBorrowed {
			return fieldErr("strategy", "must be %q or %q, got %q", StrategyFileSystem, StrategyFileSystemBorrowed, s)
		}
		_, err := segmentPath(domainDir, r.CPU.StorageKey)
		return err
	case r.Device == "cuda" && r.CUDA != nil && r.CPU == nil:
		c := r.CUDA
		switch {
		case c.DeviceIdx < 0:
			return fieldErr("device_idx", "negative: %d", c.DeviceIdx)
		case len(c.Handle) == 0:
			return fieldErr("handle", "empty")
		case c.StorageOffset < 0:
			return fieldErr("storage_offset", "negative: %d", c.StorageOffset)
		case len(c.RefCounterHandle) == 0:
			return fieldErr("ref_counter_handle", "empty")
		case c.RefCounterOffset < 0:
			return fieldErr("ref_counter_offset", "negative: %d", c.RefCounterOffset)
		}
		return nil
	}
	return fieldErr("device", "%q needs exactly its own storage (CPU for \"cpu\", CUDA for \"cuda\")", r.Device)
}

// extentBytes is the number of storage bytes the tensor reaches:
// (offset + sum((size_i-1)*stride_i) + 1) * elemSize, or 0 for no elements.
func extentBytes(size, stride []int64, offset, elemSize int64) (int64, error) {
	for _, s := range size {
		if s == 0 {
			return 0, nil
		}
	}
	overflow := fieldErr("tensor_size", "extent of tensor_size %v with tensor_stride %v overflows 64 bits", size, stride)
	last := uint64(offset)
	for i := range size {
		hi, lo := bits.Mul64(uint64(size[i]-1), uint64(stride[i]))
		var carry uint64
		last, carry = bits.Add64(last, lo, 0)
		if hi != 0 || carry != 0 {
			return 0, overflow
		}
	}
	hi, n := bits.Mul64(last+1, uint64(elemSize))
	if hi != 0 || last+1 == 0 || n > 1<<63-1 {
		return 0, overflow
	}
	return int64(n), nil
}

// segmentPath checks a storage key or segment name and returns its file in
// domainDir.
func segmentPath(domainDir, key string) (string, error) {
	name := strings.TrimPrefix(key, "/")
	switch {
	case name == "":
		return "", fieldErr("storage_key", "empty")
	case strings.Contains(name, "/"):
		return "", fieldErr("storage_key", "%q has a \"/\" after the leading one: segments are plain names", key)
	case name == "." || name == "..":
		return "", fieldErr("storage_key", "%q is not a segment name", key)
	case strings.ContainsRune(name, 0):
		return "", fieldErr("storage_key", "%q contains NUL", key)
	case domainDir == "":
		return "", fieldErr("storage_key", "no group shm directory to resolve %q in", key)
	}
	p := filepath.Join(domainDir, name)
	if filepath.Dir(p) != filepath.Clean(domainDir) {
		return "", fieldErr("storage_key", "%q resolves outside %s", key, domainDir)
	}
	if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		return "", fieldErr("storage_key", "%q is a symlink in %s", key, domainDir)
	}
	return p, nil
}
