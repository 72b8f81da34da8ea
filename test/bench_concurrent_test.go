package test

// BenchmarkConcurrentStart (make bench): 50 extensions started at once, as a
// ComfyUI host with many node packs starts them. Each extension prints
// "ready" and then waits for stdin to close; a start time is the time from
// launching its runner to reading that line. Every runner is launched
// before any is waited for; when all are up (or the deadline passes) their
// stdin is closed and they exit. Scenarios, each once per iteration:
//
//   - pyisolate, one group: the 50 are members of one isolation group;
//   - pyisolate, 50 groups: each is alone in its own group;
//   - bwrap: 50 bwrap sandboxes with pyisolate's arguments, as nobody.
//
// Reported per scenario: how many came up (none may be lost: the benchmark
// fails otherwise), p50 and p99 of the start times, the time until the last
// was up, and whether p99 ≤ 3× p50 (issue 16's target). The table goes to
// build/bench-concurrent.txt.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"
)

// benchConcurrency is how many extensions start at once.
const benchConcurrency = 50

// benchBurst is the outcome of one burst.
type benchBurst struct {
	starts []time.Duration // of those that came up
	lost   []string        // why the others did not
	total  time.Duration   // until the last came up
}

// benchLaunch starts one sandbox whose command prints "ready" and then
// reads stdin until EOF.
type benchLaunch func(i int) *exec.Cmd

// benchStartBurst launches n sandboxes at once and measures them.
func benchStartBurst(b *testing.B, n int, launch benchLaunch) benchBurst {
	b.Helper()
	return benchStartBurstThen(b, n, launch, nil)
}

// benchStartBurstThen is benchStartBurst calling whenUp, when not nil, once
// all are up (or the deadline passed), before they are told to exit.
func benchStartBurstThen(b *testing.B, n int, launch benchLaunch, whenUp func()) benchBurst {
	b.Helper()
	type result struct {
		d   time.Duration
		err error
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		cmds    []*exec.Cmd
		stdins  []io.WriteCloser
		results = make([]result, n)
	)
	t0 := time.Now()
	for i := 0; i < n; i++ {
		cmd := launch(i)
		cmd.SysProcAttr = mergeSetpgid(cmd.SysProcAttr)
		in, err := cmd.StdinPipe()
		if err != nil {
			b.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			b.Fatal(err)
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		start := time.Now()
		if err := cmd.Start(); err != nil {
			results[i] = result{err: err}
			continue
		}
		mu.Lock()
		cmds, stdins = append(cmds, cmd), append(stdins, in)
		mu.Unlock()
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			line, err := bufio.NewReader(out).ReadString('\n')
			if strings.TrimSpace(line) != "ready" {
				if err == nil {
					err = fmt.Errorf("first line %q", line)
				}
				results[i] = result{err: fmt.Errorf("%v: %s", err, secFirstLine(stderr.String()))}
				return
			}
			results[i] = result{d: time.Since(start)}
		}(i)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Minute):
	}
	total := time.Since(t0)
	if whenUp != nil {
		whenUp()
	}
	for _, in := range stdins {
		in.Close()
	}
	for _, cmd := range cmds {
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	}
	var bu benchBurst
	bu.total = total
	for i, r := range results {
		switch {
		case r.err != nil:
			bu.lost = append(bu.lost, fmt.Sprintf("#%d: %v", i, r.err))
		case r.d == 0:
			bu.lost = append(bu.lost, fmt.Sprintf("#%d: not up in 5 min", i))
		default:
			bu.starts = append(bu.starts, r.d)
		}
	}
	return bu
}

// benchPublish prints a benchmark's table (after the note on which binary
// ran, when there is one) and writes it to build/<file> in the repository.
func benchPublish(tools *secTools, file, table string) {
	if tools.note != "" {
		table = "note: " + tools.note + "\n" + table
	}
	fmt.Print("\n" + table + "\n")
	if err := os.MkdirAll(filepath.Join(tools.repo, "build"), 0o755); err == nil {
		_ = os.WriteFile(filepath.Join(tools.repo, "build", file), []byte(table), 0o644)
	}
}

// mergeSetpgid puts a runner in its own process group, so that a hung one
// can be killed with everything it started.
func mergeSetpgid(a *syscall.SysProcAttr) *syscall.SysProcAttr {
	if a == nil {
		a = &syscall.SysProcAttr{}
	}
	a.Setpgid = true
	return a
}

// benchPercentile returns the p-th percentile (0..100) of ds.
func benchPercentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p/100*float64(len(s)-1) + 0.5)
	return s[i]
}

