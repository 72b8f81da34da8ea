package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pyisolate/pyisolate-oci/gpu"
	"github.com/pyisolate/pyisolate-oci/install"
	"github.com/pyisolate/pyisolate-oci/spec"
)

func init() {
	register("install", "install the binary and the containerd runtime entry on this node", func(args []string) int { return installMain("install", args) })
	register("uninstall", "remove what 'install' added (binaries and the containerd runtime entry)", func(args []string) int { return installMain("uninstall", args) })
}

func installMain(verb string, args []string) int {
	fs := newFlagSet(verb, "[flags]\n")
	cfg := fs.String("containerd-config", install.DefaultContainerdConfig, "containerd's config.toml (created when missing)")
	binDir := fs.String("bin-dir", install.DefaultBinDir, "directory on containerd's PATH for pyisolate and "+install.ShimName)
	name := fs.String("runtime-name", install.DefaultRuntimeName, "runtime table key (the Kubernetes RuntimeClass handler)")
	configDir := fs.String("config-dir", install.DefaultConfigDir, "directory of the runtime's config file (NAME.toml, written with --policy)")
	restart := fs.Bool("restart", true, "restart containerd when the config changed (systemd only, or --restart-command)")
	restartCmd := fs.String("restart-command", "", "command to restart containerd with instead of systemctl (split on spaces)")
	dryRun := fs.Bool("dry-run", false, "print the resulting config and change nothing")
	skipBin := fs.Bool("config-only", false, "leave the bin directory alone")
	cdiSpec := fs.String("cdi-spec", gpu.DefaultSpecPath, "CDI spec of the node's NVIDIA GPUs: install writes it (when the driver is there) and refreshes it when it changed, uninstall removes it; none to leave it alone")
	driverRoot := fs.String("driver-root", "/", "where the host's root (driver files, /dev) is seen, e.g. /host in the installer pod; the spec names host paths")
	var cdiDirs cdiStrings
	fs.Var(&cdiDirs, "cdi-spec-dir", "CDI spec directory where another file may already define nvidia.com/gpu (repeatable; default /etc/cdi and /var/run/cdi under --driver-root)")
	apparmor := fs.Bool("apparmor", false, "only the AppArmor profile: "+map[string]string{
		"install":   "write /etc/apparmor.d/pyisolate, letting the binary create user namespaces where kernel.apparmor_restrict_unprivileged_userns=1 (Ubuntu 23.10+), and load it",
		"uninstall": "unload and remove /etc/apparmor.d/pyisolate",
	}[verb])
	apparmorDir := fs.String("apparmor-dir", install.DefaultAppArmorDir, "directory of AppArmor profiles (with --apparmor)")
	bwrapShim := fs.String("bwrap-shim", "", map[string]string{
		"install":   "only the bubblewrap face: make DIR/bwrap a link to this binary, so that pyisolate (which runs bwrap from PATH) runs its extensions in pyisolate-oci's sandbox once DIR is first on PATH; no root needed",
		"uninstall": "only the bubblewrap face: remove the link DIR/bwrap",
	}[verb])
	var apparmorBinary *string
	if verb == "install" {
		apparmorBinary = fs.String("apparmor-binary", "", "binary the AppArmor profile attaches to (default: this binary, symbolic links resolved)")
	}
	var source *string
	var version *int
	var containerd, policy *string
	if verb == "install" {
		policy = fs.String("policy", "", "the node's policy for plain containers of this runtime: hardened (the shim's default) or faithful; written to --config-dir/NAME.toml and named in the runtime's options")
		source = fs.String("source", "", "binary to install (default: this one)")
		version = fs.Int("config-version", 0, "config version for a missing or empty config: 2 (containerd 1.x) or 3 (2.x); default from 'containerd --version'")
		containerd = fs.String("containerd", "containerd", "containerd binary asked for its version when the config is empty")
	}
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if fs.NArg() > 0 {
		return fail(exitUsage, "%s: unexpected argument %q", verb, fs.Arg(0))
	}
	if *bwrapShim != "" {
		return bwrapShimMain(verb, *bwrapShim, *dryRun)
	}
	if *apparmor {
		ao := install.AppArmorOptions{Dir: *apparmorDir, DryRun: *dryRun}
		if apparmorBinary != nil {
			ao.Binary = *apparmorBinary
		}
		return apparmorMain(verb, ao)
	}
	o := install.Options{
		ContainerdConfig: *cfg,
		BinDir:           *binDir,
		RuntimeName:      *name,
		ConfigDir:        *configDir,
		Restart:          *restart,
		DryRun:           *dryRun,
		SkipBinaries:     *skipBin,
	}
	if *restartCmd != "" {
		o.RestartCommand = strings.Fields(*restartCmd)
	}
	ctx := context.Background()
	var res *install.Result
	var err error
	if verb == "install" {
		o.Source, o.ConfigVersion, o.ContainerdBinary, o.Policy = *source, *version, *containerd, *policy
		if o.Policy != "" {
			if _, err := spec.ParsePolicy(o.Policy); err != nil {
				return fail(exitUsage, "install: --policy: %v", err)
			}
		}
		if o.ConfigVersion != 0 && (o.ConfigVersion < 1 || o.ConfigVersion > 3) {
			return fail(exitUsage, "install: --config-version: want 2 or 3 (1 for old configs), not %d", o.ConfigVersion)
		}
		res, err = install.Install(ctx, o)
	} else {
		res, err = install.Uninstall(ctx, o)
	}
	if res != nil {
		reportInstall(verb, &o, res)
	}
	if err != nil {
		return fail(1, "%s: %v", verb, err)
	}
	if *cdiSpec != "none" {
		gpuSpec(ctx, verb, *cdiSpec, *driverRoot, cdiDirs.vals, *dryRun)
	}
	return 0
}

