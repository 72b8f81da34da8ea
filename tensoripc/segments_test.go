package tensoripc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// bothKinds runs f on a file-backed domain and, as root, on a tmpfs.
func bothKinds(t *testing.T, opts Options, f func(t *testing.T, d *Domain)) {
	for _, tmpfs := range []bool{false, true} {
		t.Run(map[bool]string{false: "file-backed", true: "tmpfs"}[tmpfs], func(t *testing.T) {
			f(t, newDomain(t, tmpfs, opts))
		})
	}
}

func TestOwnership(t *testing.T) {
	t.Parallel()
	bothKinds(t, Options{}, testOwnership)
}

func testOwnership(t *testing.T, d *Domain) {
	host, ext := startPy(t, d.Dir()), startPy(t, d.Dir())
	addMember(t, d, "host", host)
	addMember(t, d, "ext-a", ext)

	host.do(t, "create h1 4096 rawmap") // mapped, descriptor closed (as torch does)
	ext.do(t, "create e1 8192 map")     // numpy memmap: mapped, and mmap keeps an fd
	ext.do(t, "create e2 4096 fd")
	ext.do(t, "create e3 4096 child")
	ext.do(t, "create e4 4096 closed") // nothing holds it: no member to tie it to
	torch := fmt.Sprintf("torch_%d_12345_0", ext.pid)
	for _, name := range []string{torch, "stray"} { // written by the test, not a member
		if err := os.WriteFile(filepath.Join(d.Dir(), name), make([]byte, 100), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(d.Dir(), "subdir"), 0o700); err != nil {
		t.Fatal(err)
	}

	want := []struct {
		name, owner, how string
		ownerPID         int // 0: do not check; -1: must not be ext's own pid
		mappedBy         []int
		openBy           []int
	}{
		{"e1", "ext-a", ByOpenFD, ext.pid, []int{ext.pid}, []int{ext.pid}},
		{"e2", "ext-a", ByOpenFD, ext.pid, nil, []int{ext.pid}},
		{"e3", "ext-a", ByMapping, -1, nil, []int{}}, // mapped by ext's child
		{"e4", OwnerUnknown, ByFileUID, 0, nil, nil},
		{"h1", "host", ByMapping, host.pid, []int{host.pid}, []int{}},
		{"stray", OwnerUnknown, ByFileUID, 0, nil, nil},
		{torch, "ext-a", ByTorchName, ext.pid, nil, nil},
	}
	check := func(t *testing.T, d *Domain) {
		segs := segmentMap(t, d)
		if len(segs) != len(want) {
			t.Errorf("%d segments %v, want %d (directories are not segments)", len(segs), segs, len(want))
		}
		for _, w := range want {
			s, ok := segs[w.name]
			if !ok {
				t.Errorf("segment %s missing", w.name)
				continue
			}
			if s.Owner != w.owner || s.Attribution != w.how {
				t.Errorf("%s: owner %s by %s, want %s by %s", w.name, s.Owner, s.Attribution, w.owner, w.how)
			}
			switch {
			case w.ownerPID > 0 && s.OwnerPID != w.ownerPID:
				t.Errorf("%s: owner pid %d, want %d", w.name, s.OwnerPID, w.ownerPID)
			case w.ownerPID < 0 && (s.OwnerPID == ext.pid || s.OwnerPID == 0):
				t.Errorf("%s: owner pid %d, want ext's child", w.name, s.OwnerPID)
			}
			for _, p := range w.mappedBy {
				if !slices.Contains(s.MappedBy, p) {
					t.Errorf("%s: mapped by %v, want %d among them", w.name, s.MappedBy, p)
				}
			}
			if w.openBy != nil && !slices.Equal(append([]int{}, s.OpenBy...), w.openBy) {
				t.Errorf("%s: open by %v, want %v", w.name, s.OpenBy, w.openBy)
			}
			if w.owner == OwnerUnknown && s.UID != uint32(os.Getuid()) {
				t.Errorf("%s: uid %d, want %d", w.name, s.UID, os.Getuid())
			}
			if s.Created.IsZero() || time.Since(s.Created) > time.Minute {
				t.Errorf("%s: created %v", w.name, s.Created)
			}
		}
		if s := segs["e1"]; s.Length != 8192 || s.Size < 8192 {
			t.Errorf("e1: length %d size %d, want 8192 bytes written and allocated", s.Length, s.Size)
		}
	}
	check(t, d)

	// The owner is recorded at first sight: the host mapping e1 now makes it
	// a user, not its owner.
	host.do(t, "map e1")
	s := segmentMap(t, d)["e1"]
	if s.Owner != "ext-a" || !slices.Equal(s.UsedBy, []string{"ext-a", "host"}) {
		t.Errorf("e1 after the host maps it: owner %s used by %v, want ext-a used by [ext-a host]", s.Owner, s.UsedBy)
	}
	// Another process (the CLI) opening the domain sees the same owners.
	cli, err := Open(d.Dir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	check(t, cli)
}

func TestOwnershipResolvePID(t *testing.T) {
	d := anyDomain(t, Options{ResolvePID: func(pid int) (string, bool) { return "ext-ns", pid == 1 }})
	for _, name := range []string{"torch_1_2_3", "torch_2_2_3"} {
		if err := os.WriteFile(filepath.Join(d.Dir(), name), []byte{1}, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	segs := segmentMap(t, d)
	if s := segs["torch_1_2_3"]; s.Owner != "ext-ns" || s.Attribution != ByTorchName {
		t.Errorf("torch_1_2_3: %s by %s, want ext-ns by torch name", s.Owner, s.Attribution)
	}
	if s := segs["torch_2_2_3"]; s.Owner != OwnerUnknown {
		t.Errorf("torch_2_2_3: %s, want unknown", s.Owner)
	}
}

func TestAddMemberErrors(t *testing.T) {
	d := anyDomain(t, Options{})
	for _, m := range []Member{{ID: "", PID: os.Getpid()}, {ID: "x", PID: 0}, {ID: OwnerUnknown, PID: os.Getpid()}, {ID: "x", PID: 1 << 30}} {
		if err := d.AddMember(context.Background(), m); err == nil {
			t.Errorf("AddMember(%+v) succeeded", m)
		}
	}
	if err := d.MemberExited(context.Background(), "nobody", time.Now()); err == nil {
		t.Errorf("MemberExited of a non-member succeeded")
	}
}

func TestWatchAttributesAtCreation(t *testing.T) {
	d := anyDomain(t, Options{Retention: 200 * time.Millisecond, SweepInterval: 50 * time.Millisecond})
	ext := startPy(t, d.Dir())
	addMember(t, d, "ext-a", ext)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Watch(ctx) }()
	time.Sleep(200 * time.Millisecond) // let Watch start

	// held open for 1 s, then closed: only a prompt look finds the creator
	ext.do(t, "create w1 4096 brief")
	if s := segmentMap(t, d)["w1"]; s.Owner != "ext-a" || s.Attribution != ByOpenFD {
		t.Errorf("w1 under Watch: owner %s by %s, want ext-a by open fd", s.Owner, s.Attribution)
	}

	// Watch sweeps too: a killed member's segment goes after the retention.
	victim := startPy(t, d.Dir())
	addMember(t, d, "ext-b", victim)
	victim.do(t, "create v1 4096 map")
	// Attributed while the victim lives (a scan here, so the test does not
	// race Watch's own scan on a loaded machine); the sweep is what is tested.
	if s := segmentMap(t, d)["v1"]; s.Owner != "ext-b" {
		t.Fatalf("v1: owner %s, want ext-b", s.Owner)
	}
	victim.kill(t)
	if err := d.MemberExited(context.Background(), "ext-b", time.Now()); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for exists(t, filepath.Join(d.Dir(), "v1")) && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if exists(t, filepath.Join(d.Dir(), "v1")) {
		t.Errorf("v1 of a killed member still there 10 s after it exited, with retention 200 ms under Watch")
	}

	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch did not return after cancel")
	}

	// Control: without Watch the same creation is seen too late.
	ext.do(t, "create w2 4096 brief")
	if s := segmentMap(t, d)["w2"]; s.Owner != OwnerUnknown {
		t.Errorf("w2 without Watch: owner %s, want unknown (the control that shows Watch matters)", s.Owner)
	}
}

func TestWatchEndsWhenDomainGoes(t *testing.T) {
	d := newDomain(t, false, Options{})
	done := make(chan error, 1)
	go func() { done <- d.Watch(context.Background()) }()
	time.Sleep(100 * time.Millisecond)
	if err := os.RemoveAll(d.Dir()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("Watch returned nil after its directory was removed")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Watch still running 5 s after its directory was removed")
	}
}
