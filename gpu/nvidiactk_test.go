package gpu_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/NVIDIA/nvidia-container-toolkit/cmd/nvidia-ctk/cdi/generate"

	"github.com/pyisolate/pyisolate-oci/gpu"
	"github.com/pyisolate/pyisolate-oci/gpu/gputest"
)

// quiet is a logger for nvidia-ctk's command that drops everything.
type quiet struct{}

func (quiet) Debugf(string, ...any)   {}
func (quiet) Errorf(string, ...any)   {}
func (quiet) Infof(string, ...any)    {}
func (quiet) Warningf(string, ...any) {}
func (quiet) Tracef(string, ...any)   {}

// TestSameAsNvidiaCTK runs nvidia-ctk's own `cdi generate` command (its Go
// package, in process) and Generate over the same fake driver root and
// compares the files byte for byte.
//
// nvidia-ctk's command takes its NVML library only from the driver (the
// field tests inject a mock through is unexported), so the comparison runs
// in nvcdi's management mode, which needs no NVML: it still goes through
// everything this package adds around nvcdi (options, the "all" device, the
// simplifier, the CDI version, the writer, the file mode).
func TestSameAsNvidiaCTK(t *testing.T) {
	root := fakeRoot(t, 2)
	const hook = "/usr/bin/nvidia-cdi-hook"
	for _, format := range []string{"yaml", "json"} {
		t.Run(format, func(t *testing.T) {
			dir := t.TempDir()
			theirs := filepath.Join(dir, "nvidia-ctk."+format)
			cfg := filepath.Join(dir, "absent-config.toml")
			cmd := generate.NewCommand(quiet{}, &cfg)
			err := cmd.Run(context.Background(), []string{"generate",
				"--mode", "management", "--driver-root", root, "--nvidia-cdi-hook-path", hook,
				"--format", format, "--output", theirs})
			if err != nil {
				t.Fatalf("nvidia-ctk cdi generate: %v", err)
			}
			s, err := gpu.Generate(context.Background(), gpu.Options{
				Mode: "management", DriverRoot: root, HookPath: hook, Format: format,
			})
			if err != nil {
				t.Fatal(err)
			}
			ours := filepath.Join(dir, "pyisolate."+format)
			if err := s.Save(ours); err != nil {
				t.Fatal(err)
			}
			a, err := os.ReadFile(theirs)
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(ours)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(a, b) {
				t.Fatalf("specs differ:\n--- nvidia-ctk\n%s\n--- pyisolate\n%s", a, b)
			}
			if !bytes.Contains(b, []byte(filepath.Join(root, gputest.MockLibraries[0]))) {
				t.Errorf("the spec does not mount the fake libcuda:\n%s", b)
			}
			sa, _ := os.Stat(theirs)
			sb, _ := os.Stat(ours)
			if sa.Mode() != sb.Mode() {
				t.Errorf("file modes: nvidia-ctk %v, pyisolate %v", sa.Mode(), sb.Mode())
			}
		})
	}
}
