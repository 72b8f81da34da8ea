package test

// TestK8sChain runs the chain a Kubernetes node runs, without a cluster:
// crictl plays the kubelet against a private containerd (Debian's 1.6, then
// 2.x), offline, with the manifests of deploy/k8s read from their files:
//
//  1. `make image` builds the installer and example images (docker-archive
//     tars, no Docker engine); `ctr -n k8s.io images import` loads them.
//  2. The pod of deploy/k8s/installer-daemonset.yaml (its template: command,
//     args, privileged, hostPID, hostPath volumes and mounts) runs through
//     CRI under the default runc handler, as the kubelet would run it. Its
//     hostPath volumes point into a scratch "host" tree whose
//     etc/containerd/config.toml is the config this containerd runs with
//     and whose usr/local/bin is first on its PATH. `pyisolate install` in
//     the pod edits that config and copies the binary there.
//     The restart: the DaemonSet restarts containerd through the host's
//     systemd (nsenter -t 1 ... systemctl restart containerd). Here PID 1 is
//     not this test's containerd (and on a CI machine with systemd it would
//     be the machine's own containerd), so the test adds
//     `--restart-command "kill -TERM <containerd's pid>"` to the install
//     command: the installer itself, from inside the pod (hostPID), ends
//     the old containerd when and only when the config changed, and the
//     test starts it again on the edited config, as systemd's restart would.
//  3. The restarted containerd serves the `pyisolate` handler (crictl info),
//     and the installer pod survived the restart (its readiness probe, run
//     with crictl exec, passes).
//  4. The pod of deploy/k8s/example-pod.yaml (containers, images, env,
//     annotations, security context, runtimeClassName mapped to its handler
//     by deploy/k8s/runtimeclass.yaml) runs through CRI with the handler.
//     The extension starts first and its sandbox is checked from the host
//     while it waits for the host (capabilities, seccomp, no_new_privs, the
//     user namespace, no host paths in its root, /dev/shm the group's tmpfs
//     shared with the pod's other members and not the machine's), and a
//     process exec'd into it is checked the same way; then the host starts
//     and hands tensors across (the demo's in-place check) and both exit 0.
//     The example's module is put at the module_path its manifest names on
//     this machine (the node), and removed at the end.
//  5. The command of the DaemonSet's pyisolate.io/uninstall annotation, run
//     in the installer pod (with --restart=false: the exec's stream runs
//     through containerd, so the test restarts it after), takes the runtime
//     out: the config is the original byte for byte, the binary is gone,
//     containerd comes back without the handler.
//
// Nothing may be left: pods, containers, shims (runc's and ours), mounts,
// network namespaces, cgroups, the group's directory, the module. It needs
// root, containerd and ctr, runc, crictl (built once, see cri_test.go), Go,
// make, busybox-static, libseccomp's static library (make static), the CNI
// plugins ptp, host-local and loopback (containernetworking-plugins) and
// python3 with numpy, and skips with the reason otherwise; -short skips it.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	"sigs.k8s.io/yaml"
)

const (
	// k8sSubnet is the pod network of this test (ptp + host-local); not
	// the conformance test's.
	k8sSubnet = "10.231.78.0/24"
	// k8sCgroupParent holds every pod's cgroup (cgroupfs driver).
	k8sCgroupParent = "/pyisolate-k8s-chain"
	k8sCNIBin       = "/usr/lib/cni"
	k8sPauseImage   = "pyisolate.local/pause:1"
)

// k8sDecode reads the only document of a deploy/k8s manifest into obj,
// strictly (deploy/deploy_test.go checks the files in more detail).
func k8sDecode(t *testing.T, name string, obj any) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(ctrdRepoRoot(t), "deploy", "k8s", name))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(data, obj); err != nil {
		t.Fatalf("deploy/k8s/%s: %v", name, err)
	}
}

func TestK8sChain(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("k8s chain: needs root (containerd, privileged pods)")
	}
	if testing.Short() {
		t.Skip("k8s chain: skipped in -short mode (builds images, starts containerd)")
	}
	for _, b := range []string{"containerd", "ctr", "runc", "make", "go"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("k8s chain: %s not installed", b)
		}
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("k8s chain: no busybox (apt-get install busybox-static): the installer image's shell")
	}
	for _, p := range []string{"ptp", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(k8sCNIBin, p)); err != nil {
			t.Skipf("k8s chain: CNI plugin %s missing in %s (apt-get install containernetworking-plugins)", p, k8sCNIBin)
		}
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import numpy").CombinedOutput(); err != nil {
		t.Skipf("k8s chain: the example needs python3 with numpy on the node (apt-get install python3-numpy): %v %s", err, out)
	}
	crictl := criCrictl(t)

	// 1. The images, as `make image` builds them.
	build, err := os.MkdirTemp("", "pyi-k8s-img-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(build)
	start := time.Now()
	cmd := exec.Command("make", "--no-print-directory", "image", "IMAGE_DIR="+filepath.Join(build, "images"), "STATIC_BIN="+filepath.Join(build, "static"))
	cmd.Dir = ctrdRepoRoot(t)
	out, err := cmd.CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("libseccomp.a not found")) {
			t.Skipf("k8s chain: make image: %s", bytes.TrimSpace(out))
		}
		t.Fatalf("make image: %v\n%s", err, criTail(string(out), 3000))
	}
	t.Logf("make image (%s):\n%s", time.Since(start).Round(time.Second), k8sGrepLines(string(out), "pyisolate-image:"))
	tars := map[string]string{}
	for _, n := range []string{"pyisolate-oci", "pyisolate-oci-example-host", "pyisolate-oci-example-ext"} {
		tars[n] = filepath.Join(build, "images", n+".tar")
	}
	pauseTar := filepath.Join(build, "pause.tar")
	if err := criImageArchive(pauseTar, k8sPauseImage, criPauseLayer(t, build), []string{"/pause"}, nil); err != nil {
		t.Fatal(err)
	}
	staticBin, err := os.ReadFile(filepath.Join(build, "static", "pyisolate"))
	if err != nil {
		t.Fatal(err)
	}

	for _, v := range ctrdVersions() {
		t.Run(v.Name, func(t *testing.T) {
			if v.Skip != "" {
				t.Skip(v.Skip)
			}
			if !strings.HasSuffix(v.Name, "-1.6") {
				k8sRuncShim(t, filepath.Dir(v.Containerd))
			}
			k8sChain(t, v, crictl, append([]string{pauseTar}, tars["pyisolate-oci"], tars["pyisolate-oci-example-host"], tars["pyisolate-oci-example-ext"]), staticBin)
		})
	}
}

