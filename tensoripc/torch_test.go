package tensoripc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestTorchReadsGoPublished: torch, as pyisolate's deserializer calls it,
// reads the bytes of a tensor Go published under a torch_ name (torch's
// layout) and leaves the segment as it was when it lets go of it; a
// plain-layout segment's descriptor is refused by torch with an error, never
// read as zeros, and the segment is not touched.
func TestTorchReadsGoPublished(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("skipped in -short: importing torch takes 15-20 s")
	}
	needRoot(t)
	needPython(t, "torch")
	d := newDomain(t, true, Options{Size: 16 << 20})
	type pub struct {
		name, dtype string
		shape       []int64
		wantTorch   string // "ok" or "error"
	}
	pubs := []pub{
		{"torch_go_f32", "torch.float32", []int64{64, 33}, "ok"},
		{"torch_go_i64", "torch.int64", []int64{5}, "ok"},
		{"plain_f32", "torch.float32", []int64{64, 33}, "error"},
	}
	var in bytes.Buffer
	data := map[string][]byte{}
	for i, p := range pubs {
		es, _ := DTypeSize(p.dtype)
		n := es
		for _, s := range p.shape {
			n *= s
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(j*7 + i + 1) // no zero runs: zeros would not pass for the data
		}
		ref, err := Publish(d.Dir(), p.name, b, p.dtype, p.shape)
		if err != nil {
			t.Fatalf("publish %s: %v", p.name, err)
		}
		data[p.name] = b
		j, _ := json.Marshal(ref)
		in.Write(append(j, '\n'))
	}
	before := map[string][]byte{}
	for _, p := range pubs {
		before[p.name] = readFile(t, filepath.Join(d.Dir(), p.name))
	}
	script := fmt.Sprintf("mount --bind %s /dev/shm && exec %s testdata/torch_read.py", d.Dir(), sysPython)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c", script)
	cmd.Stdin = &in
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("torch: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var answers []string
	for _, l := range lines {
		if strings.HasPrefix(l, "ok ") || strings.HasPrefix(l, "error ") {
			answers = append(answers, l)
		}
	}
	if len(answers) != len(pubs) {
		t.Fatalf("torch answered %q for %d descriptors", out, len(pubs))
	}
	for i, p := range pubs {
		kind, rest, _ := strings.Cut(answers[i], " ")
		tensorSHA, fileSHA, _ := strings.Cut(rest, " ")
		switch {
		case kind != p.wantTorch:
			t.Errorf("%s: torch said %q, want %s", p.name, answers[i], p.wantTorch)
		case kind == "ok" && tensorSHA != hexsha(data[p.name]):
			t.Errorf("%s: torch read sha256 %s, Go published %s", p.name, tensorSHA, hexsha(data[p.name]))
		case kind == "ok" && fileSHA != hexsha(before[p.name]):
			t.Errorf("%s: torch changed the segment file (refcount header or data)", p.name)
		}
		if kind != "ok" {
			after := readFile(t, filepath.Join(d.Dir(), p.name))
			if !bytes.Equal(after, before[p.name]) {
				t.Errorf("%s: torch refused it but changed the segment (%d bytes before, %d after)", p.name, len(before[p.name]), len(after))
			}
		}
	}
	// A torch receiver given no manager_path registers the segment with a
	// shm manager of its own, which unlinks what it registered when it
	// exits (torch's design: a segment lives as long as the manager that
	// knows it). Go's mapping and the data stay; only the name goes.
	if _, err := os.Stat(filepath.Join(d.Dir(), "torch_go_f32")); err == nil {
		t.Log("torch_go_f32 is still there after the torch receiver exited")
	} else {
		t.Log("torch_go_f32 was unlinked by the receiver's torch_shm_manager at its exit, as torch does")
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
