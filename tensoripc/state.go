package tensoripc

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Segment states, as SegmentState judges them (the STATE of `shm ls`). They
// say what the runtime's retention and `shm gc` will do with a segment, and
// what torch's file_system strategy can still do with it.
const (
	// StateLive: a live member maps or holds the segment.
	StateLive = "live"
	// StateIdle: its owner lives and no process maps it (a plain file between
	// uses); it stays until its owner exits, then the retention applies.
	StateIdle = "idle"
	// StateStranded: a torch segment that no process maps while its owner
	// lives, with references left in torch's header: a receiver died
	// mid-hand-off holding (or before dropping) a reference, so torch never
	// unlinks it. It stays until its sender exits (its torch_shm_manager
	// unlinks what it registered), and the retention applies from then.
	StateStranded = "stranded"
	// StateKept: its owner exited and the retention has not ended. A torch
	// segment cannot be opened by torch any more (its sender's shm manager
	// died with it: "Connection refused"); retention only delays reclaiming
	// it, and numpy or Go readers can still open it.
	StateKept = "kept"
	// StateReclaimable: its owner exited, the retention ended and no live
	// member uses it: the next sweep or `shm gc` removes it.
	StateReclaimable = "reclaimable"
)

// TorchRefcount reads the reference count in the torch header of a torch_*
// segment of the domain.
func (d *Domain) TorchRefcount(name string) (int32, error) {
	if !TorchLayout(name) {
		return 0, fmt.Errorf("segment %s has no torch header (not a torch_* name)", name)
	}
	f, err := os.Open(filepath.Join(d.dir, strings.TrimPrefix(name, "/")))
	if err != nil {
		return 0, fmt.Errorf("torch refcount of %s: %w", name, err)
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.ReadAt(b[:], 0); err != nil {
		return 0, fmt.Errorf("torch refcount of %s: %w", name, err)
	}
	return int32(binary.NativeEndian.Uint32(b[:])), nil
}

// SegmentState judges a segment (from Segments) at now: one of the State*
// values and a detail for people, which says what torch can still do with
// it and when the runtime reclaims it.
func (d *Domain) SegmentState(s Segment, now time.Time) (state, detail string) {
	torch := TorchLayout(s.Name)
	used := len(s.MappedBy) > 0 || len(s.OpenBy) > 0
	if !s.LeaseExpires.IsZero() { // the owner exited
		cannot := ""
		if torch {
			cannot = "; torch cannot open it anew (its sender's shm manager died with it)"
		}
		switch {
		case used:
			return StateLive, fmt.Sprintf("owner %s exited; still used by %s%s", s.Owner, strings.Join(s.UsedBy, ","), cannot)
		case now.Before(s.LeaseExpires):
			return StateKept, fmt.Sprintf("owner %s exited; reclaimed after %s%s", s.Owner, s.LeaseExpires.Format(time.RFC3339), cannot)
		}
		return StateReclaimable, fmt.Sprintf("owner %s exited; retention ended %s", s.Owner, s.LeaseExpires.Format(time.RFC3339))
	}
	if used {
		return StateLive, ""
	}
	if torch {
		if n, err := d.TorchRefcount(s.Name); err == nil && n > 0 {
			return StateStranded, fmt.Sprintf("no process maps it, %d torch reference(s) left (a receiver died mid-hand-off); stays until its sender %s exits", n, s.Owner)
		}
	}
	if s.Owner == OwnerUnknown {
		return StateIdle, "no process maps it; owner unknown"
	}
	return StateIdle, fmt.Sprintf("no process maps it; stays until its owner %s exits", s.Owner)
}