// k8sRuncShim builds containerd-shim-runc-v2 of the containerd 2.x release
// under test next to its containerd, once: the installer pod runs under
// runc, and containerd 2.3+ cannot start Debian's 1.6 runc shim ("start
// failed: io.containerd.runc.v2: type with url ...: not found").
func k8sRuncShim(t *testing.T, dir string) {
	t.Helper()
	bin := filepath.Join(dir, "containerd-shim-runc-v2")
	if _, err := os.Stat(bin); err == nil {
		return
	}
	t.Logf("building containerd-shim-runc-v2 %s into %s (once)", ctrdV2Version, dir)
	cmd := exec.Command("go", "install", "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@"+ctrdV2Version)
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Skipf("k8s chain: cannot build containerd-shim-runc-v2 %s for the installer pod: %v\n%s", ctrdV2Version, err, criTail(string(out), 1500))
	}
}

func k8sGrepLines(s, prefix string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// k8sEnv is the private containerd of one chain run and its "node".
type k8sEnv struct {
	*criEnv
	containerdBin string
	v2            bool
	host          string // the scratch host tree the DaemonSet's hostPaths point into
	// netns are the network namespaces containerd made for this test's
	// pods (other tests on the machine make their own: only these are
	// checked and cleaned).
	netns []string
}

// k8sBaseConfig is the node's containerd config before the installer runs:
// CRI with a CNI network (ptp + host-local: veth pairs, no bridge module)
// and, as in TestCRI, restrict_oom_score_adj (deploy/k8s/README.md, Known
// limits).
func (e *k8sEnv) baseConfig() string {
	if e.v2 {
		return fmt.Sprintf(`# the node's containerd (2.x), for pyisolate's k8s chain test
version = 3
root = %q
state = %q

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = %q
  [plugins."io.containerd.cri.v1.runtime"]
    disable_apparmor = true
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = [%q]
      conf_dir = %q
  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [plugins."io.containerd.nri.v1.nri"]
    disable = true
`, filepath.Join(e.dir, "root"), filepath.Join(e.dir, "state"), e.sock, e.sock+".ttrpc", k8sPauseImage,
			k8sCNIBin, filepath.Join(e.dir, "cni", "conf"))
	}
	return fmt.Sprintf(`# the node's containerd (1.6), for pyisolate's k8s chain test
version = 2
root = %q
state = %q

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = %q
    disable_apparmor = true
    restrict_oom_score_adj = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = %q
      conf_dir = %q
  [plugins."io.containerd.internal.v1.opt"]
    path = %q
`, filepath.Join(e.dir, "root"), filepath.Join(e.dir, "state"), e.sock, e.sock+".ttrpc", k8sPauseImage,
		k8sCNIBin, filepath.Join(e.dir, "cni", "conf"), filepath.Join(e.dir, "opt"))
}

// startContainerd starts containerd on the node's config, its PATH starting
// with the node's /usr/local/bin (where the installer puts the shim), and
// waits for CRI and its network to be ready.
func (e *k8sEnv) startContainerd(t *testing.T) {
	t.Helper()
	if err := e.start(); err != nil {
		t.Fatal(err)
	}
}

func (e *k8sEnv) start() error {
	logf, err := os.OpenFile(e.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "=== k8s chain: starting containerd %s\n", time.Now().Format(time.RFC3339Nano))
	c := exec.Command(e.containerdBin, "--config", e.config)
	c.Stdout, c.Stderr = logf, logf
	// The node's /usr/local/bin first (the installer's shim), then the
	// directory of this containerd (2.x: its runc shim, see k8sRuncShim).
	c.Env = append(os.Environ(), "PATH="+filepath.Join(e.host, "usr/local/bin")+":"+filepath.Dir(e.containerdBin)+":"+os.Getenv("PATH"))
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.Start(); err != nil {
		logf.Close()
		return err
	}
	logf.Close()
	exited := make(chan struct{})
	go func() { c.Wait(); close(exited) }()
	e.containerd, e.exited = c, exited
	deadline := time.Now().Add(90 * time.Second)
	for {
		info, err := e.crictlRun(10*time.Second, "info")
		if err == nil && strings.Contains(info, `"NetworkReady"`) && !strings.Contains(info, "cni config load failed") &&
			!strings.Contains(info, "cni plugin not initialized") {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("containerd exited:\n%s", e.logTail())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd's CRI (and its network) did not come up in 90s: %v\n%s\n%s", err, criTail(info, 2000), e.logTail())
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// waitExit waits for containerd to exit (ended by the installer pod).
func (e *k8sEnv) waitExit(t *testing.T, timeout time.Duration, why string) {
	t.Helper()
	select {
	case <-e.exited:
	case <-time.After(timeout):
		t.Fatalf("containerd did not exit within %s (%s)\ncontainerd log:\n%s", timeout, why, e.logTail())
	}
}

// stopContainerd ends containerd as systemd's restart does (SIGTERM);
// pods and their shims keep running.
func (e *k8sEnv) stopContainerd(t *testing.T) {
	t.Helper()
	e.containerd.Process.Signal(syscall.SIGTERM)
	e.waitExit(t, 30*time.Second, "after SIGTERM")
}

// shimsOfSocket lists processes whose command line names this containerd's
// socket or whose binary lies in the test's directory: runc's shims and
// ours.
func (e *k8sEnv) shimsOfSocket() []string {
	var found []string
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		if ent.Name()[0] < '0' || ent.Name()[0] > '9' {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", ent.Name(), "cmdline"))
		exe, _ := os.Readlink(filepath.Join("/proc", ent.Name(), "exe"))
		if bytes.Contains(cmdline, []byte(e.sock)) && (e.containerd == nil || ent.Name() != strconv.Itoa(e.containerd.Process.Pid)) ||
			strings.HasPrefix(exe, e.dir+"/") {
			found = append(found, ent.Name()+": "+strings.ReplaceAll(strings.TrimRight(string(cmdline), "\x00"), "\x00", " "))
		}
	}
	return found
}

func (e *k8sEnv) cleanup(t *testing.T) {
	// A run that failed while containerd was down (ended by the installer)
	// gets it back, so that the pods are removed through CRI rather than
	// their shims killed under running containers.
	if e.containerd != nil {
		select {
		case <-e.exited:
			if err := e.start(); err != nil {
				t.Logf("cleanup: restarting containerd to remove the pods: %v", err)
			}
		default:
		}
	}
	e.criEnv.cleanup(t) // pods (rmp -fa), containerd, our shims, mounts, the directory
	for _, p := range e.shimsOfSocket() {
		var pid int
		fmt.Sscanf(p, "%d:", &pid)
		if pid > 0 {
			t.Logf("cleanup: killing leftover %s", p)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for _, p := range e.netns {
		if _, err := os.Lstat(p); err == nil {
			t.Logf("cleanup: removing network namespace %s left behind", p)
			syscall.Unmount(p, syscall.MNT_DETACH)
			os.Remove(p)
		}
	}
	k8sRemoveCgroups(t)
}

// recordNetns notes the network namespace of pod id (from the sandbox's
// runtime spec that crictl inspectp shows).
func (e *k8sEnv) recordNetns(t *testing.T, id string) {
	t.Helper()
	var insp struct {
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct {
						Type string `json:"type"`
						Path string `json:"path"`
					} `json:"namespaces"`
				} `json:"linux"`
			} `json:"runtimeSpec"`
		} `json:"info"`
	}
	out := e.crictlOK(t, "inspectp", id)
	if err := json.Unmarshal([]byte(out), &insp); err != nil {
		t.Fatalf("crictl inspectp %s: %v", id, err)
	}
	for _, ns := range insp.Info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" && ns.Path != "" {
			e.netns = append(e.netns, ns.Path)
			return
		}
	}
	t.Errorf("pod %s: no network namespace path in its runtime spec", id)
}

// k8sCgroupsLeft lists the container cgroups left under the test's pod
// cgroups (the pod cgroups themselves are the kubelet's, which the test
// removes as the kubelet does).
func k8sCgroupsLeft() []string {
	var left []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*" + k8sCgroupParent)
	if fi, err := os.Stat("/sys/fs/cgroup" + k8sCgroupParent); err == nil && fi.IsDir() {
		roots = append(roots, "/sys/fs/cgroup"+k8sCgroupParent)
	}
	for _, r := range roots {
		filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
			if rel, _ := filepath.Rel(r, p); err == nil && d.IsDir() && strings.Count(rel, "/") >= 1 {
				left = append(left, p)
			}
			return nil
		})
	}
	return left
}

