#!/usr/bin/env bash
# Writes the sample extension bundles into OUTDIR (default build/bundles):
#   hello      the smallest extension: reads its module, writes /tmp, numpy
#   demo-host  the demo's host, in group "demo"
#   demo-ext   the demo's extension, in group "demo"
#   torch-host the torch example's host, in group "torch" (needs python3-torch)
#   torch-ext  the torch example's extension, in group "torch"
# A bundle here is a directory with a pyisolate.json and no rootfs: the
# runtime makes an empty read-only root and binds the host's system paths
# into it, bwrap style. Manifests name modules by absolute path, so bundles
# are generated for this checkout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-build/bundles}
mkdir -p "$out/hello" "$out/demo-host" "$out/demo-ext" "$out/torch-host" "$out/torch-ext"
cat >"$out/hello/pyisolate.json" <<JSON
{
  "name": "hello",
  "module_path": "$here/hello/hello_ext",
  "python": "/usr/bin/python3",
  "execution_model": "sealed",
  "sandbox": {"network": false},
  "limits": {"memory": "256Mi", "pids": 64},
  "env": {"PYTHONUNBUFFERED": "1"}
}
JSON
for role in host ext; do
	cat >"$out/demo-$role/pyisolate.json" <<JSON
{
  "name": "demo-$role",
  "module_path": "$here/demo/pyisolate_demo",
  "python": "/usr/bin/python3",
  "group": "demo",
  "share_torch": true,
  "command": ["/usr/bin/python3", "-m", "pyisolate_demo.$role"],
  "limits": {"memory": "3Gi", "pids": 128, "shm_size": "1536Mi"},
  "env": {"PYTHONUNBUFFERED": "1"}
}
JSON
done
# share_torch and nothing else: no env, no TMPDIR.
for role in host ext; do
	cat >"$out/torch-$role/pyisolate.json" <<JSON
{
  "name": "torch-$role",
  "module_path": "$here/torch/pyisolate_torch",
  "python": "/usr/bin/python3",
  "group": "torch",
  "share_torch": true,
  "command": ["/usr/bin/python3", "-m", "pyisolate_torch.$role"]
}
JSON
done
echo "examples: wrote $out/hello $out/demo-host $out/demo-ext $out/torch-host $out/torch-ext"
