// Package install puts pyisolate-oci on a containerd node: it copies the
// binary into a bin directory (as pyisolate, with containerd-shim-pyisolate-v1
// a symlink to it), declares the runtime in containerd's config.toml and
// restarts containerd. Uninstall undoes exactly that.
//
// The config is edited as text: the installer appends (or replaces) one block
// between marker comments and leaves every other byte of the file alone; the
// file is decoded as TOML before and after to check that the edit adds the
// runtime entry and changes nothing else. Before its first change to a file
// the installer copies it to <config>.pyisolate-backup-<UTC timestamp>.
//
// Restarting: containerd cannot reload its config (no SIGHUP), so a restart
// is needed after the config changed. With systemd as PID 1 the installer
// runs "systemctl restart containerd" (through "nsenter -t 1" when it runs in
// a container with hostPID, as the DaemonSet does); with Options.RestartCommand
// it runs that instead; otherwise it restarts nothing and says so in
// Result.Notes ("restart containerd yourself"). Binaries alone never need a
// restart: containerd starts the shim binary afresh for each new pod.
package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// ShimName is the file name containerd looks for to run runtime type
// io.containerd.pyisolate.v1.
const ShimName = "containerd-shim-pyisolate-v1"

// BinaryName is the file name of the CLI binary.
const BinaryName = "pyisolate"

// Defaults.
const (
	DefaultContainerdConfig = "/etc/containerd/config.toml"
	DefaultBinDir           = "/usr/local/bin"
)

// Options configure Install and Uninstall. Zero values take the defaults.
type Options struct {
	// ContainerdConfig is the path of containerd's config.toml
	// (DefaultContainerdConfig). A missing file is created.
	ContainerdConfig string
	// BinDir receives pyisolate and containerd-shim-pyisolate-v1
	// (DefaultBinDir). It must be on containerd's PATH.
	BinDir string
	// Source is the binary to install (default: the running executable).
	Source string
	// RuntimeName is the runtime table key and RuntimeClass handler
	// (DefaultRuntimeName).
	RuntimeName string
	// RuntimeType is the runtime type (RuntimeType).
	RuntimeType string
	// ConfigVersion, when not 0, is the version to write into an empty or
	// missing config; otherwise it comes from ContainerdBinary's --version
	// (1.x: 2, 2.x: 3). A non-empty config keeps its own version.
	ConfigVersion int
	// ContainerdBinary is run with --version to choose the version of a new
	// config ("containerd", looked up on PATH).
	ContainerdBinary string
	// Restart restarts containerd when the config changed (see the package
	// comment).
	Restart bool
	// RestartCommand, when set, is run instead of the systemd logic.
	RestartCommand []string
	// SkipBinaries leaves BinDir alone (config only).
	SkipBinaries bool
	// DryRun computes everything and writes nothing, restarts nothing.
	DryRun bool
	// Now is the clock for the backup name (time.Now).
	Now func() time.Time
	// Policy, when set, is the node's policy for plain containers of this
	// runtime ("faithful" or "hardened"; containerd hands it to the shim
	// through the runtime's options). Empty writes no options: the shim's
	// default, hardened.
	Policy string
	// ConfigDir receives the runtime's config file, <ConfigDir>/<RuntimeName>.toml,
	// when Policy is set (DefaultConfigDir).
	ConfigDir string

	// run executes a restart command (tests replace it).
	run func(ctx context.Context, argv []string) error
	// pid1 describes the init process (tests replace it).
	pid1 func() (comm string, sameMountNS bool)
}

// Result reports what Install or Uninstall did.
type Result struct {
	// Binary and Shim are the installed paths; BinariesChanged is true when
	// either was written or removed.
	Binary, Shim    string
	BinariesChanged bool
	// ConfigChanged is true when the config file was written; Config is the
	// new content (also in DryRun).
	ConfigChanged bool
	Config        []byte
	// ConfigVersion is the containerd config version used.
	ConfigVersion int
	// Backup is the backup of the original config (new or from an earlier
	// run); empty when there was nothing to back up.
	Backup string
	// Restarted is true when containerd was restarted.
	Restarted bool
	// Notes are human-readable remarks (restart advice, hand-made entries).
	Notes []string
}

// DefaultConfigDir is where Install writes a runtime's config file.
const DefaultConfigDir = "/etc/pyisolate"

