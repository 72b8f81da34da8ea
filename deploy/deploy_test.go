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
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	"k8s.io/apimachinery/pkg/api/resource"
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
		t.Errorf("image %q, want the documented placeholder pyisolate-oci:latest", c.Image)
	}
	cmd := strings.Join(append(append([]string{}, c.Command...), c.Args...), " ")
	for _, want := range []string{"pyisolate install", "--containerd-config /host/etc/containerd/config.toml", "--bin-dir /host/usr/local/bin",
		"--driver-root /host", "--cdi-spec /var/run/cdi/pyisolate-nvidia.yaml", "--cdi-spec-dir /host/etc/cdi --cdi-spec-dir /var/run/cdi", "sleep"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("command %q lacks %q", cmd, want)
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
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Spec.Volumes {
		vols[v.Name] = v
	}
	shm, ok := vols["shm"]
	if !ok || shm.EmptyDir == nil || shm.EmptyDir.Medium != corev1.StorageMediumMemory || shm.EmptyDir.SizeLimit == nil {
		t.Fatalf("volume shm must be an emptyDir of medium Memory with a sizeLimit: %+v", shm)
	}
	if s, ok := vols["sockets"]; !ok || s.EmptyDir == nil {
		t.Fatalf("volume sockets must be an emptyDir: %+v", s)
	}
	if len(pod.Spec.Containers) != 3 {
		t.Fatalf("%d containers, want a host and two extensions", len(pod.Spec.Containers))
	}
	gpus := 0
	for _, c := range pod.Spec.Containers {
		mounts := map[string]string{}
		for _, m := range c.VolumeMounts {
			mounts[m.Name] = m.MountPath
		}
		if mounts["shm"] != "/dev/shm" || mounts["sockets"] != "/run/pyisolate" {
			t.Errorf("container %s: shm at %q, sockets at %q; want /dev/shm and /run/pyisolate", c.Name, mounts["shm"], mounts["sockets"])
		}
		if q, ok := c.Resources.Limits["nvidia.com/gpu"]; ok {
			if q.Cmp(resource.MustParse("1")) != 0 {
				t.Errorf("container %s: nvidia.com/gpu %s", c.Name, q.String())
			}
			gpus++
		}
		// Every extension has its manifest, valid JSON with its name.
		if c.Name == "comfyui" {
			continue
		}
		key := "io.pyisolate.manifest." + c.Name
		raw, ok := pod.Annotations[key]
		if !ok {
			t.Errorf("extension %s has no %s annotation", c.Name, key)
			continue
		}
		var m map[string]any
		dec := json.NewDecoder(strings.NewReader(raw))
		if err := dec.Decode(&m); err != nil {
			t.Errorf("%s: %v", key, err)
			continue
		}
		if m["name"] != c.Name || m["module_path"] == nil {
			t.Errorf("%s: name %v module_path %v", key, m["name"], m["module_path"])
		}
	}
	if gpus != 1 {
		t.Errorf("%d containers ask for nvidia.com/gpu, want 1", gpus)
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
