# pyisolate warm-start zygote (package runtime/warm). It runs as the process
# of a template container: a sandbox like any member's, whose interpreter
# imports the manifest's preload list and then only forks. It never runs
# extension code itself; a forked child does, after it has moved into the
# member's own sandbox. The protocol (one SOCK_SEQPACKET connection per
# member, from the runtime) is described in warm.go.
import array, ctypes, json, os, select, signal, socket, struct, sys, traceback

CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
NS_FLAGS = {"mnt": 0x00020000, "uts": 0x04000000, "ipc": 0x08000000,
            "net": 0x40000000, "cgroup": 0x02000000}
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
MAX_MSG = 1 << 20

libc = ctypes.CDLL(None, use_errno=True)


def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, "%s: %s" % (what, os.strerror(e)))


def recv_fds(sock):
    fds = array.array("i")
    msg, anc, _, _ = sock.recvmsg(MAX_MSG, socket.CMSG_SPACE(64 * fds.itemsize))
    for level, typ, data in anc:
        if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def send_fds(sock, msg, fds):
    sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


class CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def enter(sock):
    """Moves this process (G, pid 1 of its own pid namespace, root of its
    own user namespace) into the member's sandbox the runtime made, then
    returns the member's request. Order: namespaces, ids, stdio, directory,
    capabilities, no_new_privs, seccomp last."""
    msg, fds = recv_fds(sock)
    req = json.loads(msg)
    names = req["ns"]
    nsfds, stdio = fds[:len(names)], fds[len(names):]
    for name, fd in zip(names, nsfds):
        check(libc.setns(fd, NS_FLAGS[name]), "setns " + name)
        os.close(fd)
    groups = req.get("groups", [])
    if sorted(os.getgroups()) != sorted(groups):
        os.setgroups(groups)  # rootless namespaces deny it; their list is already empty
    os.setresgid(req["gid"], req["gid"], req["gid"])
    os.setresuid(req["uid"], req["uid"], req["uid"])
    for i, fd in enumerate(stdio[:3]):
        os.dup2(fd, i)
    for fd in stdio:
        if fd > 2:
            os.close(fd)
    os.chdir(req["cwd"])
    os.umask(req["umask"])
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    for cap in range(last + 1):
        check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "drop bounding capability %d" % cap)
    check(libc.capset(ctypes.byref(CapHeader(0x20080522, 0)), (CapData * 2)()), "capset")
    check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    os.environ.clear()
    for kv in req["env"]:
        k, _, v = kv.partition("=")
        os.environ[k] = v
    raw = bytes.fromhex(req.get("seccomp", ""))
    if raw:
        buf = ctypes.create_string_buffer(raw, len(raw))
        prog = SockFprog(len(raw) // 8, ctypes.cast(buf, ctypes.c_void_p))
        check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")
    return req


def run(args):
    """Runs the member's command line as `python ARGS` would: -m MODULE,
    -c CODE or a script path (the runtime checked the form)."""
    import runpy
    rest = args[1:]
    if rest[0] == "-m":
        sys.argv = ["-m"] + rest[2:]
        sys.path[0] = os.getcwd()
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    elif rest[0] == "-c":
        import types
        sys.argv = ["-c"] + rest[2:]
        sys.path[0] = ""
        main = types.ModuleType("__main__")
        main.__builtins__ = __builtins__
        sys.modules["__main__"] = main
        exec(compile(rest[1], "<string>", "exec"), main.__dict__)
    else:
        sys.argv = rest
        sys.path[0] = os.path.dirname(os.path.realpath(rest[0]))
        runpy.run_path(rest[0], run_name="__main__")


def member(sock):
    """G: enters the sandbox, reports, then runs the extension."""
    try:
        req = enter(sock)
    except BaseException as e:  # reported to the runtime, which starts cold
        try:
            sock.send(("error: %s" % e).encode())
        finally:
            os._exit(127)
    sock.send(b"ok")
    # The runtime ends the container's init and puts this process in the
    # container's cgroup, then says go.
    if sock.recv(64) != b"go":
        os._exit(127)
    sock.close()
    os.closerange(3, 1 << 16)
    try:
        run(req["args"])
    except SystemExit:
        raise
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)


def serve(conn):
    """C: one member's helper in the template's namespaces."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    req = json.loads(conn.recv(MAX_MSG) or b"{}")
    if req.get("v") != 1:
        conn.send(b"error: protocol version")
        os._exit(1)
    cred = struct.pack("iII", os.getpid(), os.getuid(), os.getgid())
    conn.sendmsg([b"pid"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, cred)])
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWPID), "unshare user and pid namespaces")
    conn.send(b"unshared")
    if conn.recv(64) != b"mapped":
        os._exit(1)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:
        conn.close()
        a.close()
        member(b)
    b.close()
    conn.send(b"forked")
    msg, fds = recv_fds(conn)
    send_fds(a, msg, fds)
    for fd in fds:
        os.close(fd)
    reply = a.recv(MAX_MSG)
    conn.send(reply or b"error: the member exited before it entered its sandbox")
    if reply == b"ok":
        a.send(conn.recv(64))  # "go", or nothing when the runtime gave up
    a.close()

    # The runtime's end of the connection closes when it dies: the member
    # dies with it (bwrap's --die-with-parent). No thread: a process may not
    # make threads after unshare(CLONE_NEWPID).
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLHUP)
    poller.register(pidfd, select.POLLIN)
    while True:
        ready = dict(poller.poll())
        if pidfd in ready:
            break
        if conn.fileno() in ready:
            try:
                data = conn.recv(64)
            except OSError:
                data = b""
            if not data:
                os.kill(pid, signal.SIGKILL)
                break
    _, status = os.waitpid(pid, 0)
    conn.send(json.dumps({"status": status}).encode())
    os._exit(0)


def main():
    path = sys.argv[1]
    for name in [m for m in os.environ.pop("PYISOLATE_WARM_PRELOAD", "").split(",") if m]:
        __import__(name)
    # A shared writable mapping made before the fork would be shared by
    # every member: refuse to serve (the runtime then starts cold).
    for line in open("/proc/self/maps"):
        f = line.split()
        if len(f) > 1 and f[1].startswith("rw") and f[1].endswith("s"):
            print("pyisolate zygote: shared writable mapping after preload: " + line.strip(), file=sys.stderr, flush=True)
            sys.exit(3)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    srv.bind(path + ".new")
    srv.listen(64)
    os.rename(path + ".new", path)
    sys.stdout.flush()
    sys.stderr.flush()
    while True:
        conn, _ = srv.accept()
        pid = os.fork()
        if pid == 0:
            srv.close()
            try:
                serve(conn)
            except SystemExit:
                raise
            except BaseException as e:
                try:
                    conn.send(("error: %s" % e).encode())
                finally:
                    os._exit(1)
        conn.close()


main()
