package test

// BenchmarkStart (make bench): start-to-exit wall time of `/bin/true` and
// of `/usr/bin/python3 -c pass` under `pyisolate run` (the CLI binary), as
// root and as the ordinary user 65534 (pyisolate-rootless, the user bwrap
// runs as too), `runc run` and `crun run` on the same bundle, and bwrap with
// pyisolate's arguments. Every iteration runs each runtime once per workload, in an
// order that rotates from one iteration to the next (round robin), so that
// load on the machine hits all of them alike. Medians are reported as
// metrics (pyisolate-true-ms, runc-python-ms, ...) and as a table with the
// ratio to runc (issue 3's target: pyisolate ≤ 0.5× runc).
//
// The runc/crun bundle is `runc spec`'s default config.json with a read-only
// empty rootfs, read-only binds of /usr /lib /lib64 /bin, a tmpfs /tmp, and
// its default namespaces (pid, net, ipc, uts, mount; no user namespace),
// capabilities, masked paths and no seccomp. pyisolate's sandbox does more
// (user namespace, seccomp, cgroup limits, /etc allow list), and bwrap less
// (no cgroups, no seccomp, run as nobody as pyisolate does).
//
// crun refuses hybrid cgroup hierarchies (cgroup v1 plus a cgroup2 mount at
// /sys/fs/cgroup/unified). On such hosts it runs through `nsenter -m` into a
// mount namespace where that cgroup2 mount is unmounted (a holder process
// made with `unshare -m`); the nsenter exec is included in crun's times.

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// benchRuntime is one runtime of the comparison.
type benchRuntime struct {
	name string
	// run runs workload w ("true" or "python") once and returns its error.
	run  func(w string) error
	skip string // why it is not measured
	// times[w] are the durations of workload w.
	times map[string][]time.Duration
}

var benchWorkloads = []struct {
	name string
	argv []string
}{
	{"true", []string{"/bin/true"}},
	{"python", []string{"/usr/bin/python3", "-c", "pass"}},
}

func benchArgv(w string) []string {
	for _, x := range benchWorkloads {
		if x.name == w {
			return x.argv
		}
	}
	panic("unknown workload " + w)
}

// benchRun runs argv to completion and fails on a non-zero exit.
func benchRun(cred *syscall.Credential, argv ...string) error {
	r := secExec(60*time.Second, cred, nil, argv...)
	if r.code != 0 {
		return fmt.Errorf("%s: exit %d: %v: %s", argv[0], r.code, r.err, secFirstLine(string(r.stderr)+string(r.stdout)))
	}
	return nil
}

// benchOCIBundle writes a runc/crun bundle running argv (see the file
// comment).
func benchOCIBundle(b *testing.B, dir string, argv []string) {
	b.Helper()
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(rootfs, 0o755); err != nil {
		b.Fatal(err)
	}
	if r := secExec(30*time.Second, nil, nil, "runc", "spec", "--bundle", dir); r.code != 0 {
		b.Fatalf("runc spec: %s", r)
	}
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		b.Fatal(err)
	}
	proc := cfg["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = argv
	proc["cwd"] = "/tmp"
	cfg["root"] = map[string]any{"path": "rootfs", "readonly": true}
	mounts, _ := cfg["mounts"].([]any)
	for _, p := range []string{"/usr", "/lib", "/lib64", "/bin"} {
		if _, err := os.Stat(p); err == nil {
			mounts = append(mounts, map[string]any{"destination": p, "type": "bind", "source": p,
				"options": []string{"rbind", "ro", "nosuid", "nodev"}})
		}
	}
	mounts = append(mounts, map[string]any{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
		"options": []string{"nosuid", "nodev", "mode=1777"}})
	cfg["mounts"] = mounts
	if data, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		b.Fatal(err)
	}
}

// benchHybridCgroups reports whether the host has cgroup v1 with a cgroup2
// mount at /sys/fs/cgroup/unified, which crun refuses.
func benchHybridCgroups() bool {
	var fs unix.Statfs_t
	if unix.Statfs("/sys/fs/cgroup", &fs) != nil || fs.Type == unix.CGROUP2_SUPER_MAGIC {
		return false
	}
	return unix.Statfs("/sys/fs/cgroup/unified", &fs) == nil && fs.Type == unix.CGROUP2_SUPER_MAGIC
}

