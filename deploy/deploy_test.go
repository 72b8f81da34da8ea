// Package deploy holds the Kubernetes and Docker manifests of pyisolate-oci
// (k8s/, docker/). This test-only package checks them: every Kubernetes
// document is decoded strictly (unknown or duplicate fields fail) into its
// k8s.io/api type, and the values the runtime depends on are checked; the
// Docker files are checked as JSON and YAML. k8s.io/api is needed by these
// tests only.
package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pyisolate/pyisolate-oci/install"
	"github.com/pyisolate/pyisolate-oci/spec"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// documents splits a YAML stream on "---" lines and drops empty documents.
func documents(t *testing.T, path string) [][]byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var docs [][]byte
	for _, d := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(string(data), -1) {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if len(m) > 0 {
			docs = append(docs, []byte(d))
		}
	}
	return docs
}

// decodeStrict decodes one document into obj (unknown and duplicate fields
// are errors) and checks its apiVersion and kind.
func decodeStrict(t *testing.T, path string, doc []byte, apiVersion, kind string, obj any) {
	t.Helper()
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if tm.APIVersion != apiVersion || tm.Kind != kind {
		t.Fatalf("%s: %s/%s, want %s/%s", path, tm.APIVersion, tm.Kind, apiVersion, kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		t.Fatalf("%s: strict decoding as %s: %v", path, kind, err)
	}
}

func TestStrictDecodingCatchesTypos(t *testing.T) {
	var rc nodev1.RuntimeClass
	bad := []byte("apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: x}\nhandlr: pyisolate\n")
	if err := yaml.UnmarshalStrict(bad, &rc); err == nil || !strings.Contains(err.Error(), "handlr") {
		t.Fatalf("unknown field not refused: %v", err)
	}
	dup := []byte("apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: x}\nhandler: a\nhandler: b\n")
	if err := yaml.UnmarshalStrict(dup, &rc); err == nil {
		t.Fatal("duplicate field not refused")
	}
}

func TestRuntimeClass(t *testing.T) {
	path := filepath.Join("k8s", "runtimeclass.yaml")
	docs := documents(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", path, len(docs))
	}
	var rc nodev1.RuntimeClass
	decodeStrict(t, path, docs[0], "node.k8s.io/v1", "RuntimeClass", &rc)
	if rc.Name != "pyisolate" || rc.Handler != install.DefaultRuntimeName {
		t.Errorf("name %q handler %q, want pyisolate/%q", rc.Name, rc.Handler, install.DefaultRuntimeName)
	}
	if rc.Overhead == nil || rc.Overhead.PodFixed.Memory().IsZero() || rc.Overhead.PodFixed.Cpu().IsZero() {
		t.Errorf("overhead.podFixed needs memory and cpu: %+v", rc.Overhead)
	}
	if rc.Scheduling == nil || rc.Scheduling.NodeSelector["pyisolate.io/enabled"] != "true" {
		t.Errorf("scheduling.nodeSelector: %+v", rc.Scheduling)
	}
}

func TestInstallerDaemonSet(t *testing.T) {
	path := filepath.Join("k8s", "installer-daemonset.yaml")
	docs := documents(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", path, len(docs))
	}
	var ds appsv1.DaemonSet
	decodeStrict(t, path, docs[0], "apps/v1", "DaemonSet", &ds)
	spec := ds.Spec.Template.Spec
	if ds.Spec.Selector == nil || ds.Spec.Selector.MatchLabels["app.kubernetes.io/name"] == "" {
		t.Fatal("selector has no app.kubernetes.io/name")
	}
	for k, v := range ds.Spec.Selector.MatchLabels {
		if ds.Spec.Template.Labels[k] != v {
			t.Errorf("selector %s=%s does not match the template's labels", k, v)
		}
	}
	if spec.NodeSelector["pyisolate.io/enabled"] != "true" {
		t.Errorf("nodeSelector = %v", spec.NodeSelector)
	}
	if !spec.HostPID {
		t.Error("hostPID is needed to restart containerd through the host's systemd (nsenter -t 1)")
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("installer container is not privileged")
	}
	if c.Image != "pyisolate-oci:latest" {
		t.Errorf("image %q, want pyisolate-oci:latest, the image `make image` builds (cmd/pyisolate-image)", c.Image)
	}
	if c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("imagePullPolicy %q: the image is loaded on the node, not pulled (IfNotPresent)", c.ImagePullPolicy)
	}
	cmd := strings.Join(append(append([]string{}, c.Command...), c.Args...), " ")
	for _, want := range []string{"pyisolate install", "--containerd-config /host/etc/containerd/config.toml", "--bin-dir /host/usr/local/bin",
		"--driver-root /host", "--cdi-spec /var/run/cdi/pyisolate-nvidia.yaml", "--cdi-spec-dir /host/etc/cdi --cdi-spec-dir /var/run/cdi", "sleep"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("command %q lacks %q", cmd, want)
		}
	}
	// The uninstall command (run in the pod by hand, and by
	// test/k8s_chain_test.go) names the same config and bin directory.
	un := ds.Annotations["pyisolate.io/uninstall"]
	if !strings.HasPrefix(un, "pyisolate uninstall ") {
		t.Errorf("annotation pyisolate.io/uninstall = %q, want a pyisolate uninstall command", un)
	}
	for _, f := range []string{"--containerd-config", "--bin-dir", "--cdi-spec"} {
		re := regexp.MustCompile(regexp.QuoteMeta(f) + ` (\S+)`)
		a, b := re.FindStringSubmatch(cmd), re.FindStringSubmatch(un)
		if a == nil || b == nil || a[1] != b[1] {
			t.Errorf("%s differs between install (%v) and pyisolate.io/uninstall (%v)", f, a, b)
		}
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath == nil {
			t.Errorf("volume %s is not a hostPath", v.Name)
			continue
		}
		hostPaths[v.Name] = v.HostPath.Path
	}
	readOnly := map[string]bool{}
	for _, m := range c.VolumeMounts {
		readOnly[m.MountPath] = m.ReadOnly
	}
	if !readOnly["/host"] {
		t.Error("the host's root must be mounted read-only at /host (the GPU CDI spec reads driver files from it)")
	}
	for host, inPod := range map[string]string{"/usr/local/bin": "/host/usr/local/bin", "/etc/containerd": "/host/etc/containerd",
		"/": "/host", "/var/run/cdi": "/var/run/cdi"} {
		found := false
		for name, p := range hostPaths {
			if p == host && mounts[name] == inPod {
				found = true
			}
		}
		if !found {
			t.Errorf("no hostPath %s mounted at %s (volumes %v, mounts %v)", host, inPod, hostPaths, mounts)
		}
	}
}

