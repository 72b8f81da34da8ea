package test

// The images critest (cri-tools v1.37.0, pkg/validate and pkg/framework)
// pulls, built offline and served by an in-process registry on 127.0.0.1.
//
// Every image is busybox-static (all applets linked) with the /etc/passwd
// and /etc/group of the busybox image, plus what the specs look at:
//
//   - registry.k8s.io/e2e-test-images/busybox:1.29-2: the default container.
//   - .../nginx:1.14-2 and gcr.io/k8s-staging-cri-tools/hostnet-nginx-amd64:
//     a static Go web server as /usr/sbin/nginx answering 200 on port 80
//     (12003 for hostnet-nginx), writing /var/run/nginx.pid and re-executing
//     itself as "nginx: master process ..." (the PID-namespace specs read
//     /proc/1/cmdline and `pidof nginx`).
//   - .../httpd:2.4.39-4: the same server as /usr/local/bin/httpd on port 80,
//     logging a line with "httpd".
//   - .../nonewprivs:1.3: a setuid-root program printing "Effective uid: N",
//     run as user 1000.
//   - test-image-user-{uid,username,uid-group,username-group}: USER 1002,
//     www-data, 1003:1004, www-data:1004.
//   - test-image-predefined-group: USER 1000, in group 50000 in /etc/group.
//   - test-image-{1,2,3,latest}, test-image-tag:{test,all} and
//     test-image-tags:{1,2,3}: busybox plus a file named after the image (the
//     upstream Dockerfile's `ADD ${TEST} ${TEST}`), so that different names
//     are different images and the three test-image-tags tags one image.
//   - registry.k8s.io/pause:3.9 and k8s.gcr.io/pause:3.9 (one image, two
//     registries) and the sandbox image registry.k8s.io/pause:3.6 (a
//     different image, so removing pause:3.9 by id leaves the sandbox image).
//
// test-image-digest@sha256:9700f9a2... cannot be built: its digest pins the
// upstream bytes. That spec is skipped by name (see confSkips).

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// confFile is one entry of a layer: a directory (mode has os.ModeDir), a
// symlink (link set), a hard link to another entry (hard set) or a regular
// file owned by uid:gid with the full mode (setuid included).
type confFile struct {
	mode     os.FileMode
	data     []byte
	link     string
	hard     string
	uid, gid int
}

// confLayer returns an uncompressed layer tar; parent directories are added.
func confLayer(files map[string]confFile) []byte {
	all := map[string]confFile{}
	for p, f := range files {
		all[p] = f
		for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
			if _, ok := all[d]; !ok {
				all[d] = confFile{mode: os.ModeDir | 0o755}
			}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	// Parents before children; hard links after every other entry, so that
	// their targets come first.
	sort.SliceStable(names, func(i, j int) bool {
		hi, hj := all[names[i]].hard != "", all[names[j]].hard != ""
		if hi != hj {
			return hj
		}
		return names[i] < names[j]
	})
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	for _, p := range names {
		f := all[p]
		mode := int64(f.mode.Perm())
		if f.mode&os.ModeSetuid != 0 {
			mode |= 0o4000
		}
		if f.mode&os.ModeSticky != 0 {
			mode |= 0o1000
		}
		h := &tar.Header{Name: p, ModTime: mtime, Mode: mode, Uid: f.uid, Gid: f.gid, Format: tar.FormatPAX}
		switch {
		case f.mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
		case f.link != "":
			h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, f.link, 0o777
		case f.hard != "":
			h.Typeflag, h.Linkname = tar.TypeLink, f.hard
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.data))
		}
		tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			tw.Write(f.data)
		}
	}
	tw.Close()
	return buf.Bytes()
}

