package tensoripc

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

// TestTorchTensorRefInGo: a TensorRef made by real torch (file_system
// sharing, its refcount header and torch_<pid>_ name) in its own pid and
// mount namespaces, as in a container, decodes in Go; its segment is
// attributed by name (a namespaced pid, resolved through NSpid) to the member
// whose init started torch; the Go view reads the tensor's bytes.
func TestTorchTensorRefInGo(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("skipped in -short: importing torch takes 15-20 s")
	}
	needRoot(t) // to bind-mount the domain over /dev/shm in a mount namespace
	needPython(t, "torch")
	d := newDomain(t, true, Options{Size: 16 << 20})
	script := fmt.Sprintf("mount --bind %s /dev/shm && exec %s testdata/torch_ref.py", d.Dir(), sysPython)
	cmd := exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount", "--propagation", "private", "sh", "-c", script)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start torch: %v", err)
	}
	defer func() { in.Close(); cmd.Process.Kill(); cmd.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("torch said nothing: %v", err)
	}
	var msg struct {
		Ref    json.RawMessage `json:"ref"`
		SHA256 string          `json:"sha256"`
	}
	if err := json.Unmarshal([]byte(line), &msg); err != nil {
		t.Fatalf("torch said %q: %v", line, err)
	}
	ref, err := DecodeTensorRef(msg.Ref)
	if err != nil {
		t.Fatalf("decode torch's TensorRef %s: %v", msg.Ref, err)
	}
	if err := d.AddMember(t.Context(), Member{ID: "torch-ext", PID: cmd.Process.Pid}); err != nil {
		t.Fatal(err)
	}
	v, err := OpenCPU(ref, d.Dir())
	if err != nil {
		t.Fatalf("OpenCPU(%s): %v", msg.Ref, err)
	}
	defer v.Close()
	b, err := v.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	if got := hexsha(b); got != msg.SHA256 {
		t.Errorf("Go read sha256 %s, torch has %s", got, msg.SHA256)
	}
	name := ref.CPU.StorageKey[1:]
	if !strings.HasPrefix(name, "torch_1_") {
		t.Errorf("torch segment %s: want torch_1_... (torch is pid 1 of its namespace)", name)
	}
	if s := segmentMap(t, d)[name]; s.Owner != "torch-ext" || s.Attribution != ByTorchName {
		t.Errorf("torch segment %s: owner %s by %s, want torch-ext by torch name", name, s.Owner, s.Attribution)
	}
}

// TestDTypeSizesMatchTorch: every dtype the installed torch names is in the
// table, with torch's own element size.
func TestDTypeSizesMatchTorch(t *testing.T) {
	t.Parallel()
	needPython(t, "torch")
	script := `import torch
names = {str(getattr(torch, n)) for n in dir(torch) if isinstance(getattr(torch, n), torch.dtype)}
for n in sorted(names):
    d = eval(n)
    if any(n == "torch.%s%d" % (p, i) for p in ("int", "uint") for i in range(1, 8)):
        continue  # 2.x sub-byte placeholders, without a storage layout
    print(n, d.itemsize if hasattr(d, "itemsize") else torch._utils._element_size(d))
`
	out, err := exec.Command(sysPython, "-c", script).CombinedOutput()
	if err != nil {
		t.Fatalf("torch: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, l := range lines {
		var name string
		var size int64
		if _, err := fmt.Sscan(l, &name, &size); err != nil {
			t.Fatalf("torch said %q: %v", l, err)
		}
		if got, ok := DTypeSize(name); !ok || got != size {
			t.Errorf("DTypeSize(%s) = %d, %v; torch's element_size is %d", name, got, ok, size)
		}
	}
	t.Logf("%d dtypes of the installed torch checked", len(lines))
}
