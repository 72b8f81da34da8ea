package spec

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ConfigFile is the name of the OCI runtime configuration in a bundle.
const ConfigFile = "config.json"

// MaxConfigSize is the largest config.json LoadBundle reads, in bytes.
const MaxConfigSize = 16 << 20

// LoadBundle reads an OCI bundle directory: its config.json (when present)
// and its manifest. The manifest comes from pyisolate.json when the bundle
// has one; otherwise from the file config.json binds at ManifestMountPath,
// or from the io.pyisolate.* annotations of config.json (see
// ManifestFromAnnotations), one of the two. When pyisolate.json exists it
// wins and config.json's are not read. When neither gives a manifest LoadBundle returns
// a nil manifest and no error: a plain OCI bundle, for the caller to judge.
// spec is nil when the bundle has no config.json.
//
// config.json is decoded strictly as JSON (syntax errors name the file, the
// line, the column and the offset; trailing data is an error) but, as the OCI runtime
// spec requires, unknown properties are ignored. pyisolate.json must be a
// regular file, not a symlink; config.json a regular file or a symlink to
// one. A FIFO, socket, device or directory under either name is refused
// without blocking (see readBundleFile).
//
// A manifest found is checked with CheckPaths against this bundle, so its
// path fields hold resolved paths on return.
func LoadBundle(bundle string) (*Manifest, *specs.Spec, error) {
	fi, err := os.Stat(bundle)
	if err != nil {
		return nil, nil, fmt.Errorf("bundle: %w", err)
	}
	if !fi.IsDir() {
		return nil, nil, fmt.Errorf("bundle %s: not a directory", bundle)
	}
	spec, err := ReadConfig(filepath.Join(bundle, ConfigFile))
	if err != nil {
		return nil, nil, err
	}
	m, source, err := bundleManifest(bundle, spec)
	if err != nil {
		return nil, nil, err
	}
	if m == nil {
		return nil, spec, nil
	}
	if err := CheckPaths(m, bundle); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", source, err)
	}
	return m, spec, nil
}

// bundleManifest finds the manifest of a bundle: pyisolate.json, else the
// annotations of spec. source names where it came from, for errors.
func bundleManifest(bundle string, spec *specs.Spec) (m *Manifest, source string, err error) {
	file := filepath.Join(bundle, ManifestFile)
	data, err := readBundleFile(file, MaxManifestSize, false)
	switch {
	case err == nil:
		m, err := DecodeManifest(data)
		if err != nil {
			return nil, file, fmt.Errorf("%s: %w", file, err)
		}
		return m, file, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, file, err
	case spec == nil:
		return nil, "", nil
	}
	source = filepath.Join(bundle, ConfigFile) + " annotations"
	m, _, err = ManifestFromAnnotations(spec.Annotations)
	if err != nil {
		return nil, source, fmt.Errorf("%s: %w", source, err)
	}
	mm, msource, err := mountedManifest(spec)
	switch {
	case err != nil:
		return nil, msource, err
	case mm != nil && m != nil:
		return nil, msource, fmt.Errorf("%s: the bundle has two manifests, this bind and the io.pyisolate.* annotations of %s: give one",
			msource, filepath.Join(bundle, ConfigFile))
	case mm != nil:
		return mm, msource, nil
	}
	return m, source, nil
}

// ManifestMountPath is where a client that cannot set annotations (Docker
// before 24, which passes neither labels nor annotations to the runtime)
// binds the manifest file: `docker run --runtime pyisolate -v
// /host/pyisolate.json:/pyisolate.json:ro IMAGE`. Only a client can bind a
// host file (an image cannot), so the manifest is the client's request, as
// annotations are. The runtime reads the bind's source once, as it reads a
// bundle's pyisolate.json; the sandbox does not get the bind.
const ManifestMountPath = "/" + ManifestFile