func k8sRemoveCgroups(t *testing.T) {
	var left []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*" + k8sCgroupParent)
	roots = append(roots, "/sys/fs/cgroup"+k8sCgroupParent)
	for _, r := range roots {
		filepath.WalkDir(r, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() && p != r {
				left = append(left, p)
			}
			return nil
		})
	}
	slices.Sort(left)
	slices.Reverse(left) // children first
	for _, p := range left {
		os.Remove(p)
	}
	for _, r := range roots {
		os.Remove(r)
	}
}

// k8sKubelet turns a pod of the manifests into CRI configs as the kubelet does,
// for the parts these pods use.
type k8sKubelet struct {
	e       *k8sEnv
	meta    map[string]any // the sandbox's metadata
	podDir  string
	pod     corev1.PodSpec
	objMeta struct {
		name, namespace, uid string
		labels, annotations  map[string]string
	}
	// hostPath maps a hostPath volume's path to where it lies on this node.
	hostPath func(string) string
}

func newK8sKubelet(e *k8sEnv, name, namespace string, labels, annotations map[string]string, spec corev1.PodSpec, hostPath func(string) string) *k8sKubelet {
	k := &k8sKubelet{e: e, pod: spec, hostPath: hostPath}
	k.objMeta.name, k.objMeta.namespace, k.objMeta.uid = name, namespace, name+"-uid"
	k.objMeta.labels, k.objMeta.annotations = labels, annotations
	k.podDir = filepath.Join(e.dir, "pods", k.objMeta.uid)
	return k
}