// gpuSpec keeps the node's GPU CDI spec current (install) or removes it
// (uninstall), and says what it did. A failure is reported, not fatal: the
// runtime is installed, and an installer pod must not crash-loop on a GPU
// node whose driver is not ready yet.
func gpuSpec(ctx context.Context, verb, path, driverRoot string, dirs []string, dryRun bool) {
	p := func(format string, a ...any) { fmt.Printf("pyisolate "+verb+": "+format+"\n", a...) }
	if verb == "uninstall" {
		removed, err := gpu.Remove(path, dryRun)
		switch {
		case err != nil:
			p("GPU CDI spec %s: %v", path, err)
		case removed:
			p("GPU CDI spec %s: removed", path)
		}
		return
	}
	o := gpu.RefreshOptions{Path: path, SpecDirs: dirs, DryRun: dryRun,
		Generate: gpu.Options{DriverRoot: driverRoot, NVML: cdiNVML}}
	if filepath.Clean(driverRoot) != "/" {
		o.Generate.TargetRoot = "/"
	}
	res, err := gpu.Refresh(ctx, o)
	if err != nil {
		p("GPU CDI spec %s not written: %v", path, err)
		return
	}
	state := string(res.State)
	if res.Spec != nil {
		state += fmt.Sprintf(" (%d devices, driver %s)", len(res.Spec.Devices), orDash(res.Spec.DriverVersion))
		for _, w := range res.Spec.Warnings {
			p("GPU CDI spec: warning: %s", w)
		}
	}
	if res.Reason != "" {
		state += ": " + res.Reason
	}
	if dryRun && (res.State == gpu.Written || res.State == gpu.Refreshed || res.State == gpu.Removed) {
		state = "dry run: would be " + state
	}
	p("GPU CDI spec %s: %s", path, state)
}

