package tensoripc

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// TorchHeaderSize is the refcount header torch's RefcountedMapAllocator puts
// before the data of a file_system segment: a torch_* file holds
// TorchHeaderSize + storage_size bytes and the storage starts after it.
const TorchHeaderSize = 64

// View is a read-only, shared mapping of a CPU tensor's storage. Writing to
// the slices it returns faults: the pages are mapped PROT_READ.
type View struct {
	ref     TensorRef
	mapping []byte // whole mapped region, header included
	storage []byte // storage_size bytes of storage
}

// OpenCPU validates a CPU TensorRef against the group's shm directory and maps
// its storage read-only (PROT_READ, MAP_SHARED): no copy is made. Segments
// named torch_* use torch's layout (TorchHeaderSize header, then the
// storage); others hold the storage from byte 0 (what Publish and numpy
// writers make). The file must hold at least the storage.
func OpenCPU(ref *TensorRef, domainDir string) (*View, error) {
	if ref == nil || ref.Device != "cpu" || ref.CPU == nil {
		return nil, fmt.Errorf("open cpu tensor: not a CPU TensorRef")
	}
	if err := ref.Validate(domainDir); err != nil {
		return nil, fmt.Errorf("open cpu tensor: %w", err)
	}
	path, _ := segmentPath(domainDir, ref.CPU.StorageKey)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cpu tensor %s: %w", path, err)
	}
	defer unix.Close(fd) // the mapping outlives the descriptor
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("open cpu tensor %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("open cpu tensor %s: not a regular file", path)
	}
	var header int64
	if strings.HasPrefix(strings.TrimPrefix(ref.CPU.StorageKey, "/"), "torch_") {
		header = TorchHeaderSize
	}
	if st.Size < header+ref.StorageSize {
		return nil, fmt.Errorf("open cpu tensor %s: file has %d bytes, storage_size %d (+%d header) needs %d", path, st.Size, ref.StorageSize, header, header+ref.StorageSize)
	}
	v := &View{ref: *ref}
	if n := header + ref.StorageSize; n > 0 {
		v.mapping, err = unix.Mmap(fd, 0, int(n), unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			return nil, fmt.Errorf("open cpu tensor %s: mmap %d bytes: %w", path, n, err)
		}
		v.storage = v.mapping[header:]
	}
	return v, nil
}

// Ref returns the TensorRef the view was opened with.
func (v *View) Ref() TensorRef { return v.ref }

// Storage returns the whole storage (storage_size bytes), read-only.
func (v *View) Storage() []byte { return v.storage }

// Contiguous reports whether the tensor's elements lie in row-major order
// without gaps (dimensions of size 1 may have any stride).
func (v *View) Contiguous() bool {
	if v.NumElements() == 0 {
		return true
	}
	expect := int64(1)
	for i := len(v.ref.Size) - 1; i >= 0; i-- {
		if v.ref.Size[i] != 1 && v.ref.Stride[i] != expect {
			return false
		}
		expect *= v.ref.Size[i]
	}
	return true
}

// NumElements is the product of the tensor's sizes.
func (v *View) NumElements() int64 {
	n := int64(1)
	for _, s := range v.ref.Size {
		n *= s
	}
	return n
}

// Bytes returns the tensor's bytes, read-only and without copying, when the
// tensor is contiguous; for other layouts use At or Storage with the strides.
func (v *View) Bytes() ([]byte, error) {
	if !v.Contiguous() {
		return nil, fmt.Errorf("tensor %s is not contiguous (tensor_size %v, tensor_stride %v): use At or Storage", v.ref.CPU.StorageKey, v.ref.Size, v.ref.Stride)
	}
	n := v.NumElements()
	if n == 0 {
		return []byte{}, nil
	}
	es, _ := DTypeSize(v.ref.DType)
	return v.storage[v.ref.Offset*es : (v.ref.Offset+n)*es], nil
}

// At returns the bytes of the element at index (one entry per dimension),
// read-only, following the strides.
func (v *View) At(index ...int64) ([]byte, error) {
	if len(index) != len(v.ref.Size) {
		return nil, fmt.Errorf("tensor %s: index %v has %d entries for %d dimensions", v.ref.CPU.StorageKey, index, len(index), len(v.ref.Size))
	}
	off := v.ref.Offset
	for i, x := range index {
		if x < 0 || x >= v.ref.Size[i] {
			return nil, fmt.Errorf("tensor %s: index %v out of range for size %v", v.ref.CPU.StorageKey, index, v.ref.Size)
		}
		off += x * v.ref.Stride[i]
	}
	es, _ := DTypeSize(v.ref.DType)
	return v.storage[off*es : (off+1)*es], nil
}

// Close unmaps the view; the slices it returned must not be used afterwards.
func (v *View) Close() error {
	if v.mapping == nil {
		return nil
	}
	err := unix.Munmap(v.mapping)
	v.mapping, v.storage = nil, nil
	if err != nil {
		return fmt.Errorf("close tensor view: %w", err)
	}
	return nil
}

// Publish stores data as a new segment name in the group's shm directory and
// returns its CPU TensorRef (strategy file_system, empty manager_path,
// contiguous strides, storage from byte 0). The segment is created with
// O_EXCL and mode 0600, like torch's segments: members reading it must run
// as the same uid, which torch's file_system sharing requires anyway. The
// space is allocated first (fallocate), so a full group fails with an error
// wrapping ENOSPC before anything is written, and the segment is removed.
//
// A Python consumer opens it with numpy, e.g.
// np.memmap(shm_dir + ref["storage_key"], dtype, mode="r", shape=ref["tensor_size"]).
// torch's own rebuild (rebuild_storage_filename) cannot: it needs a
// torch_shm_manager and torch's refcount header, so names starting with
// "torch_" are refused here.
func Publish(domainDir, name string, data []byte, dtype string, shape []int64) (*TensorRef, error) {
	es, ok := DTypeSize(dtype)
	if !ok {
		return nil, fmt.Errorf("publish %s: %w", name, fieldErr("dtype", "unknown dtype %q", dtype))
	}
	if strings.HasPrefix(strings.TrimPrefix(name, "/"), "torch_") {
		return nil, fmt.Errorf("publish %s: names starting with torch_ are torch's segments (with torch's header)", name)
	}
	path, err := segmentPath(domainDir, name)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", name, err)
	}
	stride := make([]int64, len(shape))
	n := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		if shape[i] < 0 {
			return nil, fmt.Errorf("publish %s: shape %v has a negative dimension", name, shape)
		}
		stride[i] = n
		if shape[i] != 0 && n > (1<<62)/shape[i] {
			return nil, fmt.Errorf("publish %s: shape %v is too large", name, shape)
		}
		n *= shape[i]
	}
	if n*es != int64(len(data)) {
		return nil, fmt.Errorf("publish %s: %d bytes of data, shape %v of %s needs %d", name, len(data), shape, dtype, n*es)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", name, err)
	}
	fail := func(err error) (*TensorRef, error) {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("publish %s (%d bytes) in %s: %w", name, len(data), domainDir, err)
	}
	if len(data) > 0 {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(len(data))); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return fail(fmt.Errorf("allocate: %w", err))
		}
		if _, err := f.Write(data); err != nil {
			return fail(err)
		}
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("publish %s: %w", name, err)
	}
	return &TensorRef{Device: "cpu", DType: dtype, Size: append([]int64{}, shape...), Stride: stride,
		StorageSize: int64(len(data)), CPU: &CPUStorage{Strategy: StrategyFileSystem, StorageKey: "/" + strings.TrimPrefix(name, "/")}}, nil
}
