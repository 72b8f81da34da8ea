package warm

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == FilterHelperArg {
		FilterHelper() // compileSeccompFilter runs this binary as the helper
	}
	os.Exit(m.Run())
}

// testProfile is the container default profile for a process without
// capabilities, native ABI only, as spec.Build makes it.
func testProfile() *specs.LinuxSeccomp {
	p := seccomp.DefaultProfile(&specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}})
	p.Architectures = nil
	return p
}

// TestCompiledFilterIsLoadedFilter: the program compileSeccompFilter takes
// from the traced helper (the rootless path) is, byte for byte, the filter
// libcontainer loads for the same profile, read back from a helper that
// loaded it with PTRACE_SECCOMP_GET_FILTER (the path as root).
func TestCompiledFilterIsLoadedFilter(t *testing.T) {
	ctx := context.Background()
	prof := testProfile()
	got, err := compileSeccompFilter(ctx, prof)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) < 8*50 || len(got)%8 != 0 {
		t.Fatalf("compiled filter: %d bytes, want a program of 8-byte instructions", len(got))
	}
	if os.Geteuid() != 0 {
		t.Skip("skipped: reading a loaded filter back needs root (PTRACE_SECCOMP_GET_FILTER); the compiled one was checked for shape only")
	}
	in, _ := json.Marshal(prof)
	cmd := exec.Command("/proc/self/exe", FilterHelperArg)
	cmd.Env = append(os.Environ(), filterHelperHold+"=1")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); _ = cmd.Wait() }()
	if _, err := stdin.Write(in); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	for i := 0; ; i++ {
		b, _ := os.ReadFile("/proc/" + itoa(pid) + "/status")
		if strings.Contains(string(b), "Seccomp:\t2") {
			break
		}
		if i > 500 {
			t.Fatalf("the helper did not load its filter: %s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	loaded, err := copySeccompFilter(pid)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, loaded) {
		t.Fatalf("compiled filter (%d bytes) differs from the loaded one (%d bytes)", len(got), len(loaded))
	}
	t.Logf("filter: %d instructions, the same compiled and loaded", len(got)/8)
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
