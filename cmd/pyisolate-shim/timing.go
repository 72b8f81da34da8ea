package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"golang.org/x/sys/unix"
)

// timingEnv, set to anything, makes `pyisolate run` print on stderr where
// the time of the start went, phase by phase (README, "Start latency").
const timingEnv = "PYISOLATE_TIMING"

// startTiming prints each phase's time as runtime.Phase reports its end,
// the first one from the process's own start (the Go runtime's start and
// flag parsing included), and returns the function that prints the rest and
// the total.
func startTiming() (stop func()) {
	begin := processStart()
	last := begin
	lines := []string{}
	runtime.PhaseHook = func(phase string) {
		now := time.Now()
		lines = append(lines, fmt.Sprintf("%8.2f ms  %s", float64(now.Sub(last))/1e6, phase))
		last = now
	}
	runtime.Phase("process start to run's first step (Go runtime, flags)")
	return func() {
		runtime.Phase("group left, id released")
		runtime.PhaseHook = nil
		fmt.Fprintln(os.Stderr, "pyisolate: timing of run:")
		for _, l := range lines {
			fmt.Fprintln(os.Stderr, "  "+l)
		}
		fmt.Fprintf(os.Stderr, "  %8.2f ms  total\n", float64(time.Since(begin))/1e6)
	}
}

// processStart is when this process started, from /proc/self/stat's start
// time (clock ticks after boot) and the boot time; now when unknown.
func processStart() time.Time {
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return time.Now()
	}
	s := string(stat)
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 20 {
		return time.Now()
	}
	ticks, err := strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return time.Now()
	}
	var info unix.Sysinfo_t
	if unix.Sysinfo(&info) != nil {
		return time.Now()
	}
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts) != nil {
		return time.Now()
	}
	sinceBoot := time.Duration(ts.Nano())
	started := time.Duration(ticks) * time.Second / 100 // USER_HZ
	return time.Now().Add(started - sinceBoot)
}
