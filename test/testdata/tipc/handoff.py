"""BenchmarkHandoff's host and extension, one container each in one group.

  handoff.py host   HANDOFF_SIZES (comma list of byte counts): creates one
                    float32 tensor per size in the group's /dev/shm, serves
                    the extension on ext.sock and the benchmark (Go, on the
                    machine) on ctl.sock in the group's socket directory
  handoff.py ext    connects to ext.sock and answers the host

Every message is pyisolate's framing: a 4-byte big-endian length, then UTF-8
JSON (or, for the copy variant's payload, the tensor's bytes).

Per control message {"op": "round", "copy": [bool per size]} the host does,
for each size, one hand-off round trip of each kind (all shared ones, then
the copies; the order of the sizes rotates from round to round) and answers
the times it measured with time.perf_counter_ns:
  shm:  send a TensorRef (a name, not the bytes); the extension maps the
        segment, adds 1 to three elements (first, middle, last) in place,
        unmaps it and answers; the host checks the three changes in its own
        mapping. The timer spans send -> answer -> check.
  copy: send the tensor's bytes; the extension receives them into a buffer,
        adds 1 to the same three elements and sends the bytes back; the host
        receives them into the tensor and checks the three changes. The
        extension's receive buffer is allocated (and touched) once, before
        timing, and reused: that favours the copy.
{"op": "done"} ends both; the host prints {"result": "ok", ...} last.
"""
import json
import mmap
import os
import socket
import struct
import sys
import time

import numpy as np

SHM = os.environ.get("PYISOLATE_SHM_DIR", "/dev/shm")
# Plain numpy segments (no torch header): a manager_path torch refuses
# (tensoripc.NoTorchManagerPath) rather than reading them as zeros.
NO_TORCH_MANAGER = "/dev/null/pyisolate-plain-layout-not-for-torch"
SOCK_DIR = os.environ.get("PYISOLATE_SOCKET_DIR", "/run/pyisolate")
EXT_SOCK = os.path.join(SOCK_DIR, "handoff-ext.sock")
CTL_SOCK = os.path.join(SOCK_DIR, "handoff-ctl.sock")


def send(sock, obj):
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(data)) + data)


def send_raw(sock, payload):
    sock.sendall(struct.pack(">I", len(payload)))
    sock.sendall(payload)


def recv_exact(sock, n, into=None):
    buf = into if into is not None else bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:n], n - got)
        if k == 0:
            raise EOFError("peer closed the socket")
        got += k
    return buf


def recv_raw(sock, into=None):
    (n,) = struct.unpack(">I", recv_exact(sock, 4))
    if into is not None and n != len(into):
        raise ValueError(f"frame of {n} bytes, buffer of {len(into)}")
    return recv_exact(sock, n, into)


def recv(sock):
    return json.loads(recv_raw(sock))


