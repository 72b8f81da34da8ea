package test

// BenchmarkHandoff (make bench, issue 5): the tensor hand-off host →
// extension → host between two `pyisolate run` containers of one isolation
// group, through the group's shared memory versus sending the bytes over the
// group's Unix socket, for 1 MiB, 64 MiB and 1 GiB float32 tensors.
//
// Both containers run test/testdata/tipc/handoff.py (its docstring is the
// protocol) and stay up for the whole benchmark. Each b.Loop iteration is one
// round: the benchmark asks the host container, over a control socket in the
// group's socket directory, to do one round trip of each kind per size (the
// shared ones, then the copies, the order of the sizes rotating from round to
// round); the host times every round trip itself with
// time.perf_counter_ns (send → answer → the host checks the change in its
// own tensor) and answers the times. The control exchange is not timed.
// Medians are reported as metrics and as a table (stdout and
// build/bench-handoff.txt), against issue 5's targets: the 1 GiB shared
// hand-off at most 2× the 1 MiB one, and at least 100× faster than the copy
// at 1 GiB.
//
// -benchtime Nx is the number of rounds; the copy variant stops after
// handoffCopyBudget bytes per size (1 GiB: 16 rounds), so that the 1 GiB copy
// does not take minutes. The output says so.

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

const (
	handoffGroup = "tipc-bench"
	// handoffCopyBudget is how many bytes the copy variant sends (each way)
	// per size at most; handoffMinCopy rounds are done whatever the size.
	handoffCopyBudget = 16 << 30
	handoffMinCopy    = 3
	// handoffHeadroom is memory beyond the tensors: two Pythons with numpy,
	// socket buffers.
	handoffHeadroom = 512 << 20
)

var handoffSizes = []int64{1 << 20, 64 << 20, 1 << 30}

// handoffCopyRounds is how many copy round trips size gets at most.
func handoffCopyRounds(size int64) int {
	return max(handoffMinCopy, int(handoffCopyBudget/size))
}

// handoffMemAvailable is MemAvailable from /proc/meminfo in bytes (0 when
// unknown).
func handoffMemAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// handoffNeed is the memory the benchmark uses with sizes: every tensor in
// the group's shm (charged to the host container), the extension's receive
// buffer for the largest, headroom for each container.
func handoffNeed(sizes []int64) (host, ext, total int64) {
	for _, s := range sizes {
		host += s
		ext = max(ext, s)
	}
	host += handoffHeadroom
	ext += handoffHeadroom
	return host, ext, host + ext
}

func handoffSizeName(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	}
	return fmt.Sprintf("%dB", n)
}

// handoffSizeLabel is handoffSizeName for people: "64 MiB".
func handoffSizeLabel(n int64) string {
	s := handoffSizeName(n)
	i := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
	return s[:i] + " " + s[i:]
}

// handoffFrame writes v as one pyisolate frame: 4-byte big-endian length,
// then JSON.
func handoffFrame(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	msg := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(data)), uint32(len(data)))
	_, err = w.Write(append(msg, data...))
	return err
}

// handoffReadFrame reads one pyisolate frame into v.
func handoffReadFrame(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return err
	}
	data := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(r, data); err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

