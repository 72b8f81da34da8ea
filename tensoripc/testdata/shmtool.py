"""Test helper for tensoripc: a real Python process that creates, maps and
reads segments of a group's shm directory with numpy.

  shmtool.py serve DIR      line protocol on stdin/stdout (see COMMANDS)
  shmtool.py readref DIR    read a TensorRef JSON on stdin, print what numpy sees

Each served command prints one line: "ok ..." or "err ...". The process keeps
whatever it mapped or holds open until it exits, so the Go test can look at
its /proc/<pid>/maps and fds.
"""
import ctypes
import hashlib
import mmap
import json
import os
import subprocess
import sys
import time

import numpy as np

DTYPES = {
    "torch.float64": np.float64, "torch.float32": np.float32, "torch.float16": np.float16,
    "torch.int64": np.int64, "torch.int32": np.int32, "torch.int16": np.int16,
    "torch.int8": np.int8, "torch.uint8": np.uint8, "torch.bool": np.bool_,
    "torch.complex64": np.complex64, "torch.complex128": np.complex128,
}


libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]


class RawMap:
    """A shared mapping whose descriptor is closed, as torch's allocator
    leaves it (Python's mmap module keeps a dup of the descriptor)."""

    def __init__(self, path):
        fd = os.open(path, os.O_RDONLY)
        try:
            self.n = os.fstat(fd).st_size
            self.addr = libc.mmap(None, self.n, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
            if self.addr is None or self.addr == ctypes.c_void_p(-1).value:
                raise OSError(ctypes.get_errno(), "mmap " + path)
        finally:
            os.close(fd)

    def bytes(self):
        return ctypes.string_at(self.addr, self.n)

    def close(self):
        libc.munmap(self.addr, self.n)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def serve(d):
    held = {}  # name -> memmap or file, kept alive on purpose
    children = []
    for line in sys.stdin:
        args = line.split()
        if not args:
            continue
        cmd, rest = args[0], args[1:]
        try:
            if cmd == "pid":
                out = str(os.getpid())
            elif cmd == "create":  # create NAME NBYTES MODE
                name, n, mode = rest[0], int(rest[1]), rest[2]
                path = os.path.join(d, name)
                data = os.urandom(n)
                if mode == "rawmap":  # written, then mapped with the descriptor closed
                    with open(path, "xb") as f:
                        f.write(data)
                    held[name] = RawMap(path)
                elif mode == "map":  # numpy memmap: mapped, and mmap keeps a dup'ed descriptor
                    m = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n,))
                    m[:] = np.frombuffer(data, dtype=np.uint8)
                    m.flush()
                    held[name] = m
                elif mode == "fd":  # open descriptor, no mapping
                    f = open(path, "xb")
                    f.write(data)
                    f.flush()
                    held[name] = f
                elif mode == "closed":  # written and closed: nothing held
                    with open(path, "xb") as f:
                        f.write(data)
                elif mode == "brief":  # held open 1 s, then closed
                    with open(path, "xb") as f:
                        f.write(data)
                        f.flush()
                        time.sleep(1.0)
                elif mode == "child":  # a child process creates and maps it
                    c = subprocess.Popen([sys.executable, __file__, "serve", d],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    c.stdin.write(f"create {name} {n} rawmap\n")
                    c.stdin.flush()
                    out = c.stdout.readline().strip()
                    children.append(c)
                    print(out, flush=True)
                    continue
                else:
                    raise ValueError("unknown mode " + mode)
                out = sha(data)
            elif cmd == "map":  # map NAME: consumer side, read-only mapping kept, no descriptor
                m = RawMap(os.path.join(d, rest[0]))
                held["map:" + rest[0]] = m
                out = sha(m.bytes())
            elif cmd == "unlink":  # unlink NAME: drop what is held of it, remove it
                m = held.pop(rest[0], None)
                if m is not None and hasattr(m, "_mmap"):
                    m._mmap.close()
                elif m is not None and hasattr(m, "close"):
                    m.close()
                os.unlink(os.path.join(d, rest[0]))
                out = "unlinked"
            elif cmd == "unmap":
                held.pop("map:" + rest[0]).close()
                out = "unmapped"
            elif cmd == "fill":  # fill PREFIX CHUNK: create segments until ENOSPC
                prefix, chunk = rest[0], int(rest[1])
                count = 0
                try:
                    while True:
                        path = os.path.join(d, f"{prefix}{count}")
                        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                        try:
                            # allocate first: writing to unallocated tmpfs pages
                            # through a mapping would raise SIGBUS, not ENOSPC
                            os.posix_fallocate(fd, 0, chunk)
                        except OSError:
                            os.unlink(path)
                            raise
                        finally:
                            os.close(fd)
                        m = np.memmap(path, dtype=np.uint8, mode="r+", shape=(chunk,))
                        m[:] = 1
                        held[f"{prefix}{count}"] = m
                        count += 1
                except OSError as e:
                    out = f"{count} {e.errno}"
                except BaseException as e:  # SIGBUS shows up as a crash, not here
                    out = f"{count} {type(e).__name__}"
            elif cmd == "array":  # array NAME DTYPE SHAPE LAYOUT: numpy writes a tensor
                name, dt, shape, layout = rest[0], DTYPES[rest[1]], tuple(int(x) for x in rest[2].split(",")), rest[3]
                count = int(np.prod(shape))
                a = (np.arange(count) * 3 - 7).astype(dt).reshape(shape)
                header = 64 if layout == "torch" else 0
                with open(os.path.join(d, name), "xb") as f:
                    f.write(b"\x01" + b"\x00" * (header - 1) if header else b"")
                    f.write(a.tobytes())
                out = sha(a.tobytes()) + " " + sha(np.ascontiguousarray(a.T).tobytes())
            else:
                raise ValueError("unknown command " + cmd)
            print("ok " + out, flush=True)
        except Exception as e:
            print(f"err {type(e).__name__}: {e}", flush=True)


def readref(d):
    """Open a CPU TensorRef the way a numpy-only consumer would."""
    ref = json.load(sys.stdin)
    assert ref["__type__"] == "TensorRef" and ref["device"] == "cpu", ref
    key = ref["storage_key"].lstrip("/")
    header = 64 if key.startswith("torch_") else 0
    dt = np.dtype(DTYPES[ref["dtype"]])
    storage = np.memmap(os.path.join(d, key), dtype=np.uint8, mode="r", offset=header, shape=(ref["storage_size"],))
    a = np.lib.stride_tricks.as_strided(
        np.frombuffer(storage, dtype=dt, offset=ref["tensor_offset"] * dt.itemsize),
        shape=ref["tensor_size"], strides=[s * dt.itemsize for s in ref["tensor_stride"]])
    print(json.dumps({"sha256": sha(np.ascontiguousarray(a).tobytes()), "sum": float(a.astype(np.float64).sum()),
                      "shape": list(a.shape)}))


if __name__ == "__main__":
    {"serve": serve, "readref": readref}[sys.argv[1]](sys.argv[2])
