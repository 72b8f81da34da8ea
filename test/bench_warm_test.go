package test

// BenchmarkWarmStart (make bench): warm starts (issue 20, package
// runtime/warm) against cold starts and bwrap, with torch, in one run.
//
//   - One more extension: with its group alive (a member running), how long
//     until one more extension that imports torch is ready, launch of the
//     runner to its "ready" line; warm (preload torch) and cold, 5 each,
//     median. Target: warm ≤ 100 ms.
//   - 30 extensions: 30 launched at once, each importing torch; the time
//     until the last is ready, and the memory of all of them once they are
//     (the sum of their processes' PSS, the template and its helpers
//     included for warm), and that sum's share per extension. Target for
//     warm: ≤ 30 MB per additional extension.
//
// The table goes to build/bench-warm.txt.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"
)

// benchWarmN is how many extensions the burst starts.
const benchWarmN = 30

// benchWarmCode imports torch, says ready, and waits for stdin to close.
const benchWarmCode = "import sys, torch; print('ready', flush=True); sys.stdin.read()"

func BenchmarkWarmStart(b *testing.B) {
	tools := secSetup(b)
	secNeedPyisolate(b, tools)
	if err := exec.Command("/usr/bin/python3", "-c", "import torch").Run(); err != nil {
		b.Skip("skipped: torch is not importable by /usr/bin/python3")
	}
	fx := newSecFixture(b, tools)
	root := filepath.Join(fx.base, "warm-state")
	bundle := func(name string, preload bool) string {
		dir := filepath.Join(fx.base, name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		m := fx.secManifest([]string{"/usr/bin/python3", "-c", benchWarmCode})
		m["name"], m["group"] = name, "benchwarm-"+name
		m["limits"] = map[string]any{"memory": "2Gi", "pids": 64}
		if preload {
			m["preload"] = []string{"torch"}
		}
		writeManifest(b, dir, m)
		return dir
	}
	warmB, coldB := bundle("warm", true), bundle("cold", false)
	n := 0
	pyLaunch := func(dir string) benchLaunch {
		return func(int) *exec.Cmd {
			n++
			return exec.Command(tools.pyisolate, "run", "--root", root, "--id", fmt.Sprintf("bw-%d-%d", os.Getpid(), n), dir)
		}
	}
	bwrapLaunch := func(i int) *exec.Cmd {
		argv := secBwrapArgs(fx.module, fx.venv, []string{fx.work},
			[]string{"/usr/bin/python3", "-c", benchWarmCode, fmt.Sprintf("bench-warm-bwrap-%d", i)})
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: secBwrapCred}
		return cmd
	}
	_, haveBwrap := secLookPath("bwrap")

	var sb strings.Builder
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		// One more extension, with the group alive.
		one := map[string][]time.Duration{}
		for _, s := range []struct{ name, dir string }{{"warm", warmB}, {"cold", coldB}} {
			keeper := benchWarmStart(b, pyLaunch(s.dir)(0))
			for i := 0; i < 5; i++ {
				c := benchWarmStart(b, pyLaunch(s.dir)(0))
				one[s.name] = append(one[s.name], c.ready)
				c.stop()
			}
			keeper.stop()
		}
		// 30 at once.
		type row struct {
			name       string
			up         int
			last       time.Duration
			pss        float64 // MB, all processes
			extra      string
			skipReason string
		}
		var rows []row
		for _, s := range []struct {
			name   string
			launch benchLaunch
			pids   func() []int
			skip   string
		}{
			{"pyisolate warm (preload torch)", pyLaunch(warmB), func() []int { return benchWarmPyPids(b, tools, root, true) }, ""},
			{"pyisolate cold", pyLaunch(coldB), func() []int { return benchWarmPyPids(b, tools, root, false) }, ""},
			{"bwrap", bwrapLaunch, func() []int { return benchPidsByArg("bench-warm-bwrap-") }, map[bool]string{true: "", false: "bwrap not installed"}[haveBwrap]},
		} {
			if s.skip != "" {
				rows = append(rows, row{name: s.name, skipReason: s.skip})
				continue
			}
			var mem float64
			bu := benchStartBurstThen(b, benchWarmN, s.launch, func() { mem = benchPSS(s.pids()) })
			if len(bu.lost) > 0 {
				b.Errorf("%s: %d of %d did not come up: %s", s.name, len(bu.lost), benchWarmN, strings.Join(bu.lost, "; "))
			}
			rows = append(rows, row{name: s.name, up: len(bu.starts), last: bu.total, pss: mem})
		}
		fmt.Fprintf(&sb, "One more extension importing torch, its group alive: launch to ready, median of 5\n\n")
		w := tabwriter.NewWriter(&sb, 0, 8, 2, ' ', 0)
		fmt.Fprintln(w, "start\tmedian ms\tall ms\ttarget")
		for _, name := range []string{"warm", "cold"} {
			target := ""
			if name == "warm" {
				target = map[bool]string{true: "≤ 100 ms: met", false: "≤ 100 ms: NOT met"}[benchMedian(one[name]) <= 100*time.Millisecond]
			}
			fmt.Fprintf(w, "%s\t%.0f\t%s\t%s\n", name, float64(benchMedian(one[name]))/1e6, benchMsList(one[name]), target)
		}
		w.Flush()
		fmt.Fprintf(&sb, "\n%d extensions importing torch, launched at once\n\n", benchWarmN)
		w = tabwriter.NewWriter(&sb, 0, 8, 2, ' ', 0)
		fmt.Fprintln(w, "scenario\tup\tlast ready s\tPSS total MB\tPSS per extension MB")
		for _, r := range rows {
			if r.skipReason != "" {
				fmt.Fprintf(w, "%s\tskipped: %s\t\t\t\n", r.name, r.skipReason)
				continue
			}
			fmt.Fprintf(w, "%s\t%d/%d\t%.2f\t%.0f\t%.1f\n", r.name, r.up, benchWarmN, r.last.Seconds(), r.pss, r.pss/benchWarmN)
			key := strings.NewReplacer(" ", "-", "(", "", ")", "").Replace(r.name)
			b.ReportMetric(r.last.Seconds(), key+"-last-s")
			b.ReportMetric(r.pss/benchWarmN, key+"-pss-MB")
		}
		w.Flush()
		fmt.Fprintln(&sb, "\nPSS counts a page shared by k processes as 1/k in each: the total is the memory the extensions")
		fmt.Fprintln(&sb, "use together (warm: members, template and its helpers). Target: warm ≤ 30 MB per additional extension.")
	}
	b.StopTimer()
	benchPublish(tools, "bench-warm.txt", sb.String())
	for _, l := range secLeaks(root, "", "bw-") {
		b.Errorf("leak after the benchmark: %s", l)
	}
}

