package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	runtimeoptions "github.com/containerd/containerd/api/types/runtimeoptions/v1"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/pyisolate/pyisolate-oci/spec"
)

// runtimeConfig is the file (or TOML body) that a containerd runtime entry's
// options name (ConfigPath or ConfigBody of runtimeoptions.v1.Options), as
// `pyisolate install --policy` writes it:
//
//	policy = "faithful"
type runtimeConfig struct {
	// Policy is the node's level for plain containers of this handler.
	Policy string `toml:"policy"`
}

// policyFromOptions returns the node's policy from a task's runtime options:
// spec.DefaultPolicy when there are none. Options of another type, an
// unreadable config or an unknown level are errors naming where they came
// from.
func policyFromOptions(o *anypb.Any) (spec.Policy, error) {
	if o == nil || o.GetTypeUrl() == "" {
		return spec.DefaultPolicy, nil
	}
	if !strings.HasSuffix(o.GetTypeUrl(), "runtimeoptions.v1.Options") {
		return "", fmt.Errorf("runtime options of type %s: pyisolate takes runtimeoptions.v1.Options (ConfigPath or ConfigBody)", o.GetTypeUrl())
	}
	var ro runtimeoptions.Options
	if err := proto.Unmarshal(o.GetValue(), &ro); err != nil {
		return "", fmt.Errorf("runtime options: %w", err)
	}
	body, from := ro.GetConfigBody(), "runtime options ConfigBody"
	if p := ro.GetConfigPath(); p != "" {
		var err error
		if body, err = os.ReadFile(filepath.Clean(p)); err != nil {
			return "", fmt.Errorf("runtime options ConfigPath: %w", err)
		}
		from = p
	}
	var cfg runtimeConfig
	dec := toml.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return "", fmt.Errorf("%s: %w", from, err)
	}
	if cfg.Policy == "" {
		return spec.DefaultPolicy, nil
	}
	p, err := spec.ParsePolicy(cfg.Policy)
	if err != nil {
		return "", fmt.Errorf("%s: policy: %w", from, err)
	}
	return p, nil
}
