//go:build !linux

package detect

import goruntime "runtime"

// hostEnv is the detection environment of a platform that cannot run Linux
// containers: detectAt reports it as unsupported before using anything else.
func hostEnv() detectEnv {
	return detectEnv{goos: goruntime.GOOS}
}
