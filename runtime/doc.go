// Package runtime runs containers on runc's libcontainer, in process (no runc
// binary is used): create, start, exec, signal, wait and delete, the id
// reservations, the pinned bind sources, terminals, and the rootless
// specifics (state root, id mappings). Host detection lives in
// runtime/detect, isolation groups in runtime/group; package sandbox puts
// them together for the faces.
package runtime