// runtimeConfigPath is the config file of the runtime Install declares.
func (o *Options) runtimeConfigPath() string {
	return filepath.Join(o.ConfigDir, o.RuntimeName+".toml")
}

func (o *Options) defaults() error {
	if o.ConfigDir == "" {
		o.ConfigDir = DefaultConfigDir
	}
	if o.ContainerdConfig == "" {
		o.ContainerdConfig = DefaultContainerdConfig
	}
	if o.BinDir == "" {
		o.BinDir = DefaultBinDir
	}
	if o.RuntimeName == "" {
		o.RuntimeName = DefaultRuntimeName
	}
	for _, c := range o.RuntimeName {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return fmt.Errorf("runtime name %q: only letters, digits, '.', '_' and '-'", o.RuntimeName)
		}
	}
	if o.RuntimeType == "" {
		o.RuntimeType = RuntimeType
	}
	if o.ContainerdBinary == "" {
		o.ContainerdBinary = "containerd"
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.run == nil {
		o.run = runCommand
	}
	if o.pid1 == nil {
		o.pid1 = readPID1
	}
	return nil
}

// Install copies the binary, declares the runtime in containerd's config and
// restarts containerd when the config changed and Restart is set. Running it
// again changes nothing.
func Install(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	res := &Result{Binary: filepath.Join(o.BinDir, BinaryName), Shim: filepath.Join(o.BinDir, ShimName)}
	if !o.SkipBinaries {
		src := o.Source
		if src == "" {
			exe, err := os.Executable()
			if err != nil {
				return nil, fmt.Errorf("finding the running binary: %w", err)
			}
			src = exe
		}
		changed, err := installBinaries(src, o.BinDir, o.DryRun)
		if err != nil {
			return nil, err
		}
		res.BinariesChanged = changed
	}

	old, mode, exists, err := readConfig(o.ContainerdConfig)
	if err != nil {
		return nil, err
	}
	defVersion := o.ConfigVersion
	if info, err := ReadConfigInfo(old); err != nil {
		return nil, fmt.Errorf("%s: %w", o.ContainerdConfig, err)
	} else if info.Empty && defVersion == 0 {
		major, err := ContainerdMajor(ctx, o.ContainerdBinary)
		if err != nil {
			return nil, fmt.Errorf("%s is empty or missing and containerd's version is unknown (pass the config version: 2 for containerd 1.x, 3 for 2.x): %w", o.ContainerdConfig, err)
		}
		defVersion = 2
		if major >= 2 {
			defVersion = 3
		}
	}
	configPath := ""
	if o.Policy != "" {
		if _, err := spec.ParsePolicy(o.Policy); err != nil {
			return nil, fmt.Errorf("--policy: %w", err)
		}
		configPath = o.runtimeConfigPath()
		body := fmt.Sprintf("# pyisolate runtime %q: the node's policy for plain containers (written by pyisolate install)\npolicy = %q\n", o.RuntimeName, o.Policy)
		res.Notes = append(res.Notes, fmt.Sprintf("policy %s for runtime %q in %s", o.Policy, o.RuntimeName, configPath))
		if !o.DryRun {
			if err := os.MkdirAll(o.ConfigDir, 0o755); err != nil {
				return nil, err
			}
			if err := writeFileAtomic(configPath, []byte(body), 0o644); err != nil {
				return nil, err
			}
		}
	}
	ed, err := AddRuntime(old, o.RuntimeName, o.RuntimeType, defVersion, configPath)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.ContainerdConfig, err)
	}
	res.ConfigVersion, res.Config = ed.Version, ed.Data
	if ed.Unmanaged {
		res.Notes = append(res.Notes, fmt.Sprintf("%s already declares runtime %q (outside pyisolate's block): left as it is", o.ContainerdConfig, o.RuntimeName))
	}
	if ed.Changed {
		res.ConfigChanged = true
		if !o.DryRun {
			if exists && len(old) > 0 {
				b, err := backup(o.ContainerdConfig, old, mode, o.Now())
				if err != nil {
					return nil, err
				}
				res.Backup = b
			}
			if err := writeFileAtomic(o.ContainerdConfig, ed.Data, mode); err != nil {
				return nil, err
			}
		}
	} else {
		res.Backup = existingBackup(o.ContainerdConfig)
	}
	if err := restart(ctx, &o, res); err != nil {
		return res, err
	}
	return res, nil
}

