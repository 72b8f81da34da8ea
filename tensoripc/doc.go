// Package tensoripc owns the shared memory of one isolation group: the tmpfs a
// host and its extensions share at /dev/shm, the owner and lease of every
// segment in it, quota pressure, and the TensorRef descriptors that name
// tensors stored in it.
//
// One job per file:
//   - domain.go: Create/Open/Destroy a group's domain (a size-limited tmpfs, or
//     a file-backed directory where no tmpfs can be mounted) and its persisted
//     state (members, segment owners) in a separate state directory;
//   - segments.go: the segments in a domain, who created them (torch's
//     torch_<pid>_ names, then which member maps or holds them open, then
//     "unknown"), who maps them now, and an inotify Watch loop;
//   - lease.go: member exits, retention leases and Reclaim/GC;
//   - quota.go: usage per owner, the 90 % pressure warning, the ENOSPC story;
//   - tensorref.go: pyisolate's TensorRef wire format (CPU file_system and
//     CUDA forms), strict decoding and validation;
//   - view.go: a read-only mmap'd view of a CPU TensorRef, and Publish, which
//     stores a Go buffer as a segment and returns its TensorRef.
//
// State is shared between processes (the runtime and the `pyisolate shm` CLI):
// every change takes an flock on the state directory, reloads the state,
// applies the change and writes it back atomically.
package tensoripc