// benchCrunPrefix returns the command prefix that runs crun here: crun
// itself, or nsenter into a holder's mount namespace without the cgroup2
// mount on hybrid hosts. stop ends the holder.
func benchCrunPrefix(b *testing.B) (prefix []string, stop func(), err error) {
	if !benchHybridCgroups() {
		return []string{"crun"}, func() {}, nil
	}
	if _, ok := secLookPath("nsenter"); !ok {
		return nil, nil, fmt.Errorf("hybrid cgroups and no nsenter")
	}
	holder := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
		"umount /sys/fs/cgroup/unified && echo ready && exec sleep 3600")
	out, err := holder.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := holder.Start(); err != nil {
		return nil, nil, err
	}
	stop = func() { holder.Process.Kill(); holder.Wait() }
	buf := make([]byte, 6)
	if n, _ := out.Read(buf); n == 0 || !strings.HasPrefix(string(buf[:n]), "ready") {
		stop()
		return nil, nil, fmt.Errorf("could not hide the cgroup2 mount in a private mount namespace")
	}
	pid := fmt.Sprint(holder.Process.Pid)
	return []string{"nsenter", "-t", pid, "-m", "crun"}, stop, nil
}

func BenchmarkStart(b *testing.B) {
	tools := secSetup(b)
	fx := newSecFixture(b, tools)
	counter := 0
	nextID := func(rt string) string {
		counter++
		return fmt.Sprintf("bench-%s-%d-%d", rt, os.Getpid(), counter)
	}

	var rts []*benchRuntime
	add := func(name, skip string, run func(w string) error) {
		rts = append(rts, &benchRuntime{name: name, run: run, skip: skip, times: map[string][]time.Duration{}})
	}

	// pyisolate run: the probe fixture's manifest (module, venv, writable
	// dir, sealed, no network, 256Mi / 64 pids), command given after --.
	pyRoot := filepath.Join(fx.base, "py-state")
	if tools.pyisolate == "" {
		add("pyisolate", "bin/pyisolate unavailable: "+tools.whyNoPyisolate, nil)
	} else {
		writeManifest(b, fx.bundle, fx.secManifest([]string{"/bin/true"}))
		add("pyisolate", "", func(w string) error {
			argv := append([]string{tools.pyisolate, "run", "--root", pyRoot, "--id", nextID("py"), fx.bundle, "--"}, benchArgv(w)...)
			return benchRun(nil, argv...)
		})
	}

	// pyisolate run as an ordinary user (rootless, uid 65534, its own
	// XDG_RUNTIME_DIR): the same bundle, next to bwrap, which runs as that
	// user too.
	var rlUsr *rlUser
	if tools.pyisolate == "" {
		add("pyisolate-rootless", "bin/pyisolate unavailable: "+tools.whyNoPyisolate, nil)
	} else {
		rlUsr = rlNewUser(b, fx, 65534)
		add("pyisolate-rootless", "", func(w string) error {
			argv := append([]string{"/usr/bin/env", "XDG_RUNTIME_DIR=" + rlUsr.xdg, tools.pyisolate, "run", "--id", nextID("rl"), fx.bundle, "--"}, benchArgv(w)...)
			return benchRun(rlUsr.cred, argv...)
		})
	}

	// runc and crun on the same bundles.
	ociDirs := map[string]string{}
	if _, ok := secLookPath("runc"); ok {
		for _, w := range benchWorkloads {
			dir := filepath.Join(fx.base, "oci-"+w.name)
			benchOCIBundle(b, dir, w.argv)
			ociDirs[w.name] = dir
		}
	}
	ociRun := func(name string, prefix []string, bundleKey ...string) func(w string) error {
		state := filepath.Join(fx.base, name+"-state")
		key := strings.Join(bundleKey, "")
		return func(w string) error {
			id := nextID(name)
			argv := append(append([]string{}, prefix...), "--root", state, "run", "--bundle", ociDirs[key+w], id)
			err := benchRun(nil, argv...)
			if err != nil {
				del := append(append([]string{}, prefix...), "--root", state, "delete", "-f", id)
				secExec(30*time.Second, nil, nil, del...)
			}
			return err
		}
	}
	if len(ociDirs) == 0 {
		add("runc", "runc not installed (needed for the bundle too)", nil)
		add("crun", "runc not installed (it writes the bundle)", nil)
	} else {
		add("runc", "", ociRun("runc", []string{"runc"}))
		if _, ok := secLookPath("crun"); !ok {
			add("crun", "crun not installed", nil)
		} else if prefix, stop, err := benchCrunPrefix(b); err != nil {
			add("crun", "crun cannot run on this host's cgroups: "+err.Error(), nil)
		} else {
			b.Cleanup(stop)
			add("crun", "", ociRun("crun", prefix))
		}
	}

	// runc on the very config.json pyisolate builds for the bundle (`pyisolate
	// spec`): the same sandbox (user namespace, seccomp, mounts, limits), so
	// that the same work is compared, not only the same command. Its root is
	// an empty directory owned by the mapped root, where runc makes the
	// mount points itself.
	if _, ok := secLookPath("runc"); !ok || tools.pyisolate == "" {
		add("runc-pyisolate-config", "runc or bin/pyisolate unavailable", nil)
	} else if err := benchPyisolateConfigBundles(b, tools, fx, pyRoot, ociDirs); err != nil {
		add("runc-pyisolate-config", "pyisolate spec: "+err.Error(), nil)
	} else {
		add("runc-pyisolate-config", "", ociRun("runc-pyisolate-config", []string{"runc"}, "pycfg-"))
	}

	// bwrap with pyisolate's arguments, as nobody.
	if _, ok := secLookPath("bwrap"); !ok {
		add("bwrap", "bwrap not installed", nil)
	} else {
		add("bwrap", "", func(w string) error {
			return benchRun(secBwrapCred, secBwrapArgs(fx.module, fx.venv, []string{fx.work}, benchArgv(w))...)
		})
	}

	// Warm up (page cache, binaries); a runtime that fails here is skipped
	// with its error.
	for _, rt := range rts {
		if rt.skip != "" {
			continue
		}
		for _, w := range benchWorkloads {
			if err := rt.run(w.name); err != nil {
				rt.skip = "fails: " + err.Error()
				break
			}
		}
	}

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for wi, w := range benchWorkloads {
			for k := range rts {
				rt := rts[(i+wi+k)%len(rts)]
				if rt.skip != "" {
					continue
				}
				start := time.Now()
				err := rt.run(w.name)
				d := time.Since(start)
				if err != nil {
					b.Errorf("%s %s: %v", rt.name, w.name, err)
					continue
				}
				rt.times[w.name] = append(rt.times[w.name], d)
			}
		}
	}
	b.StopTimer()

	// Nothing left of pyisolate's containers.
	if tools.pyisolate != "" {
		for _, l := range secLeaks(pyRoot, fx.base, fmt.Sprintf("bench-py-%d-", os.Getpid())) {
			b.Errorf("pyisolate leak after the benchmark: %s", l)
		}
	}
	if rlUsr != nil {
		rlCheckNoLeaks(b, rlUsr, fx, fmt.Sprintf("bench-rl-%d-", os.Getpid()))
	}
	for _, name := range []string{"runc", "crun", "runc-pyisolate-config"} {
		if ents, _ := os.ReadDir(filepath.Join(fx.base, name+"-state")); len(ents) > 0 {
			b.Errorf("%s left %d containers in its state dir", name, len(ents))
		}
	}

	medians := map[string]map[string]float64{}
	for _, rt := range rts {
		medians[rt.name] = map[string]float64{}
		for _, w := range benchWorkloads {
			if ts := rt.times[w.name]; len(ts) > 0 {
				m := benchMedianMS(ts)
				medians[rt.name][w.name] = m
				b.ReportMetric(m, rt.name+"-"+w.name+"-ms")
			}
		}
	}
	if r, ok := benchRatio(medians, "pyisolate", "runc", "true"); ok {
		b.ReportMetric(r, "pyisolate/runc-true")
	}
	if r, ok := benchRatio(medians, "pyisolate", "runc", "python"); ok {
		b.ReportMetric(r, "pyisolate/runc-python")
	}
	if r, ok := benchRatio(medians, "pyisolate-rootless", "bwrap", "true"); ok {
		b.ReportMetric(r, "rootless/bwrap-true")
	}
	// The table goes to stdout (b.Log output of benchmarks is cut to 10
	// lines), once: for the final run, not the N=1 probe run before it.
	bt := flag.Lookup("test.benchtime")
	if b.N > 1 || (bt != nil && bt.Value.String() == "1x") {
		benchPublish(tools, "bench-start.txt", benchTable(b.N, rts, medians))
	}
}

