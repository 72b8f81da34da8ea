"""Share a CPU tensor with torch's file_system strategy and print the
TensorRef pyisolate's tensor_serializer would send for it, plus the sha256 of
the tensor's bytes. Then keep the tensor alive until stdin closes.

Run with /dev/shm being the group's shm (the Go test bind-mounts it in a
private mount namespace), so the segment lands in the domain.
"""
import hashlib
import json
import sys

import torch
import torch.multiprocessing as mp
from torch.multiprocessing import reductions

mp.set_sharing_strategy("file_system")
t = (torch.arange(24, dtype=torch.float32) * 1.5 - 3).reshape(4, 6)
t.share_memory_()
storage = t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage().untyped()
_, sargs = reductions.reduce_storage(storage)  # (cls, manager_path, storage_key, size)
ref = {
    "__type__": "TensorRef",
    "device": "cpu",
    "strategy": "file_system",
    "manager_path": sargs[1].decode("utf-8"),
    "storage_key": sargs[2].decode("utf-8"),
    "storage_size": sargs[3],
    "dtype": str(t.dtype),
    "tensor_size": list(t.size()),
    "tensor_stride": list(t.stride()),
    "tensor_offset": t.storage_offset(),
    "requires_grad": t.requires_grad,
}
print(json.dumps({"ref": ref, "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest()}), flush=True)
sys.stdin.read()
