"""The torch host: shares a tensor with the extension, which changes it in
place and answers with a tensor of its own; both cross as TensorRefs.

Prints one JSON line and exits 0 when every check held."""
import json
import os
import socket
import sys

import torch

from pyisolate_torch import wire

N = int(os.environ.get("TORCH_EXAMPLE_N", str(1 << 20)))


def main():
    path = os.path.join(os.environ.get("PYISOLATE_SOCKET_DIR", "/run/pyisolate"), "torch-example.sock")
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(float(os.environ.get("TORCH_EXAMPLE_TIMEOUT", "120")))
    t = torch.arange(N, dtype=torch.float32)
    ref = wire.tensor_ref(t)
    print("listening", path, ref["storage_key"], ref["manager_path"], flush=True)
    conn, _ = srv.accept()
    srv.close()
    os.unlink(path)
    wire.send(conn, {"method": "double", "tensor": ref})
    reply = wire.recv(conn)
    result = wire.from_ref(reply["result"])
    checks = {
        # the extension's in-place change, seen in the host's own tensor
        "in_place": float(t[0]) == -1.0 and float(t[-1]) == 2.0 * (N - 1),
        # the extension's tensor, mapped from its segment
        "returned": result.tolist() == [float(2 * i + 1) for i in range(8)],
        "manager_shared": reply["result"]["manager_path"].startswith(os.environ.get("PYISOLATE_SOCKET_DIR", "/run/pyisolate") + "/"),
    }
    del result
    wire.send(conn, {"done": True})
    conn.close()
    ok = all(checks.values())
    print(json.dumps({"result": "ok" if ok else "FAILED", "checks": checks, "torch": torch.__version__,
                      "manager_path": ref["manager_path"]}), flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
