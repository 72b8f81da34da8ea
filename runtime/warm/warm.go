// Package warm starts extensions from a template that has already imported
// their heavy modules (torch takes about 0.5 s and 115 MB of private memory
// per process to import), so that the Nth member of a group is ready in tens
// of milliseconds and shares the imported pages with the template.
//
// # Design
//
// A template is a container like any member of its group (same filesystem,
// user namespace mapping, limits, no capabilities, no_new_privs), whose
// process is a Python zygote (zygote.py): it imports the manifest's preload
// list and then only forks, on request of the runtime over a unix socket in
// a directory only the runtime and the template can reach. Templates are
// keyed by (group, interpreter, venv, preload list, PYTHON* variables, id
// mapping) and deleted when their group ends.
//
// A warm member is made like this (C is the zygote's helper child, G the
// member's process):
//
//  1. C calls unshare(CLONE_NEWUSER|CLONE_NEWPID). The runtime writes C's
//     uid and gid maps ("0 0 N": the template's root) from inside the
//     template's user namespace (nsenter): C itself may not map root (since
//     Linux 5.12 that needs CAP_SETFCAP in the parent namespace), and host
//     root may not write the map of a namespace that is not its child.
//  2. C forks G, pid 1 of the new pid namespace. (A pid namespace cannot be
//     entered across siblings, so the member's one is made here.)
//  3. The runtime creates the member's container with libcontainer, exactly
//     as a cold start does (mounts, /proc, masked paths, cgroup, hostname,
//     sysctls, devices, network), except that it joins G's user and pid
//     namespaces. That container's init is never started.
//  4. The runtime copies the seccomp filter libcontainer loaded into the
//     container's init (PTRACE_SECCOMP_GET_FILTER, which needs
//     CAP_SYS_ADMIN). Rootless, it runs this binary as FilterHelper under
//     ptrace instead, which builds the same profile with libcontainer, and
//     reads the program from the seccomp system call's argument before the
//     call is made (the test compares the two byte for byte).
//  5. G receives the namespaces (mnt, uts, ipc, net, cgroup) and its stdio
//     as file descriptors, enters them with setns, sets its ids, drops every
//     capability (bounding and ambient too), sets no_new_privs, installs the
//     copied filter last, and says so. The runtime then kills the
//     container's init, moves G into the container's cgroups, applies the
//     process's rlimits and oom_score_adj, and says go: G closes every
//     other descriptor and runs the command line as `python ARGS` would.
//
// Rootless, /proc/PID/ns of libcontainer's init cannot be opened (the init
// is not dumpable, and its memory belongs to the host's user namespace), so
// the member's container is started with a blocker process (the
// interpreter, waiting on stdin) whose namespaces are opened instead.
//
// What differs from a cold member, and why: G's user and pid namespaces are
// children of the template's (NSpid has one more level; uid_map, read from
// inside, shows "0 0 N" against the template's namespace, the same host
// ids), and G carries the template's seccomp filter below its own: two
// filters (Seccomp_filters: 2) whose combination is the member's filter,
// since the template's allows a superset. Everything else — mounts,
// cgroup, capabilities, no_new_privs, the member's filter, limits — is the
// cold start's, and the test compares them.
//
// Design choices, measured on this project's machines: forking (this)
// against restoring a CRIU checkpoint of the template into a new container.
// A restore copies the image into private memory on every start, which
// defeats the memory target, and needs CRIU's privileges; a fork shares the
// template's pages copy-on-write. The fork costs 25 to 40 ms, most of it
// libcontainer creating the member's container.
//
// A template and its members share a pid namespace tree: a template that
// dies (killed, out of memory) takes its live members with it; they end as
// killed by SIGKILL, and the next member starts a new template.
//
// Run is the whole of it for `pyisolate run`; Create gives the containerd
// shim a created container whose init is G (runtime.Container.AdoptProcess
// records G as the init in libcontainer's state, so exec, pause, signals and
// delete reach it), started and waited for as any other.
//
// When a template cannot serve (the request is not one it can replicate,
// the template died or failed to import, any step above fails before the
// extension's code runs), Run returns an error that says so and
// has started nothing: the face then starts the member cold, and says it.
package warm

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// Options are a warm start's inputs besides the spec.
type Options struct {
	// Manifest is the member's manifest (its preload list is the template's
	// imports).
	Manifest *spec.Manifest
	// Group is the member's isolation group.
	Group string
	// Bundle is the bundle directory (runtime.CreateOptions.Bundle).
	Bundle string
	// Stdin, Stdout and Stderr are the member's standard streams.
	Stdin, Stdout, Stderr *os.File
	// Started is called with the host pid of the member's process once it
	// runs in its sandbox.
	Started func(pid int)
	// Log receives what the user should know (a template replaced).
	Log func(string)
}

