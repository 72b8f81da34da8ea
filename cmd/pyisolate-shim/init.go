package main

import (
	"os"

	"github.com/pyisolate/pyisolate-oci/runtime"
)

// containerInit runs libcontainer's container init in this process; it does
// not return.
func containerInit() {
	runtime.Init()
	os.Exit(255)
}
