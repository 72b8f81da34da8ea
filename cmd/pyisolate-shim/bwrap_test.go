package main

import (
	"slices"
	"strings"
	"testing"

	"github.com/pyisolate/pyisolate-oci/spec"
)

func TestParseBwrapArgs(t *testing.T) {
	env := []string{"PATH=/usr/bin", "HOME=/home/u", BwrapRootEnv + "=/state"}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
		check   func(t *testing.T, r *bwrapRequest)
	}{
		{name: "pyisolate host-coupled", args: []string{"--unshare-user", "--unshare-pid", "--new-session", "--die-with-parent",
			"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--ro-bind", "/usr", "/usr", "--unshare-net",
			"--bind", "/dev/shm", "/dev/shm", "--dir", "/run", "--setenv", "PYISOLATE_CHILD", "1", "--setenv", "HOME", "/tmp",
			"/venv/bin/python", "-m", "pyisolate._internal.uds_client"},
			check: func(t *testing.T, r *bwrapRequest) {
				s := r.sandbox
				if !r.dieWithParent || s.Network || !slices.Equal(s.Args, []string{"/venv/bin/python", "-m", "pyisolate._internal.uds_client"}) {
					t.Errorf("request %+v", r)
				}
				kinds := []spec.MountKind{spec.MountProc, spec.MountDev, spec.MountTmpfs, spec.MountROBind, spec.MountBind, spec.MountDir}
				if len(s.Mounts) != len(kinds) {
					t.Fatalf("mounts %+v", s.Mounts)
				}
				for i, k := range kinds {
					if s.Mounts[i].Kind != k {
						t.Errorf("mount %d: %+v, want %s", i, s.Mounts[i], k)
					}
				}
				if s.Mounts[3].Source != "/usr" || s.Mounts[3].Dest != "/usr" {
					t.Errorf("ro-bind %+v", s.Mounts[3])
				}
				if !slices.Equal(s.Env, []string{"PATH=/usr/bin", "PYISOLATE_CHILD=1", "HOME=/tmp"}) {
					t.Errorf("env %q (the root variable must not pass)", s.Env)
				}
			}},
		{name: "sealed clearenv", args: []string{"--clearenv", "--setenv", "A", "1", "--", "/bin/true", "--not-an-option"},
			check: func(t *testing.T, r *bwrapRequest) {
				if !slices.Equal(r.sandbox.Env, []string{"A=1"}) || !r.sandbox.Network ||
					!slices.Equal(r.sandbox.Args, []string{"/bin/true", "--not-an-option"}) {
					t.Errorf("request %+v", r.sandbox)
				}
			}},
		{name: "unshare-all keeps nothing", args: []string{"--unshare-all", "/bin/true"},
			check: func(t *testing.T, r *bwrapRequest) {
				if r.sandbox.Network {
					t.Error("network shared under --unshare-all")
				}
			}},
		{name: "share-net", args: []string{"--unshare-all", "--share-net", "/bin/true"},
			check: func(t *testing.T, r *bwrapRequest) {
				if !r.sandbox.Network {
					t.Error("network not shared")
				}
			}},
		{name: "unknown", args: []string{"--cap-add", "ALL", "/bin/true"}, wantErr: "Unknown option --cap-add"},
		{name: "option with =", args: []string{"--proc=/proc", "/bin/true"}, wantErr: "Unknown option --proc=/proc"},
		{name: "missing argument", args: []string{"--bind", "/a"}, wantErr: "--bind takes two arguments"},
		{name: "missing one argument", args: []string{"--tmpfs"}, wantErr: "--tmpfs takes an argument"},
		{name: "no command", args: []string{"--unshare-pid"}, wantErr: "No command specified"},
		{name: "share-net alone", args: []string{"--share-net", "/bin/true"}, wantErr: "--unshare-all"},
		{name: "version", args: []string{"--version", "--bogus"}, check: func(t *testing.T, r *bwrapRequest) {
			if !r.version {
				t.Error("not --version")
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseBwrapArgs(tc.args, env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, r)
		})
	}
}

func TestSandboxCwd(t *testing.T) {
	dir := t.TempDir()
	r := &spec.Explicit{Mounts: []spec.ExplicitMount{
		{Kind: spec.MountTmpfs, Dest: "/tmp"},
		{Kind: spec.MountBind, Source: dir, Dest: dir},
	}}
	for _, tc := range []struct{ cwd, want string }{
		{dir, dir}, {"/tmp", "/tmp"}, {"/tmp/elsewhere", "/"}, {"/home/nobody", "/"}, {"", "/"},
	} {
		if got := sandboxCwd(r, tc.cwd); got != tc.want {
			t.Errorf("cwd %q: %q, want %q", tc.cwd, got, tc.want)
		}
	}
}