// ColdFace returns, for an extension of manifest m created by a face that
// makes no warm starts (pyisolate-runc, whose create exits before the
// member runs, and with it the link to the template's helper), the line to
// log so that its preload list is not ignored silently; "" when m asks for
// none.
func ColdFace(face string, m *spec.Manifest) string {
	if m == nil || len(m.Preload) == 0 {
		return ""
	}
	return fmt.Sprintf("warm start not used: the manifest's preload list (%s) asks for one, which only `pyisolate run` makes; %s starts the extension cold",
		strings.Join(m.Preload, ", "), face)
}

// NotUsedError says why a warm start was not made. Nothing was started:
// the caller starts the member cold.
type NotUsedError struct{ Reason string }

func (e *NotUsedError) Error() string { return "warm start not used: " + e.Reason }

func notUsed(format string, a ...any) error {
	return &NotUsedError{Reason: fmt.Sprintf(format, a...)}
}

// IsNotUsed reports whether err is a NotUsedError (start cold).
func IsNotUsed(err error) bool {
	var nu *NotUsedError
	return errors.As(err, &nu)
}

// Run starts member id (a reserved id with no container yet) of spec s from
// its template, waits for it (passing on the signals runtime.Run passes on),
// and deletes its container. A NotUsedError means nothing was started and
// the member should start cold.
func Run(ctx context.Context, r *runtime.Runtime, id string, s *specs.Spec, o Options) (st runtime.ExitStatus, err error) {
	c, err := Create(ctx, r, id, s, o)
	if err != nil {
		return st, err
	}
	defer func() {
		if derr := c.Delete(context.WithoutCancel(ctx), true); derr != nil && err == nil {
			err = derr
		}
	}()
	defer runtime.ForwardSignals(ctx, c)()
	if err := c.Start(ctx); err != nil {
		return st, notUsed("%v", err)
	}
	runtime.Phase("warm start: forked into the sandbox")
	return c.Wait(context.WithoutCancel(ctx))
}

// Create makes member id (a reserved id with no container yet) of spec s
// from its template: a created container, like runtime.Runtime.Create's,
// whose init is the forked process, in its sandbox and waiting for Start.
// A NotUsedError means nothing was made and the member should start cold.
func Create(ctx context.Context, r *runtime.Runtime, id string, s *specs.Spec, o Options) (*runtime.Container, error) {
	if why := Eligible(s, o.Manifest); why != "" {
		return nil, notUsed("%s", why)
	}
	if o.Log == nil {
		o.Log = func(string) {}
	}
	k := KeyOf(s, o.Manifest, o.Group)
	t, err := ensure(ctx, r, k, s, id, o.Log)
	if err != nil {
		return nil, notUsed("template: %v", err)
	}
	c, err := start(ctx, r, t, id, s, o)
	if err != nil {
		return nil, notUsed("%v", err)
	}
	return c, nil
}

