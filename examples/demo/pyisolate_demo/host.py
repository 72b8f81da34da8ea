"""The demo host: hands tensors to the extension through the group's /dev/shm.

It listens on the group's socket, creates a float32 tensor per size in shared
memory, and measures the hand-off host -> extension -> host two ways:
  shm:  send a TensorRef (a name, not the bytes); the extension maps the same
        pages and changes them in place; the host sees the change in its own
        mapping with no copy;
  copy: send the bytes over the socket and get them back, as a runtime
        without a shared-memory domain would have to.
It prints one JSON line per size and a final {"result": ...} line.
Environment: DEMO_SIZES (comma list, e.g. 1M,64M,256M), DEMO_ROUNDS,
DEMO_COPY_MAX (largest size also measured by copy).
"""
import json
import mmap
import os
import socket
import statistics
import sys
import time

import numpy as np

from pyisolate_demo import wire

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(s):
    s = s.strip().upper().rstrip("IB")
    return int(s[:-1]) * UNITS[s[-1]] if s[-1] in UNITS else int(s)


def create_segment(key, nbytes):
    path = wire.segment_path(key)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, nbytes)
        mm = mmap.mmap(fd, nbytes, mmap.MAP_SHARED)
    finally:
        os.close(fd)
    arr = np.frombuffer(mm, dtype=np.float32)
    # Fill in chunks: a whole-size temporary would double the memory used.
    chunk = np.arange(1 << 20, dtype=np.float32) % 1024
    for start in range(0, arr.size, chunk.size):
        end = min(start + chunk.size, arr.size)
        arr[start:end] = chunk[: end - start]
    return path, mm, arr


def timed(fn, rounds):
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    sizes = [parse_size(s) for s in os.environ.get("DEMO_SIZES", "1M,64M,256M").split(",")]
    rounds = int(os.environ.get("DEMO_ROUNDS", "5"))
    copy_max = parse_size(os.environ.get("DEMO_COPY_MAX", "1G"))
    path = os.path.join(os.environ.get("PYISOLATE_SOCKET_DIR", "/run/pyisolate"), "demo.sock")
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(60)
    conn, _ = srv.accept()
    hello = wire.recv(conn)
    print(json.dumps({"event": "extension connected", **hello}), flush=True)

    results = []
    for nbytes in sizes:
        n = nbytes // 4
        key = f"/pyisolate_demo_{os.getpid()}_{nbytes}"
        seg, mm, arr = create_segment(key, nbytes)
        ref = wire.tensor_ref(key, nbytes, n)

        # Zero-copy proof: the extension changes every element in place and
        # the host's own mapping (the same pages) sees it.
        before = float(arr[n - 1])
        wire.send(conn, {"op": "scale", "ref": ref, "factor": 2.0})
        assert wire.recv(conn)["ok"]
        in_place = float(arr[n - 1]) == before * 2 and float(arr[1]) == 2.0 and float(arr[0]) == 0.0

        def shm_handoff():
            wire.send(conn, {"op": "touch", "ref": ref})
            assert wire.recv(conn)["ok"]

        first = float(arr[0])
        shm_ms = timed(shm_handoff, rounds)
        touched = float(arr[0]) == first + rounds

        copy_ms = None
        if nbytes <= copy_max:
            out = bytearray(nbytes)

            def copy_handoff():
                wire.send(conn, {"op": "copy"})
                wire.send_raw(conn, mm)
                wire.recv_raw(conn, into=out)

            copy_ms = timed(copy_handoff, rounds)
        r = {"size": nbytes, "shm_ms": round(shm_ms, 3),
             "copy_ms": None if copy_ms is None else round(copy_ms, 3),
             "in_place": in_place and touched, "segment": key}
        print(json.dumps(r), flush=True)
        results.append(r)
        del arr
        mm.close()
        os.unlink(seg)

    wire.send(conn, {"op": "done"})
    conn.close()
    srv.close()
    os.unlink(path)
    ok = all(r["in_place"] for r in results)
    print(json.dumps({"result": "ok" if ok else "FAILED", "sizes": results}), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
