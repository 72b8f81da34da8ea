package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/pyisolate/pyisolate-oci/runtime"
	rgroup "github.com/pyisolate/pyisolate-oci/runtime/group"
	"github.com/pyisolate/pyisolate-oci/sandbox"
	"github.com/pyisolate/pyisolate-oci/spec"
	"github.com/pyisolate/pyisolate-oci/tensoripc"
)

func init() {
	register("shm", "inspect and reclaim isolation groups' shared memory (ls, gc, path)", shmMain)
}

// shmUsage is the usage of the shm verb.
const shmUsage = `Usage: pyisolate shm ls [--root DIR] [--group G] [--json]
       pyisolate shm gc [--root DIR] [--group G]
       pyisolate shm path --group G [--root DIR] [--join] [--pid PID] [--shm-size SIZE]

Inspects and reclaims isolation groups' shared memory: ls lists the segments,
gc removes those whose lease ended, path prints a group's directories.
See 'pyisolate shm SUBCOMMAND -h' for the flags.
`

func shmMain(args []string) int {
	if len(args) == 0 {
		return fail(exitUsage, "shm: want a subcommand: ls, gc or path")
	}
	switch args[0] {
	case "-h", "--help", "help":
		fmt.Print(shmUsage)
		return 0
	case "ls":
		return shmLs(args[1:])
	case "gc":
		return shmGC(args[1:])
	case "path":
		return shmPath(args[1:])
	}
	return fail(exitUsage, "shm: unknown subcommand %q (want ls, gc or path)", args[0])
}

// shmFlags parses the flags the shm subcommands share. When ok is false
// the subcommand returns code: 0 after -h, exitUsage after a bad flag.
func shmFlags(name, usage string, args []string, extra func(fs *flag.FlagSet)) (root, group string, code int, ok bool) {
	fs := newFlagSet("shm "+name, usage)
	rootf := fs.String("root", runtime.DefaultStateRoot(), rootFlagHelp)
	groupf := fs.String("group", "", "isolation group (default: all groups)")
	if extra != nil {
		extra(fs)
	}
	if code := parseFlags(fs, args); code >= 0 {
		return "", "", code, false
	}
	if fs.NArg() > 0 {
		return "", "", fail(exitUsage, "shm %s: unexpected argument %q", name, fs.Arg(0)), false
	}
	if code := checkIDFlags("shm "+name, "", *groupf); code >= 0 {
		return "", "", code, false
	}
	return *rootf, *groupf, 0, true
}

// groupsOf returns the named group, or every group under root.
func groupsOf(root, group string) ([]*rgroup.Group, error) {
	names := []string{group}
	if group == "" {
		var err error
		if names, err = rgroup.List(root); err != nil {
			return nil, err
		}
	}
	var gs []*rgroup.Group
	for _, n := range names {
		g, err := rgroup.Load(root, n)
		if err != nil {
			return nil, err
		}
		gs = append(gs, g)
	}
	return gs, nil
}

// shmSegment is one row of `shm ls`.
type shmSegment struct {
	Group    string    `json:"group"`
	Name     string    `json:"name"`
	Owner    string    `json:"owner"`
	Size     int64     `json:"size"`
	Created  time.Time `json:"created"`
	MappedBy []string  `json:"mapped_by"`
	Lease    time.Time `json:"lease_expires,omitzero"`
	// State and StateDetail are tensoripc.Domain.SegmentState's verdict
	// (live, idle, stranded, kept, reclaimable).
	State       string `json:"state"`
	StateDetail string `json:"state_detail,omitempty"`
}

func shmLs(args []string) int {
	var asJSON *bool
	root, group, code, ok := shmFlags("ls", "[--root DIR] [--group G] [--json]\n\nLists the shared-memory segments of every group, or of group G.",
		args, func(fs *flag.FlagSet) {
			asJSON = fs.Bool("json", false, "print JSON")
		})
	if !ok {
		return code
	}
	ctx := context.Background()
	gs, err := groupsOf(root, group)
	if err != nil {
		return fail(1, "shm ls: %v", err)
	}
	rows := []shmSegment{}
	var warnings []string
	for _, g := range gs {
		segs, err := g.Domain.Segments(ctx)
		if err != nil {
			return fail(1, "shm ls: %v", err)
		}
		for _, s := range segs {
			state, detail := g.Domain.SegmentState(s, time.Now())
			rows = append(rows, shmSegment{Group: g.Name, Name: s.Name, Owner: s.Owner, Size: s.Size,
				Created: s.Created, MappedBy: s.UsedBy, Lease: s.LeaseExpires, State: state, StateDetail: detail})
		}
		if p, err := g.Domain.Pressure(ctx); err == nil && p.Warn {
			warnings = append(warnings, p.Message)
		}
		warnings = append(warnings, g.Domain.Warnings()...)
	}
	for _, w := range warnings {
		fmt.Fprintln(os.Stderr, "pyisolate: warning: "+w)
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			return fail(1, "shm ls: %v", err)
		}
		return 0
	}
	if err := writeSegmentTable(os.Stdout, rows, time.Now()); err != nil {
		return fail(1, "shm ls: %v", err)
	}
	return 0
}