func (k *k8sKubelet) namespaceOptions() map[string]any {
	const pod, container, node = 0, 1, 2
	o := map[string]any{"network": pod, "pid": container, "ipc": pod}
	if k.pod.HostNetwork {
		o["network"] = node
	}
	if k.pod.ShareProcessNamespace != nil && *k.pod.ShareProcessNamespace {
		o["pid"] = pod
	}
	if k.pod.HostPID {
		o["pid"] = node
	}
	if k.pod.HostIPC {
		o["ipc"] = node
	}
	return o
}

func (k *k8sKubelet) privileged() bool {
	for _, c := range k.pod.Containers {
		if c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged {
			return true
		}
	}
	return false
}

func (k *k8sKubelet) writeJSON(t *testing.T, name string, v any) string {
	t.Helper()
	p := filepath.Join(k.podDir, name)
	b, _ := json.MarshalIndent(v, "", "  ")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// sandboxConfig writes the PodSandboxConfig.
func (k *k8sKubelet) sandboxConfig(t *testing.T) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(k.podDir, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"io.kubernetes.pod.name": k.objMeta.name, "io.kubernetes.pod.namespace": k.objMeta.namespace,
		"io.kubernetes.pod.uid": k.objMeta.uid}
	for key, v := range k.objMeta.labels {
		labels[key] = v
	}
	k.meta = map[string]any{"name": k.objMeta.name, "namespace": k.objMeta.namespace, "uid": k.objMeta.uid, "attempt": 0}
	cfg := map[string]any{
		"metadata":      k.meta,
		"hostname":      k.objMeta.name,
		"log_directory": filepath.Join(k.podDir, "logs"),
		"labels":        labels,
		"annotations":   k.objMeta.annotations,
		"linux": map[string]any{
			"cgroup_parent": k8sCgroupParent + "/pod" + k.objMeta.uid,
			"security_context": map[string]any{
				"namespace_options": k.namespaceOptions(),
				"privileged":        k.privileged(),
			},
		},
	}
	if k.pod.HostNetwork {
		delete(cfg, "hostname")
	}
	return k.writeJSON(t, "sandbox.json", cfg)
}

// containerConfig writes the ContainerConfig of container c; args replaces
// the container's args when not nil.
func (k *k8sKubelet) containerConfig(t *testing.T, c corev1.Container, args []string) string {
	t.Helper()
	if args == nil {
		args = c.Args
	}
	vols := map[string]corev1.Volume{}
	for _, v := range k.pod.Volumes {
		vols[v.Name] = v
	}
	var mounts []map[string]any
	for _, m := range c.VolumeMounts {
		v, ok := vols[m.Name]
		if !ok {
			t.Fatalf("container %s mounts unknown volume %s", c.Name, m.Name)
		}
		var src string
		switch {
		case v.HostPath != nil:
			src = k.hostPath(v.HostPath.Path)
			if v.HostPath.Type != nil && *v.HostPath.Type == corev1.HostPathDirectoryOrCreate {
				if err := os.MkdirAll(src, 0o755); err != nil {
					t.Fatal(err)
				}
			}
		case v.EmptyDir != nil:
			src = filepath.Join(k.podDir, "volumes", v.Name)
			if err := os.MkdirAll(src, 0o777); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("volume %s: only hostPath and emptyDir are played here", v.Name)
		}
		mounts = append(mounts, map[string]any{"container_path": m.MountPath, "host_path": src, "readonly": m.ReadOnly})
	}
	// The kubelet's own files: the termination log, and /etc/hosts in pods
	// on the pod network.
	termLog := filepath.Join(k.podDir, "containers", c.Name, "termination-log")
	os.MkdirAll(filepath.Dir(termLog), 0o755)
	os.WriteFile(termLog, nil, 0o666)
	path := c.TerminationMessagePath
	if path == "" {
		path = corev1.TerminationMessagePathDefault
	}
	mounts = append(mounts, map[string]any{"container_path": path, "host_path": termLog})
	if !k.pod.HostNetwork {
		hosts := filepath.Join(k.podDir, "etc-hosts")
		os.WriteFile(hosts, []byte("127.0.0.1\tlocalhost\n::1\tlocalhost\n"), 0o644)
		mounts = append(mounts, map[string]any{"container_path": "/etc/hosts", "host_path": hosts})
	}
	var envs []map[string]any
	for _, ev := range c.Env {
		if ev.ValueFrom != nil {
			t.Fatalf("container %s: env %s: valueFrom is not played here", c.Name, ev.Name)
		}
		envs = append(envs, map[string]any{"key": ev.Name, "value": ev.Value})
	}
	sc := map[string]any{"namespace_options": k.namespaceOptions()}
	if s := c.SecurityContext; s != nil {
		if s.Privileged != nil {
			sc["privileged"] = *s.Privileged
		}
		if s.ReadOnlyRootFilesystem != nil {
			sc["readonly_rootfs"] = *s.ReadOnlyRootFilesystem
		}
		if s.AllowPrivilegeEscalation != nil && !*s.AllowPrivilegeEscalation {
			sc["no_new_privs"] = true
		}
		if s.Capabilities != nil {
			caps := map[string]any{}
			var add, drop []string
			for _, cp := range s.Capabilities.Add {
				add = append(add, string(cp))
			}
			for _, cp := range s.Capabilities.Drop {
				drop = append(drop, string(cp))
			}
			caps["add_capabilities"], caps["drop_capabilities"] = add, drop
			sc["capabilities"] = caps
		}
	}
	res := map[string]any{}
	if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
		res["memory_limit_in_bytes"] = q.Value()
	}
	if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
		shares := q.MilliValue() * 1024 / 1000
		if shares < 2 {
			shares = 2
		}
		res["cpu_shares"] = shares
	}
	cfg := map[string]any{
		"metadata":    map[string]any{"name": c.Name, "attempt": 0},
		"image":       map[string]any{"image": c.Image},
		"command":     c.Command,
		"args":        args,
		"working_dir": c.WorkingDir,
		"envs":        envs,
		"mounts":      mounts,
		"labels":      map[string]string{"io.kubernetes.container.name": c.Name, "io.kubernetes.pod.name": k.objMeta.name},
		"log_path":    filepath.Join(c.Name, "0.log"),
		"linux":       map[string]any{"resources": res, "security_context": sc},
	}
	return k.writeJSON(t, "container-"+c.Name+".json", cfg)
}