func TestExamplePod(t *testing.T) {
	path := filepath.Join("k8s", "example-pod.yaml")
	docs := documents(t, path)
	if len(docs) != 1 {
		t.Fatalf("%s: %d documents, want 1", path, len(docs))
	}
	var pod corev1.Pod
	decodeStrict(t, path, docs[0], "v1", "Pod", &pod)
	if pod.Spec.RuntimeClassName == nil || *pod.Spec.RuntimeClassName != "pyisolate" {
		t.Fatalf("runtimeClassName = %v", pod.Spec.RuntimeClassName)
	}
	// The manifest: one pod annotation, which reaches every member.
	raw, ok := pod.Annotations[spec.AnnotationManifest]
	if !ok {
		t.Fatalf("no %s annotation", spec.AnnotationManifest)
	}
	m, err := spec.DecodeManifest([]byte(raw))
	if err != nil {
		t.Fatalf("%s: %v", spec.AnnotationManifest, err)
	}
	if _, _, err := spec.ManifestFromAnnotations(pod.Annotations); err != nil {
		t.Errorf("the pod's annotations as the shim reads them: %v", err)
	}
	if m.ModulePath != "/opt/pyisolate-oci/examples/pyisolate_demo" || !m.ShareTorch || m.Limits.ShmSize == 0 {
		t.Errorf("manifest: module_path %q share_torch %v shm_size %v", m.ModulePath, m.ShareTorch, m.Limits.ShmSize)
	}
	// The module it names is examples/demo's.
	if _, err := os.Stat(filepath.Join("..", "examples", "demo", filepath.Base(m.ModulePath), "host.py")); err != nil {
		t.Errorf("module_path %s is not examples/demo's module: %v", m.ModulePath, err)
	}
	// An extension refuses binds beyond the CRI's own (spec.ExtensionReplacedBinds):
	// no volumes, no service account token.
	if len(pod.Spec.Volumes) > 0 {
		t.Errorf("volumes %v: every member is an extension, which refuses binds", pod.Spec.Volumes)
	}
	if pod.Spec.AutomountServiceAccountToken == nil || *pod.Spec.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken must be false: the token would be a bind the extension sandbox refuses")
	}
	if pod.Spec.HostNetwork || pod.Spec.HostPID || pod.Spec.HostIPC {
		t.Error("host namespaces are refused by the sandbox")
	}
	want := map[string]string{"host": "pyisolate-oci-example-host:latest", "ext": "pyisolate-oci-example-ext:latest"}
	if len(pod.Spec.Containers) != len(want) {
		t.Fatalf("%d containers, want host and ext", len(pod.Spec.Containers))
	}
	for _, c := range pod.Spec.Containers {
		if c.Image != want[c.Name] {
			t.Errorf("container %s: image %q, want %q (built by `make image`)", c.Name, c.Image, want[c.Name])
		}
		if c.ImagePullPolicy != corev1.PullNever && c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("container %s: imagePullPolicy %q: the image is loaded on the node, not pulled", c.Name, c.ImagePullPolicy)
		}
		if len(c.VolumeMounts) > 0 {
			t.Errorf("container %s mounts volumes", c.Name)
		}
		if sc := c.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s is privileged", c.Name)
		}
	}
	// The annotations containerd must pass through to the runtime.
	for k := range pod.Annotations {
		if !slices.ContainsFunc(install.PodAnnotations, func(p string) bool { ok, _ := filepath.Match(p, k); return ok }) {
			t.Errorf("pod annotation %s is not passed to the runtime by the installer's pod_annotations %v", k, install.PodAnnotations)
		}
	}
}

