"""The demo extension: serves the host's requests over the group's socket.

"touch": map the TensorRef's segment, change three elements in place, answer.
"scale": map it and multiply the whole tensor by a factor in place.
"copy":  receive the bytes over the socket, change them, send them back.
"""
import mmap
import os
import socket
import time

import numpy as np

from pyisolate_demo import wire


def open_ref(ref):
    with open(wire.segment_path(ref["storage_key"]), "r+b") as f:
        mm = mmap.mmap(f.fileno(), ref["storage_size"], mmap.MAP_SHARED)
    n = ref["tensor_size"][0]
    return mm, np.frombuffer(mm, dtype=np.float32, count=n)


def connect(path, timeout=30.0):
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


def main():
    path = os.path.join(os.environ.get("PYISOLATE_SOCKET_DIR", "/run/pyisolate"), "demo.sock")
    sock = connect(path)
    wire.send(sock, {"hello": os.environ.get("PYISOLATE_EXTENSION", "ext"), "pid": os.getpid()})
    while True:
        msg = wire.recv(sock)
        op = msg["op"]
        if op == "done":
            return
        if op == "touch":
            mm, arr = open_ref(msg["ref"])
            arr[0] += 1
            arr[len(arr) // 2] += 1
            arr[-1] += 1
            del arr
            mm.close()
            wire.send(sock, {"ok": True})
        elif op == "scale":
            mm, arr = open_ref(msg["ref"])
            arr *= msg["factor"]
            del arr
            mm.close()
            wire.send(sock, {"ok": True})
        elif op == "hold":
            # Map the segment and keep it mapped until told to exit (for
            # the reclaim tests: a crashed holder must leak nothing).
            held = open_ref(msg["ref"])
            wire.send(sock, {"ok": True, "pid": os.getpid()})
        elif op == "copy":
            buf = wire.recv_raw(sock)
            arr = np.frombuffer(buf, dtype=np.float32)
            arr[0] += 1
            arr[len(arr) // 2] += 1
            arr[-1] += 1
            wire.send_raw(sock, buf)
        else:
            wire.send(sock, {"ok": False, "error": f"unknown op {op!r}"})


if __name__ == "__main__":
    main()