func benchMedianMS(ts []time.Duration) float64 {
	s := append([]time.Duration(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	n := len(s)
	var m time.Duration
	if n%2 == 1 {
		m = s[n/2]
	} else {
		m = (s[n/2-1] + s[n/2]) / 2
	}
	return float64(m) / float64(time.Millisecond)
}

func benchRatio(med map[string]map[string]float64, a, b, w string) (float64, bool) {
	x, ok1 := med[a][w]
	y, ok2 := med[b][w]
	if !ok1 || !ok2 || y == 0 {
		return 0, false
	}
	return x / y, true
}

// benchTable prints medians, min and max per runtime and workload, with the
// ratio to runc.
func benchTable(n int, rts []*benchRuntime, med map[string]map[string]float64) string {
	var sb strings.Builder
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(&sb, "start-to-exit wall time, %d rounds, runtimes alternating (load average %s)\n",
		n, strings.Join(strings.Fields(string(load))[:min(3, len(strings.Fields(string(load))))], " "))
	w := tabwriter.NewWriter(&sb, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "runtime\ttrue median ms\t(min-max)\t×runc\tpython median ms\t(min-max)\t×runc")
	for _, rt := range rts {
		if rt.skip != "" {
			continue
		}
		fmt.Fprint(w, rt.name)
		for _, wl := range benchWorkloads {
			ts := rt.times[wl.name]
			if len(ts) == 0 {
				fmt.Fprint(w, "\t-\t-\t-")
				continue
			}
			lo, hi := ts[0], ts[0]
			for _, t := range ts {
				lo, hi = min(lo, t), max(hi, t)
			}
			ratio := "-"
			if r, ok := benchRatio(med, rt.name, "runc", wl.name); ok {
				ratio = fmt.Sprintf("%.2f", r)
			}
			fmt.Fprintf(w, "\t%.1f\t(%.1f-%.1f)\t%s", med[rt.name][wl.name],
				float64(lo)/float64(time.Millisecond), float64(hi)/float64(time.Millisecond), ratio)
		}
		fmt.Fprintln(w)
	}
	w.Flush()
	for _, rt := range rts {
		if rt.skip != "" {
			fmt.Fprintf(&sb, "%s: skipped: %s\n", rt.name, rt.skip)
		}
	}
	if r, ok := benchRatio(med, "pyisolate", "runc", "true"); ok {
		verdict := "meets"
		if r > 0.5 {
			verdict = "MISSES"
		}
		fmt.Fprintf(&sb, "pyisolate/runc (/bin/true) = %.2f: %s the target of ≤ 0.5\n", r, verdict)
	}
	return sb.String()
}

// benchPyisolateConfigBundles writes, for each workload, a bundle whose
// config.json is the one `pyisolate spec` prints for fx's bundle, with the
// workload's command and a root of its own owned by the mapped root; their
// directories go to dirs["pycfg-"+workload].
func benchPyisolateConfigBundles(b *testing.B, tools *secTools, fx *secFixture, root string, dirs map[string]string) error {
	res := secExec(60*time.Second, nil, nil, tools.pyisolate, "spec", "--root", root, "--id", "benchcfg", "--bundle", fx.bundle)
	if res.code != 0 {
		return fmt.Errorf("exit %d: %s", res.code, secFirstLine(string(res.stderr)))
	}
	for _, w := range benchWorkloads {
		var cfg map[string]any
		if err := json.Unmarshal(res.stdout, &cfg); err != nil {
			return err
		}
		dir := filepath.Join(fx.base, "pycfg-"+w.name)
		rootfs := filepath.Join(dir, "rootfs")
		if err := os.MkdirAll(rootfs, 0o755); err != nil {
			return err
		}
		if err := os.Chown(rootfs, 100000, 100000); err != nil {
			return err
		}
		cfg["root"] = map[string]any{"path": rootfs, "readonly": true}
		proc := cfg["process"].(map[string]any)
		proc["args"] = w.argv
		if l, ok := cfg["linux"].(map[string]any); ok {
			l["cgroupsPath"] = "/pyisolate/bench-runc-pycfg-" + w.name
		}
		data, err := json.MarshalIndent(cfg, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o644); err != nil {
			return err
		}
		dirs["pycfg-"+w.name] = dir
	}
	return nil
}