// Uninstall removes the installer's block from containerd's config, removes
// the binaries it installed from BinDir and restarts containerd when the
// config changed and Restart is set. It restores nothing else (backups stay).
func Uninstall(ctx context.Context, o Options) (*Result, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	res := &Result{Binary: filepath.Join(o.BinDir, BinaryName), Shim: filepath.Join(o.BinDir, ShimName)}
	old, mode, exists, err := readConfig(o.ContainerdConfig)
	if err != nil {
		return nil, err
	}
	if exists {
		out, removed, unmanaged, err := RemoveRuntime(old, o.RuntimeName)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.ContainerdConfig, err)
		}
		if info, err := ReadConfigInfo(out); err == nil {
			res.ConfigVersion = info.Version
		}
		res.Config = out
		if unmanaged {
			res.Notes = append(res.Notes, fmt.Sprintf("%s still declares runtime %q outside pyisolate's block: remove it by hand", o.ContainerdConfig, o.RuntimeName))
		}
		if removed {
			res.ConfigChanged = true
			if !o.DryRun {
				if err := writeFileAtomic(o.ContainerdConfig, out, mode); err != nil {
					return nil, err
				}
			}
		}
	}
	if _, err := os.Stat(o.runtimeConfigPath()); err == nil && !o.DryRun {
		if err := os.Remove(o.runtimeConfigPath()); err != nil {
			return nil, err
		}
	}
	if !o.SkipBinaries {
		for _, p := range []string{res.Shim, res.Binary} {
			fi, err := os.Lstat(p)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			} else if err != nil {
				return nil, err
			}
			if fi.IsDir() {
				return nil, fmt.Errorf("%s is a directory: not removing it", p)
			}
			res.BinariesChanged = true
			if !o.DryRun {
				if err := os.Remove(p); err != nil {
					return nil, err
				}
			}
		}
	}
	if err := restart(ctx, &o, res); err != nil {
		return res, err
	}
	return res, nil
}

// installBinaries copies src to binDir/pyisolate (temp file + rename, so a
// running shim keeps its old inode) and points binDir/containerd-shim-
// pyisolate-v1 at it with a relative symlink (which also resolves on the
// host when binDir is a hostPath mount). Identical files are left alone.
func installBinaries(src, binDir string, dryRun bool) (changed bool, err error) {
	want, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("reading the binary to install: %w", err)
	}
	dst := filepath.Join(binDir, BinaryName)
	if same, _ := sameFile(src, dst); same {
		// Installing the installed binary onto itself.
	} else if have, err := os.ReadFile(dst); err != nil || !bytes.Equal(have, want) {
		changed = true
		if !dryRun {
			if err := os.MkdirAll(binDir, 0o755); err != nil {
				return false, err
			}
			if err := writeFileAtomic(dst, want, 0o755); err != nil {
				return false, err
			}
		}
	}
	shim := filepath.Join(binDir, ShimName)
	if target, err := os.Readlink(shim); err == nil && target == BinaryName {
		return changed, nil
	}
	if dryRun {
		return true, nil
	}
	tmp := filepath.Join(binDir, "."+ShimName+".tmp-"+strconv.Itoa(os.Getpid()))
	_ = os.Remove(tmp)
	if err := os.Symlink(BinaryName, tmp); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, shim); err != nil {
		os.Remove(tmp)
		return false, err
	}
	return true, syncDir(binDir)
}

func sameFile(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false, err
	}
	return os.SameFile(fa, fb), nil
}

// readConfig reads the config; a missing file is empty with mode 0644.
func readConfig(path string) (data []byte, mode fs.FileMode, exists bool, err error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0o644, false, nil
	} else if err != nil {
		return nil, 0, false, err
	}
	if !fi.Mode().IsRegular() {
		return nil, 0, false, fmt.Errorf("%s is not a regular file", path)
	}
	data, err = os.ReadFile(path)
	return data, fi.Mode().Perm(), true, err
}

const backupInfix = ".pyisolate-backup-"