// writeSegmentTable writes the human form of `shm ls`. Segment names are
// chosen by extensions, so every string from the group's state goes through
// displayText: a name cannot move the cursor, recolour or clear the admin's
// terminal, start a new row, or shift the columns.
func writeSegmentTable(w io.Writer, rows []shmSegment, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "GROUP\tSEGMENT\tOWNER\tSIZE\tAGE\tMAPPED BY\tSTATE")
	for _, r := range rows {
		mapped := make([]string, len(r.MappedBy))
		for i, m := range r.MappedBy {
			mapped[i] = displayText(m)
		}
		list := strings.Join(mapped, ",")
		if list == "" {
			list = "-"
		}
		state := r.State
		if r.StateDetail != "" {
			state += ": " + r.StateDetail
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", displayText(r.Group), displayText(r.Name), displayText(r.Owner),
			tensoripc.HumanBytes(r.Size), now.Sub(r.Created).Round(time.Second), list, displayText(state))
	}
	return tw.Flush()
}

// displayText returns s as it is when every character of it is printable
// (letters, marks, numbers, punctuation, symbols, the ASCII space), and
// otherwise quoted Go-style, with escapes for control characters
// (ESC, newline, tab...), Unicode format characters (such as the bidi
// overrides) and invalid UTF-8. A string that starts with a double quote
// is quoted too, so that it cannot pass for a quoted one.
func displayText(s string) string {
	if !utf8.ValidString(s) || strings.HasPrefix(s, `"`) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

func shmGC(args []string) int {
	root, group, code, ok := shmFlags("gc", "[--root DIR] [--group G]\n\nRemoves the segments whose lease ended and ends groups with no member alive.", args, nil)
	if !ok {
		return code
	}
	ctx := context.Background()
	gs, err := groupsOf(root, group)
	if err != nil {
		return fail(1, "shm gc: %v", err)
	}
	for _, g := range gs {
		rep, err := g.Domain.GC(ctx)
		if err != nil {
			return fail(1, "shm gc: %v", err)
		}
		for _, s := range rep.Removed {
			fmt.Printf("removed %s/%s (%s, owner %s)\n", g.Name, displayText(s.Name), tensoripc.HumanBytes(s.Size), displayText(s.Owner))
		}
		for _, k := range rep.Kept {
			fmt.Printf("kept %s/%s: %s\n", g.Name, displayText(k.Name), displayText(k.Reason))
		}
		fmt.Printf("group %s: freed %s\n", g.Name, tensoripc.HumanBytes(rep.Freed))
		ended, err := g.EndIfAbandoned(ctx)
		if err != nil {
			return fail(1, "shm gc: %v", err)
		}
		if ended {
			fmt.Printf("group %s: no member alive; ended (shared memory unmounted and removed)\n", g.Name)
		}
	}
	return 0
}

// shmPath prints where a group's shared memory and sockets are, so that a
// host running outside containers can join the group. With --join it creates
// the group if needed and registers the process --pid (default: the caller's
// parent, the host that ran this command) as a member.
func shmPath(args []string) int {
	var join *bool
	var pid *int
	var size *string
	root, group, code, ok := shmFlags("path", "--group G [--root DIR] [--join] [--pid PID] [--shm-size SIZE]\n\n"+
		"Prints where group G's shared memory and sockets are; with --join creates the group if needed and joins it.", args, func(fs *flag.FlagSet) {
		join = fs.Bool("join", false, "create the group if needed and join it as member 'host'")
		pid = fs.Int("pid", os.Getppid(), "with --join: host pid of the joining process")
		size = fs.String("shm-size", "", "with --join: size of the group's tmpfs when it is created (e.g. 1Gi)")
	})
	if !ok {
		return code
	}
	if group == "" {
		return fail(exitUsage, "shm path: --group is required")
	}
	ctx := context.Background()
	var g *rgroup.Group
	var err error
	if *join {
		var sz spec.ByteSize
		if *size != "" {
			if sz, err = spec.ParseByteSize(*size); err != nil {
				return fail(exitUsage, "shm path: --shm-size: %v", err)
			}
		}
		g, err = sandbox.JoinHost(ctx, root, group, *pid, int64(sz))
	} else {
		g, err = rgroup.Load(root, group)
	}
	if err != nil {
		return fail(1, "shm path: %v", err)
	}
	fmt.Printf("shm=%s\nsockets=%s\n", g.ShmDir(), g.SocketDir())
	return 0
}
