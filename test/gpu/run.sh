#!/usr/bin/env bash
# GPU end-to-end test of issue 6: a CUDA tensor crosses from a host container
# to an extension container of one isolation group as a CUDA IPC handle
# (torch.multiprocessing.reductions), the extension changes it in place and
# the host sees the change.
#
# Needs: root, an NVIDIA GPU with its driver loaded, Go, and a Python with
# torch built for CUDA (PYTHON, default python3; installed system-wide or in
# a venv outside /root and /home, which the sandbox does not bind). No
# containerd. Writes a CDI spec when the machine has none (nvidia-ctk when it
# is on PATH, else one made from /dev/nvidia* and the driver's libraries),
# and removes what it wrote on exit. The log is written to $LOG (default
# test/gpu/out/run-<time>.log).
#
# Usage: sudo test/gpu/run.sh            (from anywhere in the checkout)
#        PYTHON=/opt/venv/bin/python GPU=0 test/gpu/run.sh
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
PYTHON=${PYTHON:-python3}
GPU=${GPU:-0}
GROUP=${GROUP:-gputest-$$}
work=$(mktemp -d /tmp/pyisolate-gpu.XXXXXX)
LOG=${LOG:-$here/out/run-$(date +%Y%m%d-%H%M%S).log}
mkdir -p "$(dirname "$LOG")"
exec > >(tee "$LOG") 2>&1

created_spec=""
host_pid=""
cleanup() {
	[ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null || true
	[ -n "$created_spec" ] && rm -f "$created_spec"
	rm -rf "$work"
}
trap cleanup EXIT

die() { echo "FAIL: $*"; exit 1; }
step() { echo; echo "== $*"; }

step "preflight"
[ "$(id -u)" = 0 ] || die "run as root"
[ -r /proc/driver/nvidia/version ] || die "no NVIDIA driver (/proc/driver/nvidia/version)"
head -1 /proc/driver/nvidia/version
command -v go >/dev/null || die "go not on PATH"
pyprefix=$("$PYTHON" - <<'PY'
import sys, torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
torch.zeros(1, device="cuda")  # creates /dev/nvidia-uvm if it was missing
print(sys.prefix if sys.prefix != sys.base_prefix else "")
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), file=sys.stderr)
PY
) || die "$PYTHON cannot use CUDA through torch"
pyexe=$("$PYTHON" -c 'import sys; print(sys.executable)')
command -v nvidia-modprobe >/dev/null && nvidia-modprobe -u -c=0 || true
ls -l /dev/nvidia* || die "no /dev/nvidia* device nodes"

step "build"
(cd "$repo" && CGO_ENABLED=1 go build -tags seccomp -o "$work/pyisolate" ./cmd/pyisolate-shim)
bin=$work/pyisolate
"$bin" run --help >/dev/null 2>&1 || die "pyisolate run is not available in this build"

step "CDI spec"
have_spec() { grep -lsE '^kind: *"?nvidia.com/gpu' /etc/cdi/*.yaml /var/run/cdi/*.yaml /etc/cdi/*.json /var/run/cdi/*.json 2>/dev/null | head -1; }
if spec=$(have_spec) && [ -n "$spec" ]; then
	echo "using the existing CDI spec $spec"
elif command -v nvidia-ctk >/dev/null; then
	created_spec=/var/run/cdi/pyisolate-gpu-test.yaml
	mkdir -p /var/run/cdi
	nvidia-ctk cdi generate --output="$created_spec"
else
	created_spec=/var/run/cdi/pyisolate-gpu-test.yaml
	mkdir -p /var/run/cdi
	echo "nvidia-ctk not found: writing $created_spec from the device nodes and ldconfig"
	{
		echo 'cdiVersion: "0.5.0"'
		echo 'kind: nvidia.com/gpu'
		echo 'containerEdits:'
		echo '  deviceNodes:'
		for n in /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia-uvm-tools /dev/nvidia-modeset; do
			[ -c "$n" ] && echo "  - path: $n"
		done
		echo '  mounts:'
		ldconfig -p | awk '/(libcuda\.so|libnvidia-ml\.so|libnvidia-ptxjitcompiler\.so|libnvidia-nvvm\.so|libcudadebugger\.so)/ {print $NF}' |
			sort -u | while read -r lib; do
				real=$(readlink -f "$lib")
				echo "  - {hostPath: $real, containerPath: $real, options: [ro, nosuid, nodev, bind]}"
				[ "$lib" != "$real" ] && echo "  - {hostPath: $real, containerPath: $lib, options: [ro, nosuid, nodev, bind]}"
			done
		echo 'devices:'
		all=""
		for n in /dev/nvidia[0-9]*; do
			minor=${n#/dev/nvidia}
			echo "- name: \"$minor\""
			echo "  containerEdits: {deviceNodes: [{path: $n}]}"
			uuid=$(grep -ls "Device Minor:[[:space:]]*$minor\$" /proc/driver/nvidia/gpus/*/information | head -1 |
				xargs -r sed -n 's/^GPU UUID:[[:space:]]*//p')
			if [ -n "$uuid" ]; then
				echo "- name: \"$uuid\""
				echo "  containerEdits: {deviceNodes: [{path: $n}]}"
			fi
			all="$all{path: $n}, "
		done
		echo '- name: all'
		echo "  containerEdits: {deviceNodes: [${all%, }]}"
	} >"$created_spec"
