package test

// The opencontainers/runtime-tools validation suite against pyisolate-runc
// and runc on this machine, side by side (scripts/runtime-tools.sh builds
// the programs with go and runs them; they speak TAP). `make test` runs a
// recorded subset (the lifecycle and the requests clients make most);
// `make conformance` (PYISOLATE_CONFORMANCE=full) runs every program. Plain
// bundles run under the faithful policy: the suite checks that a runtime
// does what config.json says, which the hardened policy changes on purpose.

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// ociConformanceSubset is what `make test` runs (about a minute).
var ociConformanceSubset = []string{"create", "start", "state", "kill", "delete", "pidfile", "default",
	"process", "mounts", "linux_devices", "hooks_stdin",
	// RLIMIT_AS 1 GiB with seccomp: the init must still load the filter.
	"process_rlimits"}

// ociKnownDifferences are the programs where pyisolate-runc passes fewer
// tests than runc 1.1.5, and why.
var ociKnownDifferences = map[string]string{}

func TestOCIRuntimeTools(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runtime-tools creates real containers: it needs root")
	}
	if testing.Short() {
		t.Skip("runtime-tools validation (-short)")
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		t.Skip("runc is not installed (apt-get install runc): nothing to compare with")
	}
	bin := ociBin(t)
	programs := ociConformanceSubset
	if os.Getenv("PYISOLATE_CONFORMANCE") == "full" {
		programs = nil
	}
	// The programs are built once per checkout; the TAP is this run's.
	out := filepath.Join(filepath.Dir(filepath.Dir(bin)), "runtime-tools")
	for _, rt := range []string{"pyisolate", "runc", "work"} {
		_ = os.RemoveAll(filepath.Join(out, rt))
	}
	args := append([]string{out, "pyisolate=" + bin, "runc=" + runc, "--"}, programs...)
	cmd := exec.Command(filepath.Join(ctrdRepoRoot(t), "scripts", "runtime-tools.sh"), args...)
	cmd.Env = append(os.Environ(), "PYISOLATE_POLICY=faithful")
	res, err := cmd.CombinedOutput()
	t.Logf("runtime-tools, side by side (ok, not ok, skip):\n%s", res)
	if err != nil {
		t.Fatalf("scripts/runtime-tools.sh: %v", err)
	}
	f, err := os.Open(filepath.Join(out, "summary.tsv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var sum [2][3]int
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		if len(c) != 7 {
			t.Fatalf("summary line %q", sc.Text())
		}
		var n [2][3]int
		for i := range 6 {
			n[i/3][i%3], _ = strconv.Atoi(c[1+i])
			sum[i/3][i%3] += n[i/3][i%3]
		}
		ours, theirs := n[0], n[1]
		if ours[0]+ours[1]+ours[2] == 0 && theirs[0]+theirs[1]+theirs[2] > 0 && ociKnownDifferences[c[0]] == "" {
			t.Errorf("%s: no TAP from pyisolate-runc (see %s)", c[0], filepath.Join(out, "pyisolate", c[0]+".tap"))
			continue
		}
		if ours[0] < theirs[0] || ours[1] > theirs[1] {
			if why := ociKnownDifferences[c[0]]; why != "" {
				t.Logf("%s: %d ok, %d not ok; runc %d ok, %d not ok: known: %s", c[0], ours[0], ours[1], theirs[0], theirs[1], why)
			} else {
				t.Errorf("%s: %d ok, %d not ok; runc %d ok, %d not ok (see %s)", c[0], ours[0], ours[1], theirs[0], theirs[1],
					filepath.Join(out, "pyisolate", c[0]+".tap"))
			}
		}
	}
	t.Logf("total: pyisolate-runc %d ok, %d not ok, %d skip; runc %d ok, %d not ok, %d skip",
		sum[0][0], sum[0][1], sum[0][2], sum[1][0], sum[1][1], sum[1][2])
}
