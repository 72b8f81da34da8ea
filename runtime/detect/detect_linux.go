package detect

import (
	goruntime "runtime"

	"github.com/opencontainers/runc/libcontainer/seccomp"
	"golang.org/x/sys/unix"
)

// hostEnv is the detection environment of the running host.
func hostEnv() detectEnv {
	return detectEnv{
		goos:           goruntime.GOOS,
		root:           "/",
		probe:          probeNamespacesFor,
		statfs:         statfsBytes,
		writable:       func(path string) bool { return unix.Access(path, unix.W_OK) == nil },
		seccompPrctl:   func() error { return unix.Prctl(unix.PR_GET_SECCOMP, 0, 0, 0, 0) },
		seccompBuiltIn: seccomp.Enabled,
		openat2: func() error {
			fd, err := unix.Openat2(unix.AT_FDCWD, "/", &unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC | unix.O_DIRECTORY})
			if err == nil {
				unix.Close(fd)
			}
			return err
		},
	}
}

// statfsBytes returns the size of the filesystem holding path and the space
// an unprivileged user may use in it.
func statfsBytes(path string) (fsStat, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fsStat{}, err
	}
	bs := uint64(st.Bsize)
	return fsStat{Size: st.Blocks * bs, Free: st.Bavail * bs, Tmpfs: int64(st.Type) == unix.TMPFS_MAGIC}, nil
}