// backup copies the original config once: later runs find the first backup
// and keep it, so it stays the user's file from before pyisolate.
func backup(path string, data []byte, mode fs.FileMode, now time.Time) (string, error) {
	if b := existingBackup(path); b != "" {
		return b, nil
	}
	b := path + backupInfix + now.UTC().Format("20060102T150405Z")
	f, err := os.OpenFile(b, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return "", fmt.Errorf("backing up %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", err
	}
	return b, f.Close()
}

func existingBackup(path string) string {
	m, _ := filepath.Glob(globEscape(path) + backupInfix + "*")
	if len(m) == 0 {
		return ""
	}
	return m[0] // names sort by time: the oldest
}

func globEscape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`)
	return r.Replace(s)
}

// writeFileAtomic writes data to a temporary file next to path and renames it
// over path. Where path is itself a mount point (a file bind-mounted into a
// container) rename fails with EBUSY; then the file is rewritten in place.
func writeFileAtomic(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		if errors.Is(err, syscall.EBUSY) || errors.Is(err, syscall.EXDEV) {
			return os.WriteFile(path, data, mode)
		}
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	_ = d.Sync() // not supported everywhere; best effort
	return nil
}

var versionRE = regexp.MustCompile(`^v?(\d+)\.(\d+)`)

// ContainerdMajor runs "<binary> --version" and returns the major version
// ("containerd github.com/containerd/containerd 1.6.20~ds1 ..." gives 1).
func ContainerdMajor(ctx context.Context, binary string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "--version").Output()
	if err != nil {
		return 0, fmt.Errorf("%s --version: %w", binary, err)
	}
	return ParseContainerdVersion(string(out))
}

// ParseContainerdVersion reads the major version from containerd --version
// output.
func ParseContainerdVersion(out string) (int, error) {
	fields := strings.Fields(out)
	for i, f := range fields {
		if i == 0 {
			continue // the program name
		}
		if m := versionRE.FindStringSubmatch(f); m != nil {
			return strconv.Atoi(m[1])
		}
	}
	return 0, fmt.Errorf("no version in %q", strings.TrimSpace(out))
}

// restart restarts containerd if the config changed and o.Restart is set.
func restart(ctx context.Context, o *Options, res *Result) error {
	if !res.ConfigChanged {
		return nil
	}
	argv, note := restartPlan(o)
	if o.DryRun {
		if argv != nil {
			res.Notes = append(res.Notes, "dry run: would run "+strings.Join(argv, " "))
		} else if note != "" {
			res.Notes = append(res.Notes, note)
		}
		return nil
	}
	if argv == nil {
		res.Notes = append(res.Notes, note)
		return nil
	}
	if err := o.run(ctx, argv); err != nil {
		return fmt.Errorf("restarting containerd (%s): %w; the config is written: restart containerd yourself", strings.Join(argv, " "), err)
	}
	res.Restarted = true
	res.Notes = append(res.Notes, "restarted containerd: "+strings.Join(argv, " "))
	return nil
}

// restartPlan decides how to restart containerd: a command, or none and why.
func restartPlan(o *Options) (argv []string, note string) {
	if !o.Restart {
		return nil, "containerd was not restarted (restart disabled): restart containerd to load the new config"
	}
	if len(o.RestartCommand) > 0 {
		return o.RestartCommand, ""
	}
	comm, sameNS := o.pid1()
	if comm != "systemd" {
		if comm == "" {
			comm = "unknown"
		}
		return nil, fmt.Sprintf("containerd was not restarted: PID 1 is %s, not systemd: restart containerd yourself (or pass a restart command); containerd cannot reload its config", comm)
	}
	if sameNS {
		return []string{"systemctl", "restart", "containerd"}, ""
	}
	// In a container that shares the host's PID namespace (hostPID): run
	// systemctl in the host's namespaces.
	return []string{"nsenter", "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "systemctl", "restart", "containerd"}, ""
}

// readPID1 returns PID 1's command name and whether this process shares its
// mount namespace.
func readPID1() (string, bool) {
	b, err := os.ReadFile("/proc/1/comm")
	if err != nil {
		return "", false
	}
	a, err1 := os.Readlink("/proc/1/ns/mnt")
	s, err2 := os.Readlink("/proc/self/ns/mnt")
	return strings.TrimSpace(string(b)), err1 == nil && err2 == nil && a == s
}

func runCommand(ctx context.Context, argv []string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if msg != "" {
			return fmt.Errorf("%w: %s", err, msg)
		}
		return err
	}
	return nil
}

// digest is used in messages.
func digest(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return fmt.Sprintf("sha256:%x", h.Sum(nil))
}

// Digest returns the sha256 of a file ("sha256:<hex>"), empty when it cannot
// be read.
func Digest(path string) string { return digest(path) }
