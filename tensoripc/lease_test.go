package tensoripc

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func names(segs []Segment) []string {
	var out []string
	for _, s := range segs {
		out = append(out, s.Name)
	}
	slices.Sort(out)
	return out
}

func keptReasons(r ReclaimReport) map[string]string {
	m := map[string]string{}
	for _, k := range r.Kept {
		m[k.Name] = k.Reason
	}
	return m
}

func TestReclaim(t *testing.T) {
	t.Parallel()
	bothKinds(t, Options{Retention: 200 * time.Millisecond}, testReclaim)
}

func testReclaim(t *testing.T, d *Domain) {
	ctx := context.Background()
	host, ext, consumer := startPy(t, d.Dir()), startPy(t, d.Dir()), startPy(t, d.Dir())
	addMember(t, d, "host", host)
	addMember(t, d, "ext-a", ext)
	addMember(t, d, "ext-c", consumer)
	host.do(t, "create h1 4096 map")
	ext.do(t, "create a1 8192 rawmap")
	ext.do(t, "create a2 4096 rawmap")
	ext.do(t, "create a3 4096 fd")
	consumer.do(t, "map a2") // a live member still uses a2
	if err := os.WriteFile(filepath.Join(d.Dir(), "stray"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if segs := segmentMap(t, d); segs["a1"].Owner != "ext-a" || segs["a2"].Owner != "ext-a" || segs["a3"].Owner != "ext-a" {
		t.Fatalf("owners before the kill: %+v", segs)
	}

	ext.kill(t)
	t0 := time.Now()
	if err := d.MemberExited(ctx, "ext-a", t0); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name     string
		before   func()
		now      time.Time
		removed  []string
		kept     map[string]string // segment -> substring of the reason
		onDisk   []string
		notOnDsk []string
	}{
		{name: "within the lease nothing goes", now: t0.Add(100 * time.Millisecond),
			kept:   map[string]string{"a1": "lease runs until", "a2": "lease runs until", "a3": "lease runs until", "stray": "never reclaimed"},
			onDisk: []string{"a1", "a2", "a3", "h1", "stray"}},
		{name: "after the lease unused segments go", now: t0.Add(300 * time.Millisecond),
			removed: []string{"a1", "a3"},
			kept:    map[string]string{"a2": "still used by ext-c", "stray": "never reclaimed"},
			onDisk:  []string{"a2", "h1", "stray"}, notOnDsk: []string{"a1", "a3"}},
		{name: "once unmapped the last one goes", before: func() { consumer.do(t, "unmap a2") }, now: t0.Add(400 * time.Millisecond),
			removed: []string{"a2"}, kept: map[string]string{"stray": "never reclaimed"},
			onDisk: []string{"h1", "stray"}, notOnDsk: []string{"a2"}},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		rep, err := d.Reclaim(ctx, s.now)
		if err != nil {
			t.Fatalf("%s: Reclaim: %v", s.name, err)
		}
		if got := names(rep.Removed); !slices.Equal(got, s.removed) {
			t.Errorf("%s: removed %v, want %v", s.name, got, s.removed)
		}
		var freed int64
		for _, r := range rep.Removed {
			freed += r.Size
		}
		if rep.Freed != freed {
			t.Errorf("%s: freed %d, removed segments hold %d", s.name, rep.Freed, freed)
		}
		kept := keptReasons(rep)
		if len(kept) != len(s.kept) {
			t.Errorf("%s: kept %v, want %v", s.name, kept, s.kept)
		}
		for name, reason := range s.kept {
			if !strings.Contains(kept[name], reason) {
				t.Errorf("%s: %s kept because %q, want %q", s.name, name, kept[name], reason)
			}
		}
		for _, n := range s.onDisk {
			if !exists(t, filepath.Join(d.Dir(), n)) {
				t.Errorf("%s: %s was removed", s.name, n)
			}
		}
		for _, n := range s.notOnDsk {
			if exists(t, filepath.Join(d.Dir(), n)) {
				t.Errorf("%s: %s is still on disk", s.name, n)
			}
		}
	}

	// A member that dies without MemberExited is noticed by the next scan,
	// which starts its lease.
	host.kill(t)
	t1 := time.Now()
	rep, err := d.Reclaim(ctx, t1)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Removed) != 0 || !strings.Contains(keptReasons(rep)["h1"], "lease runs until") {
		t.Errorf("right after the host died: removed %v, kept %v; want h1 kept under lease", names(rep.Removed), keptReasons(rep))
	}
	if rep, err = d.Reclaim(ctx, t1.Add(time.Second)); err != nil || !slices.Equal(names(rep.Removed), []string{"h1"}) {
		t.Errorf("after the host's lease: removed %v (%v), want [h1]", names(rep.Removed), err)
	}
	// GC runs with the real clock; the stray file of unknown owner stays.
	if rep, err = d.GC(ctx); err != nil || len(rep.Removed) != 0 || !exists(t, filepath.Join(d.Dir(), "stray")) {
		t.Errorf("GC: removed %v (%v); stray must stay", names(rep.Removed), err)
	}
	ms, err := d.Members(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].ID != "ext-c" || !ms[0].Alive {
		t.Errorf("members after reclaiming: %+v, want only ext-c alive (exited owners of nothing are forgotten)", ms)
	}
}

func TestReclaimNeverTouchesLiveMembers(t *testing.T) {
	d := anyDomain(t, Options{Retention: time.Millisecond})
	ext := startPy(t, d.Dir())
	addMember(t, d, "ext-a", ext)
	ext.do(t, "create live 4096 closed") // not even held: still the owner's
	ext.do(t, "create held 4096 fd")
	// give "live" an owner: a closed file is unknown unless seen at creation
	if err := d.update(context.Background(), func(st *state) error {
		if _, err := d.scan(st, time.Now()); err != nil {
			return err
		}
		st.Segments["live"].Owner = "ext-a"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rep, err := d.Reclaim(context.Background(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Removed) != 0 || !exists(t, filepath.Join(d.Dir(), "live")) || !exists(t, filepath.Join(d.Dir(), "held")) {
		t.Errorf("Reclaim an hour later removed %v of a live member", names(rep.Removed))
	}
}
