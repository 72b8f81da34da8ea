// Package hooks holds the work pyisolate-oci does on a container's OCI spec
// between spec.Build and container creation, and the same work as OCI hook
// binaries (`pyisolate hook cdi|shm`) for users of plain runc or crun:
//
//   - CDI: devices named by the cdi.k8s.io/* annotations (the manifest's
//     gpus, containerd's CRI requests) are resolved from the CDI spec
//     directories with tags.cncf.io/container-device-interface and injected:
//     device nodes, device cgroup rules, mounts, environment and hooks
//     (InjectCDI).
//   - CUDA IPC: members of an isolation group that ask for share_cuda_ipc
//     get the namespaces, devices and environment that CUDA IPC between
//     containers needs (CUDAIPCSettings, CheckCUDAIPCGroup).
//   - Readiness: what `pyisolate detect` reports about the machine's GPUs,
//     driver, CDI specs (and whether they hold the devices `pyisolate cdi
//     generate` would write now), with remedies (Readiness).
//   - Bundles: the same edits applied to a bundle's config.json before
//     `runc create` (InjectCDIBundle, BindGroupShm) and checks run as OCI
//     hooks that the edits were made (VerifyCDIInjected, VerifyGroupShm).
package hooks