func BenchmarkConcurrentStart(b *testing.B) {
	tools := secSetup(b)
	secNeedPyisolate(b, tools)
	fx := newSecFixture(b, tools)
	const script = "echo ready; while read x; do :; done"
	root := filepath.Join(fx.base, "burst-state")

	// One bundle per extension: its own group, or all in one.
	bundles := func(name string, oneGroup bool) []string {
		var dirs []string
		for i := 0; i < benchConcurrency; i++ {
			dir := filepath.Join(fx.base, fmt.Sprintf("%s-%d", name, i))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				b.Fatal(err)
			}
			m := fx.secManifest([]string{"/bin/sh", "-c", script})
			m["name"] = fmt.Sprintf("burst%d", i)
			if oneGroup {
				m["group"] = "burst"
			}
			writeManifest(b, dir, m)
			dirs = append(dirs, dir)
		}
		return dirs
	}
	oneGroup, ownGroups := bundles("one", true), bundles("own", false)
	counter := 0
	pyLaunch := func(dirs []string) benchLaunch {
		return func(i int) *exec.Cmd {
			counter++
			return exec.Command(tools.pyisolate, "run", "--root", root,
				"--id", fmt.Sprintf("burst-%d-%d", os.Getpid(), counter), dirs[i])
		}
	}
	scenarios := []struct {
		name   string
		launch benchLaunch
		skip   string
	}{
		{"pyisolate, one group", pyLaunch(oneGroup), ""},
		{"pyisolate, 50 groups", pyLaunch(ownGroups), ""},
	}
	if _, ok := secLookPath("bwrap"); ok {
		scenarios = append(scenarios, struct {
			name   string
			launch benchLaunch
			skip   string
		}{"bwrap", func(int) *exec.Cmd {
			argv := secBwrapArgs(fx.module, fx.venv, []string{fx.work}, []string{"/bin/sh", "-c", script})
			cmd := exec.Command(argv[0], argv[1:]...)
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: secBwrapCred}
			return cmd
		}, ""})
	} else {
		scenarios = append(scenarios, struct {
			name   string
			launch benchLaunch
			skip   string
		}{"bwrap", nil, "bwrap not installed"})
	}

	bursts := map[string][]benchBurst{}
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for _, s := range scenarios {
			if s.skip != "" {
				continue
			}
			bu := benchStartBurst(b, benchConcurrency, s.launch)
			if len(bu.lost) > 0 {
				b.Errorf("%s: %d of %d extensions did not come up: %s", s.name, len(bu.lost), benchConcurrency, strings.Join(bu.lost, "; "))
			}
			bursts[s.name] = append(bursts[s.name], bu)
		}
	}
	b.StopTimer()

	var sb strings.Builder
	fmt.Fprintf(&sb, "%d extensions started at once, %d burst(s) each; start = launch of the runner to its \"ready\"\n\n", benchConcurrency, b.N)
	w := tabwriter.NewWriter(&sb, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "scenario\tup\tp50 ms\tp99 ms\tp99/p50\tlast up ms\ttarget p99 ≤ 3× p50")
	for _, s := range scenarios {
		if s.skip != "" {
			fmt.Fprintf(w, "%s\tskipped: %s\t\t\t\t\t\n", s.name, s.skip)
			continue
		}
		var all []time.Duration
		var up, lost int
		var last time.Duration
		for _, bu := range bursts[s.name] {
			all = append(all, bu.starts...)
			up += len(bu.starts)
			lost += len(bu.lost)
			last = max(last, bu.total)
		}
		p50, p99 := benchPercentile(all, 50), benchPercentile(all, 99)
		ratio := 0.0
		if p50 > 0 {
			ratio = float64(p99) / float64(p50)
		}
		met := "met"
		if ratio > 3 || lost > 0 {
			met = "NOT met"
		}
		fmt.Fprintf(w, "%s\t%d/%d\t%.1f\t%.1f\t%.2f\t%.1f\t%s\n", s.name, up, up+lost,
			float64(p50)/1e6, float64(p99)/1e6, ratio, float64(last)/1e6, met)
		key := strings.NewReplacer(", ", "-", " ", "-").Replace(s.name)
		b.ReportMetric(float64(p50)/1e6, key+"-p50-ms")
		b.ReportMetric(float64(p99)/1e6, key+"-p99-ms")
	}
	w.Flush()
	benchPublish(tools, "bench-concurrent.txt", sb.String())
	// Nothing of the 100 pyisolate containers may be left.
	for _, l := range secLeaks(root, "", "burst-") {
		b.Errorf("leak after the bursts: %s", l)
	}
}
