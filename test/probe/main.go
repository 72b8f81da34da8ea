// Command probe runs inside a sandbox and reports, one JSON line per check,
// whether the sandbox blocks something an extension must not be able to do:
//
//	{"check": "read-etc-shadow", "blocked": true, "detail": "ENOENT"}
//
// It is built static (CGO_ENABLED=0) so that it runs in any root filesystem,
// and it always exits 0: the report is the output. Every check is harmless
// when it is not blocked: files are created and removed again, kernel objects
// are closed, nothing is written to /proc/sysrq-trigger or /proc/sys (an open
// for writing is the check), a kernel module load gets an empty buffer, and
// the network checks never send a packet off loopback (a TCP connect to the
// host's 127.0.0.1 listener, and a UDP connect(), which sends nothing, to a
// TEST-NET address to see whether a route exists).
//
// Flags name the host paths and values to look for; checks whose flag is
// empty report "not configured" as blocked=true with that detail.

// The Go runtime would otherwise keep cgroup files open for its
// container-aware GOMAXPROCS, which the fd check would report as inherited.
//
//go:debug containermaxprocs=0
//go:debug updatemaxprocs=0
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

type result struct {
	Check   string `json:"check"`
	Blocked bool   `json:"blocked"`
	Detail  string `json:"detail"`
}

var out = json.NewEncoder(os.Stdout)

func report(check string, blocked bool, detail string) {
	_ = out.Encode(result{Check: check, Blocked: blocked, Detail: detail})
}

// errno names an error by its errno constant where it has one.
func errno(err error) string {
	var e syscall.Errno
	if errors.As(err, &e) {
		if n := unix.ErrnoName(e); n != "" {
			return n
		}
		return fmt.Sprintf("errno %d", int(e))
	}
	if err == nil {
		return "ok"
	}
	return err.Error()
}

type config struct {
	module, venv         string
	tmpMarker, shmMarker string
	port                 int
	hostPID              int
	hostComm             string
}

func main() {
	// Helper modes for the checks that need a second process.
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "-exit0":
			os.Exit(0)
		case "-sleep":
			time.Sleep(30 * time.Second)
			os.Exit(0)
		case "-x32":
			fmt.Println(x32Getpid())
			os.Exit(0)
		}
	}
	// The fd check runs first, before the Go runtime's poller or os/exec
	// open descriptors of their own.
	fds := inheritedFDs()

	var c config
	flag.StringVar(&c.module, "module", os.Getenv("PROBE_MODULE"), "module path (should be read-only)")
	flag.StringVar(&c.venv, "venv", os.Getenv("PROBE_VENV"), "venv path (should be read-only)")
	flag.StringVar(&c.tmpMarker, "tmp-marker", os.Getenv("PROBE_TMP_MARKER"), "a file in the host's /tmp")
	flag.StringVar(&c.shmMarker, "shm-marker", os.Getenv("PROBE_SHM_MARKER"), "a file in the host's /dev/shm")
	flag.IntVar(&c.port, "port", envInt("PROBE_PORT"), "TCP port of a listener on the host's 127.0.0.1")
	flag.IntVar(&c.hostPID, "host-pid", envInt("PROBE_HOST_PID"), "a host process id")
	flag.StringVar(&c.hostComm, "host-comm", os.Getenv("PROBE_HOST_COMM"), "the comm of -host-pid")
	flag.Parse()

	// Filesystem: reading the host's private data.
	checkList("read-root", "/root")
	checkList("read-home", "/home")
	checkRead("read-etc-shadow", "/etc/shadow")
	checkRead("read-host-tmp", c.tmpMarker)
	checkRead("read-host-shm", c.shmMarker)
	// Filesystem: writing what must stay read-only.
	checkWrite("write-module", c.module)
	checkWrite("write-venv", c.venv)
	checkWrite("write-etc", "/etc")
	checkWrite("write-usr", "/usr")
	// Network.
	checkInterfaces()
	checkHostLoopback(c.port)
	checkUDPRoute("net-udp-route-v4", "udp4", "192.0.2.1:9")
	checkUDPRoute("net-udp-route-v6", "udp6", "[2001:db8::1]:9")
	// Syscalls and kernel interfaces.
	checkMount()
	checkUnshare("unshare-user", unix.CLONE_NEWUSER)
	checkUnshare("unshare-mount", unix.CLONE_NEWNS)
	checkPtraceChild()
	checkPtracePID1()
	checkKeyctl()
	checkBPF()
	checkCompatABI()
	checkPerf()
	checkInitModule()
	checkFinitModule()
	checkOpenByHandle()
	checkMknod()
	checkOpenWrite("write-sysrq-trigger", "/proc/sysrq-trigger")
	checkOpenWrite("write-proc-sys", "/proc/sys/kernel/core_pattern")
	checkKcore()
	// Descriptors and working directory inherited from the runtime.
	reportFDs(fds)
	checkCwd()
	// Host processes.
	checkHostPIDs(c.hostPID, c.hostComm)
	// Privileges.
	checkStatus()
}

