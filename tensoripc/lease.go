package tensoripc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ReclaimReport says what Reclaim did.
type ReclaimReport struct {
	Removed []Segment     // segments deleted
	Kept    []KeptSegment // segments of exited or unknown owners left in place, with why
	Freed   int64         // bytes allocated by the removed segments
}

// KeptSegment is a segment Reclaim considered and left in place.
type KeptSegment struct {
	Segment
	Reason string
}

// MemberExited records that member id exited at the given time: its segments
// become reclaimable once the retention period has passed since then. A
// member whose process is found gone before this call is marked exited at the
// time of that scan.
func (d *Domain) MemberExited(ctx context.Context, id string, at time.Time) error {
	err := d.update(ctx, func(st *state) error {
		m := st.Members[id]
		if m == nil {
			return fmt.Errorf("no member %q", id)
		}
		if m.Exited.IsZero() || at.Before(m.Exited) {
			m.Exited = at
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("member %s exited from shm group %s: %w", id, d.opts.Group, err)
	}
	return nil
}

// Reclaim deletes the segments whose owner exited more than the retention
// period before now, unless a process of a live member still maps or holds
// them open. Segments of live members are never touched, nor are segments of
// unknown owner (they are reported in Kept). now is a parameter so that
// callers and tests decide the clock.
func (d *Domain) Reclaim(ctx context.Context, now time.Time) (ReclaimReport, error) {
	var rep ReclaimReport
	err := d.update(ctx, func(st *state) error {
		rep = ReclaimReport{}
		segs, err := d.scan(st, now)
		if err != nil {
			return err
		}
		retention := d.retention(st)
		for _, s := range segs {
			m := st.Members[s.Owner]
			switch {
			case m == nil:
				rep.Kept = append(rep.Kept, KeptSegment{s, fmt.Sprintf("owner %s is not a member; never reclaimed automatically", s.Owner)})
				continue
			case m.Exited.IsZero():
				continue // live owner: never touched
			case now.Before(s.LeaseExpires):
				rep.Kept = append(rep.Kept, KeptSegment{s, fmt.Sprintf("owner %s exited; lease runs until %s", s.Owner, s.LeaseExpires.Format(time.RFC3339Nano))})
				continue
			case len(s.UsedBy) > 0:
				rep.Kept = append(rep.Kept, KeptSegment{s, fmt.Sprintf("owner %s exited; still used by %s (pids %v)", s.Owner, strings.Join(s.UsedBy, ", "), append(append([]int(nil), s.MappedBy...), s.OpenBy...))})
				continue
			}
			if err := os.Remove(filepath.Join(d.dir, s.Name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("reclaim segment %s of exited member %s: %w", s.Name, s.Owner, err)
			}
			delete(st.Segments, s.Name)
			rep.Removed = append(rep.Removed, s)
			rep.Freed += s.Size
		}
		// Forget exited members whose lease is over and who own nothing.
		owns := map[string]bool{}
		for _, r := range st.Segments {
			owns[r.Owner] = true
		}
		for id, m := range st.Members {
			if !m.Exited.IsZero() && !owns[id] && !now.Before(m.Exited.Add(retention)) {
				delete(st.Members, id)
			}
		}
		return nil
	})
	if err != nil {
		return ReclaimReport{}, fmt.Errorf("reclaim shm group %s: %w", d.opts.Group, err)
	}
	return rep, nil
}

// GC is Reclaim with the current time: what `pyisolate shm gc` runs.
func (d *Domain) GC(ctx context.Context) (ReclaimReport, error) {
	return d.Reclaim(ctx, time.Now())
}
