package install

// The AppArmor profile of `pyisolate install --apparmor`.
//
// Ubuntu 23.10 and later set kernel.apparmor_restrict_unprivileged_userns=1:
// an unprivileged process may create a user namespace only when the AppArmor
// profile it runs under allows `userns`. Ubuntu ships such profiles for the
// programs it trusts with them (/etc/apparmor.d/bwrap-userns-restrict,
// chrome, ...): an unconfined profile attached to the program's path with
// the single rule `userns,`. The rootless runtime needs the same, for its
// installed binary (the container init is the same binary, re-executed, so
// it runs under the same profile).
//
// `userns,` is AppArmor 4 syntax (abi/4.0). Debian 12's AppArmor 3.0.8
// parser rejects it as a syntax error, and a kernel whose AppArmor lacks
// user namespace mediation has no such restriction to lift. So the profile
// is written in AppArmor 4 syntax where the parser has abi/4.0, and without
// the rule (a plain unconfined attachment that grants nothing and takes
// nothing, `abi <abi/3.0>`) where it has not.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Defaults of the AppArmor profile install.
const (
	// DefaultAppArmorDir is where AppArmor profiles live.
	DefaultAppArmorDir = "/etc/apparmor.d"
	// AppArmorProfileName is the profile's name and file name.
	AppArmorProfileName = "pyisolate"
	// AppArmorSecurityFS exists when AppArmor is enabled in the kernel.
	AppArmorSecurityFS = "/sys/kernel/security/apparmor"
)

// AppArmorOptions configure InstallAppArmor and UninstallAppArmor.
type AppArmorOptions struct {
	// Dir is the profile directory; default DefaultAppArmorDir.
	Dir string
	// Binary is the absolute path of the binary the profile attaches to
	// (the installed pyisolate).
	Binary string
	// Parser is the apparmor_parser binary; default "apparmor_parser".
	Parser string
	// SecurityFS is checked to tell whether AppArmor is enabled; default
	// AppArmorSecurityFS.
	SecurityFS string
	// DryRun writes and loads nothing; Result.Profile has the text.
	DryRun bool
}

// AppArmorResult says what InstallAppArmor or UninstallAppArmor did.
type AppArmorResult struct {
	// Path is the profile file.
	Path string
	// Profile is the text written (install).
	Profile []byte
	// Userns reports that the profile grants userns (AppArmor 4 syntax).
	Userns bool
	// Changed reports that the file was written or removed.
	Changed bool
	// Loaded reports that the kernel's policy was changed (loaded,
	// replaced or removed with apparmor_parser).
	Loaded bool
	// Notes are lines for the user.
	Notes []string
}

func (o *AppArmorOptions) defaults() {
	if o.Dir == "" {
		o.Dir = DefaultAppArmorDir
	}
	if o.Parser == "" {
		o.Parser = "apparmor_parser"
	}
	if o.SecurityFS == "" {
		o.SecurityFS = AppArmorSecurityFS
	}
}

// AppArmorSupportsUserns reports whether the AppArmor installation whose
// profiles live in dir has the abi/4.0 that `userns,` rules need.
func AppArmorSupportsUserns(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "abi", "4.0"))
	return err == nil
}

// AppArmorProfile returns the profile for binary: unconfined, with
// `userns,` in AppArmor 4 syntax when userns is set (see the file comment).
// The binary path may not hold characters AppArmor reads as globbing or
// syntax; it is an error naming the path.
func AppArmorProfile(binary string, userns bool) (string, error) {
	if !filepath.IsAbs(binary) || strings.ContainsAny(binary, " \t\n\"'*?[]{}^,#\\") {
		return "", fmt.Errorf("apparmor: binary path %q must be absolute and free of spaces, quotes and AppArmor glob characters", binary)
	}
	var b strings.Builder
	b.WriteString("# AppArmor profile of pyisolate, written by 'pyisolate install --apparmor';\n")
	b.WriteString("# 'pyisolate uninstall --apparmor' removes it. It lets the rootless runtime\n")
	b.WriteString("# create user namespaces where kernel.apparmor_restrict_unprivileged_userns=1.\n")
	if userns {
		b.WriteString("abi <abi/4.0>,\n")
	} else {
		b.WriteString("# This AppArmor has no abi/4.0, so no userns rule: it has no user namespace\n# restriction to lift either.\n")
		b.WriteString("abi <abi/3.0>,\n")
	}
	b.WriteString("include <tunables/global>\n\n")
	fmt.Fprintf(&b, "profile %s %s flags=(unconfined) {\n", AppArmorProfileName, binary)
	if userns {
		b.WriteString("  userns,\n\n")
	}
	fmt.Fprintf(&b, "  # Site-specific additions and overrides.\n  include if exists <local/%s>\n}\n", AppArmorProfileName)
	return b.String(), nil
}