// Eligible returns why spec s of manifest m cannot start warm, or "".
func Eligible(s *specs.Spec, m *spec.Manifest) string {
	switch {
	case m == nil || len(m.Preload) == 0:
		return "the manifest has no preload list"
	case s.Process == nil || s.Linux == nil:
		return "the spec has no process"
	case s.Process.Terminal:
		return "process.terminal is set"
	}
	p := s.Process
	args := p.Args
	if len(args) == 0 || !pythonName.MatchString(filepath.Base(args[0])) {
		return fmt.Sprintf("the command %q does not run a Python interpreter (python, python3, python3.11, ...)", args)
	}
	switch {
	case len(args) >= 3 && (args[1] == "-m" || args[1] == "-c"):
	case len(args) >= 2 && !strings.HasPrefix(args[1], "-"):
	default:
		return fmt.Sprintf("the command %q is not PYTHON -m MODULE, PYTHON -c CODE or PYTHON SCRIPT", args)
	}
	if c := p.Capabilities; c != nil && len(c.Bounding)+len(c.Effective)+len(c.Permitted)+len(c.Inheritable)+len(c.Ambient) > 0 {
		return "the process keeps capabilities"
	}
	if c := p.Capabilities; c == nil {
		return "the process keeps capabilities"
	}
	if !p.NoNewPrivileges {
		return "the process has no no_new_privileges"
	}
	if p.ApparmorProfile != "" || p.SelinuxLabel != "" || p.IOPriority != nil || p.Scheduler != nil || p.ExecCPUAffinity != nil {
		return "the process asks for an AppArmor profile, SELinux label, I/O priority, scheduler or CPU affinity"
	}
	if len(s.Linux.UIDMappings) != 1 || len(s.Linux.GIDMappings) != 1 {
		return "the sandbox has no single-range user namespace mapping"
	}
	var user, pid bool
	for _, ns := range s.Linux.Namespaces {
		switch ns.Type {
		case specs.UserNamespace:
			user = ns.Path == ""
		case specs.PIDNamespace:
			pid = ns.Path == ""
		}
	}
	if !user || !pid {
		return "the sandbox has no user or pid namespace of its own"
	}
	for _, ns := range s.Linux.Namespaces {
		if ns.Path != "" {
			// G may enter only namespaces its own user namespace owns.
			return fmt.Sprintf("the sandbox joins the %s namespace %s, which a forked member cannot enter", ns.Type, ns.Path)
		}
	}
	if sc := s.Linux.Seccomp; sc != nil && sc.ListenerPath != "" {
		return "the seccomp profile has a listener"
	}
	return ""
}

// nsNames are the namespaces G enters from the member's container (user
// and pid are its own, made by the fork).
var nsNames = []string{"mnt", "uts", "ipc", "net", "cgroup"}

// pythonName matches the file names of Python interpreters.
var pythonName = regexp.MustCompile(`^python[0-9.]*$`)

// member is a warm member's link to its template's helper (C): it lets the
// process run and learns how it ended (runtime.AdoptHooks).
type member struct {
	id      string
	pid     int // host pid of G
	conn    *net.UnixConn
	started func(int)
	log     func(string)

	ran chan struct{} // closed by release
}

// release lets G run its command line.
func (m *member) release(context.Context) error {
	if _, err := m.conn.Write([]byte("go")); err != nil {
		return fmt.Errorf("warm member %s: %w", m.id, err)
	}
	close(m.ran)
	if m.started != nil {
		m.started(m.pid)
	}
	return nil
}

// exitStatus waits for G's exit status from C. A member that dies before it
// ran (killed while created, by a delete) ends as killed by SIGKILL, and its
// connection closes.
func (m *member) exitStatus(context.Context) (runtime.ExitStatus, error) {
	defer m.conn.Close()
	killed := runtime.ExitStatus{Code: 128 + int(unix.SIGKILL), Signal: unix.SIGKILL}
	for waiting := true; waiting; {
		select {
		case <-m.ran:
			waiting = false
		case <-time.After(10 * time.Millisecond):
			if !pidAlive(m.pid) {
				return killed, nil
			}
		}
	}
	b, err := readMsg(m.conn)
	if err != nil {
		// The helper that reports the status is gone: the template died
		// (killed, out of memory), and its pid namespace with every member
		// forked from it.
		m.log(fmt.Sprintf("warm member %s: its template ended (%v); the member was killed with it", m.id, err))
		_ = unix.Kill(m.pid, unix.SIGKILL)
		m.waitGone()
		return killed, nil
	}
	var res struct {
		Status int `json:"status"`
	}
	if err := json.Unmarshal(b, &res); err != nil {
		return runtime.ExitStatus{}, fmt.Errorf("warm member %s: exit status %q: %w", m.id, b, err)
	}
	ws := syscall.WaitStatus(res.Status)
	if ws.Signaled() {
		return runtime.ExitStatus{Code: 128 + int(ws.Signal()), Signal: ws.Signal()}, nil
	}
	return runtime.ExitStatus{Code: ws.ExitStatus()}, nil
}

