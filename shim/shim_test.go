package shim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	task2 "github.com/containerd/containerd/api/runtime/task/v2"
	taskAPI "github.com/containerd/containerd/api/runtime/task/v3"
	"github.com/containerd/containerd/api/types/task"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/opencontainers/runc/libcontainer"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"

	"github.com/pyisolate/pyisolate-oci/spec"
)

func TestParseStdioURI(t *testing.T) {
	for _, tc := range []struct {
		in, scheme, path, err string
	}{
		{"", "", "", ""},
		{"/run/containerd/fifo/1/stdout", "fifo", "/run/containerd/fifo/1/stdout", ""},
		{"fifo:///tmp/x", "fifo", "/tmp/x", ""},
		{"file:///var/log/c.log", "file", "/var/log/c.log", ""},
		{"binary:///usr/bin/logger?a=b", "binary", "/usr/bin/logger", ""},
		{"http://example.com/x", "", "", `unsupported scheme "http"`},
	} {
		u, err := parseStdioURI(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: err %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || u.Scheme != tc.scheme || u.Path != tc.path {
			t.Errorf("%q: %v %q %q, want %q %q", tc.in, err, u.Scheme, u.Path, tc.scheme, tc.path)
		}
	}
}

func TestGroupID(t *testing.T) {
	bundle := func(annotations map[string]string, manifest string) string {
		dir := t.TempDir()
		b, _ := json.Marshal(map[string]any{"annotations": annotations})
		if err := os.WriteFile(filepath.Join(dir, spec.ConfigFile), b, 0o644); err != nil {
			t.Fatal(err)
		}
		if manifest != "" {
			if err := os.WriteFile(filepath.Join(dir, spec.ManifestFile), []byte(manifest), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	for _, tc := range []struct {
		name     string
		bundle   string
		id, want string
	}{
		{"alone", bundle(nil, ""), "c1", "c1"},
		{"pod", bundle(map[string]string{"io.kubernetes.cri.sandbox-id": "pod1", spec.AnnotationFieldGroup: "g"}, ""), "c1", "pod1"},
		{"group annotation", bundle(map[string]string{spec.AnnotationFieldGroup: "g1"}, ""), "c1", "pyisolate-group:g1"},
		{"manifest file", bundle(nil, `{"group": "g2"}`), "c1", "pyisolate-group:g2"},
		{"manifest annotation", bundle(map[string]string{spec.AnnotationManifest: `{"group": "g3"}`}, ""), "c1", "pyisolate-group:g3"},
		{"manifest without group", bundle(nil, `{"name": "x"}`), "c1", "c1"},
		{"no config", t.TempDir(), "c2", "c2"},
	} {
		if got := groupID(tc.bundle, tc.id); got != tc.want {
			t.Errorf("%s: groupID = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestRecodeV2V3(t *testing.T) {
	in := &task2.CreateTaskRequest{ID: "c1", Bundle: "/b", Stdout: "/fifo", Terminal: true}
	out := &taskAPI.CreateTaskRequest{}
	if err := recode(in, out); err != nil {
		t.Fatal(err)
	}
	if out.ID != "c1" || out.Bundle != "/b" || out.Stdout != "/fifo" || !out.Terminal {
		t.Errorf("recoded %+v", out)
	}
	resp, err := adapt[taskAPI.StateRequest, task2.StateResponse](t.Context(), &task2.StateRequest{ID: "c1", ExecID: "e"},
		func(_ context.Context, r *taskAPI.StateRequest) (*taskAPI.StateResponse, error) {
			return &taskAPI.StateResponse{ID: r.ID, ExecID: r.ExecID, Status: task.Status_RUNNING, Pid: 7}, nil
		})
	if err != nil || resp.ID != "c1" || resp.ExecID != "e" || resp.Pid != 7 || resp.Status != task.Status_RUNNING {
		t.Errorf("adapt: %+v %v", resp, err)
	}
}

func TestProcStateMachine(t *testing.T) {
	p := newProc("", stdioPaths{Stdout: "/o", Terminal: true})
	p.pid = 42
	init := newProc("", stdioPaths{})
	if p.state() != statusCreated {
		t.Fatalf("new process: %v", p.state())
	}
	r := p.stateResponse("c1", "/b", false)
	if r.Status != task.Status_CREATED || r.Pid != 42 || r.Stdout != "/o" || !r.Terminal || r.Bundle != "/b" {
		t.Errorf("created: %+v", r)
	}
	if err := p.startable(init, "c1"); err != nil {
		t.Errorf("a created process must be startable: %v", err)
	}
	p.started = true
	if p.state() != statusRunning {
		t.Errorf("started: %v", p.state())
	}
	if err := p.startable(init, "c1"); !errdefs.IsFailedPrecondition(errgrpc.ToNative(err)) {
		t.Errorf("second start: %v, want failed precondition", err)
	}
	if r := p.stateResponse("c1", "/b", true); r.Status != task.Status_PAUSED {
		t.Errorf("paused: %v", r.Status)
	}
	at := time.Unix(1700000000, 0)
	p.status, p.exitedAt = 3, at
	close(p.exited)
	r = p.stateResponse("c1", "/b", true)
	if p.state() != statusStopped || r.Status != task.Status_STOPPED || r.ExitStatus != 3 || !r.ExitedAt.AsTime().Equal(at) {
		t.Errorf("stopped: %v %+v", p.state(), r)
	}
	// An exec cannot start once the init has exited.
	e := newProc("e1", stdioPaths{})
	close(init.exited)
	if err := e.startable(init, "c1"); err == nil || !strings.Contains(err.Error(), "container c1 has exited") {
		t.Errorf("exec after the init exited: %v", err)
	}
}

func TestDeleteResponse(t *testing.T) {
	p := newProc("", stdioPaths{})
	p.pid = 9
	if r := p.deleteResponse(); r.Pid != 9 || r.ExitStatus != 137 {
		t.Errorf("deleted before it exited: %+v, want SIGKILL's 137", r)
	}
	p.status, p.exitedAt = 5, time.Unix(1, 0)
	close(p.exited)
	if r := p.deleteResponse(); r.ExitStatus != 5 || r.ExitedAt.AsTime().Unix() != 1 {
		t.Errorf("exited: %+v", r)
	}
}

func TestToGRPCKeepsClass(t *testing.T) {
	for _, tc := range []struct {
		err  error
		is   func(error) bool
		text string
	}{
		{fmt.Errorf("load: %w", libcontainer.ErrNotExist), errdefs.IsNotFound, "pyisolate: load: container does not exist"},
		{fmt.Errorf("create: %w", libcontainer.ErrExist), errdefs.IsAlreadyExists, "pyisolate: create: container with given ID already exists"},
		{fmt.Errorf("start: %w", libcontainer.ErrNotRunning), errdefs.IsFailedPrecondition, "pyisolate: start: container not running"},
		{&os.PathError{Op: "open", Path: "/x", Err: unix.ENOENT}, errdefs.IsNotFound, "pyisolate: open /x"},
		{&os.PathError{Op: "mount", Path: "/x", Err: unix.EPERM}, errdefs.IsPermissionDenied, "pyisolate: mount /x"},
		{invalid("pyisolate: bad %s", "field"), errdefs.IsInvalidArgument, "invalid argument: pyisolate: bad field"},
		{errors.New("boom"), errdefs.IsUnknown, "pyisolate: boom"},
	} {
		got := errgrpc.ToNative(toGRPC(tc.err))
		if !tc.is(got) || !strings.Contains(got.Error(), tc.text) {
			t.Errorf("toGRPC(%v) = %v, class or text wrong (want %q)", tc.err, got, tc.text)
		}
	}
	if toGRPC(nil) != nil {
		t.Error("toGRPC(nil) != nil")
	}
}

func TestCheckKillError(t *testing.T) {
	for _, err := range []error{libcontainer.ErrNotRunning, unix.ESRCH, os.ErrProcessDone} {
		if got := errgrpc.ToNative(checkKillError(err)); !errdefs.IsNotFound(got) || !strings.Contains(got.Error(), "process already finished") {
			t.Errorf("checkKillError(%v) = %v", err, got)
		}
	}
	if got := errgrpc.ToNative(checkKillError(unix.EPERM)); !errdefs.IsPermissionDenied(got) {
		t.Errorf("checkKillError(EPERM) = %v", got)
	}
}

func TestExecSpec(t *testing.T) {
	req := specs.Process{
		Args:            []string{"sh"},
		NoNewPrivileges: false,
		ApparmorProfile: "unconfined",
		Capabilities:    &specs.LinuxCapabilities{Bounding: []string{"CAP_CHOWN"}},
	}
	ext, err := execSpec(req, "")
	if err != nil || ext.Capabilities != nil || !ext.NoNewPrivileges || ext.ApparmorProfile != "" {
		t.Errorf("extension exec: %+v %v", ext, err)
	}
	hard, err := execSpec(req, spec.PolicyHardened)
	if err != nil || hard.Capabilities == nil || !hard.NoNewPrivileges {
		t.Errorf("hardened exec: %+v %v", hard, err)
	}
	req.Capabilities.Effective = []string{"CAP_SYS_ADMIN"}
	if _, err := execSpec(req, spec.PolicyHardened); err == nil || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
		t.Errorf("hardened exec with CAP_SYS_ADMIN: %v", err)
	}
	faith, err := execSpec(req, spec.PolicyFaithful)
	if err != nil || faith.NoNewPrivileges || len(faith.Capabilities.Effective) != 1 {
		t.Errorf("faithful exec changed: %+v %v", faith, err)
	}
	if req.NoNewPrivileges || req.Capabilities == nil {
		t.Error("execSpec modified its input")
	}
}

func TestShimParseFlags(t *testing.T) {
	f, ok := parseFlags([]string{"-namespace", "k8s.io", "-id", "c1", "-address", "/run/c.sock", "-bundle", "/b", "-debug", "delete"})
	if !ok || f.namespace != "k8s.io" || f.id != "c1" || f.address != "/run/c.sock" || f.bundle != "/b" || !f.debug || f.action != "delete" {
		t.Errorf("parseFlags: %+v %v", f, ok)
	}
	if _, ok := parseFlags([]string{"-nosuchflag"}); ok {
		t.Error("an unknown flag parsed")
	}
}

func TestDirOf(t *testing.T) {
	for in, want := range map[string]string{"/a/b/c": "/a/b", "/a": "/", "rel": "/"} {
		if got := dirOf(in); got != want {
			t.Errorf("dirOf(%q) = %q, want %q", in, got, want)
		}
	}
}
