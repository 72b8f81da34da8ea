// Package spec turns a pyisolate extension manifest into an OCI runtime-spec
// configuration: the sandbox an extension runs in.
//
// The package has three jobs, each in its own file:
//   - manifest.go: the pyisolate manifest (pyisolate.json or io.pyisolate.*
//     annotations) and its strict decoder;
//   - paths.go: validation of every user-supplied path (forbidden paths,
//     symlinks, "..");
//   - build.go: the pure function Build from a manifest and a host profile to a
//     runtime-spec Spec, including degraded specs for restricted hosts.
//
// See README.md in this directory for the manifest reference.
package spec