// waitGone waits up to 5 s for G to be gone.
func (m *member) waitGone() {
	for i := 0; i < 500 && pidAlive(m.pid); i++ {
		time.Sleep(10 * time.Millisecond)
	}
}

// start makes member id from template t (steps 1 to 5 of the package doc,
// all but the last "go"), and returns its container, created, with G as its
// init. On error nothing of the member is left.
func start(ctx context.Context, r *runtime.Runtime, t *template, id string, s *specs.Spec, o Options) (_ *runtime.Container, retErr error) {
	conn, err := dialTemplate(t.socket)
	if err != nil {
		return nil, fmt.Errorf("connect to template %s: %w", t.id, err)
	}
	defer func() {
		if retErr != nil {
			conn.Close() // C kills G when the connection ends
		}
	}()
	if err := passCred(conn); err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte(`{"v":1}`)); err != nil {
		return nil, fmt.Errorf("template %s: %w", t.id, err)
	}
	cpid, err := recvPid(conn)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", t.id, err)
	}
	if err := expect(conn, "unshared"); err != nil {
		return nil, fmt.Errorf("template %s: %w", t.id, err)
	}
	if err := writeMaps(t.initPID, cpid, s); err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte("mapped")); err != nil {
		return nil, fmt.Errorf("template %s: %w", t.id, err)
	}
	if err := expect(conn, "forked"); err != nil {
		return nil, fmt.Errorf("template %s: %w", t.id, err)
	}
	gpid, err := onlyChild(cpid)
	if err != nil {
		return nil, err
	}
	if err := checkFresh(gpid, t.initPID); err != nil {
		return nil, err
	}
	rootless := runtime.Rootless()
	ds := doorSpec(s, gpid, rootless)
	copts := runtime.CreateOptions{Bundle: o.Bundle}
	var holdW, readyR *os.File
	if rootless {
		// The container's process is a blocker (see doorSpec): it says it
		// runs on stdout, and ends when its stdin closes.
		var holdR, readyW *os.File
		if holdR, holdW, err = os.Pipe(); err != nil {
			return nil, err
		}
		defer holdR.Close()
		defer holdW.Close()
		if readyR, readyW, err = os.Pipe(); err != nil {
			return nil, err
		}
		defer readyR.Close()
		defer readyW.Close()
		copts.Stdin, copts.Stdout, copts.Stderr = holdR, readyW, o.Stderr
	}
	door, err := quietly(func() (*runtime.Container, error) { return r.Create(ctx, id, ds, copts) })
	if err != nil {
		return nil, fmt.Errorf("create the member's container: %w", err)
	}
	defer func() {
		if retErr != nil {
			_ = door.Delete(context.WithoutCancel(ctx), true)
		}
	}()
	if rootless {
		if err := door.Start(ctx); err != nil {
			return nil, err
		}
		if err := readyR.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(readyR, make([]byte, 1)); err != nil {
			return nil, fmt.Errorf("the member's container did not start: %w", err)
		}
	}
	dpid := door.InitPID()
	// G enters the container's namespaces by descriptors of them, which
	// this process opens: as root from the created init; rootless that
	// needs a process exec'd in G's user namespace (libcontainer's init is
	// not dumpable, and /proc/PID/ns of a process that is not dumpable
	// needs CAP_SYS_PTRACE), hence the blocker.
	var fds []int
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	for _, n := range nsNames {
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/%s", dpid, n), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("open namespace %s of the member's container: %w", n, err)
		}
		fds = append(fds, fd)
	}
	var filter []byte
	if sc := s.Linux.Seccomp; sc != nil {
		if rootless {
			filter, err = compileSeccompFilter(ctx, sc)
		} else {
			filter, err = copySeccompFilter(dpid)
		}
		if err != nil {
			return nil, err
		}
	}
	req := map[string]any{
		"ns": nsNames, "args": s.Process.Args, "env": s.Process.Env, "cwd": s.Process.Cwd,
		"uid": s.Process.User.UID, "gid": s.Process.User.GID, "groups": gids(s.Process.User.AdditionalGids),
		"umask": umask(s.Process.User.Umask), "seccomp": hex.EncodeToString(filter),
	}
	msg, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	send := slices.Clone(fds)
	for _, f := range []*os.File{o.Stdin, o.Stdout, o.Stderr} {
		if f == nil {
			if f, err = os.Open(os.DevNull); err != nil {
				return nil, err
			}
			defer f.Close()
		}
		send = append(send, int(f.Fd()))
	}
	if _, _, err := conn.WriteMsgUnix(msg, unix.UnixRights(send...), nil); err != nil {
		return nil, fmt.Errorf("send the sandbox to the member: %w", err)
	}
	if err := expect(conn, "ok"); err != nil {
		return nil, fmt.Errorf("member could not enter its sandbox: %w", err)
	}
	// G is in the sandbox and waits for "go". The container's init has
	// done its work: it goes before the member's code runs beside it, and
	// before G joins the cgroup (waiting for the init of a container
	// without a pid namespace of its own, libcontainer kills every process
	// of its cgroup).
	if err := unix.Kill(dpid, unix.SIGKILL); err != nil {
		return nil, fmt.Errorf("end the init of the member's container: %w", err)
	}
	if _, err := quietly(func() (runtime.ExitStatus, error) { return door.Wait(ctx) }); err != nil {
		return nil, err
	}
	m := &member{id: id, pid: gpid, conn: conn, started: o.Started, log: o.Log, ran: make(chan struct{})}
	if err := door.AdoptProcess(gpid, runtime.AdoptHooks{Start: m.release, Wait: m.exitStatus}); err != nil {
		return nil, err
	}
	return door, nil
}

