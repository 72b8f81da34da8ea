package runtime

import (
	"github.com/opencontainers/runc/libcontainer"
	// nsenter is libcontainer's cgo constructor that joins namespaces in the
	// re-executed init before the Go runtime starts.
	_ "github.com/opencontainers/runc/libcontainer/nsenter"
)

// Init is the container init entry point. The binary calls it, before any flag
// parsing, when it was re-executed as "<binary> init" by libcontainer. It does
// not return.
func Init() {
	libcontainer.Init()
}
