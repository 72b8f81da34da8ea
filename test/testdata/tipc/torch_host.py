"""Torch host in a container: shares a CPU tensor with torch's own file_system
reductions, publishes pyisolate's TensorRef JSON for Go, and waits for the
extension to change the tensor in place.

Both members run with share_torch and the runtime's defaults: torch's
file_system strategy hands over the path of its shm manager's socket, which
the runtime puts in the group's socket directory (TEMPDIR), so it exists at
the same path in the extension's container.
"""
import hashlib
import json
import os
import socket
import struct
import sys
import tempfile

import torch
import torch.multiprocessing as mp
from multiprocessing.reduction import ForkingPickler
from torch.multiprocessing.reductions import reduce_storage

mp.set_sharing_strategy("file_system")
SOCK_DIR = os.environ["PYISOLATE_SOCKET_DIR"]


def send(sock, data):
    sock.sendall(struct.pack(">I", len(data)) + data)


def recv(sock):
    n = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))[0]
    return sock.recv(n, socket.MSG_WAITALL)


t = torch.arange(1 << 20, dtype=torch.float32).share_memory_()
# (rebuild_storage_filename, (cls, manager_socket, storage_key, size, ...))
_, storage_args = reduce_storage(t.storage())
# pyisolate's TensorRef, CPU file_system form.
ref = {
    "__type__": "TensorRef", "device": "cpu", "strategy": "file_system",
    "manager_path": storage_args[1].decode(), "storage_key": storage_args[2].decode(),
    "storage_size": t.storage().nbytes(),
    "dtype": str(t.dtype), "tensor_size": list(t.size()), "tensor_stride": list(t.stride()),
    "tensor_offset": t.storage_offset(), "requires_grad": False,
}
digest = hashlib.sha256(t.numpy().tobytes()).hexdigest()
with open(os.path.join(SOCK_DIR, "ref.json.tmp"), "w") as f:
    json.dump({"ref": ref, "sha256": digest, "tempdir": tempfile.gettempdir()}, f)
os.rename(os.path.join(SOCK_DIR, "ref.json.tmp"), os.path.join(SOCK_DIR, "ref.json"))

path = os.path.join(SOCK_DIR, "torch.sock")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(1)
srv.settimeout(120)
print("listening", ref["storage_key"], flush=True)
conn, _ = srv.accept()
# torch registers its reductions with ForkingPickler: the storage crosses as
# (manager socket, segment name), not as bytes.
send(conn, bytes(ForkingPickler.dumps(t)))
reply = json.loads(recv(conn))
ok = reply.get("ok") and float(t[0]) == -1.0 and float(t[-1]) == 2.0 * ((1 << 20) - 1)
print(json.dumps({"result": "ok" if ok else "FAILED", "reply": reply,
                  "t0": float(t[0]), "tlast": float(t[-1])}), flush=True)
sys.exit(0 if ok else 1)
