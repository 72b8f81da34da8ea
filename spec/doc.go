// Package spec turns a pyisolate extension manifest into an OCI runtime-spec
// configuration: the sandbox an extension runs in, and decides what a plain
// container's request becomes under the node's policy.
//
// Its files, one job each:
//   - manifest.go: the manifest's types (Manifest, Sandbox, Limits);
//   - decode.go: DecodeManifest, the strict JSON decoder, and FieldError;
//   - schema.go: the manifest's schema, checked token by token before
//     decoding (unknown fields, types, with the field's path);
//   - validate.go: ApplyDefaults and Validate (names, paths as text,
//     execution model, env, limits, GPUs, command);
//   - size.go: ByteSize, sizes with units ("512Mi", "2G");
//   - annotations.go: the manifest from io.pyisolate.* annotations;
//   - bundle.go: LoadBundle and the bundle's files, read without following
//     or blocking on what is not a regular file;
//   - paths.go: validation of every user-supplied path on the host
//     (forbidden paths, symlinks, "..");
//   - build.go and host.go: the pure function Build from a manifest and a
//     host profile to a runtime-spec Spec, including degraded specs for
//     restricted hosts and the default limits;
//   - seccomp.go: the default seccomp profile;
//   - policy.go and harden.go: the policy for plain containers (faithful,
//     hardened) and the checks of an extension container's client request.
//
// See README.md in this directory for the manifest reference.
package spec
