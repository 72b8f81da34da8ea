// Package gputest holds the test doubles of package gpu: go-nvml's NVML
// mock of a DGX A100 made usable by nvcdi, and a fake driver root (device
// nodes made with mknod, driver library files). It is imported by tests
// only, so that the mocks stay out of the pyisolate binary (they would add
// about 2 MB).
package gputest

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/dgxa100"
	"github.com/NVIDIA/go-nvml/pkg/nvml/mock/server"
	"golang.org/x/sys/unix"
)

// MockDriverVersion is the driver version of MockDGXA100 (go-nvml's).
const MockDriverVersion = "550.54.15"

// MockDGXA100 returns go-nvml's NVML mock of a DGX A100 (8 A100-SXM4-40GB,
// driver MockDriverVersion), made usable by nvcdi: the mock does not
// implement GetMaxMigDeviceCount, which nvcdi calls for every MIG-capable
// GPU, so it answers 0 (MIG mode may be enabled with SetMigMode, but the
// mock has no MIG device handles).
func MockDGXA100() *server.Server {
	s := dgxa100.New()
	for _, d := range s.Devices {
		if md, ok := d.(*server.Device); ok {
			md.GetMaxMigDeviceCountFunc = func() (int, nvml.Return) { return 0, nvml.SUCCESS }
		}
	}
	return s
}

// MockLibraries are the driver files FakeDriverRoot creates, relative to the
// root.
var MockLibraries = []string{
	"usr/lib/x86_64-linux-gnu/libcuda.so." + MockDriverVersion,
	"usr/lib/x86_64-linux-gnu/libnvidia-ml.so." + MockDriverVersion,
	"usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so." + MockDriverVersion,
}

// FakeDriverRoot creates, under root, what nvcdi looks for on a node with
// gpus GPUs: character device nodes dev/nvidiactl, dev/nvidia-uvm and
// dev/nvidia0..gpus-1 (copies of /dev/null, 1:3, so that containers may open
// them; mknod needs root) and the driver libraries MockLibraries (small
// text files naming themselves). It returns the nodes made.
func FakeDriverRoot(root string, gpus int) ([]string, error) {
	dev := filepath.Join(root, "dev")
	if err := os.MkdirAll(dev, 0o755); err != nil {
		return nil, fmt.Errorf("fake driver root: %w", err)
	}
	names := []string{"nvidiactl", "nvidia-uvm"}
	for i := range gpus {
		names = append(names, fmt.Sprintf("nvidia%d", i))
	}
	var nodes []string
	for _, n := range names {
		p := filepath.Join(dev, n)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil && !os.IsExist(err) {
			return nil, fmt.Errorf("fake device node %s: %w", p, err)
		}
		nodes = append(nodes, p)
	}
	for _, l := range MockLibraries {
		p := filepath.Join(root, l)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, fmt.Errorf("fake driver root: %w", err)
		}
		if err := os.WriteFile(p, []byte("fake "+filepath.Base(l)+"\n"), 0o644); err != nil {
			return nil, fmt.Errorf("fake driver root: %w", err)
		}
	}
	return nodes, nil
}