// benchWarmRunning is one extension waiting for stdin to close.
type benchWarmRunning struct {
	ready time.Duration
	in    io.WriteCloser
	cmd   *exec.Cmd
}

// benchWarmStart starts cmd and waits for its "ready".
func benchWarmStart(b *testing.B, cmd *exec.Cmd) *benchWarmRunning {
	b.Helper()
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		in.Close()
		_ = cmd.Wait()
		b.Fatalf("%v: first line %q: %s", cmd.Args, line, stderr.String())
	}
	return &benchWarmRunning{ready: time.Since(t0), in: in, cmd: cmd}
}

func (r *benchWarmRunning) stop() {
	r.in.Close()
	_ = r.cmd.Wait()
}

// benchWarmPyPids returns the host pids of the running pyisolate containers
// under root, and with templates those of the templates and their helpers.
func benchWarmPyPids(b *testing.B, tools *secTools, root string, templates bool) []int {
	var pids []int
	for _, c := range warmPS(b, tools, root) {
		if c.InitPID <= 0 {
			continue
		}
		if strings.HasPrefix(c.ID, "pyisolate-warm-") {
			if !templates {
				continue
			}
			kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", c.InitPID, c.InitPID))
			for _, f := range strings.Fields(string(kids)) {
				if p, err := strconv.Atoi(f); err == nil {
					pids = append(pids, p)
				}
			}
		}
		pids = append(pids, c.InitPID)
	}
	return pids
}

// benchPidsByArg returns the pids of processes with an argument starting
// with prefix.
func benchPidsByArg(prefix string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, _ := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		for _, a := range strings.Split(string(cmdline), "\x00") {
			if strings.HasPrefix(a, prefix) {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// benchPSS returns the sum of the processes' PSS in MB.
func benchPSS(pids []int) float64 {
	var kb float64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "Pss:"); ok {
				n, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				kb += n
			}
		}
	}
	return kb / 1024
}

// benchMedian returns the median of ds.
func benchMedian(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// benchMsList formats ds in ms.
func benchMsList(ds []time.Duration) string {
	var f []string
	for _, d := range ds {
		f = append(f, fmt.Sprintf("%.0f", float64(d)/1e6))
	}
	return strings.Join(f, " ")
}