// handoffDial connects to the host container's control socket, which the
// host creates in the group's socket directory before it reports ready.
func handoffDial(path string, timeout time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// handoffResult is one size's round-trip times.
type handoffResult struct {
	size    int64
	shm, cp []time.Duration
}

func BenchmarkHandoff(b *testing.B) {
	// A benchmark's skip message shows only under -v: print it too.
	skip := func(why string) {
		fmt.Printf("--- SKIP: %s: %s\n", b.Name(), why)
		b.Skip("skipped: " + why)
	}
	if os.Geteuid() != 0 {
		skip("needs root (it starts real containers)")
	}
	if out, err := exec.Command("/usr/bin/python3", "-c", "import numpy").CombinedOutput(); err != nil {
		skip(fmt.Sprintf("/usr/bin/python3 lacks numpy (install python3-numpy): %v: %s", err, secFirstLine(string(out))))
	}
	if tools := secSetup(b); tools.pyisolate == "" {
		skip("bin/pyisolate is missing and could not be built: " + tools.whyNoPyisolate)
	}
	e := newTipcEnv(b)

	// Memory: check what is free before asking for it; a size that does not
	// fit is left out, visibly.
	sizes := append([]int64(nil), handoffSizes...)
	avail := handoffMemAvailable()
	var notes []string
	for len(sizes) > 1 {
		_, _, need := handoffNeed(sizes)
		if avail == 0 || avail >= need {
			break
		}
		notes = append(notes, fmt.Sprintf("%s left out: with it the benchmark needs %d MiB of memory, %d MiB are available",
			handoffSizeLabel(sizes[len(sizes)-1]), need>>20, avail>>20))
		sizes = sizes[:len(sizes)-1]
	}
	hostMem, extMem, _ := handoffNeed(sizes)
	var shm int64
	for _, s := range sizes {
		shm += s
	}
	// The tensors plus a quarter, so that the group stays under the shm
	// pressure warning (90%).
	shm += shm / 4
	limits := func(mem int64) map[string]any {
		return map[string]any{"shm_size": fmt.Sprintf("%dMi", (shm+(1<<20)-1)>>20),
			"memory": fmt.Sprintf("%dMi", mem>>20), "pids": 64}
	}
	var list []string
	for _, s := range sizes {
		list = append(list, strconv.FormatInt(s, 10))
	}
	env := map[string]string{"HANDOFF_SIZES": strings.Join(list, ",")}
	module := repoPath(e.tools, "test/testdata/tipc")
	script := filepath.Join(module, "handoff.py")
	host := e.bundleLimits("handoff-host", handoffGroup, module, []string{"/usr/bin/python3", script, "host"}, env, limits(hostMem))
	ext := e.bundleLimits("handoff-ext", handoffGroup, module, []string{"/usr/bin/python3", script, "ext"}, env, limits(extMem))

	h := e.start("tipc-bench-host", host)
	x := e.start("tipc-bench-ext", ext)
	h.expect(b, `{"event": "ready"`, 3*time.Minute)
	ctlPath := filepath.Join(e.root, "groups", handoffGroup, "sock", "handoff-ctl.sock")
	ctl, err := handoffDial(ctlPath, 30*time.Second)
	if err != nil {
		b.Fatalf("control socket: %v; host stderr: %s", err, h.stderr)
	}
	defer ctl.Close()

	res := make([]*handoffResult, len(sizes))
	for i, s := range sizes {
		res[i] = &handoffResult{size: s}
	}
	rounds := 0
	for b.Loop() {
		doCopy := make([]bool, len(sizes))
		for i, s := range sizes {
			doCopy[i] = rounds < handoffCopyRounds(s)
		}
		_ = ctl.SetDeadline(time.Now().Add(2 * time.Minute))
		start := time.Now()
		if err := handoffFrame(ctl, map[string]any{"op": "round", "copy": doCopy}); err != nil {
			b.Fatalf("round %d: %v; host stderr: %s", rounds, err, h.stderr)
		}
		var ans struct {
			ShmNS  []int64  `json:"shm_ns"`
			CopyNS []*int64 `json:"copy_ns"`
		}
		if err := handoffReadFrame(ctl, &ans); err != nil {
			b.Fatalf("round %d: %v; host stderr: %s", rounds, err, h.stderr)
		}
		wall := time.Since(start)
		if len(ans.ShmNS) != len(sizes) || len(ans.CopyNS) != len(sizes) {
			b.Fatalf("round %d: answer for %d sizes, want %d", rounds, len(ans.ShmNS), len(sizes))
		}
		var timed time.Duration
		for i, r := range res {
			r.shm = append(r.shm, time.Duration(ans.ShmNS[i]))
			timed += time.Duration(ans.ShmNS[i])
			if ans.CopyNS[i] != nil {
				r.cp = append(r.cp, time.Duration(*ans.CopyNS[i]))
				timed += time.Duration(*ans.CopyNS[i])
			}
		}
		// The host's clock against ours: its round trips happen within
		// the round as the benchmark sees it.
		if timed <= 0 || timed > wall {
			b.Fatalf("round %d: the host timed %v of round trips in a round of %v", rounds, timed, wall)
		}
		rounds++
	}
	b.StopTimer()
	// ns/op would be a whole round of every size and variant plus the
	// control exchange: hidden, the metrics below are what counts.
	b.ReportMetric(0, "ns/op")

	if err := handoffFrame(ctl, map[string]string{"op": "done"}); err != nil {
		b.Fatalf("done: %v", err)
	}
	if code := x.wait(b, time.Minute); code != 0 {
		b.Fatalf("extension exited %d: %s", code, x.stderr)
	}
	if code := h.wait(b, time.Minute); code != 0 {
		b.Fatalf("host exited %d: %s\n%s", code, h.stderr, strings.Join(h.output(), "\n"))
	}
	if out := h.output(); len(out) == 0 || !strings.HasPrefix(out[len(out)-1], `{"result": "ok"`) {
		b.Fatalf("host result: %q", out)
	}
	handoffCheckClean(b, e)

	table := handoffTable(rounds, res, notes, hostMem, extMem, limits(0)["shm_size"].(string))
	benchPublish(e.tools, "bench-handoff.txt", table)
	for _, r := range res {
		n := handoffSizeName(r.size)
		b.ReportMetric(handoffMedianMS(r.shm), "shm-"+n+"-ms")
		if len(r.cp) > 0 {
			b.ReportMetric(handoffMedianMS(r.cp), "copy-"+n+"-ms")
			b.ReportMetric(handoffMedianMS(r.cp)/handoffMedianMS(r.shm), "copy/shm-"+n)
		}
	}
}

// handoffCheckClean fails b when the benchmark's containers left anything:
// containers pyisolate lists, the group, state, mounts or processes naming
// the root or the containers.
func handoffCheckClean(b *testing.B, e *tipcEnv) {
	b.Helper()
	out, err := exec.Command(e.tools.pyisolate, "ps", "--root", e.root, "--json").Output()
	if err != nil {
		b.Errorf("pyisolate ps: %v", err)
	}
	var states []struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(out, &states); err != nil && len(strings.TrimSpace(string(out))) > 0 {
		b.Errorf("pyisolate ps: %v: %s", err, out)
	}
	for _, s := range states {
		b.Errorf("container left after the benchmark: %s", s.ID)
	}
	if groups, _ := os.ReadDir(filepath.Join(e.root, "groups")); len(groups) != 0 {
		b.Errorf("group left after the benchmark: %v", groups)
	}
	for _, l := range secLeaks(e.root, e.root, "tipc-bench-") {
		b.Errorf("leak after the benchmark: %s", l)
	}
}

func handoffMedianMS(ts []time.Duration) float64 {
	if len(ts) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ts...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	n := len(s)
	m := s[n/2]
	if n%2 == 0 {
		m = (s[n/2-1] + s[n/2]) / 2
	}
	return float64(m) / float64(time.Millisecond)
}

// handoffMS formats milliseconds with three significant digits or more.
func handoffMS(ms float64) string {
	switch {
	case ms < 1:
		return strconv.FormatFloat(ms, 'f', 3, 64)
	case ms < 10:
		return strconv.FormatFloat(ms, 'f', 2, 64)
	case ms < 100:
		return strconv.FormatFloat(ms, 'f', 1, 64)
	}
	return strconv.FormatFloat(ms, 'f', 0, 64)
}

// handoffRatio formats a ratio: one decimal below 10.
func handoffRatio(r float64) string {
	if r < 10 {
		return strconv.FormatFloat(r, 'f', 1, 64)
	}
	return strconv.FormatFloat(r, 'f', 0, 64)
}

func handoffRange(ts []time.Duration) string {
	lo, hi := ts[0], ts[0]
	for _, t := range ts {
		lo, hi = min(lo, t), max(hi, t)
	}
	ms := func(d time.Duration) string { return handoffMS(float64(d) / float64(time.Millisecond)) }
	return "(" + ms(lo) + "-" + ms(hi) + ")"
}

// handoffTable is the report: per size, the medians side by side with the
// ratio, then the verdict on issue 5's targets and how it was measured.
func handoffTable(rounds int, res []*handoffResult, notes []string, hostMem, extMem int64, shmSize string) string {
	var sb strings.Builder
	load, _ := os.ReadFile("/proc/loadavg")
	lf := strings.Fields(string(load))
	fmt.Fprintf(&sb, "tensor hand-off host → extension → host, two pyisolate containers of one group, %d rounds (load average %s)\n",
		rounds, strings.Join(lf[:min(3, len(lf))], " "))
	w := tabwriter.NewWriter(&sb, 0, 8, 2, ' ', 0)
	fmt.Fprintln(w, "tensor\tshared memory median ms\t(min-max)\tn\tsocket copy median ms\t(min-max)\tn\tcopy/shared")
	for _, r := range res {
		fmt.Fprintf(w, "%s\t%s\t%s\t%d", handoffSizeLabel(r.size),
			handoffMS(handoffMedianMS(r.shm)), handoffRange(r.shm), len(r.shm))
		if len(r.cp) == 0 {
			fmt.Fprint(w, "\t-\t-\t0\t-\n")
			continue
		}
		c, s := handoffMedianMS(r.cp), handoffMedianMS(r.shm)
		fmt.Fprintf(w, "\t%s\t%s\t%d\t%s×\n", handoffMS(c), handoffRange(r.cp), len(r.cp), handoffRatio(c/s))
	}
	w.Flush()

	byName := map[string]*handoffResult{}
	for _, r := range res {
		byName[handoffSizeName(r.size)] = r
	}
	small, big := byName["1MiB"], byName["1GiB"]
	if small != nil && big != nil {
		s1, s2 := handoffMedianMS(small.shm), handoffMedianMS(big.shm)
		verdict := "meets"
		if s2 > 2*s1 {
			verdict = "MISSES"
		}
		fmt.Fprintf(&sb, "target: 1 GiB shared ≤ 2× 1 MiB shared: %s vs %s ms = %.2f×: %s\n", handoffMS(s2), handoffMS(s1), s2/s1, verdict)
		if len(big.cp) > 0 {
			r := handoffMedianMS(big.cp) / s2
			verdict = "meets"
			if r < 100 {
				verdict = "MISSES"
			}
			fmt.Fprintf(&sb, "target: 1 GiB shared ≥ 100× faster than the copy: %s×: %s\n", handoffRatio(r), verdict)
		}
	} else {
		fmt.Fprintln(&sb, "targets: not judged, 1 MiB and 1 GiB were not both measured")
	}
	fmt.Fprintf(&sb, "shared: the host sends a TensorRef (pyisolate framing: 4-byte big-endian length + JSON) over the group's socket; "+
		"the extension maps the segment from the group's /dev/shm, adds 1 to three elements in place, unmaps it, answers; "+
		"the host checks the three changes in its own mapping\n")
	fmt.Fprintf(&sb, "copy: the host sends the tensor's bytes (length-prefixed frame) over the same socket; the extension receives them "+
		"into a buffer allocated before timing (favours the copy), changes the three elements, sends the bytes back into the host's tensor; "+
		"the host checks the changes; copy rounds stop at %d GiB sent per size (1 GiB: %d rounds), so n can be less than the rounds\n",
		handoffCopyBudget>>30, handoffCopyRounds(1<<30))
	fmt.Fprintf(&sb, "timing: inside the host container, time.perf_counter_ns around send → answer → check, per round trip "+
		"(their sum checked against each round's wall time at the benchmark); "+
		"both containers run for the whole benchmark; every round does the shared hand-offs, then the copies, the order of the sizes rotating from round to round; limits: shm_size %s, memory %d MiB (host), %d MiB (extension)\n",
		shmSize, hostMem>>20, extMem>>20)
	for _, n := range notes {
		fmt.Fprintln(&sb, "note: "+n)
	}
	return sb.String()
}