// k8sState is a container's state and exit code, from crictl inspect.
func (e *k8sEnv) containerState(t *testing.T, id string) (string, int, int) {
	t.Helper()
	out := e.crictlOK(t, "inspect", id)
	var st struct {
		Status struct {
			State    string `json:"state"`
			ExitCode int    `json:"exitCode"`
		} `json:"status"`
		Info struct {
			Pid int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("crictl inspect %s: %v\n%s", id, err, out)
	}
	return st.Status.State, st.Status.ExitCode, st.Info.Pid
}

func (e *k8sEnv) waitState(t *testing.T, id, want string, timeout time.Duration) (int, int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		st, code, pid := e.containerState(t, id)
		if st == want {
			return code, pid
		}
		if time.Now().After(deadline) {
			logs, _ := e.crictlRun(30*time.Second, "logs", id)
			t.Fatalf("container %s: state %s after %s, want %s\nlogs:\n%s\ncontainerd log:\n%s", id, st, timeout, want, criTail(logs, 3000), e.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func k8sChain(t *testing.T, v ctrdVersion, crictl string, tarballs []string, staticBin []byte) {
	began := time.Now()
	dir, err := os.MkdirTemp("", "pyi-k8s-")
	if err != nil {
		t.Fatal(err)
	}
	host := filepath.Join(dir, "host")
	e := &k8sEnv{
		criEnv: &criEnv{dir: dir, bin: filepath.Join(host, "usr/local/bin"), config: filepath.Join(host, "etc/containerd/config.toml"),
			sock: filepath.Join(dir, "c.sock"), crictl: crictl, ctr: v.Ctr, log: filepath.Join(dir, "containerd.log")},
		containerdBin: v.Containerd, v2: !strings.HasSuffix(v.Name, "-1.6"), host: host,
	}
	t.Cleanup(func() { e.cleanup(t) })
	for _, d := range []string{"root", "state", "cni/conf", "cni/ipam", "pods", "host/etc/containerd", "host/usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conflist := fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "pyisolate-k8s-chain",
  "plugins": [
    {"type": "ptp", "ipMasq": false,
     "ipam": {"type": "host-local", "subnet": %q, "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}}
  ]
}
`, k8sSubnet, filepath.Join(dir, "cni/ipam"))
	if err := os.WriteFile(filepath.Join(dir, "cni/conf", "10-pyisolate-k8s-chain.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	original := e.baseConfig()
	if err := os.WriteFile(e.config, []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	e.startContainerd(t)
	for _, tb := range tarballs {
		out, err := e.ctrRun("images", "import", tb)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("ctr -n k8s.io images import %s: %s", filepath.Base(tb), out)
	}
	if info := e.crictlOK(t, "info"); strings.Contains(info, "io.containerd.pyisolate.v1") {
		t.Fatalf("the node serves pyisolate before the installer ran:\n%s", info)
	}

	// 2. The installer DaemonSet's pod, under the default handler (runc).
	var ds appsv1.DaemonSet
	k8sDecode(t, "installer-daemonset.yaml", &ds)
	tpl := ds.Spec.Template
	if len(tpl.Spec.Containers) != 1 {
		t.Fatalf("installer: %d containers", len(tpl.Spec.Containers))
	}
	ic := tpl.Spec.Containers[0]
	if len(ic.Args) != 1 || strings.Count(ic.Args[0], "pyisolate install ") != 1 {
		t.Fatalf("installer args %q: want one shell command with one `pyisolate install`", ic.Args)
	}
	restartCmd := fmt.Sprintf("kill -TERM %d", e.containerd.Process.Pid)
	args := []string{strings.Replace(ic.Args[0], "pyisolate install ", "pyisolate install --restart-command '"+restartCmd+"' ", 1)}
	nodePath := func(p string) string { return filepath.Join(host, p) }
	ik := newK8sKubelet(e, ds.Name+"-node1", ds.Namespace, tpl.Labels, tpl.Annotations, tpl.Spec, nodePath)
	isb := ik.sandboxConfig(t)
	ipod := e.crictlOK(t, "runp", isb)
	e.recordNetns(t, ipod)
	icid := e.crictlOK(t, "create", "--no-pull", ipod, ik.containerConfig(t, ic, args), isb)
	e.crictlOK(t, "start", icid)
	// The installer ends this containerd once the config is written.
	e.waitExit(t, 2*time.Minute, "the installer pod should have restarted it: "+restartCmd)
	cfg, _ := os.ReadFile(e.config)
	if !strings.HasPrefix(string(cfg), original) || !strings.Contains(string(cfg), `runtime_type = "io.containerd.pyisolate.v1"`) {
		t.Fatalf("config after the installer:\n%s", cfg)
	}
	if b, err := os.ReadFile(filepath.Join(e.bin, "pyisolate")); err != nil || !bytes.Equal(b, staticBin) {
		t.Errorf("node's /usr/local/bin/pyisolate is not the image's static binary (%v)", err)
	}
	if l, err := os.Readlink(filepath.Join(e.bin, "containerd-shim-pyisolate-v1")); err != nil || l != "pyisolate" {
		t.Errorf("shim link: %q %v", l, err)
	}
	if m, _ := filepath.Glob(e.config + ".pyisolate-backup-*"); len(m) != 1 {
		t.Errorf("backups of the config: %q", m)
	}

	// 3. containerd restarted on the edited config serves the handler; the
	// installer pod survived the restart and is ready.
	e.startContainerd(t)
	if info := e.crictlOK(t, "info"); !strings.Contains(info, `"io.containerd.pyisolate.v1"`) {
		t.Fatalf("crictl info after the restart shows no pyisolate runtime:\n%s", criTail(info, 4000))
	}
	if st, _, _ := e.containerState(t, icid); st != "CONTAINER_RUNNING" {
		t.Fatalf("installer container %s after containerd's restart", st)
	}
	logs := e.crictlOK(t, "logs", icid)
	t.Logf("installer pod's log:\n%s", logs)
	if !strings.Contains(logs, "restarted containerd: "+restartCmd) {
		t.Errorf("installer log does not say it restarted containerd")
	}
	if p := tpl.Spec.Containers[0].ReadinessProbe; p == nil || p.Exec == nil {
		t.Error("installer has no exec readiness probe")
	} else if out, err := e.crictlRun(time.Minute, append([]string{"exec", icid}, p.Exec.Command...)...); err != nil {
		t.Errorf("readiness probe %q: %v %s", p.Exec.Command, err, out)
	}

	// 4. The example pod with the handler of its RuntimeClass.
	var rc nodev1.RuntimeClass
	k8sDecode(t, "runtimeclass.yaml", &rc)
	var pod corev1.Pod
	k8sDecode(t, "example-pod.yaml", &pod)
	if pod.Spec.RuntimeClassName == nil || *pod.Spec.RuntimeClassName != rc.Name {
		t.Fatalf("example pod's runtimeClassName %v, RuntimeClass %s", pod.Spec.RuntimeClassName, rc.Name)
	}
	k8sPlaceModule(t, pod.Annotations["io.pyisolate.manifest"])
	ek := newK8sKubelet(e, pod.Name, "default", pod.Labels, pod.Annotations, pod.Spec, func(p string) string {
		t.Fatalf("example pod: hostPath %s", p)
		return ""
	})
	esb := ek.sandboxConfig(t)
	epod := e.crictlOK(t, "runp", "--runtime", rc.Handler, esb)
	e.recordNetns(t, epod)
	var inspP struct {
		Status struct {
			RuntimeHandler string `json:"runtimeHandler"` // CRI's PodSandboxStatus
		} `json:"status"`
		Info struct {
			Pid int `json:"pid"`
		} `json:"info"`
	}
	if err := json.Unmarshal([]byte(e.crictlOK(t, "inspectp", epod)), &inspP); err != nil {
		t.Fatal(err)
	}
	if inspP.Status.RuntimeHandler != rc.Handler || inspP.Info.Pid == 0 {
		t.Errorf("example pod: handler %q pid %d", inspP.Status.RuntimeHandler, inspP.Info.Pid)
	}
	ids := map[string]string{}
	for _, c := range pod.Spec.Containers {
		ids[c.Name] = e.crictlOK(t, "create", "--no-pull", epod, ek.containerConfig(t, c, nil), esb)
	}
	if len(ids) != 2 || ids["host"] == "" || ids["ext"] == "" {
		t.Fatalf("example pod's containers %v: want host and ext", ids)
	}
	e.crictlOK(t, "start", ids["ext"])
	_, extPid := e.waitState(t, ids["ext"], "CONTAINER_RUNNING", time.Minute)
	k8sCheckSandbox(t, fmt.Sprintf("ext (pid %d)", extPid), extPid)
	k8sCheckSharedShm(t, extPid, inspP.Info.Pid)
	// The group, named by the manifest, lives in the shim's state root.
	groupDir := "/run/pyisolate-containerd/k8s.io/groups/" + k8sManifestGroup(t, pod.Annotations["io.pyisolate.manifest"])
	if _, err := os.Stat(groupDir); err != nil {
		t.Errorf("the pod's group directory: %v", err)
	}
	// A process exec'd into the extension (kubectl exec) is in the sandbox too.
	execOut, err := e.crictlRun(time.Minute, "exec", ids["ext"], "/usr/bin/python3", "-c",
		"import os; print(open('/proc/self/status').read()); print('ROOT', sorted(os.listdir('/')))")
	if err != nil {
		t.Errorf("crictl exec into ext: %v", err)
	} else {
		k8sCheckStatus(t, "exec in ext", execOut)
	}
	e.crictlOK(t, "start", ids["host"])
	code, _ := e.waitState(t, ids["host"], "CONTAINER_EXITED", 2*time.Minute)
	hostLog := e.crictlOK(t, "logs", ids["host"])
	t.Logf("host's log:\n%s", hostLog)
	if code != 0 || !strings.Contains(hostLog, `{"result": "ok"`) || strings.Contains(hostLog, `"in_place": false`) {
		extLog, _ := e.crictlRun(time.Minute, "logs", ids["ext"])
		t.Fatalf("host exited %d, no in-place hand-off\next's log:\n%s\ncontainerd log:\n%s", code, extLog, e.logTail())
	}
	if code, _ := e.waitState(t, ids["ext"], "CONTAINER_EXITED", time.Minute); code != 0 {
		extLog, _ := e.crictlRun(time.Minute, "logs", ids["ext"])
		t.Errorf("ext exited %d:\n%s", code, extLog)
	}
	for _, id := range ids {
		e.crictlOK(t, "rm", id)
	}
	e.crictlOK(t, "stopp", epod)
	e.crictlOK(t, "rmp", epod)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(groupDir); err != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := os.Stat(groupDir); err == nil {
		t.Errorf("the group's directory is left after the pod was removed")
	}

	// 5. The DaemonSet's uninstall command, in its pod.
	un := ds.Annotations["pyisolate.io/uninstall"]
	if !strings.HasPrefix(un, "pyisolate uninstall ") {
		t.Fatalf("DaemonSet annotation pyisolate.io/uninstall = %q", un)
	}
	out, err := e.crictlRun(2*time.Minute, "exec", icid, "/bin/sh", "-c", un+" --restart=false")
	t.Logf("uninstall in the installer pod: %v\n%s", err, out)
	if err != nil {
		t.Fatalf("uninstall: %v", err)
	}
	if now, _ := os.ReadFile(e.config); string(now) != original {
		t.Errorf("config after uninstall is not the original:\n%s", now)
	}
	for _, f := range []string{"pyisolate", "containerd-shim-pyisolate-v1"} {
		if _, err := os.Lstat(filepath.Join(e.bin, f)); err == nil {
			t.Errorf("uninstall left /usr/local/bin/%s on the node", f)
		}
	}
	e.stopContainerd(t)
	e.startContainerd(t)
	if info := e.crictlOK(t, "info"); strings.Contains(info, "io.containerd.pyisolate.v1") {
		t.Errorf("crictl info after uninstall still shows the pyisolate runtime")
	}
	e.crictlOK(t, "stop", "--timeout", "5", icid)
	e.crictlOK(t, "rm", icid)
	e.crictlOK(t, "stopp", ipod)
	e.crictlOK(t, "rmp", ipod)

	// Nothing left.
	if out := e.crictlOK(t, "pods", "-q"); out != "" {
		t.Errorf("pods left: %s", out)
	}
	// stdout only: ctr 2.x warns on stderr that cgroup v1 is deprecated.
	if out, err := exec.Command(e.ctr, "--address", e.sock, "-n", "k8s.io", "tasks", "ls", "-q").Output(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("tasks left: %q %v", out, err)
	}
	deadline = time.Now().Add(10 * time.Second)
	for len(e.shimsOfSocket()) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if s := e.shimsOfSocket(); len(s) > 0 {
		t.Errorf("processes left: %q", s)
	}
	if m := e.criMounts(); len(m) > 0 {
		t.Errorf("mounts left: %q", m)
	}
	for _, p := range e.netns {
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("network namespace left: %s", p)
		}
	}
	if c := k8sCgroupsLeft(); len(c) > 0 {
		t.Errorf("container cgroups left: %q", c)
	}
	t.Logf("chain on %s: %s", v.Name, time.Since(began).Round(time.Second))
}

// k8sPlaceModule puts examples/demo's module where the pod's manifest names
// it on the node (this machine), and removes it at the end. A directory
// already there is used only when it holds the same files.
func k8sPlaceModule(t *testing.T, manifest string) {
	t.Helper()
	var m struct {
		ModulePath string `json:"module_path"`
	}
	if err := json.Unmarshal([]byte(manifest), &m); err != nil || !filepath.IsAbs(m.ModulePath) {
		t.Fatalf("example pod's io.pyisolate.manifest: module_path %q %v", m.ModulePath, err)
	}
	src := filepath.Join(ctrdRepoRoot(t), "examples", "demo", filepath.Base(m.ModulePath))
	files, err := filepath.Glob(filepath.Join(src, "*.py"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no example module at %s for module_path %s", src, m.ModulePath)
	}
	if _, err := os.Stat(m.ModulePath); err == nil {
		for _, f := range files {
			a, _ := os.ReadFile(f)
			b, err := os.ReadFile(filepath.Join(m.ModulePath, filepath.Base(f)))
			if err != nil || !bytes.Equal(a, b) {
				t.Skipf("k8s chain: %s exists on this machine with other files; not touching it", m.ModulePath)
			}
		}
		return
	}
	// The topmost directory made here is removed at the end.
	top := m.ModulePath
	for {
		parent := filepath.Dir(top)
		if _, err := os.Stat(parent); err == nil {
			break
		}
		top = parent
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	if err := os.MkdirAll(m.ModulePath, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, _ := os.ReadFile(f)
		if err := os.WriteFile(filepath.Join(m.ModulePath, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// k8sManifestGroup is the group of a manifest: group, else name.
func k8sManifestGroup(t *testing.T, manifest string) string {
	t.Helper()
	var m struct{ Name, Group string }
	if err := json.Unmarshal([]byte(manifest), &m); err != nil {
		t.Fatal(err)
	}
	if m.Group != "" {
		return m.Group
	}
	return m.Name
}

// k8sCheckStatus checks /proc/PID/status text: no capability, seccomp
// filtering, no_new_privs.
func k8sCheckStatus(t *testing.T, who, status string) {
	t.Helper()
	for _, want := range []string{"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
		"CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(status, want) {
			t.Errorf("%s: /proc/self/status lacks %q:\n%s", who, want, status)
		}
	}
}

// k8sCheckSandbox checks a member's sandbox from the host: status, user
// namespace, and what its root holds.
func k8sCheckSandbox(t *testing.T, who string, pid int) {
	t.Helper()
	proc := fmt.Sprintf("/proc/%d", pid)
	status, err := os.ReadFile(proc + "/status")
	if err != nil {
		t.Fatalf("%s: %v", who, err)
	}
	k8sCheckStatus(t, who, string(status))
	uidMap, _ := os.ReadFile(proc + "/uid_map")
	if f := strings.Fields(string(uidMap)); len(f) != 3 || f[0] != "0" || f[1] == "0" {
		t.Errorf("%s: uid_map %q: want container root mapped to an unprivileged host id", who, uidMap)
	}
	root := proc + "/root"
	for _, p := range []string{"/home", "/root", "/var", "/srv", "/mnt", "/etc/shadow", "/etc/containerd", "/etc/kubernetes",
		"/run/containerd", "/run/pyisolate-containerd", "/var/run/netns"} {
		if _, err := os.Lstat(root + p); err == nil {
			t.Errorf("%s: %s is visible in the sandbox", who, p)
		}
	}
	ents, _ := os.ReadDir(root + "/etc")
	for _, ent := range ents {
		if !slices.Contains([]string{"ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "ssl", "ca-certificates", "passwd",
			"group", "nsswitch.conf", "hosts", "resolv.conf", "localtime", "hostname"}, ent.Name()) {
			t.Errorf("%s: /etc/%s is visible in the sandbox (not in the allow list)", who, ent.Name())
		}
	}
	mi, _ := os.ReadFile(proc + "/mountinfo")
	for _, l := range strings.Split(string(mi), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 {
			continue
		}
		if f[4] == "/" && !strings.HasPrefix(f[5], "ro") {
			t.Errorf("%s: root is not read-only: %s", who, l)
		}
	}
	// The tensor hand-off's socket directory and shm are there.
	for _, p := range []string{"/dev/shm", "/run/pyisolate"} {
		if fi, err := os.Stat(root + p); err != nil || !fi.IsDir() {
			t.Errorf("%s: %s missing: %v", who, p, err)
		}
	}
}

// k8sCheckSharedShm checks that two members' /dev/shm is one tmpfs, and not
// the machine's.
func k8sCheckSharedShm(t *testing.T, a, b int) {
	t.Helper()
	var sa, sb, sh syscall.Stat_t
	var fs syscall.Statfs_t
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/root/dev/shm", a), &sa); err != nil {
		t.Fatalf("stat ext's /dev/shm: %v", err)
	}
	if err := syscall.Stat(fmt.Sprintf("/proc/%d/root/dev/shm", b), &sb); err != nil {
		t.Fatalf("stat pause's /dev/shm: %v", err)
	}
	if err := syscall.Statfs(fmt.Sprintf("/proc/%d/root/dev/shm", a), &fs); err != nil || fs.Type != 0x01021994 {
		t.Errorf("ext's /dev/shm is not a tmpfs (%x, %v)", fs.Type, err)
	}
	syscall.Stat("/dev/shm", &sh)
	if sa.Dev != sb.Dev || sa.Ino != sb.Ino {
		t.Errorf("ext's and the pod's pause's /dev/shm differ (dev %d/%d): not one group", sa.Dev, sb.Dev)
	}
	if sa.Dev == sh.Dev {
		t.Error("ext's /dev/shm is the machine's")
	}
	// The group's tmpfs is sized by the manifest's limits.shm_size (256Mi).
	if got := int64(fs.Blocks) * fs.Bsize; got != 256<<20 {
		t.Errorf("group /dev/shm size %d, want 256Mi (limits.shm_size)", got)
	}
}
