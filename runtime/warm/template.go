package warm

import (
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/opencontainers/runc/libcontainer/system"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/runtime"
	"github.com/pyisolate/pyisolate-oci/spec"
)

// zygoteSource is the template's program, written to its directory as
// zygoteName.
//
//go:embed zygote.py
var zygoteSource string

const (
	// warmDir is the directory under the state root that holds, for each
	// template, a directory the template owns (its socket and program) and,
	// beside it where only the runtime may write, its record (.json), log
	// (.log) and lock (.lock): nothing the runtime reads comes from the
	// template's own directory but its socket, which it opens without
	// following links (dialTemplate).
	warmDir = runtime.WarmDir
	// templateMount is where a template sees its directory.
	templateMount = "/run/pyisolate-warm"
	// socketName is the zygote's listening socket in that directory.
	socketName = "zygote.sock"
	// zygoteName is the zygote's program in that directory.
	zygoteName = "zygote.py"
	// templatePrefix starts every template's container id.
	templatePrefix = "pyisolate-warm-"
	// AnnotationTemplate marks a template's container with its key.
	AnnotationTemplate = "io.pyisolate.out.warm-template"
	// templatePids is the pids limit of a template: its zygote and one
	// small helper per live member forked from it.
	templatePids = 4096
)

// StartTimeout bounds how long a template may take to import its preload
// list before a run gives up on it and starts cold.
var StartTimeout = 2 * time.Minute

// Key identifies a template: what a member shares with the template it
// forks from. Members with the same key use one template.
type Key struct {
	// Group is the isolation group (templates never cross groups).
	Group string `json:"group"`
	// Python is the interpreter (the process's args[0]).
	Python string `json:"python"`
	// Venv is the manifest's venv ("" for none).
	Venv string `json:"venv"`
	// Preload is the manifest's preload list, in its order.
	Preload []string `json:"preload"`
	// PythonEnv are the variables of the process environment that change
	// how the interpreter starts (templateEnv), sorted; the template gets
	// these and no others.
	PythonEnv []string `json:"python_env"`
	// UIDMap is the sandbox's uid mapping (host view).
	UIDMap []specs.LinuxIDMapping `json:"uid_map"`
}

// KeyOf returns the template key of member spec s of manifest m in group.
func KeyOf(s *specs.Spec, m *spec.Manifest, group string) Key {
	k := Key{Group: group, Venv: m.Venv, Preload: slices.Clone(m.Preload)}
	if s.Process != nil && len(s.Process.Args) > 0 {
		k.Python = s.Process.Args[0]
		k.PythonEnv = templateEnv(s.Process.Env)
	}
	if s.Linux != nil {
		k.UIDMap = s.Linux.UIDMappings
	}
	return k
}

// templateEnv returns the variables of env that change how the interpreter
// starts (PATH, HOME, LANG, LC_*, PYTHON*), sorted. A template runs with
// these only: its environment block stays in the memory of every member
// forked from it (/proc/PID/environ), so it must hold nothing of one
// member's that another should not see; a member's own environment is
// set in os.environ.
func templateEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k == "PATH" || k == "HOME" || k == "LANG" || strings.HasPrefix(k, "LC_") || strings.HasPrefix(k, "PYTHON") {
			out = append(out, kv)
		}
	}
	slices.Sort(out)
	return out
}

