package tensoripc

import (
	"context"
	"errors"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"time"

	"golang.org/x/sys/unix"
)

func TestPressure(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newDomain(t, true, Options{Size: 4 << 20})
	host, ext := startPy(t, d.Dir()), startPy(t, d.Dir())
	addMember(t, d, "host", host)
	addMember(t, d, "ext-a", ext)

	steps := []struct {
		cmd     *pyProc
		line    string
		warn    bool
		message string // regexp
	}{
		{ext, "create e1 2097152 map", false, ""}, // 50 %
		{host, "create h1 786432 map", false, ""}, // 68.75 %
		{ext, "create e2 1048576 map", true, `^shm group g: 94% of 4\.0 MiB used; largest owners: ext-a 3\.0 MiB, host 768 KiB$`},
	}
	for _, s := range steps {
		s.cmd.do(t, s.line)
		p, err := d.Pressure(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p.Warn != s.warn || !regexp.MustCompile(s.message).MatchString(p.Message) || (!s.warn && p.Message != "") {
			t.Errorf("after %q: %.1f%% warn %v message %q; want warn %v matching %q", s.line, p.Percent, p.Warn, p.Message, s.warn, s.message)
		}
	}
	u, err := d.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if u.Quota != 4<<20 || u.Used != 3<<20+786432 || len(u.Owners) != 2 ||
		u.Owners[0] != (OwnerUsage{Owner: "ext-a", Bytes: 3 << 20, Segments: 2}) ||
		u.Owners[1] != (OwnerUsage{Owner: "host", Bytes: 786432, Segments: 1}) {
		t.Errorf("usage %+v", u)
	}
}

func TestPressureFileBacked(t *testing.T) {
	d := newDomain(t, false, Options{Size: 1 << 20})
	if _, err := Publish(d.Dir(), "big", make([]byte, 950<<10), "torch.uint8", []int64{950 << 10}); err != nil {
		t.Fatal(err)
	}
	p, err := d.Pressure(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// the configured size is the (soft) quota of a file-backed domain
	if p.Quota != 1<<20 || !p.Warn || !strings.Contains(p.Message, "93% of 1.0 MiB used; largest owners: unknown 952 KiB") {
		t.Errorf("file-backed pressure: %+v", p)
	}
}

func TestExplainENOSPC(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newDomain(t, true, Options{Size: 4 << 20})
	host, ext := startPy(t, d.Dir()), startPy(t, d.Dir())
	addMember(t, d, "host", host)
	addMember(t, d, "ext-a", ext)
	host.do(t, "create h1 1048576 map")
	out := ext.do(t, "fill f 524288")
	if out != "6 28" { // 3 MiB left: six 512 KiB segments, then errno 28 (ENOSPC)
		t.Fatalf("fill: %q, want 6 segments then ENOSPC (28)", out)
	}
	msg := d.ExplainENOSPC(ctx)
	t.Logf("ENOSPC story: %s", msg)
	for _, want := range []string{
		"shm group g is out of space (no space left on device): 4.0 MiB of 4.0 MiB used.",
		"By owner: ext-a 3.0 MiB in 6 segments; host 1.0 MiB in 1 segment.",
		"raise limits.shm_size (now 4.0 MiB)", "pyisolate shm gc",
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("ExplainENOSPC = %q\nwant it to contain %q", msg, want)
		}
	}
	// A Go producer hits the same wall with an error that says so.
	_, err := Publish(d.Dir(), "go", make([]byte, 1<<20), "torch.uint8", []int64{1 << 20})
	if !errors.Is(err, unix.ENOSPC) {
		t.Errorf("Publish into a full group: %v, want ENOSPC", err)
	}
	if exists(t, filepath.Join(d.Dir(), "go")) {
		t.Errorf("failed Publish left its segment")
	}
	// The story names exited owners and when they become reclaimable.
	ext.kill(t)
	if err := d.MemberExited(ctx, "ext-a", time.Now()); err != nil {
		t.Fatal(err)
	}
	if msg := d.ExplainENOSPC(ctx); !strings.Contains(msg, "ext-a 3.0 MiB in 6 segments (exited ") || !strings.Contains(msg, "reclaimable after") {
		t.Errorf("ExplainENOSPC after ext-a exited = %q", msg)
	}
}

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 786432: "768 KiB",
		3 << 20: "3.0 MiB", 600 << 20: "600 MiB", 1 << 30: "1.0 GiB", 15 << 30: "15 GiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestWatchPressure: under WatchPressure, filling the group's tmpfs past
// WarnPercent calls warn once with the owners named; more writes do not call
// it again; emptying it and filling it again does.
func TestWatchPressure(t *testing.T) {
	d := newDomain(t, true, Options{Size: 4 << 20})
	ext := startPy(t, d.Dir())
	addMember(t, d, "ext-a", ext)
	warnings := make(chan Pressure, 8)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.WatchPressure(ctx, func(p Pressure) { warnings <- p }) }()
	defer func() {
		cancel()
		<-done
	}()
	expect := func(want bool, what string) {
		t.Helper()
		select {
		case p := <-warnings:
			if !want {
				t.Errorf("%s: unexpected warning %q", what, p.Message)
			} else if !strings.Contains(p.Message, "largest owners: ext-a") {
				t.Errorf("%s: warning %q does not name ext-a", what, p.Message)
			}
		case <-time.After(3 * time.Second):
			if want {
				t.Errorf("%s: no warning within 3 s", what)
			}
		}
	}
	ext.do(t, "create a 2097152 map") // 50 %
	expect(false, "at 50%")
	ext.do(t, "create b 1835008 map") // 93.75 %
	expect(true, "at 94%")
	ext.do(t, "create c 131072 map") // 96.9 %
	expect(false, "still full")
	ext.do(t, "unlink a")
	ext.do(t, "unlink b")
	ext.do(t, "unlink c")
	expect(false, "emptied")
	ext.do(t, "create d 3932160 map")
	expect(true, "full again")
}

// TestExplainSIGBUS: with the tmpfs full the story says so, with the
// owners and the remedy; with room left it says the cause is elsewhere.
func TestExplainSIGBUS(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newDomain(t, true, Options{Size: 8 << 20})
	host := startPy(t, d.Dir())
	addMember(t, d, "host", host)
	host.do(t, "create h1 1048576 map")
	msg, full := d.ExplainSIGBUS(ctx)
	if full || !strings.Contains(msg, "is not full, 1.0 MiB of 8.0 MiB used") {
		t.Errorf("ExplainSIGBUS with room = %q, %v", msg, full)
	}
	if out := host.do(t, "fill f 524288"); out != "14 28" {
		t.Fatalf("fill: %q, want 14 segments then ENOSPC (28)", out)
	}
	msg, full = d.ExplainSIGBUS(ctx)
	t.Logf("SIGBUS story: %s", msg)
	for _, want := range []string{
		"the group's /dev/shm was full (shm group g: 8.0 MiB of 8.0 MiB used)", "SIGBUS, not ENOSPC",
		"By owner: host 8.0 MiB in 15 segments.", "raise limits.shm_size (now 8.0 MiB)",
	} {
		if !full || !strings.Contains(msg, want) {
			t.Errorf("ExplainSIGBUS = %q, %v\nwant full and %q", msg, full, want)
		}
	}
}