fi
[ -n "$created_spec" ] && cat "$created_spec"

step "bundles"
mkdir -p "$work/host/host_mod" "$work/ext/ext_mod"
manifest() { # name module
	local venv=""
	[ -n "$pyprefix" ] && venv="\"venv\": \"$pyprefix\","
	cat <<JSON
{
  "name": "$1",
  "module_path": "$2",
  "python": "$pyexe", $venv
  "execution_model": "host-coupled",
  "share_torch": true,
  "share_cuda_ipc": true,
  "group": "$GROUP",
  "gpus": ["nvidia.com/gpu=$GPU"],
  "limits": {"memory": "16Gi", "pids": 4096, "shm_size": "1Gi"},
  "env": {"PYTHONUNBUFFERED": "1"}
}
JSON
}
manifest gpu-host "$work/host/host_mod" >"$work/host/pyisolate.json"
manifest gpu-ext "$work/ext/ext_mod" >"$work/ext/pyisolate.json"

cat >"$work/host/host_mod/__main__.py" <<'PY'
# Host: allocate a CUDA tensor, export it with torch's CUDA IPC reduction into
# the group's /dev/shm, wait for the extension, check the change in place.
import os, pickle, sys, time
import torch
from torch.multiprocessing.reductions import reduce_tensor

def info(who):
    ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("ipc", "pid")}
    print(f"{who}: pid={os.getpid()} ns={ns} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} "
          f"PYISOLATE_ENABLE_CUDA_IPC={os.environ.get('PYISOLATE_ENABLE_CUDA_IPC')} "
          f"gpu={torch.cuda.get_device_name(0)} uuid={getattr(torch.cuda.get_device_properties(0), 'uuid', '?')}", flush=True)

info("host")
x = torch.arange(1 << 20, device="cuda", dtype=torch.float32)
torch.cuda.synchronize()
d = "/dev/shm/pyisolate-gpu-test"
os.makedirs(d, exist_ok=True)
os.chmod(d, 0o777)
with open(d + "/handle.tmp", "wb") as f:
    pickle.dump(reduce_tensor(x), f)
os.rename(d + "/handle.tmp", d + "/handle.pkl")
print("host: handle written", flush=True)
deadline = time.time() + 300
while not os.path.exists(d + "/done"):
    if time.time() > deadline:
        print("host: FAIL: the extension did not finish", flush=True)
        sys.exit(1)
    time.sleep(0.2)
status = open(d + "/done").read().strip()
torch.cuda.synchronize()
want = torch.arange(1 << 20, device="cuda", dtype=torch.float32) * 2 + 1
ok = status == "ok" and torch.equal(x, want)
print(f"host: extension said {status!r}; x[:4]={x[:4].tolist()} -> {'PASS' if ok else 'FAIL'}", flush=True)
sys.exit(0 if ok else 1)
PY

cat >"$work/ext/ext_mod/__main__.py" <<'PY'
# Extension: rebuild the host's CUDA tensor from the IPC handle, change it in
# place, tell the host.
import os, pickle, sys, time, traceback
import torch

d = "/dev/shm/pyisolate-gpu-test"
ns = {n: os.readlink(f"/proc/self/ns/{n}") for n in ("ipc", "pid")}
print(f"ext: pid={os.getpid()} ns={ns} CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')} "
      f"PYISOLATE_ENABLE_CUDA_IPC={os.environ.get('PYISOLATE_ENABLE_CUDA_IPC')}", flush=True)
deadline = time.time() + 120
while not os.path.exists(d + "/handle.pkl"):
    if time.time() > deadline:
        print("ext: FAIL: no handle in the group shm (is /dev/shm shared?)", flush=True)
        sys.exit(1)
    time.sleep(0.2)
try:
    rebuild, args = pickle.load(open(d + "/handle.pkl", "rb"))
    y = rebuild(*args)
    print(f"ext: rebuilt {tuple(y.shape)} on {y.device}, y[:4]={y[:4].tolist()}", flush=True)
    y.mul_(2).add_(1)
    torch.cuda.synchronize()
    status = "ok"
except Exception:
    traceback.print_exc()
    status = "error: " + traceback.format_exc().strip().splitlines()[-1]
with open(d + "/done.tmp", "w") as f:
    f.write(status)
os.rename(d + "/done.tmp", d + "/done")
print(f"ext: {status}", flush=True)
sys.exit(0 if status == "ok" else 1)
PY

step "run host and extension (group $GROUP)"
"$bin" run --group "$GROUP" --id "gpu-host-$$" "$work/host" &
host_pid=$!
sleep 3
kill -0 "$host_pid" 2>/dev/null || die "the host container exited early"
ext_rc=0
"$bin" run --group "$GROUP" --id "gpu-ext-$$" "$work/ext" || ext_rc=$?
host_rc=0
wait "$host_pid" || host_rc=$?
host_pid=""
echo "host exit $host_rc, extension exit $ext_rc"
[ "$host_rc" = 0 ] && [ "$ext_rc" = 0 ] || die "CUDA IPC across containers failed (see the log: $LOG)"
echo "PASS: CUDA tensor changed in place across containers"
