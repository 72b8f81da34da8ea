package shim

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"

	bootapi "github.com/containerd/containerd/api/runtime/bootstrap/v1"
	"github.com/containerd/containerd/v2/defaults"
	"github.com/containerd/containerd/v2/pkg/atomicfile"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	cdshim "github.com/containerd/containerd/v2/pkg/shim"
	"github.com/containerd/containerd/v2/pkg/shutdown"
	"github.com/containerd/containerd/v2/plugins"
	"github.com/containerd/plugin"
	"github.com/containerd/plugin/registry"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/protobuf/proto"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// shimFlags are the command-line flags containerd passes to a shim binary
// (the same set pkg/shim parses).
type shimFlags struct {
	namespace, id, address, bundle, socket string
	debug                                  bool
	action                                 string
}

// parseFlags reads the flags of a shim invocation; ok is false when they do
// not parse (pkg/shim then reports the error).
func parseFlags(args []string) (f shimFlags, ok bool) {
	fs := flag.NewFlagSet("shim", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&f.namespace, "namespace", "", "")
	fs.StringVar(&f.id, "id", "", "")
	fs.StringVar(&f.address, "address", "", "")
	fs.StringVar(&f.bundle, "bundle", "", "")
	fs.StringVar(&f.socket, "socket", "", "")
	fs.String("debug-socket", "", "")
	fs.String("publish-binary", "", "")
	fs.BoolVar(&f.debug, "debug", false, "")
	fs.Bool("v", false, "")
	fs.Bool("version", false, "")
	fs.Bool("info", false, "")
	if err := fs.Parse(args); err != nil {
		return f, false
	}
	f.action = fs.Arg(0)
	return f, true
}

var registerOnce sync.Once

// registerPlugins registers the task service as pkg/shim's ttrpc plugin.
func registerPlugins() {
	registerOnce.Do(func() {
		registry.Register(&plugin.Registration{
			Type:     plugins.TTRPCPlugin,
			ID:       "task",
			Requires: []plugin.Type{plugins.EventPlugin, plugins.InternalPlugin},
			InitFn: func(ic *plugin.InitContext) (any, error) {
				pp, err := ic.GetByID(plugins.EventPlugin, "publisher")
				if err != nil {
					return nil, err
				}
				ss, err := ic.GetByID(plugins.InternalPlugin, "shutdown")
				if err != nil {
					return nil, err
				}
				return newService(ic.Context, pp.(cdshim.Publisher), ss.(shutdown.Service))
			},
		})
	})
}

// Main runs the shim binary and returns its exit status.
func Main() int {
	if f, ok := parseFlags(os.Args[1:]); ok && f.action == "start" {
		address, err := start(f)
		if err != nil {
			errorf("start: %v", err)
			return 1
		}
		// A plain address: what containerd 1.6 requires, and what 1.7 and
		// 2.x read as a task API v2 ttrpc shim.
		fmt.Print(address)
		return 0
	}
	registerPlugins()
	cdshim.RunShim(context.Background(), &manager{name: RuntimeName}, func(c *cdshim.Config) {
		c.NoReaper = true
		c.NoSubreaper = true
	})
	return 0
}