// InstallAppArmor writes <Dir>/pyisolate for o.Binary and, where AppArmor
// is enabled (o.SecurityFS exists), loads it with `apparmor_parser -r`.
// Where it is not, the profile is written and a note says it was not
// loaded.
func InstallAppArmor(ctx context.Context, o AppArmorOptions) (*AppArmorResult, error) {
	o.defaults()
	res := &AppArmorResult{Path: filepath.Join(o.Dir, AppArmorProfileName), Userns: AppArmorSupportsUserns(o.Dir)}
	text, err := AppArmorProfile(o.Binary, res.Userns)
	if err != nil {
		return nil, err
	}
	res.Profile = []byte(text)
	if !res.Userns {
		res.Notes = append(res.Notes, fmt.Sprintf("this AppArmor has no %s/abi/4.0: the profile has no userns rule (AppArmor 3 has no user namespace restriction)", o.Dir))
	}
	if o.DryRun {
		return res, nil
	}
	if _, err := os.Stat(o.Dir); err != nil {
		return res, fmt.Errorf("apparmor: %w (is AppArmor installed?)", err)
	}
	if old, err := os.ReadFile(res.Path); err != nil || !bytes.Equal(old, res.Profile) {
		tmp := res.Path + ".tmp"
		if err := os.WriteFile(tmp, res.Profile, 0o644); err != nil {
			return res, fmt.Errorf("apparmor: %w", err)
		}
		if err := os.Rename(tmp, res.Path); err != nil {
			os.Remove(tmp)
			return res, fmt.Errorf("apparmor: %w", err)
		}
		res.Changed = true
	}
	if _, err := os.Stat(o.SecurityFS); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("AppArmor is not enabled in this kernel (no %s): the profile was written, not loaded", o.SecurityFS))
		return res, nil
	}
	if out, err := exec.CommandContext(ctx, o.Parser, "-r", res.Path).CombinedOutput(); err != nil {
		return res, fmt.Errorf("apparmor: %s -r %s: %v: %s", o.Parser, res.Path, err, strings.TrimSpace(string(out)))
	}
	res.Loaded = true
	return res, nil
}

// UninstallAppArmor unloads the profile (where AppArmor is enabled) and
// removes <Dir>/pyisolate. A missing profile is not an error.
func UninstallAppArmor(ctx context.Context, o AppArmorOptions) (*AppArmorResult, error) {
	o.defaults()
	res := &AppArmorResult{Path: filepath.Join(o.Dir, AppArmorProfileName)}
	if _, err := os.Stat(res.Path); errors.Is(err, os.ErrNotExist) {
		res.Notes = append(res.Notes, res.Path+" is not there: nothing to remove")
		return res, nil
	}
	if o.DryRun {
		return res, nil
	}
	if _, err := os.Stat(o.SecurityFS); err == nil {
		if out, err := exec.CommandContext(ctx, o.Parser, "-R", res.Path).CombinedOutput(); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("%s -R %s: %v: %s (the profile may not have been loaded)", o.Parser, res.Path, err, strings.TrimSpace(string(out))))
		} else {
			res.Loaded = true
		}
	}
	if err := os.Remove(res.Path); err != nil {
		return res, fmt.Errorf("apparmor: %w", err)
	}
	res.Changed = true
	return res, nil
}
