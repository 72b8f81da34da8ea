"""The extension side of the bwrap face's e2e tests: connects back to the
host over PYISOLATE_UDS_ADDRESS, reports what it sees of its sandbox, answers
one ping, and exits with the code the host asked for. Written for these tests
(it is not pyisolate's code); the package is named so that the command line
is the one pyisolate builds."""

import errno
import json
import os
import socket
import struct


def send(conn, obj):
    data = json.dumps(obj).encode()
    conn.sendall(struct.pack(">I", len(data)) + data)


def recv(conn):
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = conn.recv(n - len(buf))
            if not chunk:
                raise EOFError("socket closed")
            buf += chunk
        return buf
    (n,) = struct.unpack(">I", exact(4))
    return json.loads(exact(n))


def can_write(path):
    try:
        name = os.path.join(path, f".bwface-{os.getpid()}")
        with open(name, "w") as f:
            f.write("x")
        os.unlink(name)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))


def status():
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp"):
                fields[k] = v.strip()
    return fields


def main():
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(os.environ["PYISOLATE_UDS_ADDRESS"])
    req = recv(conn)
    report = {"status": status(), "uid": os.getuid(), "pid": os.getpid(),
              "session_leader": os.getsid(0) == os.getpid(),
              "env_child": os.environ.get("PYISOLATE_CHILD"),
              "env_marker": os.environ.get("BWFACE_MARKER"),
              "write_tmp": can_write("/tmp"), "write_usr": can_write("/usr"),
              "write_module": can_write(req["module"]),
              "write_writable": [can_write(p) for p in req["writable"]],
              "etc_shadow": os.path.exists("/etc/shadow"),
              "sys": os.path.isdir("/sys/class"),
              "write_sys": can_write("/sys/kernel") if os.path.isdir("/sys/kernel") else "absent"}
    try:
        with open(req["shm_marker"]) as f:
            report["shm"] = f.read()
    except OSError as e:
        report["shm"] = errno.errorcode.get(e.errno, str(e.errno))
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", req["tcp_port"]))
        report["host_tcp"] = "connected"
    except OSError as e:
        report["host_tcp"] = errno.errorcode.get(e.errno, str(e)) if e.errno else "timeout"
    finally:
        s.close()
    try:
        open("/dev/tty").close()
        report["tty"] = "opened"
    except OSError as e:
        report["tty"] = errno.errorcode.get(e.errno, str(e.errno))
    send(conn, report)
    if recv(conn).get("op") == "ping":
        send(conn, {"op": "pong"})
    conn.close()
    raise SystemExit(req["exit_code"])


if __name__ == "__main__":
    main()
