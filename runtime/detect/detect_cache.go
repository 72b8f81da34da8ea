package detect

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pyisolate/pyisolate-oci/runtime"
)

// ProfileCacheFile is where Cached records the profile, under the
// runtime's root.
const ProfileCacheFile = "host-profile.json"

// cachedProfile is the content of the cache file.
type cachedProfile struct {
	Key     string   `json:"key"`
	Profile *Profile `json:"profile"`
}

// Cached is Host for the run path: the namespace probes cost a few
// child processes (tens of milliseconds), so their result is kept in
// <root>/host-profile.json and reused while nothing it depends on changed:
// the boot, the sysctls and SELinux state that restrict user namespaces,
// the caller's capabilities and uid, and this binary. The host paths,
// /dev/shm and the memory total are read afresh every time. Any problem with the cache falls back
// to a full Detect.
func Cached(ctx context.Context, root string) (*Profile, error) {
	env := hostEnv()
	key, err := profileKey(env)
	if err != nil {
		return Host(ctx)
	}
	path := filepath.Join(root, ProfileCacheFile)
	if b, err := os.ReadFile(path); err == nil {
		var c cachedProfile
		if json.Unmarshal(b, &c) == nil && c.Key == key && c.Profile != nil {
			c.Profile.Paths = existingPaths(env)
			c.Profile.Shm = detectShm(env)
			c.Profile.MemTotal = memTotal(env)
			if c.Profile.Rootless {
				// Which cgroup this run is in (a delegated scope or
				// not) changes from one run to the next.
				if f, err := readFacts(env); err == nil {
					detectRootless(env, f, c.Profile)
				}
			}
			return c.Profile, nil
		}
	}
	p, err := detectAt(ctx, env)
	if err != nil {
		return nil, err
	}
	if b, err := json.Marshal(cachedProfile{Key: key, Profile: p}); err == nil {
		if err := mkdirStateRoot(root); err == nil {
			tmp := path + fmt.Sprintf(".%d", os.Getpid())
			if os.WriteFile(tmp, b, 0o600) == nil {
				_ = os.Rename(tmp, path)
			}
		}
	}
	return p, nil
}

// mkdirStateRoot makes the state root for the cache: 0711 as root, the
// caller's own 0700 directory rootless (EnsureRootlessDir).
func mkdirStateRoot(root string) error {
	if runtime.Rootless() {
		return runtime.EnsureRootlessDir(root)
	}
	return os.MkdirAll(root, 0o711)
}

// profileKey names everything a cached profile depends on.
func profileKey(env detectEnv) (string, error) {
	f, err := readFacts(env)
	if err != nil {
		return "", err
	}
	boot := strings.TrimSpace(readString(env.path("/proc/sys/kernel/random/boot_id")))
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	fi, err := os.Stat(exe)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s|%+v|%s|%d|%d", boot, f, exe, fi.Size(), fi.ModTime().UnixNano()), nil
}