// mountedManifest reads the manifest bound at ManifestMountPath by s, or
// returns nil when s binds nothing there. What is mounted there must be
// one bind of a regular file.
func mountedManifest(s *specs.Spec) (*Manifest, string, error) {
	var found *specs.Mount
	for i, mnt := range s.Mounts {
		if filepath.Clean(mnt.Destination) != ManifestMountPath {
			continue
		}
		field := fmt.Sprintf("mounts[%d] (%s)", i, mnt.Destination)
		switch {
		case found != nil:
			return nil, field, fmt.Errorf("%s: a second mount at %s: bind one manifest file", field, ManifestMountPath)
		case !isBind(mnt):
			return nil, field, fmt.Errorf("%s: a %s mount at %s: the manifest must be a bind of a regular file", field, mnt.Type, ManifestMountPath)
		case !filepath.IsAbs(mnt.Source):
			return nil, field, fmt.Errorf("%s: source %q is not an absolute path", field, mnt.Source)
		}
		found = &s.Mounts[i]
	}
	if found == nil {
		return nil, "", nil
	}
	source := "the manifest bound at " + ManifestMountPath + " (" + found.Source + ")"
	data, err := readBundleFile(found.Source, MaxManifestSize, true)
	if err != nil {
		return nil, source, fmt.Errorf("%s: %w", source, err)
	}
	m, err := DecodeManifest(data)
	if err != nil {
		return nil, source, fmt.Errorf("%s: %w", source, err)
	}
	return m, source, nil
}

// ReadConfig reads and decodes a config.json: the one reader of that file
// (LoadBundle, the sandbox core, the shim's start and the OCI hooks use it).
// A missing file gives nil, nil; what is not a regular file is refused
// without blocking on it; syntax errors name the line and column.
func ReadConfig(file string) (*specs.Spec, error) {
	data, err := readBundleFile(file, MaxConfigSize, true)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if err := checkSyntax(data); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	var spec specs.Spec
	if err := json.Unmarshal(data, &spec); err != nil {
		return nil, fmt.Errorf("%s: %w", file, describeJSONError(data, err))
	}
	return &spec, nil
}

// describeJSONError adds the line and column to an encoding/json error.
func describeJSONError(data []byte, err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &te):
		line, col := lineCol(data, te.Offset-1)
		return fmt.Errorf("field %s: JSON %s where %s is expected, at line %d, column %d (offset %d): %w",
			te.Field, te.Value, te.Type, line, col, te.Offset, err)
	case errors.As(err, &se), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return describeSyntaxError(data, err)
	}
	return err
}

// readBundleFile reads a regular file of a bundle, at most limit bytes.
// followLinks says whether the file may be a symlink. A missing file gives
// an error matching fs.ErrNotExist. Anything but a regular file (a FIFO, a
// device, a socket, a directory) is refused, judged on the opened
// descriptor: the file is opened non-blocking, so that opening a FIFO
// without a writer cannot hang, and without following a final symlink when
// followLinks is false, so that nothing can be swapped in between a check
// and the open.
func readBundleFile(file string, limit int64, followLinks bool) ([]byte, error) {
	flags := os.O_RDONLY | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	if !followLinks {
		flags |= syscall.O_NOFOLLOW
	}
	f, err := os.OpenFile(file, flags, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		// Say why when the open failed on what the file is: a symlink
		// (ELOOP) or a socket (ENXIO).
		stat := os.Stat
		if !followLinks {
			stat = os.Lstat
		}
		if fi, serr := stat(file); serr == nil {
			switch {
			case fi.Mode()&fs.ModeSymlink != 0:
				return nil, fmt.Errorf("%s: must be a regular file, not a symlink", file)
			case !fi.Mode().IsRegular():
				return nil, fmt.Errorf("%s: not a regular file (it is %s): must be a regular file", file, fileKind(fi.Mode()))
			}
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file (it is %s): must be a regular file", file, fileKind(fi.Mode()))
	}
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", file, limit)
	}
	return data, nil
}

// fileKind names the type of a file that is not a regular one.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSymlink != 0:
		return "a symlink"
	}
	return "not a regular file"
}