func reportInstall(verb string, o *install.Options, res *install.Result) {
	p := func(format string, a ...any) { fmt.Printf("pyisolate "+verb+": "+format+"\n", a...) }
	if o.DryRun {
		os.Stdout.Write(res.Config)
		p("dry run: nothing written")
	}
	if !o.SkipBinaries {
		state := "unchanged"
		switch {
		case res.BinariesChanged && verb == "install":
			state = "installed"
		case res.BinariesChanged:
			state = "removed"
		case verb == "uninstall":
			state = "not present"
		}
		p("%s, %s: %s", res.Binary, res.Shim, state)
	}
	state := "unchanged"
	if res.ConfigChanged {
		state = "runtime " + fmt.Sprintf("%q", o.RuntimeName) + map[string]string{"install": " added", "uninstall": " removed"}[verb]
	}
	if res.ConfigVersion != 0 {
		state += fmt.Sprintf(" (config version %d)", res.ConfigVersion)
	}
	p("%s: %s", o.ContainerdConfig, state)
	if res.Backup != "" {
		p("backup of the original config: %s", res.Backup)
	}
	for _, n := range res.Notes {
		p("%s", n)
	}
}

// apparmorMain is `install --apparmor` and `uninstall --apparmor`.
func apparmorMain(verb string, o install.AppArmorOptions) int {
	p := func(format string, a ...any) { fmt.Printf("pyisolate "+verb+": "+format+"\n", a...) }
	ctx := context.Background()
	var res *install.AppArmorResult
	var err error
	if verb == "install" {
		if o.Binary == "" {
			if o.Binary, err = os.Executable(); err == nil {
				o.Binary, err = filepath.EvalSymlinks(o.Binary)
			}
			if err != nil {
				return fail(1, "install: --apparmor: this binary's path: %v", err)
			}
		}
		res, err = install.InstallAppArmor(ctx, o)
	} else {
		res, err = install.UninstallAppArmor(ctx, o)
	}
	if res != nil {
		if o.DryRun {
			os.Stdout.Write(res.Profile)
			p("dry run: nothing written")
		}
		for _, n := range res.Notes {
			p("%s", n)
		}
		switch {
		case err != nil:
		case verb == "install" && !o.DryRun:
			state := map[bool]string{true: "written", false: "unchanged"}[res.Changed]
			if res.Loaded {
				state += ", loaded"
			}
			p("AppArmor profile %s for %s: %s (userns rule: %v)", res.Path, o.Binary, state, res.Userns)
		case verb == "uninstall" && res.Changed:
			p("AppArmor profile %s removed", res.Path)
		}
	}
	if err != nil {
		return fail(1, "%s: %v", verb, err)
	}
	return 0
}

// bwrapShimMain is `install --bwrap-shim DIR` and `uninstall --bwrap-shim DIR`.
func bwrapShimMain(verb, dir string, dryRun bool) int {
	p := func(format string, a ...any) { fmt.Printf("pyisolate "+verb+": "+format+"\n", a...) }
	bin, err := os.Executable()
	if err == nil {
		bin, err = filepath.EvalSymlinks(bin)
	}
	if err != nil {
		return fail(1, "%s: --bwrap-shim: this binary's path: %v", verb, err)
	}
	o := install.BwrapShimOptions{Dir: dir, Binary: bin, DryRun: dryRun}
	var res *install.BwrapShimResult
	if verb == "install" {
		res, err = install.InstallBwrapShim(o)
	} else {
		res, err = install.UninstallBwrapShim(o)
	}
	if err != nil {
		return fail(1, "%s: --bwrap-shim: %v", verb, err)
	}
	state := map[bool]string{true: "installed", false: "unchanged"}[res.Changed]
	if verb == "uninstall" {
		state = map[bool]string{true: "removed", false: "not present"}[res.Changed]
	}
	if dryRun && res.Changed {
		state = "dry run: would be " + state
	}
	if verb == "install" {
		p("%s -> %s: %s", res.Link, bin, state)
		for _, n := range res.Notes {
			p("%s", n)
		}
		p("put it first on PATH (in your shell profile too) before starting pyisolate's host:")
		fmt.Println(res.PathLine)
		return 0
	}
	p("%s: %s", res.Link, state)
	return 0
}
