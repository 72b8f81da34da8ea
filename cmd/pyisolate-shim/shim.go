package main

import (
	"fmt"
	"os"
)

// shimMain runs the containerd shim v2 face of the binary.
func shimMain() int {
	fmt.Fprintln(os.Stderr, ShimName+": the containerd shim is not built yet")
	return 1
}
