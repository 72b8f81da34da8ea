#!/usr/bin/env bash
# Writes the sample extension bundles into OUTDIR (default build/bundles).
# A bundle holds config.json-free pyisolate.json: the manifest names the
# module by absolute path, so bundles are generated for this checkout. No
# rootfs is shipped: the runtime makes an empty read-only root and binds the
# host's system paths into it, bwrap style.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-build/bundles}
mkdir -p "$out/hello"
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
echo "examples: wrote $out/hello"
