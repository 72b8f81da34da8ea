"""A pyisolate-like host for the bwrap face's e2e tests (test/bwrap_face_test.go).

Written for these tests from what pyisolate 0.10.x does (it is not
pyisolate's code): detect the restriction model by running two bwrap probes,
build the bwrap command line of one extension (host-coupled or sealed, with
or without network and GPU), bind a Unix socket in /run/user/<uid>/pyisolate,
start `bwrap` from PATH, accept the child's connection and exchange
length-prefixed JSON messages (4-byte big-endian length), then wait for the
child's exit status. It prints one JSON object on stdout.

Usage: python3 host.py CONFIG.json
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from pathlib import Path

SYSTEM_PATHS = [
    "/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/opt",
    "/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d",
    "/etc/ssl", "/etc/ca-certificates", "/etc/pki", "/etc/resolv.conf", "/etc/hosts",
    "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/localtime", "/etc/timezone",
]
GPU_PATTERNS = ["nvidia*", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "dri"]
PROBE_BINDS = ["--ro-bind", "/usr", "/usr", "--ro-bind", "/bin", "/bin",
               "--ro-bind", "/lib", "/lib", "--ro-bind", "/lib64", "/lib64"]


def probe(bwrap, degraded):
    """One of the two detection probes: exit 0 means it works."""
    args = [bwrap] + ([] if degraded else ["--unshare-user-try"])
    args += ["--dev", "/dev", "--proc", "/proc"] + PROBE_BINDS + ["/usr/bin/true"]
    r = subprocess.run(args, capture_output=True, timeout=30)
    return r.returncode, r.stderr.decode(errors="replace")


def detect():
    """The restriction model, decided as pyisolate decides it."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return {"available": False, "model": "bwrap_missing"}
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read().strip()) == 0:
                return {"available": False, "model": "rhel_sysctl", "bwrap": bwrap}
    except (OSError, ValueError):
        pass
    code, err = probe(bwrap, False)
    if code == 0:
        return {"available": True, "model": "none", "bwrap": bwrap, "probe_stderr": err}
    low = err.lower()
    model = "unknown"
    if "permission denied" in low or "uid map" in low:
        model = "ubuntu_apparmor"
    elif "no space left" in low:
        model = "rhel_sysctl"
    dcode, derr = probe(bwrap, True)
    return {"available": dcode == 0, "model": model, "bwrap": bwrap, "error": err, "degraded_error": derr}


def build_command(cfg, uds_address, full):
    """The argument list pyisolate builds for one extension."""
    sealed = cfg.get("sealed", False)
    cmd = ["bwrap"]
    if full:
        cmd += ["--unshare-user", "--unshare-pid"]
    cmd += ["--new-session", "--die-with-parent", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    paths = list(SYSTEM_PATHS)
    if sys.base_prefix not in paths:
        paths.append(sys.base_prefix)
    resolved_prefix = str(Path(cfg["python"]).resolve().parent.parent)
    if resolved_prefix not in paths:
        paths.append(resolved_prefix)
    for p in paths:
        if os.path.exists(p):
            cmd += ["--ro-bind", p, p]
    cmd += ["--ro-bind", cfg["venv"], cfg["venv"], "--ro-bind", cfg["module"], cfg["module"]]
    if sealed:
        for p in cfg.get("sealed_host_ro_paths", []):
            p = os.path.normpath(p)
            if os.path.exists(p):
                cmd += ["--ro-bind", p, p]
    if cfg.get("gpu"):
        cmd += ["--ro-bind", "/sys", "/sys"]
        for pattern in GPU_PATTERNS:
            for dev in Path("/dev").glob(pattern):
                if dev.exists():
                    cmd += ["--dev-bind", str(dev), str(dev)]
        for p in sorted({"/opt/cuda", "/run/nvidia-persistenced"}):
            if os.path.exists(p):
                cmd += ["--ro-bind", p, p]
    if not cfg.get("network"):
        cmd.append("--unshare-net")
    if not sealed:
        cmd += ["--ro-bind", cfg["pkgroot"], cfg["pkgroot"]]
        if os.path.exists("/dev/shm"):
            cmd += ["--bind", "/dev/shm", "/dev/shm"]
    uds_dir = os.path.dirname(uds_address)
    current = Path("/")
    for part in Path(uds_dir).parts[1:]:
        current = current / part
        cmd += ["--dir", str(current)]
    cmd += ["--bind", uds_dir, uds_dir]
    for p in cfg.get("writable_paths", []):
        if os.path.exists(p):
            cmd += ["--bind", p, p]
    for p in cfg.get("readonly_paths", []):
        if os.path.exists(p):
            cmd += ["--ro-bind", p, p]
    if sealed:
        cmd.append("--clearenv")
    cmd += ["--setenv", "PYISOLATE_UDS_ADDRESS", uds_address, "--setenv", "PYISOLATE_CHILD", "1"]
    if sealed:
        for k in ["PATH", "LANG", "LC_ALL"]:
            if k in os.environ:
                cmd += ["--setenv", k, os.environ[k]]
        cmd += ["--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--setenv", "PYTHONNOUSERSITE", "1"]
    else:
        cmd += ["--setenv", "PYTHONPATH", cfg["pkgroot"]]
        for k in ["PATH", "HOME", "LANG", "LC_ALL"]:
            if k in os.environ:
                cmd += ["--setenv", k, os.environ[k]]
    for k, v in cfg.get("env", {}).items():
        cmd += ["--setenv", k, v]
    if sealed:
        cmd += ["--setenv", "PYTHONPATH", cfg["pkgroot"]]
    cmd += [cfg["python"], "-m", "pyisolate._internal.uds_client"]
    return cmd


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


def main():
    cfg = json.load(open(sys.argv[1]))
    out = {"detect": detect()}
    if cfg.get("detect_only"):
        print(json.dumps(out))
        return
    full = out["detect"].get("model") == "none"
    uds_dir = f"/run/user/{os.getuid()}/pyisolate"
    os.makedirs(uds_dir, mode=0o700, exist_ok=True)
    uds_address = os.path.join(uds_dir, f"ext_{uuid.uuid4().hex[:8]}.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(uds_address)
    listener.listen(1)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(1)
    shm_marker = f"/dev/shm/bwface-{os.getpid()}"
    with open(shm_marker, "w") as f:
        f.write("from-host")
    cmd = build_command(cfg, uds_address, full)
    out["argv"] = cmd
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        listener.settimeout(0.2)
        for _ in range(300):
            try:
                conn, _ = listener.accept()
                break
            except socket.timeout:
                if proc.poll() is not None:
                    raise RuntimeError(f"bwrap exited with {proc.returncode} before the child connected")
        else:
            raise TimeoutError("the child did not connect in 60 s")
        conn.settimeout(60)
        send(conn, {"op": "probe", "tcp_port": tcp.getsockname()[1], "shm_marker": shm_marker,
                    "writable": cfg.get("writable_paths", []), "module": cfg["module"],
                    "exit_code": cfg.get("exit_code", 0)})
        out["child"] = recv(conn)
        send(conn, {"op": "ping"})
        out["reply"] = recv(conn)
        conn.close()
        out["exit"] = proc.wait(timeout=60)
    except Exception as e:  # reported, the test fails on it
        proc.kill()
        out["error"] = repr(e)
        out["exit"] = proc.wait()
    finally:
        out["stderr"] = proc.stderr.read().decode(errors="replace")
        os.unlink(shm_marker)
        os.unlink(uds_address)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