// start is the "start" action: it finds or starts the shim process serving
// the container's group and returns its ttrpc address. The working
// directory is the container's bundle.
func start(f shimFlags) (string, error) {
	if f.namespace == "" || f.id == "" {
		return "", fmt.Errorf("-namespace and -id are required")
	}
	grpcAddress := f.address
	socketDir := filepath.Join(defaults.DefaultStateDir, "s")
	// containerd 2.3+ sends a protobuf bootstrap request; older daemons send
	// their runtime options (or nothing). Only the socket directory and
	// addresses are of use here.
	input, err := io.ReadAll(io.LimitReader(os.Stdin, 10<<20))
	if err != nil {
		return "", fmt.Errorf("read stdin: %w", err)
	}
	var params bootapi.BootstrapParams
	if len(input) > 0 && proto.Unmarshal(input, &params) == nil &&
		params.GetInstanceID() == f.id && params.GetNamespace() == f.namespace {
		if d := params.GetSocketDir(); d != "" {
			socketDir = d
		}
		if a := params.GetContainerdGrpcAddress(); a != "" {
			grpcAddress = a
		}
		if a := params.GetContainerdTtrpcAddress(); a != "" && os.Getenv("TTRPC_ADDRESS") == "" {
			os.Setenv("TTRPC_ADDRESS", a)
		}
	}
	bundle, err := os.Getwd()
	if err != nil {
		return "", err
	}
	ctx := namespaces.WithNamespace(context.Background(), f.namespace)
	group := groupID(bundle, f.id)
	address, err := cdshim.CreateSocketAddress(ctx, socketDir, grpcAddress, group, false)
	if err != nil {
		return "", err
	}
	l, err := cdshim.NewSocket(address)
	if err != nil {
		if !cdshim.SocketEaddrinuse(err) {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
		if cdshim.CanConnect(address) {
			// The group's shim runs already: the container joins it.
			if err := writeFile(filepath.Join(bundle, "address"), address); err != nil {
				return "", err
			}
			return address, nil
		}
		if err := cdshim.RemoveSocket(address); err != nil {
			return "", fmt.Errorf("remove stale shim socket: %w", err)
		}
		if l, err = cdshim.NewSocket(address); err != nil {
			return "", fmt.Errorf("create shim socket: %w", err)
		}
	}
	sock, err := l.File()
	// The socket file must outlive this process's listener.
	l.SetUnlinkOnClose(false)
	l.Close()
	if err != nil {
		_ = cdshim.RemoveSocket(address)
		return "", err
	}
	defer sock.Close()
	self, err := os.Executable()
	if err != nil {
		_ = cdshim.RemoveSocket(address)
		return "", err
	}
	args := []string{os.Args[0], "-namespace", f.namespace, "-id", f.id, "-address", grpcAddress}
	if f.debug {
		args = append(args, "-debug")
	}
	cmd := &exec.Cmd{
		Path:        self,
		Args:        args, // argv[0] keeps the shim name the binary dispatches on
		Dir:         bundle,
		Env:         os.Environ(),
		ExtraFiles:  []*os.File{sock}, // fd 3: pkg/shim serves on it
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	if err := cmd.Start(); err != nil {
		_ = cdshim.RemoveSocket(address)
		return "", fmt.Errorf("start shim: %w", err)
	}
	if err := cdshim.WritePidFile(filepath.Join(bundle, "shim.pid"), cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cdshim.RemoveSocket(address)
		return "", err
	}
	if err := writeFile(filepath.Join(bundle, "address"), address); err != nil {
		_ = cmd.Process.Kill()
		_ = cdshim.RemoveSocket(address)
		return "", err
	}
	_ = cdshim.AdjustOOMScore(cmd.Process.Pid)
	_ = cmd.Process.Release()
	return address, nil
}

// groupID is what the shim process is shared by: the pod
// (io.kubernetes.cri.sandbox-id), else the pyisolate isolation group
// (io.pyisolate.group annotation, or the group of the manifest in
// pyisolate.json or io.pyisolate.manifest), else the container alone.
func groupID(bundle, id string) string {
	var cfg specs.Spec
	if s, err := spec.ReadConfig(filepath.Join(bundle, spec.ConfigFile)); err == nil && s != nil {
		cfg = *s
	}
	if g := cfg.Annotations["io.kubernetes.cri.sandbox-id"]; g != "" {
		return g
	}
	if g := cfg.Annotations[spec.AnnotationFieldGroup]; g != "" {
		return "pyisolate-group:" + g
	}
	var m struct {
		Group string `json:"group"`
	}
	if data, err := os.ReadFile(filepath.Join(bundle, spec.ManifestFile)); err == nil {
		if json.Unmarshal(data, &m) == nil && m.Group != "" {
			return "pyisolate-group:" + m.Group
		}
	} else if v := cfg.Annotations[spec.AnnotationManifest]; v != "" {
		if json.Unmarshal([]byte(v), &m) == nil && m.Group != "" {
			return "pyisolate-group:" + m.Group
		}
	}
	return id
}

// writeFile writes a small file atomically.
func writeFile(path, data string) error {
	f, err := atomicfile.New(path, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write([]byte(data)); err != nil {
		f.Cancel()
		return err
	}
	return f.Close()
}