func envInt(k string) int {
	n, _ := strconv.Atoi(os.Getenv(k))
	return n
}

func checkList(name, dir string) {
	ents, err := os.ReadDir(dir)
	switch {
	case err != nil:
		report(name, true, errno(err))
	case len(ents) == 0:
		report(name, true, "empty directory")
	default:
		names := make([]string, 0, 3)
		for i := 0; i < len(ents) && i < 3; i++ {
			names = append(names, ents[i].Name())
		}
		report(name, false, fmt.Sprintf("listed %d entries (%s...)", len(ents), strings.Join(names, ", ")))
	}
}

func checkRead(name, file string) {
	if file == "" {
		report(name, true, "not configured")
		return
	}
	b, err := os.ReadFile(file)
	if err != nil {
		report(name, true, errno(err))
		return
	}
	report(name, false, fmt.Sprintf("read %d bytes of %s", len(b), file))
}

func checkWrite(name, dir string) {
	if dir == "" {
		report(name, true, "not configured")
		return
	}
	p := filepath.Join(dir, fmt.Sprintf(".probe-write-%d", os.Getpid()))
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		d := errno(err)
		if errors.Is(err, os.ErrNotExist) {
			d += " (" + dir + " not in the sandbox)"
		}
		report(name, true, d)
		return
	}
	f.Close()
	os.Remove(p)
	note := ""
	var fs unix.Statfs_t
	if unix.Statfs(dir, &fs) == nil && fs.Type == unix.TMPFS_MAGIC {
		note = "; " + dir + " is a tmpfs of the sandbox"
	}
	report(name, false, "created "+p+" (removed)"+note)
}

func checkInterfaces() {
	ifs, err := net.Interfaces()
	if err != nil {
		report("net-interfaces", true, errno(err))
		return
	}
	var other, all []string
	for _, i := range ifs {
		all = append(all, i.Name)
		if i.Flags&net.FlagLoopback == 0 {
			other = append(other, i.Name)
		}
	}
	if len(other) > 0 {
		report("net-interfaces", false, "non-loopback: "+strings.Join(other, ","))
		return
	}
	report("net-interfaces", true, "only: "+strings.Join(all, ","))
}

func checkHostLoopback(port int) {
	if port == 0 {
		report("net-host-loopback", true, "not configured")
		return
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	conn, err := net.DialTimeout("tcp4", addr, time.Second)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			report("net-host-loopback", true, "timeout")
			return
		}
		report("net-host-loopback", true, errno(err))
		return
	}
	conn.Close()
	report("net-host-loopback", false, "connected to the host's "+addr)
}

// checkUDPRoute connect()s a UDP socket, which sends nothing: it succeeds
// only when a route to the address exists.
func checkUDPRoute(name, network, addr string) {
	conn, err := net.Dial(network, addr)
	if err != nil {
		report(name, true, errno(err))
		return
	}
	local := conn.LocalAddr().String()
	conn.Close()
	report(name, false, "route exists (local "+local+"); nothing sent")
}

func checkMount() {
	target := ""
	for _, d := range []string{"/tmp", "/dev/shm", "/mnt", "/"} {
		if st, err := os.Stat(d); err == nil && st.IsDir() {
			target = d
			break
		}
	}
	err := unix.Mount("probe", target, "tmpfs", 0, "size=16k")
	if err != nil {
		report("mount-tmpfs", true, errno(err))
		return
	}
	unix.Unmount(target, unix.MNT_DETACH)
	report("mount-tmpfs", false, "mounted tmpfs on "+target+" (unmounted)")
}

