package warm

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	goruntime "runtime"
	"strings"
	"syscall"

	"github.com/opencontainers/runc/libcontainer/seccomp"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// FilterHelperArg, as the first argument, makes the binary the seccomp
// filter helper (FilterHelper): the binary's main calls FilterHelper
// before anything else when it sees it.
const FilterHelperArg = "__pyisolate-seccomp-filter"

// filterHelperHold, set to 1 in the helper's environment, keeps a helper
// that loaded its filter alive until its stdin closes, so that a test can
// read the loaded filter back.
const filterHelperHold = "PYISOLATE_FILTER_HELPER_HOLD"

func init() {
	// The helper's libcontainer call must run on the traced main thread.
	if len(os.Args) > 1 && os.Args[1] == FilterHelperArg {
		goruntime.LockOSThread()
	}
}

// FilterHelper reads a spec's seccomp profile (JSON) from stdin and loads
// it into this process with libcontainer, exactly as a container's init
// does; the runtime traces it and takes the program from the seccomp
// system call (compileSeccompFilter). It does not return.
func FilterHelper() {
	var sc specs.LinuxSeccomp
	if err := json.NewDecoder(os.Stdin).Decode(&sc); err != nil {
		fmt.Fprintf(os.Stderr, "seccomp filter helper: %v\n", err)
		os.Exit(2)
	}
	cfg, err := specconv.SetupSeccomp(&sc)
	if err == nil {
		err = unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
	}
	if err == nil {
		_, err = seccomp.InitSeccomp(cfg)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "seccomp filter helper: %v\n", err)
		os.Exit(1)
	}
	if os.Getenv(filterHelperHold) == "1" {
		_, _ = io.Copy(io.Discard, os.Stdin)
	}
	os.Exit(0)
}

// compileSeccompFilter returns the program libcontainer loads for profile
// sc, without CAP_SYS_ADMIN (which PTRACE_SECCOMP_GET_FILTER needs): it
// runs this binary as FilterHelper under ptrace, stops it at the entry of
// the system call that loads the filter, reads the program from its memory
// and kills it before the call is made.
func compileSeccompFilter(ctx context.Context, sc *specs.LinuxSeccomp) ([]byte, error) {
	in, err := json.Marshal(sc)
	if err != nil {
		return nil, err
	}
	// Every ptrace request must come from the thread that started the
	// tracee.
	goruntime.LockOSThread()
	defer goruntime.UnlockOSThread()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "/proc/self/exe", FilterHelperArg)
	cmd.Stdin = bytes.NewReader(in)
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true, Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("seccomp filter helper: %w", err)
	}
	pid := cmd.Process.Pid
	defer func() {
		_ = unix.Kill(pid, unix.SIGKILL)
		_ = cmd.Wait()
	}()
	var ws unix.WaitStatus
	if _, err := wait4(pid, &ws); err != nil || !ws.Stopped() {
		return nil, fmt.Errorf("seccomp filter helper did not stop at its start: %v", err)
	}
	if err := unix.PtraceSetOptions(pid, unix.PTRACE_O_TRACESYSGOOD|unix.PTRACE_O_EXITKILL); err != nil {
		return nil, fmt.Errorf("seccomp filter helper: %w", err)
	}
	sig := 0
	for {
		if err := unix.PtraceSyscall(pid, sig); err != nil {
			return nil, fmt.Errorf("seccomp filter helper: %w", err)
		}
		sig = 0
		if _, err := wait4(pid, &ws); err != nil {
			return nil, fmt.Errorf("seccomp filter helper: %w", err)
		}
		if ws.Exited() || ws.Signaled() {
			return nil, fmt.Errorf("seccomp filter helper ended before it loaded a filter: %s", strings.TrimSpace(stderr.String()))
		}
		if !ws.Stopped() {
			continue
		}
		if ws.StopSignal() != unix.SIGTRAP|0x80 {
			sig = int(ws.StopSignal()) // a signal for the helper: deliver it
			if ws.StopSignal() == unix.SIGTRAP {
				sig = 0
			}
			continue
		}
		prog, ok, err := filterArg(pid)
		if err != nil {
			return nil, fmt.Errorf("seccomp filter helper: %w", err)
		}
		if !ok || prog == 0 {
			continue // libseccomp probes flags with a NULL program
		}
		return readProgram(pid, prog)
	}
}

// readProgram reads a struct sock_fprog at addr of process pid and the
// instructions it points to.
func readProgram(pid int, addr uintptr) ([]byte, error) {
	// struct sock_fprog: unsigned short len; struct sock_filter *filter
	// (at offset 8 on 64-bit ABIs).
	hdr := make([]byte, unix.SizeofSockFprog)
	if _, err := unix.PtracePeekData(pid, addr, hdr); err != nil {
		return nil, fmt.Errorf("read the seccomp program: %w", err)
	}
	n := int(binary.NativeEndian.Uint16(hdr))
	ptr := uintptr(binary.NativeEndian.Uint64(hdr[8:]))
	if n == 0 || ptr == 0 {
		return nil, errors.New("read the seccomp program: empty")
	}
	prog := make([]byte, n*unix.SizeofSockFilter)
	if _, err := unix.PtracePeekData(pid, ptr, prog); err != nil {
		return nil, fmt.Errorf("read the seccomp program: %w", err)
	}
	return prog, nil
}

func wait4(pid int, ws *unix.WaitStatus) (int, error) {
	for {
		wpid, err := unix.Wait4(pid, ws, unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return wpid, err
	}
}