func TestDockerDaemonJSON(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("docker", "daemon.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Runtimes map[string]struct {
			RuntimeType string `json:"runtimeType"`
		} `json:"runtimes"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("daemon.json: %v", err)
	}
	if got := cfg.Runtimes["pyisolate"].RuntimeType; got != install.RuntimeType {
		t.Errorf("runtimes.pyisolate.runtimeType = %q, want %q", got, install.RuntimeType)
	}
}

// TestDockerDaemonJSON2010 checks the entry for Docker < 23, which takes
// runtimes by path only: the installed pyisolate-runc link, nothing else
// (test/oci_docker_test.go runs Docker 20.10 with it).
func TestDockerDaemonJSON2010(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("docker", "daemon-20.10.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		Runtimes map[string]struct {
			Path string `json:"path"`
		} `json:"runtimes"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		t.Fatalf("daemon-20.10.json: %v", err)
	}
	if got := cfg.Runtimes["pyisolate"].Path; got != "/usr/local/bin/pyisolate-runc" {
		t.Errorf("runtimes.pyisolate.path = %q, want /usr/local/bin/pyisolate-runc (make install's link)", got)
	}
}

func TestDockerCompose(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("docker", "compose.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Services map[string]struct {
			Runtime string   `json:"runtime"`
			IPC     string   `json:"ipc"`
			Volumes []string `json:"volumes"`
		} `json:"services"`
		Volumes map[string]any `json:"volumes"`
	}
	if err := yaml.Unmarshal(data, &c); err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	want := []string{"ext-cpu", "ext-gpu", "host"}
	var got []string
	for name := range c.Services {
		got = append(got, name)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("services %v, want %v", got, want)
	}
	for name, s := range c.Services {
		if s.Runtime != "pyisolate" {
			t.Errorf("service %s: runtime %q", name, s.Runtime)
		}
		wantIPC := "service:host"
		if name == "host" {
			wantIPC = "shareable"
		}
		if s.IPC != wantIPC {
			t.Errorf("service %s: ipc %q, want %q (shared /dev/shm)", name, s.IPC, wantIPC)
		}
		if !slices.Contains(s.Volumes, "sockets:/run/pyisolate") {
			t.Errorf("service %s: volumes %v lack the sockets volume", name, s.Volumes)
		}
	}
	if _, ok := c.Volumes["sockets"]; !ok {
		t.Error("no top-level sockets volume")
	}
}