// checkUnshare starts a copy of the probe whose child side calls
// unshare(flags) before exec: the Go runtime is multi-threaded, and
// unshare(CLONE_NEWUSER) or CLONE_NEWNS needs a single-threaded caller,
// which the forked child is.
func checkUnshare(name string, flags uintptr) {
	cmd := exec.Command("/proc/self/exe", "-exit0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: flags}
	if err := cmd.Run(); err != nil {
		report(name, true, errno(err))
		return
	}
	report(name, false, "unshare succeeded in a child")
}

func startSleeper() (*exec.Cmd, error) {
	cmd := exec.Command("/proc/self/exe", "-sleep")
	return cmd, cmd.Start()
}

func checkPtraceChild() {
	cmd, err := startSleeper()
	if err != nil {
		report("ptrace-child", true, "could not start a child: "+errno(err))
		return
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	blocked, detail := ptraceAttach(cmd.Process.Pid)
	report("ptrace-child", blocked, detail)
}

func checkPtracePID1() {
	if os.Getpid() == 1 {
		report("ptrace-pid1", true, "the probe is pid 1")
		return
	}
	blocked, detail := ptraceAttach(1)
	report("ptrace-pid1", blocked, detail)
}

// ptraceAttach attaches to pid and detaches at once.
func ptraceAttach(pid int) (bool, string) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.PtraceAttach(pid); err != nil {
		return true, errno(err)
	}
	var ws unix.WaitStatus
	unix.Wait4(pid, &ws, unix.WALL, nil)
	unix.PtraceDetach(pid)
	return false, fmt.Sprintf("attached to pid %d (detached)", pid)
}

func checkKeyctl() {
	id, err := unix.AddKey("user", "pyisolate-probe", []byte("x"), unix.KEY_SPEC_PROCESS_KEYRING)
	if err != nil {
		report("keyctl-add-key", true, errno(err))
		return
	}
	unix.KeyctlInt(unix.KEYCTL_INVALIDATE, id, 0, 0, 0)
	report("keyctl-add-key", false, fmt.Sprintf("added key %d (invalidated)", id))
}

func checkBPF() {
	// union bpf_attr for BPF_MAP_CREATE: type, key size, value size, entries.
	attr := [16]uint32{unix.BPF_MAP_TYPE_ARRAY, 4, 4, 1}
	fd, _, e := unix.Syscall(unix.SYS_BPF, unix.BPF_MAP_CREATE, uintptr(unsafe.Pointer(&attr[0])), unsafe.Sizeof(attr))
	if e != 0 {
		report("bpf-map-create", true, errno(e))
		return
	}
	unix.Close(int(fd))
	report("bpf-map-create", false, "created a BPF array map (closed)")
}

// checkCompatABI makes a system call through the x32 ABI (amd64 only; the
// i386 one needs int 0x80, which Go cannot issue): the seccomp filter must
// refuse every ABI but the native one. It runs in a child (-x32), as the
// filter's bad-architecture action kills the calling thread. ENOSYS means
// the filter let the call through to a kernel without x32 support.
func checkCompatABI() {
	if runtime.GOARCH != "amd64" {
		report("syscall-compat-abi", true, "not applicable on "+runtime.GOARCH)
		return
	}
	out, err := exec.Command("/proc/self/exe", "-x32").Output()
	if err != nil {
		report("syscall-compat-abi", true, "child failed: "+err.Error())
		return
	}
	res := strings.TrimSpace(string(out))
	report("syscall-compat-abi", res == "SIGSYS" || res == "EPERM", "x32 getpid: "+res)
}

// x32Getpid calls getpid through the x32 ABI on a thread of its own and
// says how that ended: an errno name, "ok", or SIGSYS when the thread was
// killed (it left /proc/self/task, or is a zombie there when it was the
// main thread).
func x32Getpid() string {
	tids := make(chan int, 1)
	res := make(chan string, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread may die
		tids <- unix.Gettid()
		const x32SyscallBit = 0x40000000
		_, _, e := syscall.RawSyscall(x32SyscallBit|unix.SYS_GETPID, 0, 0, 0)
		if e != 0 {
			res <- errno(e)
			return
		}
		res <- "ok"
	}()
	task := fmt.Sprintf("/proc/self/task/%d", <-tids)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		select {
		case r := <-res:
			return r
		case <-time.After(5 * time.Millisecond):
		}
		st, err := os.ReadFile(task + "/stat")
		if errors.Is(err, os.ErrNotExist) {
			return "SIGSYS"
		}
		if i := bytes.LastIndexByte(st, ')'); i >= 0 && len(st) > i+2 && (st[i+2] == 'Z' || st[i+2] == 'X') {
			return "SIGSYS"
		}
	}
	return "no answer in 5s"
}

