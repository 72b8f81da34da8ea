package install

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const v2WithRuntimes = `# containerd config, edited by the cluster admins
version = 2
root = "/var/lib/containerd"   # keep
oom_score = -999

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "registry.k8s.io/pause:3.9"
    # Values with brackets and fake headers must not confuse the editor:
    description = """
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.pyisolate]
runtime_type = "not.a.real.table"
"""
    device_ownership_from_security_context = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      default_runtime_name = "runc"
      snapshotter = "overlayfs"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            SystemdCgroup = true
            BinaryName = '/usr/bin/runc'
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata]
          runtime_type = "io.containerd.kata.v2"
          pod_annotations = [
            "io.katacontainers.*",
            ["not", "a", "header"],
          ]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
      endpoint = ["https://mirror.example"]
`

const v3Config = `version = 3

[plugins.'io.containerd.cri.v1.runtime']
  enable_cdi = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes]
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'` // no trailing newline

// debianDefault is /etc/containerd/config.toml of Debian 12's containerd.
const debianDefault = `version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
`

const v1Config = `root = "/var/lib/containerd"
[plugins.cri]
  sandbox_image = "k8s.gcr.io/pause:3.2"
`

func block(t *testing.T, v int, withRunc bool) string {
	t.Helper()
	b, err := Block(v, DefaultRuntimeName, RuntimeType, withRunc, "")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestAddRuntime(t *testing.T) {
	handMade := "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.pyisolate]\n  runtime_type = \"io.containerd.pyisolate.v1\"\n"
	stale := "version = 2\n\n" + strings.Replace(block(t, 2, true), RuntimeType, "io.containerd.old.v1", 1) + "# after\n"
	crun := "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"crun\"\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun]\n  runtime_type = \"io.containerd.runc.v2\"\n"
	cases := []struct {
		name       string
		in         string
		defVersion int
		want       string // expected output; "" means "in + \n + block(version)"
		version    int
		runc       bool // the block declares runc too
		unchanged  bool
		unmanaged  bool
		err        string
	}{
		{name: "v2 with other runtimes and comments", in: v2WithRuntimes, version: 2},
		{name: "v3", in: v3Config, version: 3, want: v3Config + "\n\n" + block(t, 3, false)},
		{name: "v1 (no version key)", in: v1Config, version: 1, runc: true},
		{name: "Debian default config (no runtimes: runc declared too)", in: debianDefault, version: 2, runc: true},
		{name: "default runtime crun, declared", in: crun, version: 2},
		{name: "default runtime runc named, not declared", in: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n", version: 2, runc: true},
		{name: "empty, containerd 1.x", in: "", defVersion: 2, version: 2, want: "version = 2\n\n" + block(t, 2, true)},
		{name: "empty, containerd 2.x", in: "", defVersion: 3, version: 3, want: "version = 3\n\n" + block(t, 3, true)},
		{name: "comments only", in: "# nothing yet\n", defVersion: 2, version: 2, want: "# nothing yet\nversion = 2\n\n" + block(t, 2, true)},
		{name: "empty, version unknown", in: "\n", err: "version is unknown"},
		{name: "already installed", in: "version = 2\n\n" + block(t, 2, true), version: 2, unchanged: true},
		{name: "already installed, v3, with text after", in: v3Config + "\n\n" + block(t, 3, false) + "\n# mine\n", version: 3, unchanged: true},
		{name: "stale block replaced in place", in: stale, version: 2, want: "version = 2\n\n" + block(t, 2, true) + "# after\n"},
		{name: "declared by hand, same type", in: handMade, version: 2, unchanged: true, unmanaged: true},
		{name: "declared by hand, other type", in: strings.Replace(handMade, "pyisolate.v1", "runc.v2", 1), err: "already declares runtime"},
		{name: "declared with dotted keys", in: "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  runtimes.pyisolate.runtime_type = \"x\"\n", err: "would make the config invalid"},
		{name: "invalid TOML", in: "version = 2\n[plugins\n", err: "not valid TOML"},
		{name: "unsupported version", in: "version = 4\n", err: "unsupported containerd config version 4"},
		{name: "unclosed block", in: "version = 2\n" + beginMarker("pyisolate") + "\n", err: "not closed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := AddRuntime([]byte(c.in), DefaultRuntimeName, RuntimeType, c.defVersion, "")
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err = %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Version != c.version {
				t.Errorf("version = %d, want %d", res.Version, c.version)
			}
			if res.Unmanaged != c.unmanaged {
				t.Errorf("unmanaged = %v", res.Unmanaged)
			}
			want := c.want
			switch {
			case c.unchanged:
				want = c.in
			case want == "":
				want = c.in + "\n" + block(t, c.version, c.runc)
			}
			if string(res.Data) != want {
				t.Errorf("output:\n%s\nwant:\n%s", res.Data, want)
			}
			if res.Changed == c.unchanged {
				t.Errorf("changed = %v", res.Changed)
			}
			// The output must be valid TOML declaring the runtime.
			m, err := decode(res.Data)
			if err != nil {
				t.Fatal(err)
			}
			path, _ := RuntimesPath(c.version)
			got, _ := lookup(m, append(path, DefaultRuntimeName))
			if rt, _ := got.(map[string]any); rt["runtime_type"] != RuntimeType {
				t.Errorf("runtime table = %v", got)
			}
			// Idempotent.
			again, err := AddRuntime(res.Data, DefaultRuntimeName, RuntimeType, c.defVersion, "")
			if err != nil || again.Changed || !bytes.Equal(again.Data, res.Data) {
				t.Errorf("second AddRuntime: changed=%v err=%v", again.Changed, err)
			}
			// Removing gives back the original bytes (when we added the block).
			if res.Changed && !strings.Contains(c.name, "stale") && !strings.HasPrefix(c.name, "empty") && !strings.HasPrefix(c.name, "comments") {
				out, removed, unmanaged, err := RemoveRuntime(res.Data, DefaultRuntimeName)
				if err != nil || !removed || unmanaged {
					t.Fatalf("RemoveRuntime: removed=%v unmanaged=%v err=%v", removed, unmanaged, err)
				}
				orig := c.in
				if !strings.HasSuffix(orig, "\n") {
					orig += "\n" // the one byte the installer cannot take back
				}
				if string(out) != orig {
					t.Errorf("after RemoveRuntime:\n%q\nwant:\n%q", out, orig)
				}
			}
		})
	}
}

func TestAddRuntimeKeepsOtherSettings(t *testing.T) {
	res, err := AddRuntime([]byte(v2WithRuntimes), DefaultRuntimeName, RuntimeType, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	m, err := decode(res.Data)
	if err != nil {
		t.Fatal(err)
	}
	rts, _ := lookup(m, []string{"plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"})
	names := []string{}
	for k := range rts.(map[string]any) {
		names = append(names, k)
	}
	if len(names) != 3 {
		t.Errorf("runtimes = %v, want runc, kata, pyisolate", names)
	}
	if v, _ := lookup(m, []string{"plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes", "runc", "options", "SystemdCgroup"}); v != true {
		t.Errorf("runc SystemdCgroup = %v", v)
	}
	if !bytes.HasPrefix(res.Data, []byte(v2WithRuntimes)) {
		t.Error("the user's bytes were not kept")
	}
}

func TestRemoveRuntime(t *testing.T) {
	// Nothing to remove.
	out, removed, unmanaged, err := RemoveRuntime([]byte(v2WithRuntimes), DefaultRuntimeName)
	if err != nil || removed || unmanaged || string(out) != v2WithRuntimes {
		t.Errorf("no block: removed=%v unmanaged=%v err=%v", removed, unmanaged, err)
	}
	// A hand-made declaration is reported, not removed.
	hand := "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.pyisolate]\n  runtime_type = \"io.containerd.pyisolate.v1\"\n"
	out, removed, unmanaged, err = RemoveRuntime([]byte(hand), DefaultRuntimeName)
	if err != nil || removed || !unmanaged || string(out) != hand {
		t.Errorf("hand-made: removed=%v unmanaged=%v err=%v", removed, unmanaged, err)
	}
	// Another runtime name's block stays.
	other, _ := Block(2, "other", RuntimeType, true, "")
	ours := block(t, 2, false)
	in := "version = 2\n\n" + other + "\n" + ours
	out, removed, _, err = RemoveRuntime([]byte(in), DefaultRuntimeName)
	if err != nil || !removed || string(out) != "version = 2\n\n"+other {
		t.Errorf("two blocks: removed=%v err=%v out=%q", removed, err, out)
	}
}

func TestScanTOMLHeaders(t *testing.T) {
	lines, err := scanTOML([]byte(v2WithRuntimes))
	if err != nil {
		t.Fatal(err)
	}
	var headers []string
	for _, l := range lines {
		if l.header {
			headers = append(headers, formatKey(l.keys))
		}
	}
	want := []string{
		"grpc", "plugins", `plugins."io.containerd.grpc.v1.cri"`,
		`plugins."io.containerd.grpc.v1.cri".containerd`,
		`plugins."io.containerd.grpc.v1.cri".containerd.runtimes`,
		`plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc`,
		`plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options`,
		`plugins."io.containerd.grpc.v1.cri".containerd.runtimes.kata`,
		`plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"`,
	}
	if !reflect.DeepEqual(headers, want) {
		t.Errorf("headers:\n%q\nwant:\n%q", headers, want)
	}
	keys, array, err := parseHeader(`[[ a . "b.c" . 'd e' ]] # x`)
	if err != nil || !array || !reflect.DeepEqual(keys, []string{"a", "b.c", "d e"}) {
		t.Errorf("parseHeader = %q %v %v", keys, array, err)
	}
}

func TestParseContainerdVersion(t *testing.T) {
	for out, want := range map[string]int{
		"containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3\n":                    1,
		"containerd containerd.io 1.7.27 05044ec0a9a75232cad458027ca83437aae3f4da\n":                       1,
		"containerd github.com/containerd/containerd/v2 v2.1.4 75cb2b7193e4e490e9fbdc236c0e811ccaba3376\n": 2,
	} {
		got, err := ParseContainerdVersion(out)
		if err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", out, got, err, want)
		}
	}
	if _, err := ParseContainerdVersion("containerd\n"); err == nil {
		t.Error("no version: no error")
	}
}

// fakeBinary writes an executable-looking file.
func fakeBinary(t *testing.T, dir, content string) string {
	t.Helper()
	p := filepath.Join(dir, "src-pyisolate")
	if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInstallUninstall(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "etc", "config.toml")
	os.MkdirAll(filepath.Dir(cfg), 0o755)
	if err := os.WriteFile(cfg, []byte(v2WithRuntimes), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	var ran [][]string
	clock := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	o := Options{
		ContainerdConfig: cfg, BinDir: bin, Source: fakeBinary(t, dir, "binary v1"), Restart: true,
		Now:  func() time.Time { return clock },
		run:  func(_ context.Context, argv []string) error { ran = append(ran, argv); return nil },
		pid1: func() (string, bool) { return "systemd", true },
	}
	ctx := context.Background()
	res, err := Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.BinariesChanged || !res.ConfigChanged || !res.Restarted || res.ConfigVersion != 2 {
		t.Errorf("first install: %+v", res)
	}
	if b, _ := os.ReadFile(filepath.Join(bin, BinaryName)); string(b) != "binary v1" {
		t.Errorf("installed binary = %q", b)
	}
	if l, _ := os.Readlink(filepath.Join(bin, ShimName)); l != BinaryName {
		t.Errorf("shim link -> %q", l)
	}
	wantBackup := cfg + ".pyisolate-backup-20260102T030405Z"
	if res.Backup != wantBackup {
		t.Errorf("backup = %q, want %q", res.Backup, wantBackup)
	}
	if b, _ := os.ReadFile(wantBackup); string(b) != v2WithRuntimes {
		t.Error("backup content differs from the original")
	}
	if fi, _ := os.Stat(cfg); fi.Mode().Perm() != 0o600 {
		t.Errorf("config mode = %v, want 0600 kept", fi.Mode())
	}
	if !reflect.DeepEqual(ran, [][]string{{"systemctl", "restart", "containerd"}}) {
		t.Errorf("restart commands = %q", ran)
	}

	// Second install: nothing changes, no restart, no second backup.
	clock = clock.Add(time.Hour)
	res, err = Install(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if res.BinariesChanged || res.ConfigChanged || res.Restarted || res.Backup != wantBackup {
		t.Errorf("second install: %+v", res)
	}
	if len(ran) != 1 {
		t.Errorf("restarted again: %q", ran)
	}
	// A new binary is replaced without a restart (config unchanged).
	o.Source = fakeBinary(t, dir, "binary v2")
	res, err = Install(ctx, o)
	if err != nil || !res.BinariesChanged || res.ConfigChanged || res.Restarted {
		t.Errorf("upgrade: %+v %v", res, err)
	}

	// Uninstall: block and binaries gone, the rest byte for byte, restarted.
	res, err = Uninstall(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !res.ConfigChanged || !res.BinariesChanged || !res.Restarted {
		t.Errorf("uninstall: %+v", res)
	}
	if b, _ := os.ReadFile(cfg); string(b) != v2WithRuntimes {
		t.Errorf("config after uninstall:\n%s", b)
	}
	for _, p := range []string{BinaryName, ShimName} {
		if _, err := os.Lstat(filepath.Join(bin, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s still there: %v", p, err)
		}
	}
	if _, err := os.Stat(wantBackup); err != nil {
		t.Error("uninstall removed the backup")
	}
	// Uninstall again: nothing to do.
	res, err = Uninstall(ctx, o)
	if err != nil || res.ConfigChanged || res.BinariesChanged || len(ran) != 2 {
		t.Errorf("second uninstall: %+v %v", res, err)
	}
	// Reinstall keeps the first backup.
	res, err = Install(ctx, o)
	if err != nil || res.Backup != wantBackup {
		t.Errorf("reinstall: %+v %v", res, err)
	}
	if m, _ := filepath.Glob(cfg + ".pyisolate-backup-*"); len(m) != 1 {
		t.Errorf("backups: %q", m)
	}
}

func TestInstallMissingConfig(t *testing.T) {
	dir := t.TempDir()
	// A fake containerd that reports 2.x: a missing config gets version 3.
	fake := filepath.Join(dir, "containerd")
	os.WriteFile(fake, []byte("#!/bin/sh\necho 'containerd github.com/containerd/containerd/v2 v2.1.4 abc'\n"), 0o755)
	cfg := filepath.Join(dir, "config.toml")
	res, err := Install(context.Background(), Options{ContainerdConfig: cfg, SkipBinaries: true, ContainerdBinary: fake})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(cfg)
	if want := "version = 3\n\n" + block(t, 3, true); string(b) != want {
		t.Errorf("config:\n%s\nwant:\n%s", b, want)
	}
	if res.Backup != "" || res.Restarted || len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "restart disabled") {
		t.Errorf("result: %+v", res)
	}
	// No containerd and no version: a clear error, nothing written.
	cfg2 := filepath.Join(dir, "other.toml")
	_, err = Install(context.Background(), Options{ContainerdConfig: cfg2, SkipBinaries: true, ContainerdBinary: filepath.Join(dir, "missing")})
	if err == nil || !strings.Contains(err.Error(), "pass the config version") {
		t.Errorf("err = %v", err)
	}
	if _, err := os.Stat(cfg2); !errors.Is(err, os.ErrNotExist) {
		t.Error("config written despite the error")
	}
}

func TestDryRun(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	os.WriteFile(cfg, []byte(v3Config), 0o644)
	res, err := Install(context.Background(), Options{ContainerdConfig: cfg, BinDir: filepath.Join(dir, "bin"), Source: fakeBinary(t, dir, "x"), DryRun: true, Restart: true,
		pid1: func() (string, bool) { return "systemd", false }})
	if err != nil {
		t.Fatal(err)
	}
	if !res.ConfigChanged || !bytes.Contains(res.Config, []byte("io.containerd.cri.v1.runtime")) || !res.BinariesChanged {
		t.Errorf("dry run: %+v", res)
	}
	if b, _ := os.ReadFile(cfg); string(b) != v3Config {
		t.Error("dry run wrote the config")
	}
	if _, err := os.Stat(filepath.Join(dir, "bin")); !errors.Is(err, os.ErrNotExist) {
		t.Error("dry run created the bin dir")
	}
	if len(res.Notes) != 1 || !strings.Contains(res.Notes[0], "nsenter --target 1") {
		t.Errorf("notes = %q", res.Notes)
	}
}

func TestRestartPlan(t *testing.T) {
	cases := []struct {
		o       Options
		argv    string
		noteHas string
	}{
		{o: Options{Restart: false}, noteHas: "restart disabled"},
		{o: Options{Restart: true, RestartCommand: []string{"rc-service", "containerd", "restart"}}, argv: "rc-service containerd restart"},
		{o: Options{Restart: true, pid1: func() (string, bool) { return "systemd", true }}, argv: "systemctl restart containerd"},
		{o: Options{Restart: true, pid1: func() (string, bool) { return "systemd", false }}, argv: "nsenter --target 1 --mount --uts --ipc --net --pid -- systemctl restart containerd"},
		{o: Options{Restart: true, pid1: func() (string, bool) { return "tini", false }}, noteHas: "PID 1 is tini, not systemd: restart containerd yourself"},
	}
	for _, c := range cases {
		argv, note := restartPlan(&c.o)
		if strings.Join(argv, " ") != c.argv || !strings.Contains(note, c.noteHas) {
			t.Errorf("restartPlan = %q, %q; want %q, %q", argv, note, c.argv, c.noteHas)
		}
	}
}