// confWebSource is the one static Go program behind the web servers, the
// no-new-privileges probe and the pause image; it acts on the name it is
// installed under.
const confWebSource = `package main

import (
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

func serve(port, who string) {
	fmt.Fprintf(os.Stderr, "%s: serving on :%s\n", who, port)
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "<html><body>%s on :%s</body></html>\n", who, port)
	})
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", who, err)
		os.Exit(1)
	}
}

func main() {
	exe, _ := os.Executable()
	switch filepath.Base(exe) {
	case "nginx":
		if !strings.HasPrefix(os.Args[0], "nginx: master process") {
			// nginx's own process title, which the PID namespace specs read
			// in /proc/1/cmdline.
			err := syscall.Exec(exe, []string{"nginx: master process nginx -g daemon off;"}, os.Environ())
			fmt.Fprintln(os.Stderr, "nginx: re-exec:", err)
			os.Exit(1)
		}
		os.MkdirAll("/var/run", 0o755)
		if err := os.WriteFile("/var/run/nginx.pid", []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "nginx:", err)
		}
		port := os.Getenv("NGINX_PORT")
		if port == "" {
			port = "80"
		}
		serve(port, "nginx")
	case "httpd":
		serve("80", "httpd")
	case "nnp":
		fmt.Printf("Effective uid: %d\n", os.Geteuid())
	default: // pause
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
	}
}
`

// confPrograms builds confWebSource (static) into dir and returns its bytes.
func confPrograms(t *testing.T, dir string) []byte {
	t.Helper()
	src := filepath.Join(dir, "web-src")
	os.MkdirAll(src, 0o755)
	os.WriteFile(filepath.Join(src, "main.go"), []byte(confWebSource), 0o644)
	os.WriteFile(filepath.Join(src, "go.mod"), []byte("module confweb\n\ngo 1.21\n"), 0o644)
	bin := filepath.Join(src, "web")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", bin, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the image programs: %v\n%s", err, out)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// confIpcs is `ipcs -m` for the HostIpc specs: the segments with their ids.
const confIpcs = `#!/bin/sh
echo '------ Shared Memory Segments --------'
cat /proc/sysvipc/shm
`

// confPgrep is `pgrep NAME`: the pids whose command name contains NAME.
const confPgrep = `#!/bin/sh
found=1
for d in /proc/[0-9]*; do
	read -r comm < "$d/comm" 2>/dev/null || continue
	case "$comm" in *"$1"*) echo "${d#/proc/}"; found=0 ;; esac
done
exit $found
`

const confPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
`

const confGroup = `root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
lp:x:7:
mail:x:8:
kmem:x:9:
wheel:x:10:root
cdrom:x:11:
dialout:x:18:
floppy:x:19:
video:x:28:
audio:x:29:
tape:x:32:
www-data:x:33:
operator:x:37:
utmp:x:43:
plugdev:x:46:
staff:x:50:
lock:x:54:
netdev:x:82:
users:x:100:
nogroup:x:65534:
`

// confBusyboxDeb is where scripts/install-deps.sh unpacks Debian's dynamic
// busybox package (`apt-get download busybox`; it conflicts with
// busybox-static, so it is not installed). Its shell is not "standalone":
// `sh -c ls` execs /bin/ls, as in the busybox image critest expects, so
// masking /bin/ls (the MaskedPaths spec) is seen. Debian's busybox-static
// runs applets inside the shell and would make that spec fail everywhere.
const confBusyboxDeb = criCacheDir + "/busybox-deb"

// confBusyboxStandalone is set when only busybox-static was found.
var confBusyboxStandalone bool

// confBusyboxFiles returns a busybox tree: the binary (with its shared
// libraries for the dynamic one), a hard link for every applet it has (as
// in the busybox image: masking /bin/ls must not mask busybox itself),
// passwd and group, and shell versions of `ipcs` and `pgrep`, which
// Debian's busybox builds lack.
func confBusyboxFiles(t *testing.T) map[string]confFile {
	t.Helper()
	files := map[string]confFile{}
	path := filepath.Join(confBusyboxDeb, "bin", "busybox")
	data, err := os.ReadFile(path)
	if err == nil {
		// Its libraries, from the host (the package is this host's).
		out, lerr := exec.Command("ldd", path).Output()
		if lerr != nil {
			t.Fatalf("ldd %s: %v", path, lerr)
		}
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			var lib string
			switch {
			case len(f) >= 3 && f[1] == "=>":
				lib = f[2]
			case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
				lib = f[0]
			default:
				continue
			}
			b, rerr := os.ReadFile(lib) // follows the links to the real file
			if rerr != nil {
				t.Fatalf("library of %s: %v", path, rerr)
			}
			files[strings.TrimPrefix(lib, "/")] = confFile{mode: 0o755, data: b}
		}
	} else {
		confBusyboxStandalone = true
		for _, p := range []string{"/usr/bin/busybox", "/bin/busybox"} {
			out, err := exec.Command("file", "-L", p).Output()
			if b, rerr := os.ReadFile(p); rerr == nil && (err != nil || bytes.Contains(out, []byte("statically linked")) || bytes.Contains(out, []byte("static-pie"))) {
				path, data = p, b
				break
			}
		}
		if data == nil {
			t.Skip("conformance: no busybox (scripts/install-deps.sh unpacks Debian's busybox into " + confBusyboxDeb + "; or apt-get install busybox-static)")
		}
		t.Logf("conformance: %s missing, using busybox-static, whose shell runs applets itself: the MaskedPaths spec is skipped (run scripts/install-deps.sh)", confBusyboxDeb)
	}
	list, err := exec.Command(path, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for p, f := range map[string]confFile{
		"bin/busybox": {mode: 0o755, data: data},
		"etc/passwd":  {mode: 0o644, data: []byte(confPasswd)},
		"etc/group":   {mode: 0o644, data: []byte(confGroup)},
		"bin/ipcs":    {mode: 0o755, data: []byte(confIpcs)},
		"bin/pgrep":   {mode: 0o755, data: []byte(confPgrep)},
		"tmp":         {mode: os.ModeDir | os.ModeSticky | 0o777},
		"root":        {mode: os.ModeDir | 0o700},
		"home":        {mode: os.ModeDir | 0o755},
		"var/www":     {mode: os.ModeDir | 0o755},
		"var/run":     {mode: os.ModeDir | 0o755},
		"proc":        {mode: os.ModeDir | 0o555},
		"sys":         {mode: os.ModeDir | 0o555},
		"dev":         {mode: os.ModeDir | 0o755},
		"etc/hosts":   {mode: 0o644, data: []byte("127.0.0.1 localhost\n")},
	} {
		files[p] = f
	}
	for _, a := range strings.Fields(string(list)) {
		if _, ok := files["bin/"+a]; ok {
			continue
		}
		// The mode matters: unpacking applies it to the shared inode.
		files["bin/"+a] = confFile{hard: "bin/busybox", mode: 0o755}
	}
	return files
}

// confImage is one image: its layers (uncompressed tars) and config.
type confImage struct {
	refs       []string // registry/repo:tag
	layers     [][]byte
	entrypoint []string
	cmd        []string
	user       string
	env        []string
	labels     map[string]string
}

// confImages returns every image critest asks for.
func confImages(t *testing.T, dir string) []confImage {
	t.Helper()
	bb := confBusyboxFiles(t)
	base := confLayer(bb)
	prog := confPrograms(t, dir)
	with := func(files map[string]confFile) []byte { return confLayer(files) }
	const e2e = "registry.k8s.io/e2e-test-images/"
	const staging = "gcr.io/k8s-staging-cri-tools/"
	sh := []string{"sh"}
	var imgs []confImage
	add := func(img confImage) { imgs = append(imgs, img) }

	add(confImage{refs: []string{e2e + "busybox:1.29-2"}, layers: [][]byte{base}, cmd: sh})
	add(confImage{refs: []string{e2e + "nginx:1.14-2"}, layers: [][]byte{base, with(map[string]confFile{"usr/sbin/nginx": {mode: 0o755, data: prog}})},
		entrypoint: []string{"/usr/sbin/nginx"}})
	add(confImage{refs: []string{staging + "hostnet-nginx-" + runtime.GOARCH + ":latest"}, layers: [][]byte{base, with(map[string]confFile{"usr/sbin/nginx": {mode: 0o755, data: prog}})},
		entrypoint: []string{"/usr/sbin/nginx"}, env: []string{"NGINX_PORT=12003"}})
	add(confImage{refs: []string{e2e + "httpd:2.4.39-4"}, layers: [][]byte{base, with(map[string]confFile{"usr/local/bin/httpd": {mode: 0o755, data: prog}})},
		entrypoint: []string{"/usr/local/bin/httpd"}})
	add(confImage{refs: []string{e2e + "nonewprivs:1.3"}, layers: [][]byte{base, with(map[string]confFile{"usr/local/bin/nnp": {mode: os.ModeSetuid | 0o755, data: prog}})},
		entrypoint: []string{"/usr/local/bin/nnp"}, user: "1000"})
	for name, user := range map[string]string{"test-image-user-uid": "1002", "test-image-user-username": "www-data",
		"test-image-user-uid-group": "1003:1004", "test-image-user-username-group": "www-data:1004"} {
		add(confImage{refs: []string{staging + name + ":latest"}, layers: [][]byte{base}, cmd: sh, user: user})
	}
	pre := map[string]confFile{
		"etc/passwd":        {mode: 0o644, data: []byte(confPasswd + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n")},
		"etc/group":         {mode: 0o644, data: []byte(confGroup + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n")},
		"home/default-user": {mode: os.ModeDir | 0o755},
	}
	add(confImage{refs: []string{staging + "test-image-predefined-group:latest"}, layers: [][]byte{base, with(pre)}, cmd: sh, user: "1000"})
	marked := func(mark string, refs ...string) {
		add(confImage{refs: refs, layers: [][]byte{base, with(map[string]confFile{mark: {mode: 0o644}})}, cmd: sh})
	}
	for _, n := range []string{"test-image-1", "test-image-2", "test-image-3", "test-image-latest"} {
		marked(n, staging+n+":latest")
	}
	marked("test", staging+"test-image-tag:test")
	marked("all", staging+"test-image-tag:all")
	marked("same-image", staging+"test-image-tags:1", staging+"test-image-tags:2", staging+"test-image-tags:3")
	pauseLayer := with(map[string]confFile{"pause": {mode: 0o755, data: prog}})
	add(confImage{refs: []string{"registry.k8s.io/pause:3.9", "k8s.gcr.io/pause:3.9"}, layers: [][]byte{pauseLayer}, entrypoint: []string{"/pause"}})
	add(confImage{refs: []string{confSandboxImage}, layers: [][]byte{pauseLayer}, entrypoint: []string{"/pause"},
		labels: map[string]string{"io.pyisolate.test": "sandbox"}})
	return imgs
}

// confSandboxImage is the CRI plugin's sandbox_image (containerd 1.6's
// default name), served by the registry like the rest.
const confSandboxImage = "registry.k8s.io/pause:3.6"

// confBlob is one stored blob.
type confBlob struct {
	data      []byte
	mediaType string
}

// confRegistry is a read-only OCI distribution server: GET/HEAD of /v2/,
// manifests by tag or digest and blobs by digest. containerd reaches it
// through CRI registry mirrors for every registry host critest names, so
// each repository is kept under its path without the host.
type confRegistry struct {
	mu       sync.Mutex
	blobs    map[string]confBlob          // digest -> blob
	tags     map[string]map[string]string // repo -> tag -> manifest digest
	requests map[string]int               // "METHOD repo kind" -> count
	srv      *http.Server
	addr     string
}

func confNewRegistry() *confRegistry {
	return &confRegistry{blobs: map[string]confBlob{}, tags: map[string]map[string]string{}, requests: map[string]int{}}
}

func (r *confRegistry) putBlob(data []byte, mediaType string) (string, int) {
	d := fmt.Sprintf("sha256:%x", sha256.Sum256(data))
	r.blobs[d] = confBlob{data: data, mediaType: mediaType}
	return d, len(data)
}

// add stores one image under each of its references.
func (r *confRegistry) add(img confImage) error {
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	var layers []desc
	var diffIDs []string
	for _, l := range img.layers {
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestSpeed)
		zw.Write(l)
		zw.Close()
		d, n := r.putBlob(gz.Bytes(), "application/vnd.oci.image.layer.v1.tar+gzip")
		layers = append(layers, desc{"application/vnd.oci.image.layer.v1.tar+gzip", d, n})
		diffIDs = append(diffIDs, fmt.Sprintf("sha256:%x", sha256.Sum256(l)))
	}
	env := append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, img.env...)
	cfg := map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"created":      "2023-11-14T22:13:20Z",
		"config": map[string]any{
			"Entrypoint": img.entrypoint, "Cmd": img.cmd, "Env": env, "WorkingDir": "/",
			"User": img.user, "Labels": img.labels,
		},
		"rootfs":  map[string]any{"type": "layers", "diff_ids": diffIDs},
		"history": []map[string]any{{"created": "2023-11-14T22:13:20Z", "created_by": "pyisolate test/conformance_images_test.go"}},
	}
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	cd, cn := r.putBlob(cfgJSON, "application/vnd.oci.image.config.v1+json")
	man, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc{"application/vnd.oci.image.config.v1+json", cd, cn},
		"layers":        layers,
	})
	if err != nil {
		return err
	}
	md, _ := r.putBlob(man, "application/vnd.oci.image.manifest.v1+json")
	for _, ref := range img.refs {
		host, rest, ok := strings.Cut(ref, "/")
		if !ok || !strings.Contains(host, ".") {
			return fmt.Errorf("image ref %q: want host/repo:tag", ref)
		}
		i := strings.LastIndex(rest, ":")
		if i < 0 {
			return fmt.Errorf("image ref %q: no tag", ref)
		}
		repo, tag := rest[:i], rest[i+1:]
		if r.tags[repo] == nil {
			r.tags[repo] = map[string]string{}
		}
		r.tags[repo][tag] = md
	}
	return nil
}

// ServeHTTP serves /v2/<repo>/manifests/<ref> and /v2/<repo>/blobs/<digest>.
func (r *confRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Docker-Distribution-API-Version", "registry/2.0")
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "read-only registry", http.StatusMethodNotAllowed)
		return
	}
	p := strings.TrimPrefix(req.URL.Path, "/v2/")
	if p == "" || p == req.URL.Path {
		if req.URL.Path == "/v2/" || req.URL.Path == "/v2" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.NotFound(w, req)
		return
	}
	var repo, kind, ref string
	for _, k := range []string{"/manifests/", "/blobs/"} {
		if i := strings.LastIndex(p, k); i > 0 {
			repo, kind, ref = p[:i], strings.Trim(k, "/"), p[i+len(k):]
			break
		}
	}
	r.mu.Lock()
	r.requests[req.Method+" "+repo+" "+kind]++
	digest := ref
	if kind == "manifests" && !strings.HasPrefix(ref, "sha256:") {
		digest = r.tags[repo][ref]
	}
	b, ok := r.blobs[digest]
	r.mu.Unlock()
	if kind == "" || !ok {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		code := "BLOB_UNKNOWN"
		if kind == "manifests" {
			code = "MANIFEST_UNKNOWN"
		}
		fmt.Fprintf(w, `{"errors":[{"code":%q,"message":"not in the offline test registry"}]}`, code)
		return
	}
	w.Header().Set("Content-Type", b.mediaType)
	w.Header().Set("Docker-Content-Digest", digest)
	w.Header().Set("Content-Length", fmt.Sprint(len(b.data)))
	w.WriteHeader(http.StatusOK)
	if req.Method == http.MethodGet {
		w.Write(b.data)
	}
}

// start listens on 127.0.0.1 (a free port) and serves until close.
func (r *confRegistry) start() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	r.addr = l.Addr().String()
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 30 * time.Second}
	go r.srv.Serve(l)
	return nil
}

func (r *confRegistry) close() {
	if r.srv != nil {
		r.srv.Close()
	}
}

// misses lists the repositories asked for that the registry does not hold.
func (r *confRegistry) misses() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for k := range r.requests {
		f := strings.Fields(k)
		if len(f) == 3 && f[2] == "manifests" && r.tags[f[1]] == nil {
			out = append(out, f[1])
		}
	}
	sort.Strings(out)
	return out
}