def tensor_ref(key, nbytes):
    """pyisolate's CPU file_system TensorRef of a float32 vector."""
    return {
        "__type__": "TensorRef", "device": "cpu", "strategy": "file_system",
        "manager_path": NO_TORCH_MANAGER, "storage_key": key, "storage_size": nbytes,
        "dtype": "torch.float32", "tensor_size": [nbytes // 4], "tensor_stride": [1],
        "tensor_offset": 0, "requires_grad": False,
    }


def touch(arr):
    """Adds 1 to the first, middle and last element."""
    arr[0] += 1
    arr[arr.size // 2] += 1
    arr[-1] += 1


def probe(arr):
    return float(arr[0]), float(arr[arr.size // 2]), float(arr[-1])


# --- host -----------------------------------------------------------------

class Tensor:
    def __init__(self, nbytes):
        self.nbytes = nbytes
        self.key = f"/handoff_{os.getpid()}_{nbytes}"
        self.path = os.path.join(SHM, self.key.lstrip("/"))
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, nbytes)
            self.mm = mmap.mmap(fd, nbytes, mmap.MAP_SHARED)
        finally:
            os.close(fd)
        self.arr = np.frombuffer(self.mm, dtype=np.float32)
        # Real data in every page, filled in chunks (no whole-size temporary).
        chunk = np.arange(1 << 18, dtype=np.float32) % 1024
        for start in range(0, self.arr.size, chunk.size):
            end = min(start + chunk.size, self.arr.size)
            self.arr[start:end] = chunk[: end - start]
        self.ref = tensor_ref(self.key, nbytes)

    def close(self):
        del self.arr
        self.mm.close()
        os.unlink(self.path)


def check(t, before, how):
    after = probe(t.arr)
    want = tuple(v + 1 for v in before)
    if after != want:
        raise AssertionError(f"{how} {t.nbytes} bytes: host sees {after}, want {want}")


def shm_round(ext, t):
    before = probe(t.arr)
    t0 = time.perf_counter_ns()
    send(ext, {"op": "touch", "ref": t.ref})
    if not recv(ext).get("ok"):
        raise AssertionError("extension refused touch")
    check(t, before, "shm")
    return time.perf_counter_ns() - t0


def copy_round(ext, t):
    before = probe(t.arr)
    t0 = time.perf_counter_ns()
    send(ext, {"op": "copy", "nbytes": t.nbytes})
    send_raw(ext, t.mm)
    recv_raw(ext, into=t.mm)
    check(t, before, "copy")
    return time.perf_counter_ns() - t0


def listen(path):
    if os.path.exists(path):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    s.settimeout(120)
    return s


def host():
    sizes = [int(s) for s in os.environ["HANDOFF_SIZES"].split(",")]
    ext_srv = listen(EXT_SOCK)
    ctl_srv = listen(CTL_SOCK)
    tensors = []
    ext = ctl = None
    try:
        for n in sizes:
            tensors.append(Tensor(n))
        ext, _ = ext_srv.accept()
        ext.settimeout(None)
        hello = recv(ext)
        send(ext, {"op": "prepare", "nbytes": max(sizes)})
        if not recv(ext).get("ok"):
            raise AssertionError("extension could not prepare its buffer")
        # Warm-up, and the in-place proof the rounds repeat: one round
        # trip of each kind per size.
        for t in tensors:
            shm_round(ext, t)
            copy_round(ext, t)
        print(json.dumps({"event": "ready", "extension": hello, "sizes": sizes,
                          "segments": [t.key for t in tensors]}), flush=True)
        ctl, _ = ctl_srv.accept()
        ctl.settimeout(None)
        rounds = 0
        while True:
            msg = recv(ctl)
            if msg["op"] == "done":
                break
            # All shared hand-offs, then all copies; the order of the sizes
            # rotates from round to round, so that none always follows the
            # largest copy.
            order = [(rounds + k) % len(tensors) for k in range(len(tensors))]
            shm_ns, copy_ns = [None] * len(tensors), [None] * len(tensors)
            for i in order:
                shm_ns[i] = shm_round(ext, tensors[i])
            for i in order:
                if msg["copy"][i]:
                    copy_ns[i] = copy_round(ext, tensors[i])
            rounds += 1
            send(ctl, {"shm_ns": shm_ns, "copy_ns": copy_ns})
        send(ext, {"op": "done"})
        print(json.dumps({"result": "ok", "rounds": rounds}), flush=True)
    finally:
        for s in (ext, ctl, ext_srv, ctl_srv):
            if s is not None:
                s.close()
        for p in (EXT_SOCK, CTL_SOCK):
            if os.path.exists(p):
                os.unlink(p)
        for t in tensors:
            t.close()


# --- extension ------------------------------------------------------------

def connect(path, timeout=120.0):
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
            time.sleep(0.02)


def ext():
    sock = connect(EXT_SOCK)
    send(sock, {"pid": os.getpid(), "extension": os.environ.get("PYISOLATE_EXTENSION", "")})
    buf = None
    while True:
        msg = recv(sock)
        op = msg["op"]
        if op == "done":
            return
        if op == "prepare":
            buf = bytearray(msg["nbytes"])
            np.frombuffer(buf, dtype=np.uint8)[::4096] = 1  # fault every page in now
            send(sock, {"ok": True})
        elif op == "touch":
            ref = msg["ref"]
            name = ref["storage_key"].lstrip("/")
            if not name or "/" in name:
                raise ValueError(f"bad storage_key {ref['storage_key']!r}")
            with open(os.path.join(SHM, name), "r+b") as f:
                mm = mmap.mmap(f.fileno(), ref["storage_size"], mmap.MAP_SHARED)
            arr = np.frombuffer(mm, dtype=np.float32, count=ref["tensor_size"][0])
            touch(arr)
            del arr
            mm.close()
            send(sock, {"ok": True})
        elif op == "copy":
            view = memoryview(buf)[: msg["nbytes"]]
            recv_raw(sock, into=view)
            arr = np.frombuffer(view, dtype=np.float32)
            touch(arr)
            del arr
            send_raw(sock, view)
            view.release()
        else:
            send(sock, {"ok": False, "error": f"unknown op {op!r}"})


if __name__ == "__main__":
    {"host": host, "ext": ext}[sys.argv[1]]()
