package test

// TestCRI drives pyisolate through Kubernetes' container runtime interface,
// as a kubelet would: a private containerd (Debian's 1.6, CRI plugin built
// in) on its own root, state and socket, whose config gets the runtime entry
// from our own installer (`pyisolate install --containerd-config ...
// --bin-dir ...`), and crictl (cri-tools, built once with `go build` into
// /var/cache/pyisolate-test) as the kubelet:
//
//	crictl runp --runtime pyisolate pod.json     (RuntimeClass handler)
//	crictl create --no-pull POD container.json pod.json; crictl start
//	crictl logs / exec; crictl stop, rm, stopp, rmp
//
// No registry is reachable here: the pause image (a tiny static Go program
// that sleeps until SIGTERM) and a busybox image are written as
// docker-archive tars by the test and imported with `ctr -n k8s.io images
// import`. The pod uses the node's network namespace (namespace_options
// network NODE), so no CNI plugin is needed. At the end nothing may be left:
// no pods, containers or tasks in containerd, no shim process, no mounts.
//
// It needs root, containerd and ctr, Go (to build crictl and the pause
// binary) and busybox-static, and skips with the reason otherwise; -short
// skips it too.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// criCrictlVersion is the cri-tools release built for the test. cri-tools
// 1.26+ speak CRI v1 only, which containerd 1.6 serves. (The Go module proxy
// here serves some releases only; v1.34.0 is one of them.)
const criCrictlVersion = "v1.34.0"

const criCacheDir = "/var/cache/pyisolate-test"

// criRestrictOOM sets the CRI plugin's restrict_oom_score_adj (see the config
// in criStart); PYISOLATE_TEST_CRI_OOM=1 turns it off to check whether the
// runtime can apply the kubelet's negative oom_score_adj values.
var criRestrictOOM = os.Getenv("PYISOLATE_TEST_CRI_OOM") != "1"

// criEnv is one private containerd with the CRI plugin and crictl.
type criEnv struct {
	dir, bin, config, sock string
	crictl, ctr            string
	containerd             *exec.Cmd
	log                    string
	exited                 chan struct{}
}

// criCrictl returns crictl, building it into the cache once. The build runs
// in a throw-away module (`go install pkg@version` also asks the proxy for
// the module's version list, which this proxy refuses).
func criCrictl(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(criCacheDir, "crictl-"+criCrictlVersion)
	bin := filepath.Join(dir, "crictl")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if p := os.Getenv("PYISOLATE_TEST_CRICTL"); p != "" {
		return p
	}
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("CRI test: crictl is not built and there is no go to build it")
	}
	mod := filepath.Join(dir, "build")
	if err := os.MkdirAll(mod, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(mod, "go.mod"), []byte("module crictlbuild\n\ngo 1.24\n\nrequire sigs.k8s.io/cri-tools "+criCrictlVersion+"\n"), 0o644)
	os.WriteFile(filepath.Join(mod, "tools.go"), []byte("package main\n\nimport _ \"sigs.k8s.io/cri-tools/cmd/crictl\"\n"), 0o644)
	env := append(os.Environ(), "GOFLAGS=", "GOWORK=off", "CGO_ENABLED=0",
		// Some of these modules are missing from the checksum database
		// mirror this machine reaches.
		"GONOSUMDB=sigs.k8s.io,k8s.io")
	for _, argv := range [][]string{
		{"go", "mod", "tidy"},
		{"go", "build", "-o", bin + ".tmp", "sigs.k8s.io/cri-tools/cmd/crictl"},
	} {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir, cmd.Env = mod, env
		t.Logf("building crictl %s (once, minutes): %s", criCrictlVersion, strings.Join(argv, " "))
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Skipf("CRI test: cannot build crictl %s (%v): %s", criCrictlVersion, err, criTail(string(out), 1500))
		}
	}
	if err := os.Rename(bin+".tmp", bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// criBuildPyisolate builds the binary under test from this checkout.
func criBuildPyisolate(t *testing.T, out string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-tags", "seccomp", "-o", out, "./cmd/pyisolate-shim")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building pyisolate: %v\n%s", err, b)
	}
}

