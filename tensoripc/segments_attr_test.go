package tensoripc

import (
	"testing"
	"time"
)

// TestTorchOwner: a torch_<pid>_... name is trusted only where it cannot
// point at the wrong member (every extension's init is pid 1 of its own pid
// namespace).
func TestTorchOwner(t *testing.T) {
	born := time.Unix(1000, 0)
	before, after := born.Add(-time.Second), born.Add(time.Second)
	live := &memberRecord{ID: "holder", PID: 10, Added: before}
	gone := &memberRecord{ID: "sender", PID: 20, Added: before, Exited: after}
	old := &memberRecord{ID: "old", PID: 30, Added: before.Add(-time.Hour), Exited: before}
	late := &memberRecord{ID: "late", PID: 40, Added: after, Exited: after}
	holder := func(int) (string, int, bool) { return "holder", 10, true }
	nobody := func(int) (string, int, bool) { return "", 0, false }
	byHostPID := func(int) (string, int, bool) { return "holder", 1, true }
	tests := []struct {
		name    string
		members []*memberRecord
		users   map[string]bool
		resolve func(int) (string, int, bool)
		want    string
	}{
		{"the only candidate does not use it: a later scan decides", []*memberRecord{live}, nil, holder, OwnerUnknown},
		{"the candidate uses it", []*memberRecord{live, gone}, map[string]bool{"holder": true}, holder, "holder"},
		{"the creator died before any scan: not the live pid 1", []*memberRecord{live, gone}, nil, holder, "sender"},
		{"exited before it was born: not a candidate", []*memberRecord{live, old}, map[string]bool{"holder": true}, holder, "holder"},
		{"added after it was born: not a candidate", []*memberRecord{live, late, gone}, nil, holder, "sender"},
		{"two could have made it", []*memberRecord{live, gone, {ID: "other", Added: before, Exited: after}}, nil, holder, OwnerUnknown},
		{"someone else uses it", []*memberRecord{live}, map[string]bool{"reader": true}, holder, OwnerUnknown},
		{"no live candidate, one exited", []*memberRecord{gone}, nil, nobody, "sender"},
		{"the name's pid is the host pid of the candidate's process", []*memberRecord{live, gone}, nil, byHostPID, "holder"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := &state{Members: map[string]*memberRecord{}}
			for _, m := range tc.members {
				st.Members[m.ID] = m
			}
			if got, _, _ := torchOwner(st, 1, born, tc.users, tc.resolve, false); got != tc.want {
				t.Errorf("owner %q, want %q", got, tc.want)
			}
		})
	}
}
