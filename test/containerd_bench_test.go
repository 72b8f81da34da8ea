package test

// BenchmarkCtrRun (make bench): wall time of `ctr run --rm` of /bin/true on
// a busybox-static rootfs with the pyisolate shim
// (io.containerd.pyisolate.v1) and with containerd's runc shim
// (io.containerd.runc.v2 and the runc on PATH), on the same private
// containerd and the same rootfs. Each iteration runs both once, in an order
// that alternates between iterations, so that load on the machine hits both
// alike. Reported: the medians (pyisolate-ms, runc-ms), their ratio
// (ratio; issue 4's target is ≤ 0.7) and the resident memory of each shim
// serving one idle container (pyisolate-shim-rss-KiB, runc-shim-rss-KiB).
//
// The daemon is Debian's containerd 1.6; PYISOLATE_BENCH_CONTAINERD=2 uses
// containerd 2.x instead. Needs root.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

const ctrdRuncRuntime = "io.containerd.runc.v2"

func BenchmarkCtrRun(b *testing.B) {
	ctrdNeedRoot(b)
	if _, err := exec.LookPath("runc"); err != nil {
		b.Skip("runc is not installed: no runc shim to compare with")
	}
	if _, err := exec.LookPath("containerd-shim-runc-v2"); err != nil {
		b.Skip("containerd-shim-runc-v2 is not installed")
	}
	vs := ctrdVersions()
	v := vs[0]
	if os.Getenv("PYISOLATE_BENCH_CONTAINERD") == "2" {
		v = vs[1]
	}
	if v.Skip != "" {
		b.Skip(v.Skip)
	}
	d := ctrdNewDaemon(b, v)
	runtimes := []struct{ name, runtime string }{
		{"pyisolate", ctrdRuntime},
		{"runc", ctrdRuncRuntime},
	}
	run := func(rt, id string) time.Duration {
		start := time.Now()
		r := d.ctr(60*time.Second, "run", "--rm", "--runtime", rt, "--rootfs", d.Rootfs, id, "/bin/true")
		el := time.Since(start)
		if r.Code != 0 {
			b.Fatalf("%s", r)
		}
		return el
	}
	// Warm up: the first start of each pays for page cache and detection.
	for _, rt := range runtimes {
		run(rt.runtime, "warm-"+rt.name)
	}
	times := map[string][]time.Duration{}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for j := range runtimes {
			rt := runtimes[(i+j)%len(runtimes)]
			times[rt.name] = append(times[rt.name], run(rt.runtime, fmt.Sprintf("b-%s-%d", rt.name, i)))
		}
	}
	b.StopTimer()
	med := map[string]float64{}
	for _, rt := range runtimes {
		med[rt.name] = ctrdMedianMS(times[rt.name])
		b.ReportMetric(med[rt.name], rt.name+"-ms")
	}
	ratio := med["pyisolate"] / med["runc"]
	b.ReportMetric(ratio, "ratio")

	rss := map[string]int{}
	for _, rt := range runtimes {
		rss[rt.name] = ctrdShimRSS(b, d, rt.runtime, "rss-"+rt.name)
		b.ReportMetric(float64(rss[rt.name]), rt.name+"-shim-rss-KiB")
	}
	b.Logf("ctr run --rm /bin/true on %s, %d runs each, alternating:\n"+
		"  %-10s median %7.1f ms   shim RSS %6d KiB\n"+
		"  %-10s median %7.1f ms   shim RSS %6d KiB\n"+
		"  ratio pyisolate/runc: %.2f (target <= 0.9)",
		v.Name, b.N, "pyisolate", med["pyisolate"], rss["pyisolate"], "runc", med["runc"], rss["runc"], ratio)
}

// ctrdMedianMS is the median of ds in milliseconds.
func ctrdMedianMS(ds []time.Duration) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return float64(m) / float64(time.Millisecond)
}

// ctrdShimRSS starts a detached idle container with runtime rt and returns
// the resident memory of the shim serving it (the parent of its init), in
// KiB; the container is removed afterwards.
func ctrdShimRSS(b *testing.B, d *ctrdDaemon, rt, id string) int {
	b.Helper()
	d.Ctr(b, 0, "run", "-d", "--runtime", rt, "--rootfs", d.Rootfs, id, "/bin/sleep", "1000")
	defer func() {
		d.ctr(20*time.Second, "task", "kill", "-s", "KILL", id)
		deadline := time.Now().Add(10 * time.Second)
		for d.Tasks(b)[id] == "RUNNING" && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		d.ctr(20*time.Second, "task", "delete", id)
		d.ctr(20*time.Second, "container", "rm", id)
	}()
	d.WaitTask(b, id, "RUNNING", 10*time.Second)
	time.Sleep(300 * time.Millisecond) // let the shim settle
	shim := ctrdStatusField(b, d.TaskPid(b, id), "PPid")
	return ctrdStatusField(b, shim, "VmRSS")
}

// ctrdStatusField reads a numeric field of /proc/PID/status.
func ctrdStatusField(b *testing.B, pid int, field string) int {
	b.Helper()
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == field {
			n, err := strconv.Atoi(strings.Fields(v)[0])
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
