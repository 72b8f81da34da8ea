"""pyisolate's wire format for torch CPU tensors, as its tensor_serializer
speaks it: messages are a 4-byte big-endian length and UTF-8 JSON; a tensor
travels as a TensorRef (torch's file_system reduction: the shm manager's
socket, the segment's name in /dev/shm, sizes and strides), never as bytes.

Works with Debian's torch 1.13 and with torch 2.x: where their names differ
(untyped_storage, TypedStorage's _internal flag) both are handled here.

Nothing here sets TMPDIR: with share_torch the runtime points torch's shm
manager at the group's socket directory, so the manager_path a sender puts in
a TensorRef exists in every member.
"""
import json
import socket
import struct
import time

import torch
import torch.multiprocessing as mp
from torch.multiprocessing import reductions

mp.set_sharing_strategy("file_system")

# What the sender keeps alive until the receiver has answered (pyisolate's
# TensorKeeper): a borrowed TensorRef holds no reference of its own.
_kept = []


def send(sock, obj):
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def _recv_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError("peer closed the socket")
        buf += chunk
    return bytes(buf)


def recv(sock):
    (n,) = struct.unpack(">I", _recv_exact(sock, 4))
    return json.loads(_recv_exact(sock, n))


def untyped_storage(t):
    """The tensor's untyped storage: untyped_storage() in torch 2.x,
    storage()._untyped() or storage().untyped() in 1.13."""
    if hasattr(t, "untyped_storage"):
        return t.untyped_storage()
    s = t.storage()
    return s._untyped() if hasattr(s, "_untyped") else s.untyped()


def tensor_ref(t):
    """Share t's storage in /dev/shm and describe it as pyisolate's CPU
    TensorRef (strategy file_system_borrowed, pyisolate's default)."""
    if not t.is_shared():
        t.share_memory_()
    _kept.append(t)
    storage = untyped_storage(t)
    rebuild, args = reductions.reduce_storage(storage)
    if rebuild.__name__ != "rebuild_storage_filename":
        raise RuntimeError("torch did not use the file_system strategy: " + rebuild.__name__)
    storage._shared_decref()  # borrowed: the sender keeps the tensor instead
    # args: (cls, manager_path, storage_key, size[, dtype])
    return {
        "__type__": "TensorRef", "device": "cpu", "strategy": "file_system_borrowed",
        "manager_path": args[1].decode(), "storage_key": args[2].decode(),
        "storage_size": args[3],
        "dtype": str(t.dtype), "tensor_size": list(t.size()), "tensor_stride": list(t.stride()),
        "tensor_offset": t.storage_offset(), "requires_grad": t.requires_grad,
    }


def from_ref(ref):
    """Map the tensor a TensorRef describes: the same pages as the sender's."""
    if ref.get("__type__") != "TensorRef" or ref.get("device") != "cpu":
        raise ValueError("not a CPU TensorRef: %r" % (ref,))
    dtype = getattr(torch, ref["dtype"].split(".", 1)[1])
    manager, key = ref["manager_path"].encode(), ref["storage_key"].encode()
    if ref["strategy"] == "file_system_borrowed":
        storage = torch.UntypedStorage._new_shared_filename_cpu(manager, key, ref["storage_size"])
    elif ref["strategy"] == "file_system":
        storage = reductions.rebuild_storage_filename(torch.UntypedStorage, manager, key, ref["storage_size"])
    else:
        raise ValueError("unsupported strategy %r" % ref["strategy"])
    try:
        typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)
    except TypeError:  # torch 1.13 has no _internal
        typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype)
    t = torch._utils._rebuild_tensor(typed, ref["tensor_offset"], tuple(ref["tensor_size"]), tuple(ref["tensor_stride"]))
    t.requires_grad = ref["requires_grad"]
    return t


def connect(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
