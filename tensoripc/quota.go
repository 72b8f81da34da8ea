package tensoripc

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// WarnPercent is the share of the quota at which Pressure warns.
const WarnPercent = 90

// OwnerUsage is what one owner (a member id or OwnerUnknown) holds.
type OwnerUsage struct {
	Owner    string
	Bytes    int64 // allocated bytes
	Segments int
	Exited   time.Time // zero while the owner lives (or is unknown)
}

// Usage is the group's shared-memory use.
type Usage struct {
	Group string
	// Quota is the tmpfs size (statfs), or the configured size when the
	// domain is file-backed (then nothing enforces it).
	Quota  int64
	Used   int64        // bytes allocated by all segments
	Owners []OwnerUsage // largest first
}

// Pressure is Usage judged against the quota.
type Pressure struct {
	Usage
	Percent float64 // Used/Quota in percent
	Warn    bool    // Percent >= WarnPercent
	// Message is the warning line, e.g. "shm group G: 93% of 1.0 GiB used;
	// largest owners: ext-a 600 MiB, host 300 MiB"; empty when not Warn.
	Message string
}

// Usage returns the bytes used per owner and in all, and the quota.
func (d *Domain) Usage(ctx context.Context) (Usage, error) {
	var u Usage
	err := d.update(ctx, func(st *state) error {
		segs, err := d.scan(st, time.Now())
		if err != nil {
			return err
		}
		u = Usage{Group: d.opts.Group, Quota: st.Size}
		if st.Mounted {
			var fs unix.Statfs_t
			if err := unix.Statfs(d.dir, &fs); err != nil {
				return fmt.Errorf("statfs %s: %w", d.dir, err)
			}
			u.Quota = int64(fs.Blocks) * fs.Bsize
		}
		by := map[string]*OwnerUsage{}
		for _, s := range segs {
			o := by[s.Owner]
			if o == nil {
				o = &OwnerUsage{Owner: s.Owner}
				if m := st.Members[s.Owner]; m != nil {
					o.Exited = m.Exited
				}
				by[s.Owner] = o
			}
			o.Bytes += s.Size
			o.Segments++
			u.Used += s.Size
		}
		for _, o := range by {
			u.Owners = append(u.Owners, *o)
		}
		sort.Slice(u.Owners, func(i, j int) bool {
			a, b := u.Owners[i], u.Owners[j]
			return a.Bytes > b.Bytes || a.Bytes == b.Bytes && a.Owner < b.Owner
		})
		return nil
	})
	if err != nil {
		return Usage{}, fmt.Errorf("usage of shm group %s: %w", d.opts.Group, err)
	}
	return u, nil
}

// Pressure returns the usage and, at WarnPercent of the quota or more, a
// warning line naming the largest owners.
func (d *Domain) Pressure(ctx context.Context) (Pressure, error) {
	u, err := d.Usage(ctx)
	if err != nil {
		return Pressure{}, err
	}
	p := Pressure{Usage: u}
	if u.Quota > 0 {
		p.Percent = 100 * float64(u.Used) / float64(u.Quota)
	}
	if p.Percent >= WarnPercent {
		p.Warn = true
		p.Message = fmt.Sprintf("shm group %s: %.0f%% of %s used; largest owners: %s",
			u.Group, p.Percent, HumanBytes(u.Quota), ownerList(u.Owners, 3))
	}
	return p, nil
}

