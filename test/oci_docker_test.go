package test

// Docker 20.10 (Debian's docker.io), which takes runtimes by path only,
// driving pyisolate-runc: a private dockerd (own data root, exec root and
// socket, no iptables, no bridge) whose daemon.json is deploy/docker's
// daemon-20.10.json with the path of the binary under test, an image made
// with `docker import` of a busybox-static tree, and `docker run --runtime
// pyisolate` as a user runs it.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/console"
)

// ociDockerd is a private dockerd.
type ociDockerd struct {
	t       *testing.T
	dir     string
	docker  string
	sock    string
	cmd     *exec.Cmd
	done    chan struct{}
	hadRun  bool
	hadCgrp bool
}

// ociStartDockerd starts a private dockerd with the pyisolate runtime of
// deploy/docker/daemon-20.10.json at bin, and registers its clean-up.
func ociStartDockerd(t *testing.T, bin string) *ociDockerd {
	t.Helper()
	dockerd, err := exec.LookPath("dockerd")
	if err != nil {
		t.Skip("dockerd is not installed (apt-get install docker.io)")
	}
	// The client of the same package: another docker on PATH may be newer.
	docker := filepath.Join(filepath.Dir(dockerd), "..", "bin", "docker")
	if _, err := os.Stat(docker); err != nil {
		if docker, err = exec.LookPath("docker"); err != nil {
			t.Skip("the docker client is not installed (apt-get install docker.io)")
		}
	}
	// Short paths: the exec root holds unix sockets.
	dir, err := os.MkdirTemp("/tmp", "ocd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &ociDockerd{t: t, dir: dir, docker: docker, sock: filepath.Join(dir, "s")}
	_, err = os.Stat("/run/docker")
	d.hadRun = err == nil
	_, err = os.Stat("/sys/fs/cgroup/pids/docker")
	d.hadCgrp = err == nil
	t.Cleanup(d.stop)
	var cfg map[string]any
	data, err := os.ReadFile(filepath.Join(ctrdRepoRoot(t), "deploy", "docker", "daemon-20.10.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("deploy/docker/daemon-20.10.json: %v", err)
	}
	cfg["runtimes"].(map[string]any)["pyisolate"].(map[string]any)["path"] = bin
	// Else dockerd writes /etc/docker/key.json.
	cfg["deprecated-key-path"] = filepath.Join(dir, "key.json")
	data, _ = json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(dir, "daemon.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "dockerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(dockerd, "--config-file", filepath.Join(dir, "daemon.json"),
		"--data-root", filepath.Join(dir, "d"), "--exec-root", filepath.Join(dir, "e"),
		"-H", "unix://"+d.sock, "--pidfile", filepath.Join(dir, "pid"),
		"--iptables=false", "--ip-masq=false", "--bridge=none", "--storage-driver", "vfs")
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() { _ = d.cmd.Wait(); logf.Close(); close(d.done) }()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if r := d.run("", "info"); r.Code == 0 {
			break
		}
		select {
		case <-d.done:
			t.Fatalf("dockerd exited:\n%s", d.logTail())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dockerd does not answer after 60s:\n%s", d.logTail())
		}
	}
	return d
}

func (d *ociDockerd) logTail() string {
	data, _ := os.ReadFile(filepath.Join(d.dir, "dockerd.log"))
	return ctrdLastLines(string(data), 30)
}

// run runs the docker client.
func (d *ociDockerd) run(stdin string, args ...string) ociResult {
	cmd := exec.Command(d.docker, append([]string{"-H", "unix://" + d.sock}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	return ociClientRun(cmd)
}

// ociClientRun runs a client command (docker, podman) with its output
// captured, killed after 90 s; a command that could not run has exit -1.
func ociClientRun(cmd *exec.Cmd) ociResult {
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Start()
	if err == nil {
		timer := time.AfterFunc(90*time.Second, func() { _ = cmd.Process.Kill() })
		err = cmd.Wait()
		timer.Stop()
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return ociResult{Code: code, Stdout: out.String(), Stderr: errb.String()}
}

// must runs the client and fails unless it exits with want.
func (d *ociDockerd) must(want int, args ...string) ociResult {
	d.t.Helper()
	r := d.run("", args...)
	if r.Code != want {
		d.t.Fatalf("docker %s: want exit %d, got %s\ndockerd:\n%s", strings.Join(args, " "), want, r, d.logTail())
	}
	return r
}

// stop removes every container, stops dockerd (and the containerd it
// started), and removes what it made: its directories and mounts,
// /run/docker and the /docker cgroups when they were not there before.
func (d *ociDockerd) stop() {
	if d.cmd != nil && d.cmd.Process != nil {
		if r := d.run("", "ps", "-aq"); r.Code == 0 && strings.TrimSpace(r.Stdout) != "" {
			d.run("", append([]string{"rm", "-f"}, strings.Fields(r.Stdout)...)...)
		}
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
			<-d.done
		}
	}
	for _, m := range ctrdMountsUnder(d.dir) {
		_ = syscall.Unmount(m, syscall.MNT_DETACH)
	}
	if err := os.RemoveAll(d.dir); err != nil {
		d.t.Errorf("remove %s: %v", d.dir, err)
	}
	if !d.hadRun {
		_ = os.RemoveAll("/run/docker")
	}
	if !d.hadCgrp {
		ociRemoveCgroups(d.t, "docker")
	}
}

// TestOCIDocker runs containers through Docker 20.10 with --runtime
// pyisolate: output and exit statuses (127 for a missing command, which
// Docker derives from the runtime's error), --memory, docker exec, docker
// stop, docker run -it through a pty, and a policy refusal shown by Docker
// in our words (from the runtime's JSON log).
func TestOCIDocker(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("Docker end-to-end tests start a private dockerd: they need root")
	}
	if testing.Short() {
		t.Skip("Docker end-to-end tests (-short)")
	}
	bin := ociBin(t)
	d := ociStartDockerd(t, bin)
	d.must(0, "import", ociBusyboxTar(t, d.dir), "pyisolate-busybox:test")
	img := "pyisolate-busybox:test"
	run := []string{"run", "--rm", "--runtime", "pyisolate"}

	if r := d.must(0, append(run, img, "sh", "-c", "echo hello; echo err >&2")...); r.Stdout != "hello\n" || r.Stderr != "err\n" {
		t.Errorf("docker run output: %s", r)
	}
	d.must(3, append(run, img, "sh", "-c", "exit 3")...)
	if r := d.must(127, append(run, img, "nosuchcmd")...); !strings.Contains(r.Stderr, "executable file not found") {
		t.Errorf("missing command: %s", r)
	}
	if r := d.must(0, append(run, "--memory", "64m", img, "sh", "-c",
		"cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max")...); strings.TrimSpace(r.Stdout) != "67108864" {
		t.Errorf("--memory 64m: the container's limit is %q", r.Stdout)
	}
	// The node's default policy for plain containers is hardened.
	if r := d.run("", append(run, "--privileged", img, "true")...); r.Code != 125 || !strings.Contains(r.Stderr, "refused by policy hardened") {
		t.Errorf("--privileged under the hardened policy: %s", r)
	}

	d.must(0, "run", "-d", "--name", "oci-d1", "--runtime", "pyisolate", img, "sleep", "1000")
	if r := d.must(4, "exec", "oci-d1", "sh", "-c", "echo in-exec; exit 4"); r.Stdout != "in-exec\n" {
		t.Errorf("docker exec output: %s", r)
	}
	start := time.Now()
	d.must(0, "stop", "-t", "1", "oci-d1")
	if r := d.must(0, "inspect", "-f", "{{.State.ExitCode}}", "oci-d1"); strings.TrimSpace(r.Stdout) != "137" {
		t.Errorf("after docker stop (sleep ignores SIGTERM as pid 1, then SIGKILL): exit code %s", r.Stdout)
	}
	t.Logf("docker stop -t 1 took %v", time.Since(start))
	d.must(0, "rm", "oci-d1")

	// An extension through Docker 20.10, which passes the runtime no
	// labels or annotations: its manifest is bound at /pyisolate.json. It
	// runs in its manifest's sandbox (a user namespace, no capability, its
	// module read-only), not in Docker's default one.
	module := filepath.Join(ctrdRepoRoot(t), "examples", "hello", "hello_ext")
	manifest := filepath.Join(d.dir, "ext.json")
	if err := os.WriteFile(manifest, []byte(`{"name":"docker-ext","module_path":"`+module+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	r := d.must(0, append(run, "-v", manifest+":/pyisolate.json:ro", img, "sh", "-c",
		"grep -E '^(CapEff|NoNewPrivs):' /proc/self/status; awk '{print $2}' /proc/self/uid_map; cat "+module+"/greeting.txt; "+
			"touch "+module+"/x 2>/dev/null || echo module-read-only")...)
	greeting, _ := os.ReadFile(filepath.Join(module, "greeting.txt"))
	want := "CapEff:\t0000000000000000\nNoNewPrivs:\t1\n" + "100000\n" + string(greeting) + "module-read-only\n"
	if r.Stdout != want {
		t.Errorf("docker run of an extension (manifest bound at /pyisolate.json):\n got %q\nwant %q\n%s", r.Stdout, want, r.Stderr)
	}
	// Two extensions of one group, each its own docker run, share the
	// group's /dev/shm: what one writes there the other reads.
	for _, name := range []string{"dga", "dgb"} {
		m := fmt.Sprintf(`{"name":%q,"module_path":%q,"group":"docker-grp"}`, name, module)
		if err := os.WriteFile(filepath.Join(d.dir, name+".json"), []byte(m), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	d.must(0, "run", "-d", "--name", "oci-dga", "--runtime", "pyisolate", "-v", filepath.Join(d.dir, "dga.json")+":/pyisolate.json:ro",
		img, "sh", "-c", "echo from-a > /dev/shm/marker; exec sleep 1000")
	var got string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		r := d.run("", append(run, "-v", filepath.Join(d.dir, "dgb.json")+":/pyisolate.json:ro", img, "cat", "/dev/shm/marker")...)
		if got = r.Stdout; r.Code == 0 && got == "from-a\n" {
			break
		}
	}
	if got != "from-a\n" {
		t.Errorf("extension b of group docker-grp reads /dev/shm/marker = %q, want from-a", got)
	}
	d.must(0, "rm", "-f", "oci-dga")
	// A manifest asking for what the policy forbids is refused in our words.
	bad := filepath.Join(d.dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"name":"bad","module_path":"/etc"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := d.run("", append(run, "-v", bad+":/pyisolate.json:ro", img, "true")...); r.Code != 125 ||
		!strings.Contains(r.Stderr, `the manifest bound at /pyisolate.json (`+bad+`): manifest: module_path: "/etc" is forbidden`) {
		t.Errorf("docker run of an extension with a forbidden module_path: %s", r)
	}

	// docker run -it: the client on a pty, the container's terminal sent
	// by the runtime over containerd's console socket.
	out, err := ociPtyRun(t, []string{d.docker, "-H", "unix://" + d.sock, "run", "-it", "--rm", "--runtime", "pyisolate", img,
		"sh", "-c", "test -t 0 && echo tty-yes; read x; echo got-$x"}, nil, "typed\r")
	if err != nil || !strings.Contains(out, "tty-yes") || !strings.Contains(out, "got-typed") {
		t.Errorf("docker run -it: %v, output %q, want tty-yes and got-typed", err, out)
	}
	// Nothing of the containers is left in the runtime's state root.
	root := filepath.Join(d.dir, "e", "runtime-runc", "moby")
	ents, _ := os.ReadDir(root)
	for _, e := range ents {
		if e.IsDir() && e.Name() != "locks" && e.Name() != "rootfs" && e.Name() != "groups" && e.Name() != "binds" {
			t.Errorf("state of container %s left under %s", e.Name(), root)
		}
	}
	if locks, _ := os.ReadDir(filepath.Join(root, "locks")); len(locks) > 0 {
		t.Errorf("%d id locks left under %s", len(locks), root)
	}
	if groups, _ := os.ReadDir(filepath.Join(root, "groups")); len(groups) > 0 {
		t.Errorf("isolation groups left under %s: %v", root, groups)
	}
}

// ociPtyRun runs argv with a pty as its controlling terminal and stdio (as
// a user's `docker run -it` is run), types input once the container had
// time to start, and returns what it wrote on the terminal.
func ociPtyRun(t testing.TB, argv, env []string, input string) (string, error) {
	t.Helper()
	ptm, slave, err := console.NewPty()
	if err != nil {
		t.Fatal(err)
	}
	defer ptm.Close()
	sf, err := os.OpenFile(slave, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.Stdin, cmd.Stdout, cmd.Stderr = sf, sf, sf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sf.Close()
	var got bytes.Buffer
	outc := make(chan struct{})
	go func() {
		defer close(outc)
		buf := make([]byte, 1024)
		for {
			n, err := ptm.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				return
			}
		}
	}()
	if input != "" {
		time.Sleep(2 * time.Second) // the container reads once it runs
		_, _ = ptm.Write([]byte(input))
	}
	waitc := make(chan error, 1)
	go func() { waitc <- cmd.Wait() }()
	select {
	case err = <-waitc:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		err = <-waitc
	}
	select {
	case <-outc:
	case <-time.After(5 * time.Second):
	}
	return got.String(), err
}

// ociBusyboxTar writes a tar of a busybox-static root filesystem into dir,
// what `docker import` and `podman import` make an image of, and returns its
// path.
func ociBusyboxTar(t *testing.T, dir string) string {
	t.Helper()
	rootfs := ctrdBusybox(t, filepath.Join(dir, "busybox"))
	tarball := filepath.Join(dir, "busybox.tar")
	if out, err := exec.Command("tar", "-C", rootfs, "-cf", tarball, ".").CombinedOutput(); err != nil {
		t.Fatalf("tar: %v\n%s", err, out)
	}
	return tarball
}