// Hash returns the key's hash, which names the template's directory and
// container.
func (k Key) Hash() string {
	b, _ := json.Marshal(k)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// record is a template's record (<hash>.json beside its directory).
type record struct {
	ID  string `json:"id"`
	Key Key    `json:"key"`
}

// template is a running template.
type template struct {
	id     string
	dir    string // the template's own: warmDir/<hash>
	socket string
	// initPID is the host pid of the zygote.
	initPID int
	key     Key
}

// file returns the runtime's file of the template with extension ext
// (".json", ".log", ".lock"), beside its directory.
func (t *template) file(ext string) string { return t.dir + ext }

// ensure returns the running template of key k, starting it (from member
// spec s) when there is none or the one recorded is dead. log receives
// what a user should know (a dead template replaced).
func ensure(ctx context.Context, r *runtime.Runtime, k Key, s *specs.Spec, memberID string, log func(string)) (*template, error) {
	root := r.StateRoot()
	hash := k.Hash()
	base := filepath.Join(root, warmDir)
	if err := os.MkdirAll(base, 0o711); err != nil {
		return nil, fmt.Errorf("warm template directory: %w", err)
	}
	t := &template{id: templatePrefix + hash, dir: filepath.Join(base, hash), key: k}
	t.socket = filepath.Join(t.dir, socketName)
	unlock, err := runtime.LockFile(ctx, t.file(".lock"))
	if err != nil {
		return nil, err
	}
	defer unlock()
	if c, err := r.Load(t.id); err == nil {
		if pid := c.InitPID(); pid > 0 && pidAlive(pid) {
			if _, err := os.Stat(t.socket); err == nil {
				t.initPID = pid
				return t, nil
			}
		}
		log(fmt.Sprintf("warm template %s is not serving (dead or never ready); starting a new one", t.id))
		if err := r.Delete(ctx, t.id, true); err != nil {
			return nil, fmt.Errorf("delete dead warm template %s: %w", t.id, err)
		}
	} else {
		_ = r.Delete(ctx, t.id, true) // what a creation cut short left
	}
	if err := t.start(ctx, r, s, memberID); err != nil {
		_ = r.Delete(context.WithoutCancel(ctx), t.id, true)
		_ = os.RemoveAll(t.dir)
		_ = os.Remove(t.file(".json"))
		return nil, err
	}
	return t, nil
}

// start creates and starts the template's container and waits until its
// zygote listens.
func (t *template) start(ctx context.Context, r *runtime.Runtime, s *specs.Spec, memberID string) error {
	_ = os.RemoveAll(t.dir)
	if err := os.Mkdir(t.dir, 0o700); err != nil {
		return fmt.Errorf("warm template directory: %w", err)
	}
	uid, gid := mappedRoot(s)
	if err := os.Chown(t.dir, uid, gid); err != nil {
		return fmt.Errorf("warm template directory: %w", err)
	}
	if err := os.WriteFile(filepath.Join(t.dir, zygoteName), []byte(zygoteSource), 0o644); err != nil {
		return fmt.Errorf("warm template program: %w", err)
	}
	rec, _ := json.Marshal(record{ID: t.id, Key: t.key})
	if err := os.WriteFile(t.file(".json"), rec, 0o644); err != nil {
		return fmt.Errorf("warm template record: %w", err)
	}
	logf, err := os.OpenFile(t.file(".log"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("warm template log: %w", err)
	}
	defer logf.Close()
	ts, err := templateSpec(r, s, t, memberID)
	if err != nil {
		return err
	}
	res, err := r.Reserve(ctx, t.id, runtime.OwnerTemplate)
	if err != nil {
		return fmt.Errorf("warm template %s: %w", t.id, err)
	}
	defer res.Keep()
	c, err := r.Create(ctx, t.id, ts, runtime.CreateOptions{Stdout: logf, Stderr: logf})
	if err != nil {
		return fmt.Errorf("create warm template %s: %w", t.id, err)
	}
	if err := c.Start(ctx); err != nil {
		return fmt.Errorf("start warm template %s: %w", t.id, err)
	}
	t.initPID = c.InitPID()
	deadline := time.Now().Add(StartTimeout)
	for {
		if _, err := os.Stat(t.socket); err == nil {
			return nil
		}
		if !pidAlive(t.initPID) {
			return fmt.Errorf("warm template %s exited while importing %s: %s", t.id,
				strings.Join(t.key.Preload, ", "), logTail(t.file(".log")))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("warm template %s: not ready after %s", t.id, StartTimeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// templateSpec is the template's sandbox: the member's (same filesystem,
// namespaces, limits, capabilities none, no_new_privs), running the zygote,
// with the template's directory bound at templateMount, and a seccomp filter
// that also allows unshare and setns: the zygote's children make the
// namespaces a member is moved into, and each installs the member's own
// filter (which denies both) on top before any extension code runs.
func templateSpec(r *runtime.Runtime, s *specs.Spec, t *template, memberID string) (*specs.Spec, error) {
	var ts specs.Spec
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &ts); err != nil {
		return nil, err
	}
	ts.Process.Args = []string{t.key.Python, templateMount + "/" + zygoteName, templateMount + "/" + socketName}
	ts.Process.Env = append(slices.Clone(t.key.PythonEnv), "PYISOLATE_WARM_PRELOAD="+strings.Join(t.key.Preload, ","))
	ts.Process.Cwd = "/"
	ts.Mounts = append(ts.Mounts, specs.Mount{
		Destination: templateMount, Type: "bind", Source: t.dir,
		Options: []string{"rbind", "rw", "nosuid", "nodev", "noexec"},
	})
	if ts.Root != nil && ts.Root.Path == r.EmptyRootfsPath(memberID) {
		// The member's root is an empty one the runtime made for it.
		p, err := r.EmptyRootfs(t.id)
		if err != nil {
			return nil, err
		}
		ts.Root.Path = p
	}
	if ts.Linux != nil {
		if ts.Linux.CgroupsPath != "" {
			ts.Linux.CgroupsPath = filepath.Join(filepath.Dir(ts.Linux.CgroupsPath), t.id)
		}
		if ts.Linux.Resources != nil && ts.Linux.Resources.Pids != nil {
			pids := int64(templatePids)
			ts.Linux.Resources.Pids = &specs.LinuxPids{Limit: &pids}
		}
		if sc := ts.Linux.Seccomp; sc != nil {
			sc.Syscalls = append(sc.Syscalls, specs.LinuxSyscall{
				Names: []string{"unshare", "setns"}, Action: specs.ActAllow,
			})
		}
	}
	delete(ts.Annotations, spec.AnnotationGroup)
	if ts.Annotations == nil {
		ts.Annotations = map[string]string{}
	}
	ts.Annotations[AnnotationTemplate] = t.key.Hash()
	return &ts, nil
}

// mappedRoot returns the host uid and gid of the sandbox's root.
func mappedRoot(s *specs.Spec) (int, int) {
	uid, gid := 0, 0
	if s.Linux != nil && len(s.Linux.UIDMappings) > 0 {
		uid = int(s.Linux.UIDMappings[0].HostID)
	}
	if s.Linux != nil && len(s.Linux.GIDMappings) > 0 {
		gid = int(s.Linux.GIDMappings[0].HostID)
	}
	return uid, gid
}

// StopGroup deletes the templates of isolation group name under r's state
// root (the group ended: no member is left to fork for). Members started
// from a template are children of its pid namespace and die with it, so a
// group's templates go only when no member is alive.
func StopGroup(ctx context.Context, r *runtime.Runtime, name string) error {
	base := filepath.Join(r.StateRoot(), warmDir)
	records, err := filepath.Glob(filepath.Join(base, "*.json"))
	if err != nil {
		return fmt.Errorf("warm templates: %w", err)
	}
	var errs []error
	for _, p := range records {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var rec record
		if json.Unmarshal(b, &rec) != nil || rec.Key.Group != name || !strings.HasPrefix(rec.ID, templatePrefix) {
			continue
		}
		t := &template{id: rec.ID, dir: strings.TrimSuffix(p, ".json")}
		unlock, err := runtime.LockFile(ctx, t.file(".lock"))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := r.Delete(ctx, rec.ID, true); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete warm template %s: %w", rec.ID, err))
		}
		_ = os.RemoveAll(t.dir)
		for _, ext := range []string{".json", ".log", ".lock"} {
			_ = os.Remove(t.file(ext))
		}
		unlock()
	}
	// Lock files of templates that failed to start (no record).
	locks, _ := filepath.Glob(filepath.Join(base, "*.lock"))
	for _, l := range locks {
		dir := strings.TrimSuffix(l, ".lock")
		if _, err := os.Stat(dir + ".json"); err == nil {
			continue
		}
		if f, err := os.OpenFile(l, os.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
			if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
				_ = os.Remove(l)
				_ = os.Remove(dir + ".log")
			}
			f.Close()
		}
	}
	_ = os.Remove(base) // when empty
	return errors.Join(errs...)
}

// pidAlive reports whether pid exists and is not a zombie.
func pidAlive(pid int) bool {
	st, err := system.Stat(pid)
	return err == nil && st.State != system.Zombie && st.State != system.Dead
}

// logTail returns the last line(s) of a log file, for an error.
func logTail(path string) string {
	b, _ := os.ReadFile(path)
	s := strings.TrimSpace(string(b))
	if len(s) > 600 {
		s = "..." + s[len(s)-600:]
	}
	if s == "" {
		return "(no output)"
	}
	return s
}
