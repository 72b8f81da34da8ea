package tensoripc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"regexp"
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
// storage: torch's and Publish's torch_ segments); others hold the storage
// from byte 0 (Publish's other names and numpy writers). The file must hold
// at least the storage.
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
	if TorchLayout(ref.CPU.StorageKey) {
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

// NoTorchManagerPath is the manager_path of a TensorRef whose segment has
// no torch header (the plain layout: the storage from byte 0, as numpy
// writes it). torch assumes its header in every file_system segment: given
// an empty or real manager_path it maps such a segment 64 bytes off, reads
// zeros or shifted bytes without an error, bumps a "refcount" in the data and
// may unlink the file. This path cannot be connected to (its parent is not a
// directory), so torch refuses the descriptor at once with "RuntimeError:
// Not a directory" and never touches the segment; Go (OpenCPU) and numpy
// read it normally.
const NoTorchManagerPath = "/dev/null/pyisolate-plain-layout-not-for-torch"

// TorchLayout reports whether a segment name or storage key holds torch's
// layout (TorchHeaderSize header, then the storage): torch's own segments
// and Go's torch-readable ones are named torch_*.
func TorchLayout(name string) bool {
	return strings.HasPrefix(strings.TrimPrefix(name, "/"), "torch_")
}

// torchOwnName matches the names torch gives its segments, torch_<pid>_...,
// which segments.go attributes by that pid.
var torchOwnName = regexp.MustCompile(`^torch_\d+_`)

// Publish stores data as a new segment name in the group's shm directory and
// returns its CPU TensorRef (contiguous strides). The segment is created
// with O_EXCL and mode 0600, like torch's segments: members reading it must
// run as the same uid, which torch's file_system sharing requires anyway.
// The space is allocated first (fallocate), so a full group fails with an
// error wrapping ENOSPC before anything is written, and the segment is
// removed.
//
// The name decides the layout (TorchLayout), which is how OpenCPU reads it
// back:
//
//   - torch_<name> (not torch_<digits>_..., which is how torch names its own
//     segments): torch's layout, a TorchHeaderSize header holding the
//     publisher's reference (refcount 1), then the storage. The ref is
//     strategy file_system_borrowed with an empty manager_path: torch opens
//     it (through a shm manager of its own) and reads the bytes; its
//     references come and go without reaching 0, so the segment stays the
//     publisher's, reclaimed by the group like any other. numpy reads it
//     with offset=TorchHeaderSize.
//   - any other name: the plain layout, the storage from byte 0, for
//     np.memmap(shm_dir + ref["storage_key"], dtype, mode="r",
//     shape=ref["tensor_size"]). Its manager_path is NoTorchManagerPath, so
//     torch refuses it with an error instead of reading zeros.
func Publish(domainDir, name string, data []byte, dtype string, shape []int64) (*TensorRef, error) {
	es, ok := DTypeSize(dtype)
	if !ok {
		return nil, fmt.Errorf("publish %s: %w", name, fieldErr("dtype", "unknown dtype %q", dtype))
	}
	torchLayout := TorchLayout(name)
	if torchOwnName.MatchString(strings.TrimPrefix(name, "/")) {
		return nil, fmt.Errorf("publish %s: names torch_<digits>_... are torch's own segments (named after the creating pid); use another torch_ name", name)
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
	var header []byte
	if torchLayout {
		// torch's MapInfo: a std::atomic<int> refcount at byte 0 of a
		// 64-byte aligned header, in the machine's byte order.
		header = make([]byte, TorchHeaderSize)
		binary.NativeEndian.PutUint32(header, 1)
	}
	if total := int64(len(header) + len(data)); total > 0 {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, total); err != nil && !errors.Is(err, unix.EOPNOTSUPP) {
			return fail(fmt.Errorf("allocate: %w", err))
		}
		if _, err := f.Write(header); err != nil {
			return fail(err)
		}
		if _, err := f.Write(data); err != nil {
			return fail(err)
		}
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("publish %s: %w", name, err)
	}
	cpu := &CPUStorage{Strategy: StrategyFileSystem, ManagerPath: NoTorchManagerPath, StorageKey: "/" + strings.TrimPrefix(name, "/")}
	if torchLayout {
		cpu.Strategy, cpu.ManagerPath = StrategyFileSystemBorrowed, ""
	}
	return &TensorRef{Device: "cpu", DType: dtype, Size: append([]int64{}, shape...), Stride: stride,
		StorageSize: int64(len(data)), CPU: cpu}, nil
}
