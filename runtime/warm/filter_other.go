//go:build !amd64

package warm

import "errors"

// filterArg is implemented for amd64 only: elsewhere a rootless warm start
// cannot take the sandbox's seccomp filter and the member starts cold.
func filterArg(int) (uintptr, bool, error) {
	return 0, false, errors.New("reading a seccomp program from a traced process is implemented for amd64 only")
}