// doorSpec is member spec s joining G's user and pid namespaces. With
// blocker its process is the interpreter waiting on stdin after it wrote one
// byte to stdout, for a rootless runtime (see start).
func doorSpec(s *specs.Spec, gpid int, blocker bool) *specs.Spec {
	ds := *s
	if blocker {
		p := *s.Process
		p.Args = []string{s.Process.Args[0], "-S", "-I", "-c", "import os; os.write(1, b'r'); os.read(0, 1)"}
		ds.Process = &p
	}
	l := *s.Linux
	l.Namespaces = slices.Clone(l.Namespaces)
	for i, ns := range l.Namespaces {
		switch ns.Type {
		case specs.UserNamespace:
			l.Namespaces[i].Path = fmt.Sprintf("/proc/%d/ns/user", gpid)
		case specs.PIDNamespace:
			l.Namespaces[i].Path = fmt.Sprintf("/proc/%d/ns/pid", gpid)
		}
	}
	// The mappings are the namespace's own (read by libcontainer from it).
	l.UIDMappings, l.GIDMappings = nil, nil
	ds.Linux = &l
	return &ds
}

// quietly runs fn with libcontainer's warnings off: joining a pid namespace
// makes it warn that killing the container's processes is not reliable
// (true of any joined pid namespace, and why the member is killed by its pid
// and its template's helper instead).
func quietly[T any](fn func() (T, error)) (T, error) {
	lvl := logrus.GetLevel()
	if lvl >= logrus.WarnLevel {
		logrus.SetLevel(logrus.ErrorLevel)
		defer logrus.SetLevel(lvl)
	}
	return fn()
}