func checkPerf() {
	attr := unix.PerfEventAttr{
		Type:   unix.PERF_TYPE_SOFTWARE,
		Size:   uint32(unsafe.Sizeof(unix.PerfEventAttr{})),
		Config: unix.PERF_COUNT_SW_CPU_CLOCK,
		Bits:   unix.PerfBitDisabled | unix.PerfBitExcludeKernel | unix.PerfBitExcludeHv,
	}
	fd, err := unix.PerfEventOpen(&attr, 0, -1, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		report("perf-event-open", true, errno(err))
		return
	}
	unix.Close(fd)
	report("perf-event-open", false, "opened a software counter (closed)")
}

// moduleResult reads a module-load error: EPERM or ENOSYS mean the call was
// refused; anything else means it reached the module loader.
func moduleResult(name string, err error) {
	if err == nil {
		report(name, false, "succeeded (!)")
		return
	}
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EACCES) {
		report(name, true, errno(err))
		return
	}
	report(name, false, errno(err)+": reached the module loader")
}

func checkInitModule() {
	moduleResult("init-module", unix.InitModule([]byte{}, ""))
}

func checkFinitModule() {
	f, err := os.Open("/dev/null")
	if err != nil {
		report("finit-module", true, "no /dev/null: "+errno(err))
		return
	}
	defer f.Close()
	moduleResult("finit-module", unix.FinitModule(int(f.Fd()), "", 0))
}

// checkOpenByHandle tries the "shocker" escape primitive: open_by_handle_at
// reopens a file by its handle, past any bind mount or chroot.
func checkOpenByHandle() {
	h, mountID, err := unix.NameToHandleAt(unix.AT_FDCWD, "/", 0)
	if err != nil {
		report("open-by-handle-at", true, "name_to_handle_at: "+errno(err))
		return
	}
	_ = mountID
	root, err := os.Open("/")
	if err != nil {
		report("open-by-handle-at", true, errno(err))
		return
	}
	defer root.Close()
	fd, err := unix.OpenByHandleAt(int(root.Fd()), h, unix.O_RDONLY)
	if err != nil {
		report("open-by-handle-at", true, errno(err))
		return
	}
	unix.Close(fd)
	report("open-by-handle-at", false, "reopened / by handle (closed)")
}

// checkMknod creates /dev/mem's device node (char 1:1) and opens it (not
// reading): both the node and the open must be refused.
func checkMknod() {
	var p string
	var err error
	for _, d := range []string{"/tmp", "/dev", "/dev/shm"} {
		p = filepath.Join(d, fmt.Sprintf(".probe-mem-%d", os.Getpid()))
		if err = unix.Mknod(p, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 1))); err == nil || !(errors.Is(err, unix.EROFS) || errors.Is(err, unix.ENOENT)) {
			break
		}
	}
	if err != nil {
		report("mknod-dev-mem", true, "mknod: "+errno(err))
		return
	}
	defer os.Remove(p)
	f, err := os.OpenFile(p, os.O_RDONLY, 0)
	if err != nil {
		report("mknod-dev-mem", true, "node made, open refused: "+errno(err))
		return
	}
	f.Close()
	report("mknod-dev-mem", false, "made and opened a /dev/mem node (not read, removed)")
}

// checkOpenWrite opens a file for writing and closes it without writing.
func checkOpenWrite(name, file string) {
	f, err := os.OpenFile(file, os.O_WRONLY, 0)
	if err != nil {
		report(name, true, errno(err))
		return
	}
	f.Close()
	report(name, false, "opened "+file+" for writing (nothing written)")
}

