"""torch_keep.py send: share a tensor (file_system), write its TensorRef to
the group's socket directory as keep.json, print "ready KEY" and wait.
torch_keep.py open: rebuild keep.json's tensor as pyisolate's deserializer
does; print "opened SUM" or "error MESSAGE"."""
import json
import os
import sys
import time

import torch
import torch.multiprocessing as mp
from torch.multiprocessing import reductions

mp.set_sharing_strategy("file_system")
path = os.path.join(os.environ["PYISOLATE_SOCKET_DIR"], "keep.json")
if sys.argv[1] == "send":
    t = torch.arange(1024, dtype=torch.float32).share_memory_()
    _, args = reductions.reduce_storage(t.storage())
    ref = {"manager_path": args[1].decode(), "storage_key": args[2].decode(), "storage_size": 4096}
    with open(path + ".tmp", "w") as f:
        json.dump(ref, f)
    os.rename(path + ".tmp", path)
    print("ready", ref["storage_key"], flush=True)
    time.sleep(600)
else:
    ref = json.load(open(path))
    try:
        s = torch.UntypedStorage._new_shared_filename_cpu(ref["manager_path"].encode(), ref["storage_key"].encode(), ref["storage_size"])
        print("opened", float(torch.tensor([], dtype=torch.float32).set_(torch.storage.TypedStorage(wrap_storage=s, dtype=torch.float32)).sum()), flush=True)
    except RuntimeError as e:
        print("error", str(e).splitlines()[0], flush=True)