func criTail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// criStart writes the base config, runs our installer on it and starts
// containerd.
func criStart(t *testing.T) *criEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("CRI test: needs root (containerd)")
	}
	if testing.Short() {
		t.Skip("CRI test: skipped in -short mode (starts containerd, builds crictl)")
	}
	containerd, err := exec.LookPath("containerd")
	if err != nil {
		t.Skip("CRI test: containerd not installed (apt-get install containerd)")
	}
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		t.Skip("CRI test: ctr not installed")
	}
	crictl := criCrictl(t)

	// A short path: the socket must fit in sun_path.
	dir, err := os.MkdirTemp("", "pyi-cri-")
	if err != nil {
		t.Fatal(err)
	}
	e := &criEnv{dir: dir, bin: filepath.Join(dir, "bin"), config: filepath.Join(dir, "etc", "config.toml"),
		sock: filepath.Join(dir, "c.sock"), crictl: crictl, ctr: ctr, log: filepath.Join(dir, "containerd.log")}
	t.Cleanup(func() { e.cleanup(t) })
	for _, d := range []string{"etc", "root", "state", "src", "logs", "cni/bin", "cni/conf"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	base := fmt.Sprintf(`# private containerd for pyisolate's CRI test
version = 2
root = %q
state = %q

[grpc]
  address = %q

[ttrpc]
  address = %q

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "pyisolate.local/pause:1"
    disable_apparmor = true
    # The CRI gives the pause container oom_score_adj -998; pyisolate runs
    # containers in a user namespace where lowering it is refused ("nsexec:
    # failed to update /proc/self/oom_score_adj: Permission denied"). Capped
    # at containerd's own value here; see deploy/k8s/README.md.
    restrict_oom_score_adj = %t
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %q
      conf_dir = %q
  [plugins."io.containerd.internal.v1.opt"]
    path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), e.sock, e.sock+".ttrpc", criRestrictOOM,
		filepath.Join(dir, "cni/bin"), filepath.Join(dir, "cni/conf"), filepath.Join(dir, "opt"))
	if err := os.WriteFile(e.config, []byte(base), 0o644); err != nil {
		t.Fatal(err)
	}

	// Our installer puts the binary and the runtime entry in place.
	src := filepath.Join(dir, "src", "pyisolate")
	criBuildPyisolate(t, src)
	// --cdi-spec none: a GPU machine's CDI spec is not this test's to write.
	installArgs := []string{"install", "--containerd-config", e.config, "--bin-dir", e.bin, "--restart=false", "--cdi-spec", "none"}
	out, err := exec.Command(src, installArgs...).CombinedOutput()
	if err != nil {
		t.Fatalf("pyisolate install: %v\n%s", err, out)
	}
	t.Logf("pyisolate install:\n%s", out)
	cfg, _ := os.ReadFile(e.config)
	if !strings.HasPrefix(string(cfg), base) ||
		!strings.Contains(string(cfg), "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.pyisolate]\n  runtime_type = \"io.containerd.pyisolate.v1\"") {
		t.Fatalf("config after install:\n%s", cfg)
	}
	if m, _ := filepath.Glob(e.config + ".pyisolate-backup-*"); len(m) != 1 {
		t.Errorf("backups: %q", m)
	}
	out2, err := exec.Command(src, installArgs...).CombinedOutput()
	if cfg2, _ := os.ReadFile(e.config); err != nil || string(cfg2) != string(cfg) || !strings.Contains(string(out2), "unchanged") {
		t.Errorf("second install changed something (%v):\n%s", err, out2)
	}
	if l, err := os.Readlink(filepath.Join(e.bin, "containerd-shim-pyisolate-v1")); err != nil || l != "pyisolate" {
		t.Fatalf("shim link: %q %v", l, err)
	}
	// A second handler whose node policy is faithful, as an operator who
	// wants plain pods run as runc runs them installs it.
	faithfulArgs := []string{"install", "--containerd-config", e.config, "--bin-dir", e.bin, "--restart=false",
		"--runtime-name", "pyisolate-faithful", "--policy", "faithful", "--config-dir", filepath.Join(dir, "etc-pyisolate"), "--cdi-spec", "none"}
	if out, err := exec.Command(src, faithfulArgs...).CombinedOutput(); err != nil {
		t.Fatalf("pyisolate install --policy faithful: %v\n%s", err, out)
	}
	cfg, _ = os.ReadFile(e.config)
	wantOpts := "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.pyisolate-faithful.options]\n  ConfigPath = \"" +
		filepath.Join(dir, "etc-pyisolate", "pyisolate-faithful.toml") + "\""
	if !strings.Contains(string(cfg), wantOpts) {
		t.Fatalf("config after install --policy faithful lacks %q:\n%s", wantOpts, cfg)
	}

	e.startContainerd(t, containerd)
	return e
}

// startContainerd starts containerd (the binary given) with e's config, its
// log in e.log and e.bin first on its PATH, and waits until its CRI answers.
func (e *criEnv) startContainerd(t *testing.T, containerd string) {
	t.Helper()
	logf, err := os.Create(e.log)
	if err != nil {
		t.Fatal(err)
	}
	e.containerd = exec.Command(containerd, "--config", e.config)
	e.containerd.Stdout, e.containerd.Stderr = logf, logf
	e.containerd.Env = append(os.Environ(), "PATH="+e.bin+":"+os.Getenv("PATH"))
	e.containerd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := e.containerd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	e.exited = make(chan struct{})
	go func() { e.containerd.Wait(); close(e.exited) }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		if _, err := e.crictlRun(10*time.Second, "info"); err == nil {
			break
		}
		select {
		case <-e.exited:
			t.Fatalf("containerd exited:\n%s", e.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("containerd's CRI did not come up in 60s:\n%s", e.logTail())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (e *criEnv) logTail() string {
	b, _ := os.ReadFile(e.log)
	return criTail(string(b), 6000)
}

func (e *criEnv) crictlRun(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	argv := append([]string{"--config", filepath.Join(e.dir, "crictl.yaml"), "--runtime-endpoint", "unix://" + e.sock,
		"--image-endpoint", "unix://" + e.sock, "--timeout", timeout.String()}, args...)
	os.WriteFile(filepath.Join(e.dir, "crictl.yaml"), nil, 0o644)
	out, err := exec.CommandContext(ctx, e.crictl, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("crictl %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

func (e *criEnv) crictlOK(t *testing.T, args ...string) string {
	t.Helper()
	out, err := e.crictlRun(2*time.Minute, args...)
	if err != nil {
		t.Fatalf("%v\ncontainerd log:\n%s", err, e.logTail())
	}
	return out
}

func (e *criEnv) ctrRun(args ...string) (string, error) {
	argv := append([]string{"--address", e.sock, "-n", "k8s.io"}, args...)
	out, err := exec.Command(e.ctr, argv...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}

// criShims lists running processes started from our bin directory.
func (e *criEnv) criShims() []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		if ent.Name()[0] < '0' || ent.Name()[0] > '9' {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", ent.Name(), "exe"))
		if err == nil && strings.HasPrefix(exe, e.dir+"/") {
			cmdline, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
			found = append(found, ent.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return found
}

// criMounts lists mount points under our directory.
func (e *criEnv) criMounts() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var found []string
	s := bufio.NewScanner(f)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], e.dir+"/") {
			found = append(found, fields[4])
		}
	}
	return found
}

// cleanup removes whatever a failed run left: pods, containerd, shims
// started from our bin directory, mounts, the directory.
func (e *criEnv) cleanup(t *testing.T) {
	if e.containerd != nil && e.containerd.Process != nil {
		select {
		case <-e.exited:
		default:
			if out, err := e.crictlRun(time.Minute, "rmp", "-fa"); err != nil {
				t.Logf("cleanup: %v %s", err, out)
			}
			e.containerd.Process.Signal(syscall.SIGTERM)
			select {
			case <-e.exited:
			case <-time.After(20 * time.Second):
				e.containerd.Process.Kill()
				<-e.exited
			}
		}
	}
	for _, p := range e.criShims() {
		var pid int
		fmt.Sscanf(p, "%d:", &pid)
		if pid > 0 {
			t.Logf("cleanup: killing leftover %s", p)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	mounts := e.criMounts()
	for i := len(mounts) - 1; i >= 0; i-- {
		syscall.Unmount(mounts[i], syscall.MNT_DETACH)
	}
	if t.Failed() || os.Getenv("PYISOLATE_TEST_KEEP") != "" {
		t.Logf("containerd log (%s):\n%s", e.log, e.logTail())
		if os.Getenv("PYISOLATE_TEST_KEEP") != "" {
			return
		}
	}
	os.RemoveAll(e.dir)
}

func TestCRI(t *testing.T) {
	e := criStart(t)

	// Images, imported offline.
	imgDir := filepath.Join(e.dir, "images")
	os.MkdirAll(imgDir, 0o755)
	pauseTar, busyboxTar := filepath.Join(imgDir, "pause.tar"), filepath.Join(imgDir, "busybox.tar")
	if err := criImageArchive(pauseTar, "pyisolate.local/pause:1", criPauseLayer(t, imgDir), []string{"/pause"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := criImageArchive(busyboxTar, "pyisolate.local/busybox:1", criBusyboxLayer(t), nil, []string{"/bin/sh"}); err != nil {
		t.Fatal(err)
	}
	for _, tarball := range []string{pauseTar, busyboxTar} {
		if out, err := e.ctrRun("images", "import", tarball); err != nil {
			t.Fatalf("%v", err)
		} else {
			t.Logf("ctr images import %s: %s", filepath.Base(tarball), out)
		}
	}
	images := e.crictlOK(t, "images")
	if !strings.Contains(images, "pyisolate.local/pause") || !strings.Contains(images, "pyisolate.local/busybox") {
		t.Fatalf("crictl images:\n%s", images)
	}

	// The pod: node network (no CNI), our runtime handlers.
	writeJSON := func(name string, v any) string {
		p := filepath.Join(e.dir, name)
		b, _ := json.MarshalIndent(v, "", "  ")
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pod := writeJSON("pod.json", map[string]any{
		"metadata":      map[string]any{"name": "pyisolate-cri", "namespace": "default", "uid": "pyisolate-cri-uid", "attempt": 0},
		"log_directory": filepath.Join(e.dir, "logs"),
		"linux": map[string]any{
			"cgroup_parent":    "/pyisolate-cri-test",
			"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}, // NODE
		},
	})
	ctrCfg := writeJSON("container.json", map[string]any{
		"metadata": map[string]any{"name": "busybox", "attempt": 0},
		"image":    map[string]any{"image": "pyisolate.local/busybox:1"},
		"command":  []string{"/bin/sh", "-c", "echo cri-ok-$(id -u); exec sleep 3600"},
		"log_path": "busybox.log",
		"linux":    map[string]any{},
	})

	// The default handler's policy, hardened, refuses a pod in the node's
	// network namespace, and says so through CRI.
	if out, err := e.crictlRun(time.Minute, "runp", "--runtime", "pyisolate", pod); err == nil ||
		!strings.Contains(out, "linux.namespaces: no network namespace: the container would share the host's; refused by policy hardened") {
		t.Errorf("runp of a host-network pod under policy hardened: want the refusal, got %v:\n%s", err, out)
	}
	if out := e.crictlOK(t, "pods", "-q"); out != "" {
		// The refused sandbox is cleaned up by containerd.
		for _, id := range strings.Fields(out) {
			e.crictlRun(time.Minute, "rmp", "-f", id)
		}
	}

	podID := e.crictlOK(t, "runp", "--runtime", "pyisolate-faithful", pod)
	t.Logf("pod %s", podID)
	inspect := e.crictlOK(t, "inspectp", podID)
	var pi struct {
		Status struct {
			State string `json:"state"`
		} `json:"status"`
		Info struct {
			RuntimeHandler string `json:"runtimeHandler"`
			RuntimeType    string `json:"runtimeType"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(inspect), &pi); err != nil {
		t.Fatalf("inspectp: %v\n%s", err, inspect)
	}
	if pi.Status.State != "SANDBOX_READY" || pi.Info.RuntimeHandler != "pyisolate-faithful" || pi.Info.RuntimeType != "io.containerd.pyisolate.v1" {
		t.Errorf("pod: state %q handler %q type %q", pi.Status.State, pi.Info.RuntimeHandler, pi.Info.RuntimeType)
	}
	if len(e.criShims()) == 0 {
		t.Errorf("no containerd-shim-pyisolate-v1 process from %s", e.bin)
	}

	cid := e.crictlOK(t, "create", "--no-pull", podID, ctrCfg, pod)
	e.crictlOK(t, "start", cid)
	var logs string
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		logs, _ = e.crictlRun(30*time.Second, "logs", cid)
		if strings.Contains(logs, "cri-ok-") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(logs, "cri-ok-") {
		ps, _ := e.crictlRun(time.Minute, "ps", "-a")
		t.Fatalf("container output %q\ncrictl ps -a:\n%s\ncontainerd log:\n%s", logs, ps, e.logTail())
	}
	t.Logf("container log: %s", logs)
	state := e.crictlOK(t, "inspect", "-o", "go-template", "--template", "{{.status.state}}", cid)
	if state != "CONTAINER_RUNNING" {
		t.Errorf("container state %q, want CONTAINER_RUNNING", state)
	}
	if out, err := e.crictlRun(time.Minute, "exec", cid, "echo", "exec-ok"); err != nil || !strings.Contains(out, "exec-ok") {
		t.Errorf("crictl exec: %q %v", out, err)
	}

	// Tear down as the kubelet does.
	e.crictlOK(t, "stop", "--timeout", "10", cid)
	state = e.crictlOK(t, "inspect", "-o", "go-template", "--template", "{{.status.state}}", cid)
	if state != "CONTAINER_EXITED" {
		t.Errorf("after stop: state %q", state)
	}
	e.crictlOK(t, "rm", cid)
	e.crictlOK(t, "stopp", podID)
	e.crictlOK(t, "rmp", podID)

	// Nothing left.
	if out := e.crictlOK(t, "pods", "-q"); out != "" {
		t.Errorf("pods left: %s", out)
	}
	if out := e.crictlOK(t, "ps", "-aq"); out != "" {
		t.Errorf("containers left: %s", out)
	}
	if out, err := e.ctrRun("containers", "ls", "-q"); err != nil || out != "" {
		t.Errorf("ctr containers left: %q %v", out, err)
	}
	if out, err := e.ctrRun("tasks", "ls", "-q"); err != nil || out != "" {
		t.Errorf("ctr tasks left: %q %v", out, err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(e.criShims()) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if s := e.criShims(); len(s) > 0 {
		t.Errorf("processes left: %q", s)
	}
	if m := e.criMounts(); len(m) > 0 {
		// containerd itself keeps none while no container exists.
		t.Errorf("mounts left: %q", m)
	}
	for _, c := range []string{"/sys/fs/cgroup/memory/pyisolate-cri-test", "/sys/fs/cgroup/pids/pyisolate-cri-test", "/sys/fs/cgroup/pyisolate-cri-test"} {
		if ents, err := os.ReadDir(c); err == nil {
			for _, ent := range ents {
				if ent.IsDir() {
					t.Errorf("cgroup left: %s/%s", c, ent.Name())
				}
			}
		}
	}
	ociRemoveCgroups(t, "pyisolate-cri-test") // the pods' parent, made for this test

	// Uninstall takes the entry out again and leaves the rest byte for byte.
	src := filepath.Join(e.dir, "src", "pyisolate")
	confDir := filepath.Join(e.dir, "etc-pyisolate")
	if out, err := exec.Command(src, "uninstall", "--containerd-config", e.config, "--bin-dir", e.bin, "--restart=false",
		"--runtime-name", "pyisolate-faithful", "--config-dir", confDir, "--config-only").CombinedOutput(); err != nil {
		t.Errorf("pyisolate uninstall --runtime-name pyisolate-faithful: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(confDir, "pyisolate-faithful.toml")); err == nil {
		t.Error("uninstall left the runtime's policy file")
	}
	if out, err := exec.Command(src, "uninstall", "--containerd-config", e.config, "--bin-dir", e.bin, "--restart=false").CombinedOutput(); err != nil {
		t.Errorf("pyisolate uninstall: %v\n%s", err, out)
	}
	backups, _ := filepath.Glob(e.config + ".pyisolate-backup-*")
	sort.Strings(backups) // the oldest, the original, first
	if len(backups) == 0 {
		t.Error("no backup of containerd's config")
	} else {
		orig, _ := os.ReadFile(backups[0])
		now, _ := os.ReadFile(e.config)
		if string(orig) != string(now) {
			t.Errorf("config after uninstall differs from the original:\n%s", now)
		}
	}
}
