"""Rebuild TensorRefs with torch as pyisolate's tensor_serializer does, one
JSON TensorRef per line on stdin, and print per line either
  ok SHA256 FILESHA  the sha256 of the tensor's bytes, then of the whole
                     segment file after torch released it (while this
                     process, and its shm manager, still run)
  error MESSAGE      torch refused the descriptor
Run with /dev/shm being the group's shm (the Go test bind-mounts it).
"""
import gc
import hashlib
import json
import sys

import torch
import torch.multiprocessing as mp
from torch.multiprocessing import reductions

mp.set_sharing_strategy("file_system")

for line in sys.stdin:
    ref = json.loads(line)
    dtype = getattr(torch, ref["dtype"].split(".", 1)[1])
    try:
        manager, key = ref["manager_path"].encode(), ref["storage_key"].encode()
        if ref["strategy"] == "file_system_borrowed":
            storage = torch.UntypedStorage._new_shared_filename_cpu(manager, key, ref["storage_size"])
        else:
            storage = reductions.rebuild_storage_filename(torch.UntypedStorage, manager, key, ref["storage_size"])
        try:
            typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)
        except TypeError:
            typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype)
        t = torch._utils._rebuild_tensor(typed, ref["tensor_offset"], tuple(ref["tensor_size"]), tuple(ref["tensor_stride"]))
        digest = hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
        del t, typed, storage
        gc.collect()
        with open("/dev/shm/" + ref["storage_key"].lstrip("/"), "rb") as f:
            file_digest = hashlib.sha256(f.read()).hexdigest()
        print("ok", digest, file_digest, flush=True)
    except RuntimeError as e:
        print("error", str(e).splitlines()[0], flush=True)
