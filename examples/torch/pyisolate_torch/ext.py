"""The torch extension: maps the host's tensor, changes it in place, and
answers with a tensor of its own, shared the same way."""
import os

import torch

from pyisolate_torch import wire


def main():
    path = os.path.join(os.environ.get("PYISOLATE_SOCKET_DIR", "/run/pyisolate"), "torch-example.sock")
    sock = wire.connect(path)
    msg = wire.recv(sock)
    t = wire.from_ref(msg["tensor"])
    t.mul_(2)
    t[0] = -1.0
    result = t[:8] + 1  # a new tensor: 2i + 1 ...
    result[0] = 1.0  # ... also where t[0] is now -1
    wire.send(sock, {"ok": True, "result": wire.tensor_ref(result)})
    wire.recv(sock)  # the host has mapped our tensor: our manager may go
    sock.close()
    print("extension done: doubled", t.numel(), "elements in place", flush=True)


if __name__ == "__main__":
    main()
