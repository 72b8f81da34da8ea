"""pyisolate's RPC framing (4-byte big-endian length + UTF-8 JSON) and the
CPU TensorRef descriptor, shared by the demo host and extension."""
import json
import os
import struct

SHM_DIR = os.environ.get("PYISOLATE_SHM_DIR", "/dev/shm")

# The demo's segments are plain numpy files: the storage from byte 0, without
# the header torch's file_system allocator puts first. torch given such a
# TensorRef with an empty or real manager_path would read it 64 bytes off
# (zeros, no error); this manager_path (tensoripc.NoTorchManagerPath) makes
# torch refuse it ("Not a directory") instead.
NO_TORCH_MANAGER = "/dev/null/pyisolate-plain-layout-not-for-torch"


def send(sock, obj):
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def send_raw(sock, payload):
    sock.sendall(struct.pack(">I", len(payload)))
    sock.sendall(payload)


def _recv_exact(sock, n, into=None):
    buf = into if into is not None else bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise EOFError("peer closed the socket")
        got += k
    return buf


def recv_raw(sock, into=None):
    (n,) = struct.unpack(">I", _recv_exact(sock, 4))
    return _recv_exact(sock, n, into)


def recv(sock):
    return json.loads(recv_raw(sock))


def tensor_ref(key, nbytes, n):
    """A CPU file_system TensorRef for a float32 vector of n elements."""
    return {
        "__type__": "TensorRef", "device": "cpu", "strategy": "file_system",
        "manager_path": NO_TORCH_MANAGER, "storage_key": key, "storage_size": nbytes,
        "dtype": "torch.float32", "tensor_size": [n], "tensor_stride": [1],
        "tensor_offset": 0, "requires_grad": False,
    }


def segment_path(key):
    name = key.lstrip("/")
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad storage_key {key!r}")
    return os.path.join(SHM_DIR, name)
