package tensoripc

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSegmentState: a torch segment nobody maps while its sender lives, with
// references left in its header, is stranded; once its sender exited it is
// kept (torch cannot open it) until the retention ends, then reclaimable; a
// mapped one is live and a plain unmapped one idle.
func TestSegmentState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	d := newDomain(t, true, Options{Size: 8 << 20, Retention: time.Minute})
	sender := startPy(t, d.Dir())
	addMember(t, d, "sender", sender)
	stranded := fmt.Sprintf("torch_%d_1_0", sender.pid)
	hdr := make([]byte, TorchHeaderSize+16)
	binary.NativeEndian.PutUint32(hdr, 1) // the dead receiver's reference
	if err := os.WriteFile(filepath.Join(d.Dir(), stranded), hdr, 0o600); err != nil {
		t.Fatal(err)
	}
	sender.do(t, "create plain 4096 closed")
	sender.do(t, "create mapped 4096 map")

	state := func(now time.Time) map[string][2]string {
		segs, err := d.Segments(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string][2]string{}
		for _, s := range segs {
			st, detail := d.SegmentState(s, now)
			out[s.Name] = [2]string{st, detail}
		}
		return out
	}
	tests := []struct {
		name       string
		now        time.Time
		want       map[string]string // segment → state
		wantDetail map[string]string // segment → part of the detail
	}{
		{"sender alive", time.Now(),
			map[string]string{stranded: StateStranded, "plain": StateIdle, "mapped": StateLive},
			map[string]string{stranded: "1 torch reference(s) left (a receiver died mid-hand-off); stays until its sender sender exits"}},
	}
	for _, tt := range tests {
		got := state(tt.now)
		for seg, want := range tt.want {
			if got[seg][0] != want {
				t.Errorf("%s: %s is %v, want %s", tt.name, seg, got[seg], want)
			}
		}
		for seg, want := range tt.wantDetail {
			if !strings.Contains(got[seg][1], want) {
				t.Errorf("%s: %s detail %q, want %q", tt.name, seg, got[seg][1], want)
			}
		}
	}
	sender.kill(t)
	exited := time.Now()
	if err := d.MemberExited(ctx, "sender", exited); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name   string
		now    time.Time
		state  string
		detail string
	}{
		{"within retention", exited.Add(time.Second), StateKept, "torch cannot open it anew (its sender's shm manager died with it)"},
		{"after retention", exited.Add(2 * time.Minute), StateReclaimable, "retention ended"},
	} {
		got := state(tt.now)[stranded]
		if got[0] != tt.state || !strings.Contains(got[1], tt.detail) {
			t.Errorf("%s: %s is %v, want %s with %q", tt.name, stranded, got, tt.state, tt.detail)
		}
	}
	if got := state(exited.Add(time.Second))["mapped"]; got[0] != StateKept || strings.Contains(got[1], "torch") {
		t.Errorf("plain segment of an exited owner: %v, want kept without a torch remark", got)
	}
}