// writeMaps writes the uid and gid maps of C's new user namespace from
// inside the template's: root of the template's namespace, as many ids as
// the sandbox maps.
func writeMaps(tplPID, cpid int, s *specs.Spec) error {
	um, gm := s.Linux.UIDMappings[0], s.Linux.GIDMappings[0]
	script := fmt.Sprintf("echo '0 0 %d' > /proc/%d/uid_map && echo '0 0 %d' > /proc/%d/gid_map", um.Size, cpid, gm.Size, cpid)
	args := []string{"--user=/proc/" + strconv.Itoa(tplPID) + "/ns/user"}
	if runtime.Rootless() {
		// The caller is already the namespace's root, and a rootless
		// namespace denies setgroups, which nsenter would call.
		args = append(args, "--preserve-credentials")
	}
	// As host root nsenter becomes the namespace's root (uid 0 inside):
	// host uid 0 is not mapped there and would lose its capabilities in the
	// exec of the shell.
	cmd := exec.Command("nsenter", append(args, "--", "/bin/sh", "-c", script)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("map the member's user namespace (nsenter): %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// onlyChild returns the host pid of C's one child, G.
func onlyChild(cpid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cpid, cpid))
	if err != nil {
		return 0, fmt.Errorf("find the member's process: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) != 1 {
		return 0, fmt.Errorf("find the member's process: template helper %d has children %q", cpid, f)
	}
	return strconv.Atoi(f[0])
}

// checkFresh checks that G (host pid gpid) is pid 1 of a pid namespace and
// in a user namespace of its own, not the template's (tplPID): the
// template's processes run the venv's code at import, and the container is
// built only on namespaces the fork just made.
func checkFresh(gpid, tplPID int) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", gpid))
	if err != nil {
		return fmt.Errorf("the member's process: %w", err)
	}
	nspid := ""
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			nspid = strings.TrimSpace(v)
		}
	}
	if f := strings.Fields(nspid); len(f) < 2 || f[len(f)-1] != "1" {
		return fmt.Errorf("the member's process %d is not pid 1 of a pid namespace of its own (NSpid %q)", gpid, nspid)
	}
	for _, ns := range []string{"user", "pid"} {
		g, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", gpid, ns))
		tp, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", tplPID, ns))
		if err1 != nil || err2 != nil || g == tp {
			return fmt.Errorf("the member's process %d has no %s namespace of its own", gpid, ns)
		}
	}
	return nil
}

func gids(g []uint32) []uint32 {
	if g == nil {
		return []uint32{}
	}
	return g
}

func umask(u *uint32) uint32 {
	if u == nil {
		return 0o022
	}
	return *u
}

// dialTemplate connects to the zygote's socket at path, which lies in the
// template's own directory: it is opened without following a link (the
// template could put one there, to any socket on the host), checked to be a
// socket, and connected to through that descriptor.
func dialTemplate(path string) (*net.UnixConn, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return nil, fmt.Errorf("%s is not a socket", path)
	}
	return net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: fmt.Sprintf("/proc/self/fd/%d", fd), Net: "unixpacket"})
}

// passCred makes the connection receive the sender's credentials, which
// the kernel translates to this process's pid namespace.
func passCred(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return err
	}
	return serr
}

// recvPid reads C's "pid" message and returns C's host pid from its
// credentials.
func recvPid(c *net.UnixConn) (int, error) {
	buf := make([]byte, 1<<16)
	oob := make([]byte, unix.CmsgSpace(unix.SizeofUcred))
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return 0, err
	}
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		return 0, err
	}
	if string(buf[:n]) != "pid" {
		return 0, fmt.Errorf("%s", buf[:n])
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) == 0 {
		return 0, fmt.Errorf("no credentials from the template's helper")
	}
	cred, err := unix.ParseUnixCredentials(&msgs[0])
	if err != nil {
		return 0, err
	}
	return int(cred.Pid), nil
}

// readMsg reads one message.
func readMsg(c *net.UnixConn) ([]byte, error) {
	buf := make([]byte, 1<<16)
	oob := make([]byte, 256)
	n, _, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("the template's helper closed the connection")
	}
	return buf[:n], nil
}

// expect reads one message and checks it is want.
func expect(c *net.UnixConn, want string) error {
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		return err
	}
	defer c.SetReadDeadline(time.Time{})
	b, err := readMsg(c)
	if err != nil {
		return err
	}
	if string(b) != want {
		return fmt.Errorf("%s", b)
	}
	return nil
}