func checkKcore() {
	f, err := os.Open("/proc/kcore")
	if err != nil {
		report("read-proc-kcore", true, errno(err))
		return
	}
	defer f.Close()
	b := make([]byte, 4)
	n, err := f.Read(b)
	if n == 0 {
		d := "read nothing"
		if err != nil {
			d = errno(err)
		}
		report("read-proc-kcore", true, d)
		return
	}
	report("read-proc-kcore", false, fmt.Sprintf("read %d bytes", n))
}

type fdInfo struct {
	fd     int
	target string
	isDir  bool
}

// inheritedFDs lists the open descriptors other than stdio with raw system
// calls, before the Go runtime opens any of its own.
func inheritedFDs() []fdInfo {
	dfd, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return []fdInfo{{fd: -1, target: "cannot list /proc/self/fd: " + errno(err)}}
	}
	defer unix.Close(dfd)
	var names []string
	buf := make([]byte, 8192)
	for {
		n, err := unix.ReadDirent(dfd, buf)
		if err != nil || n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	var fds []fdInfo
	for _, s := range names {
		fd, err := strconv.Atoi(s)
		if err != nil || fd <= 2 || fd == dfd {
			continue
		}
		target, _ := os.Readlink("/proc/self/fd/" + s)
		var st unix.Stat_t
		isDir := unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
		fds = append(fds, fdInfo{fd: fd, target: target, isDir: isDir})
	}
	sort.Slice(fds, func(i, j int) bool { return fds[i].fd < fds[j].fd })
	return fds
}

func reportFDs(fds []fdInfo) {
	var all, dirs []string
	for _, f := range fds {
		s := fmt.Sprintf("%d->%s", f.fd, f.target)
		all = append(all, s)
		if f.isDir || f.fd < 0 {
			dirs = append(dirs, s)
		}
	}
	if len(all) == 0 {
		report("fd-inherited", true, "only 0,1,2")
	} else {
		report("fd-inherited", false, strings.Join(all, " "))
	}
	if len(dirs) == 0 {
		report("fd-host-directory", true, "no directory fd")
	} else {
		report("fd-host-directory", false, strings.Join(dirs, " "))
	}
}

// checkCwd: a working directory outside the container's root (the runc
// CVE-2024-21626 symptom) reads as "(unreachable)/..." or fails.
func checkCwd() {
	cwd, err := os.Readlink("/proc/self/cwd")
	if err != nil {
		report("cwd-outside-root", true, "readlink: "+errno(err))
		return
	}
	if strings.HasPrefix(cwd, "(unreachable)") {
		report("cwd-outside-root", false, cwd)
		return
	}
	report("cwd-outside-root", true, "cwd "+cwd)
}

func checkHostPIDs(hostPID int, hostComm string) {
	ents, _ := os.ReadDir("/proc")
	n := 0
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			n++
		}
	}
	detail := fmt.Sprintf("%d processes visible", n)
	if hostPID == 0 {
		report("host-processes", n > 50, detail+"; no host pid given")
		return
	}
	comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", hostPID))
	got := strings.TrimSpace(string(comm))
	if err == nil && (hostComm == "" || got == hostComm) {
		report("host-processes", false, fmt.Sprintf("%s; host pid %d (%s) visible", detail, hostPID, got))
		return
	}
	report("host-processes", true, fmt.Sprintf("%s; host pid %d not visible", detail, hostPID))
}

// checkStatus reads the privilege fields of /proc/self/status.
func checkStatus() {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		for _, n := range []string{"cap-eff-zero", "cap-bnd-zero", "no-new-privs", "seccomp-filter"} {
			report(n, false, "cannot read /proc/self/status: "+errno(err))
		}
		return
	}
	f := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok {
			f[k] = strings.TrimSpace(v)
		}
	}
	zero := func(name, key string) {
		v := f[key]
		n, err := strconv.ParseUint(v, 16, 64)
		report(name, err == nil && n == 0, key+"="+v)
	}
	zero("cap-eff-zero", "CapEff")
	zero("cap-prm-zero", "CapPrm")
	zero("cap-bnd-zero", "CapBnd")
	report("no-new-privs", f["NoNewPrivs"] == "1", "NoNewPrivs="+f["NoNewPrivs"])
	report("seccomp-filter", f["Seccomp"] == "2", "Seccomp="+f["Seccomp"])
}