// ExplainENOSPC tells, for a member that just got ENOSPC, who uses the group's
// shared memory and what can be done. It never fails: problems reading the
// domain become part of the text.
func (d *Domain) ExplainENOSPC(ctx context.Context) string {
	u, err := d.Usage(ctx)
	if err != nil {
		return fmt.Sprintf("shm group %s is out of space (no space left on device); its usage could not be read: %v", d.opts.Group, err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "shm group %s is out of space (no space left on device): %s of %s used", u.Group, HumanBytes(u.Used), HumanBytes(u.Quota))
	if d.FileBacked() {
		fmt.Fprintf(&b, " (file-backed: the filesystem holding %s is full; the quota is not enforced)", d.dir)
	} else if d.SharedTmpfs() {
		fmt.Fprintf(&b, " (rootless: %s lies on a tmpfs shared with other users of it, which may be full before the quota is; the quota is not enforced)", d.dir)
	}
	b.WriteString(".")
	d.writeOwners(&b, u)
	fmt.Fprintf(&b, " Remedies: free tensors in the largest owner, raise limits.shm_size (now %s), or run `pyisolate shm gc` to reclaim segments of exited members.", HumanBytes(u.Quota))
	return b.String()
}

// writeOwners appends " By owner: A 3.0 MiB in 2 segments; ..." (or " No
// segments are stored.") to b.
func (d *Domain) writeOwners(b *strings.Builder, u Usage) {
	if len(u.Owners) == 0 {
		b.WriteString(" No segments are stored.")
		return
	}
	b.WriteString(" By owner:")
	for i, o := range u.Owners {
		sep := ";"
		if i == 0 {
			sep = ""
		}
		plural := "s"
		if o.Segments == 1 {
			plural = ""
		}
		fmt.Fprintf(b, "%s %s %s in %d segment%s", sep, o.Owner, HumanBytes(o.Bytes), o.Segments, plural)
		if !o.Exited.IsZero() {
			fmt.Fprintf(b, " (exited %s; reclaimable after %s)", o.Exited.Format(time.RFC3339), o.Exited.Add(d.Retention()).Format(time.RFC3339))
		}
	}
	b.WriteString(".")
}

// FullMargin is the free space under which ExplainSIGBUS calls the group's
// tmpfs full: a page fault needs one page (4 KiB, or a 2 MiB huge page that
// falls back to small ones), and the group's usage is read after the process
// died, when a little may have been freed.
const FullMargin = 4 << 20

// ExplainSIGBUS tells, for a member process killed by SIGBUS, whether the
// group's shared memory is full and who holds it. A process that writes into
// a mapped tmpfs segment (torch filling a file_system segment, numpy writing
// a mapped file) gets SIGBUS rather than ENOSPC when the tmpfs has no page
// left. full reports that free space is under FullMargin (or 1% of the
// quota, whichever is larger). It never fails: problems reading the domain
// become part of the text.
func (d *Domain) ExplainSIGBUS(ctx context.Context) (text string, full bool) {
	u, err := d.Usage(ctx)
	if err != nil {
		return fmt.Sprintf("the usage of shm group %s could not be read: %v", d.opts.Group, err), false
	}
	free := u.Quota - u.Used
	if d.FileBacked() || d.SharedTmpfs() {
		// The filesystem, not the quota, runs out first: on a shared tmpfs
		// whichever is smaller.
		var fs unix.Statfs_t
		if unix.Statfs(d.dir, &fs) == nil {
			if avail := int64(fs.Bavail) * fs.Bsize; d.FileBacked() || avail < free {
				free = avail
			}
		}
	}
	full = u.Quota > 0 && free < max(FullMargin, u.Quota/100)
	var b strings.Builder
	if !full {
		fmt.Fprintf(&b, "the group's /dev/shm (shm group %s) is not full, %s of %s used: the bus error has another cause (a segment truncated while mapped, or a bad memory access)", u.Group, HumanBytes(u.Used), HumanBytes(u.Quota))
		return b.String(), false
	}
	fmt.Fprintf(&b, "the group's /dev/shm was full (shm group %s: %s of %s used); writing into a shared-memory segment with no page left raises SIGBUS, not ENOSPC.", u.Group, HumanBytes(u.Used), HumanBytes(u.Quota))
	d.writeOwners(&b, u)
	fmt.Fprintf(&b, " Remedies: raise limits.shm_size (now %s) above the tensors the group shares at once, free tensors in the largest owner, or run `pyisolate shm gc` to reclaim segments of exited members.", HumanBytes(u.Quota))
	return b.String(), true
}

func ownerList(owners []OwnerUsage, n int) string {
	var parts []string
	for i, o := range owners {
		if i == n {
			break
		}
		parts = append(parts, o.Owner+" "+HumanBytes(o.Bytes))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// HumanBytes formats n in binary units: "512 B", "4.0 MiB", "600 MiB". It is
// the one byte formatter of the project's messages (CLI, detect, shm).
func HumanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n)
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB"}
	i := -1
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v < 10 {
		return fmt.Sprintf("%.1f %s", v, units[i])
	}
	return fmt.Sprintf("%.0f %s", v, units[i])
}
