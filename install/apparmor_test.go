package install

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestAppArmorProfileText: AppArmor 4 syntax with `userns,` where the parser
// has abi/4.0, a rule-less AppArmor 3 profile elsewhere, both attached to
// the binary; a path AppArmor would read as a glob is refused.
func TestAppArmorProfileText(t *testing.T) {
	p4, err := AppArmorProfile("/usr/local/bin/pyisolate", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"abi <abi/4.0>,\n", "profile pyisolate /usr/local/bin/pyisolate flags=(unconfined) {\n", "  userns,\n"} {
		if !strings.Contains(p4, want) {
			t.Errorf("AppArmor 4 profile lacks %q:\n%s", want, p4)
		}
	}
	p3, err := AppArmorProfile("/usr/local/bin/pyisolate", false)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(p3, "userns,") || !strings.Contains(p3, "abi <abi/3.0>,") {
		t.Errorf("AppArmor 3 profile:\n%s", p3)
	}
	for _, bad := range []string{"pyisolate", "/opt/my bin/pyisolate", "/opt/*/pyisolate", "/opt/{a,b}/pyisolate"} {
		if _, err := AppArmorProfile(bad, true); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("AppArmorProfile(%q) = %v, want an error naming it", bad, err)
		}
	}
}

// TestAppArmorProfileCompiles compiles the profile of this host's AppArmor
// with `apparmor_parser -Q -K` (nothing loaded): the AppArmor 4 text where
// the parser has abi/4.0, else the AppArmor 3 one, which Debian 12's 3.0.8
// parser takes (it rejects `userns,` with a syntax error). Both variants
// are compiled where the parser has abi/4.0.
func TestAppArmorProfileCompiles(t *testing.T) {
	parser, err := exec.LookPath("apparmor_parser")
	if err != nil {
		t.Skip("skipped: apparmor_parser is not installed (Debian package apparmor; scripts/install-deps.sh installs it)")
	}
	variants := []bool{false}
	if AppArmorSupportsUserns(DefaultAppArmorDir) {
		variants = append(variants, true)
	} else {
		t.Logf("%s has no abi/4.0: the userns variant cannot be compiled here", DefaultAppArmorDir)
	}
	for _, userns := range variants {
		text, err := AppArmorProfile("/usr/local/bin/pyisolate", userns)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), "pyisolate")
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(parser, "-Q", "-K", f).CombinedOutput()
		if err != nil {
			t.Errorf("apparmor_parser -Q -K (userns %v): %v\n%s\n%s", userns, err, out, text)
		}
	}
}

// TestInstallAppArmor: install writes the profile into the directory and,
// without AppArmor in the kernel, says it did not load it; a second install
// changes nothing; uninstall removes it, and again is a no-op.
func TestInstallAppArmor(t *testing.T) {
	dir := t.TempDir()
	o := AppArmorOptions{Dir: dir, Binary: "/usr/local/bin/pyisolate", SecurityFS: filepath.Join(dir, "no-securityfs"), Parser: "/bin/false"}
	res, err := InstallAppArmor(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, AppArmorProfileName))
	if err != nil || !res.Changed || res.Loaded || string(b) != string(res.Profile) {
		t.Fatalf("install: %+v, file %q (%v)", res, b, err)
	}
	if !strings.Contains(strings.Join(res.Notes, "\n"), "not loaded") {
		t.Errorf("notes %q do not say the profile was not loaded", res.Notes)
	}
	if res, err = InstallAppArmor(context.Background(), o); err != nil || res.Changed {
		t.Errorf("second install: %+v, %v; want unchanged", res, err)
	}
	// With AppArmor "enabled" and a failing parser, install fails naming it.
	o.SecurityFS = dir
	if _, err := InstallAppArmor(context.Background(), o); err == nil || !strings.Contains(err.Error(), "/bin/false -r") {
		t.Errorf("install with a failing parser: %v", err)
	}
	o.Parser = "/bin/true"
	if res, err = InstallAppArmor(context.Background(), o); err != nil || !res.Loaded {
		t.Errorf("install with a working parser: %+v, %v; want loaded", res, err)
	}
	if res, err = UninstallAppArmor(context.Background(), o); err != nil || !res.Changed || !res.Loaded {
		t.Errorf("uninstall: %+v, %v", res, err)
	}
	if _, err := os.Stat(filepath.Join(dir, AppArmorProfileName)); !os.IsNotExist(err) {
		t.Errorf("profile left after uninstall: %v", err)
	}
	if res, err = UninstallAppArmor(context.Background(), o); err != nil || res.Changed {
		t.Errorf("second uninstall: %+v, %v", res, err)
	}
}
