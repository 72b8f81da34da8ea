package main

import (
	"os"
	"path/filepath"
	goruntime "runtime"

	"github.com/pyisolate/pyisolate-oci/shim"
)

// The shim's main goroutine stays on the main thread: libcontainer runs
// goroutines that lock their thread and join a container's mount namespace,
// and such a goroutine must never land on the main thread (which Go cannot
// end), or the whole shim would be left in that namespace.
func init() {
	if name := filepath.Base(os.Args[0]); (name == ShimName || name == OCIName) && (len(os.Args) < 2 || os.Args[1] != "init") {
		goruntime.LockOSThread()
	}
}

// shimMain runs the containerd shim v2 face of the binary
// (containerd-shim-pyisolate-v1, runtime type io.containerd.pyisolate.v1).
func shimMain() int {
	return shim.Main()
}
