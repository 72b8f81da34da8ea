#!/usr/bin/env bash
# GPU end-to-end test: the CDI spec is generated with `pyisolate cdi
# generate` (nvidia-container-toolkit's library in process), then a CUDA
# tensor crosses from a host container to an extension container of one
# isolation group as a CUDA IPC handle (torch.multiprocessing.reductions);
# the members share PID and IPC namespaces; the extension changes the tensor
# in place and the host sees the change. Ends with one table: device, CDI
# devices, hand-off time, result.
#
# Needs: root, an NVIDIA GPU with its driver loaded, a Python with torch
# built for CUDA (PYTHON, default python3; installed system-wide or in a venv
# outside /root and /home, which the sandbox does not bind), and Go unless
# PYISOLATE names a built binary. No containerd, no nvidia-ctk (when
# nvidia-ctk is on PATH its spec is compared with ours). Removes what it
# wrote on exit. The log is written to $LOG (default
# test/gpu/out/run-<time>.log).
#
# Usage: sudo test/gpu/run.sh            (from anywhere in the checkout)
#        PYTHON=/opt/venv/bin/python GPU=0 PYISOLATE=bin/pyisolate test/gpu/run.sh
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
# The table's cells, filled in as the steps go.
t_device="-" t_driver="-" t_cdi="-" t_spec="-" t_ctk="-" t_ns="-" t_handoff="-" t_result="FAIL"
table() {
	echo
	echo "| device | driver | CDI devices (pyisolate cdi generate) | spec used | vs nvidia-ctk | PID+IPC ns shared | hand-off | result |"
	echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
	echo "| $t_device | $t_driver | $t_cdi | $t_spec | $t_ctk | $t_ns | $t_handoff | $t_result |"
}
cleanup() {
	[ -n "$host_pid" ] && kill "$host_pid" 2>/dev/null || true
	[ -n "$created_spec" ] && rm -f "$created_spec"
	rm -rf "$work"
}
trap cleanup EXIT

die() { echo "FAIL: $*"; t_result="FAIL: $*"; table; exit 1; }
step() { echo; echo "== $*"; }

step "preflight"
[ "$(id -u)" = 0 ] || die "run as root"
[ -r /proc/driver/nvidia/version ] || die "no NVIDIA driver (/proc/driver/nvidia/version)"
head -1 /proc/driver/nvidia/version
[ -n "${PYISOLATE:-}" ] || command -v go >/dev/null || die "go not on PATH (or set PYISOLATE to a built binary)"
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
if [ -n "${PYISOLATE:-}" ]; then
	bin=$(readlink -f "$PYISOLATE")
else
	(cd "$repo" && CGO_ENABLED=1 go build -tags seccomp -o "$work/pyisolate" ./cmd/pyisolate-shim)
	bin=$work/pyisolate
fi
"$bin" run --help >/dev/null 2>&1 || die "pyisolate run is not available in this build"

step "CDI spec (pyisolate cdi generate)"
mkdir -p "$work/cdi"
"$bin" cdi generate --output "$work/cdi/nvidia.yaml" || die "pyisolate cdi generate failed"
devices=$(sed -n 's/^ *- name: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$work/cdi/nvidia.yaml" | tr '\n' ' ')
t_cdi="$(echo $devices | wc -w): ${devices% }"
grep -q "name: \"$GPU\"" "$work/cdi/nvidia.yaml" || die "the generated spec has no device $GPU"
if command -v nvidia-ctk >/dev/null; then
	hook=$(command -v nvidia-cdi-hook || echo /usr/bin/nvidia-cdi-hook)
	nvidia-ctk cdi generate --nvidia-cdi-hook-path "$hook" --output "$work/ctk.yaml" 2>"$work/ctk.err" || cat "$work/ctk.err"
	"$bin" cdi generate --nvidia-cdi-hook-path "$hook" --output "$work/ours-same-hook.yaml" 2>/dev/null || true
	if cmp -s "$work/ctk.yaml" "$work/ours-same-hook.yaml"; then
		t_ctk="identical"
	else
		t_ctk="differs (see log)"
		diff -u "$work/ctk.yaml" "$work/ours-same-hook.yaml" || true
	fi
else
	t_ctk="nvidia-ctk not installed"
fi
# pyisolate run reads /etc/cdi and /var/run/cdi. Ours goes to /var/run/cdi
# (which wins over /etc/cdi) unless a file there already defines
# nvidia.com/gpu: two files with the same devices in one directory make CDI
# refuse both.
have_spec() { grep -lsE '^kind: *"?nvidia.com/gpu' "$1"/*.yaml "$1"/*.json 2>/dev/null | head -1; }
if spec=$(have_spec /var/run/cdi) && [ -n "$spec" ]; then
	echo "using the existing CDI spec $spec (it is in /var/run/cdi already)"
	t_spec="existing $spec"
else
	created_spec=/var/run/cdi/pyisolate-gpu-test.yaml
	mkdir -p /var/run/cdi
	cp "$work/cdi/nvidia.yaml" "$created_spec"
	t_spec="generated ($created_spec)"
fi
"$bin" detect | sed -n '/CUDA IPC/,$p'

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
props = torch.cuda.get_device_properties(0)
print(f"RESULT device={props.name} {getattr(props, 'uuid', '')}", flush=True)
print(f"RESULT ns_host={os.readlink('/proc/self/ns/pid')},{os.readlink('/proc/self/ns/ipc')}", flush=True)
x = torch.arange(1 << 20, device="cuda", dtype=torch.float32)
torch.cuda.synchronize()
d = "/dev/shm/pyisolate-gpu-test"
os.makedirs(d, exist_ok=True)
os.chmod(d, 0o777)
with open(d + "/handle.tmp", "wb") as f:
    pickle.dump(reduce_tensor(x), f)
os.rename(d + "/handle.tmp", d + "/handle.pkl")
sent = time.monotonic()
print("host: handle written", flush=True)
deadline = time.time() + 300
while not os.path.exists(d + "/done"):
    if time.time() > deadline:
        print("host: FAIL: the extension did not finish", flush=True)
        sys.exit(1)
    time.sleep(0.005)
round_trip = time.monotonic() - sent
status = open(d + "/done").read().strip()
torch.cuda.synchronize()
want = torch.arange(1 << 20, device="cuda", dtype=torch.float32) * 2 + 1
ok = status == "ok" and torch.equal(x, want)
print(f"host: extension said {status!r}; x[:4]={x[:4].tolist()} -> {'PASS' if ok else 'FAIL'}", flush=True)
print(f"RESULT round_trip_ms={round_trip * 1000:.1f}", flush=True)
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
print(f"RESULT ns_ext={ns['pid']},{ns['ipc']}", flush=True)
torch.zeros(1, device="cuda")  # CUDA context first: the hand-off time is the IPC open alone
deadline = time.time() + 120
while not os.path.exists(d + "/handle.pkl"):
    if time.time() > deadline:
        print("ext: FAIL: no handle in the group shm (is /dev/shm shared?)", flush=True)
        sys.exit(1)
    time.sleep(0.005)
try:
    t0 = time.monotonic()
    rebuild, args = pickle.load(open(d + "/handle.pkl", "rb"))
    y = rebuild(*args)
    torch.cuda.synchronize()
    print(f"RESULT open_ms={(time.monotonic() - t0) * 1000:.1f}", flush=True)
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
"$bin" run --group "$GROUP" --id "gpu-host-$$" "$work/host" > >(tee "$work/host.out") 2>&1 &
host_pid=$!
sleep 3
kill -0 "$host_pid" 2>/dev/null || die "the host container exited early"
ext_rc=0
"$bin" run --group "$GROUP" --id "gpu-ext-$$" "$work/ext" > >(tee "$work/ext.out") 2>&1 || ext_rc=$?
host_rc=0
wait "$host_pid" || host_rc=$?
host_pid=""
sleep 0.5 # the tee processes
echo "host exit $host_rc, extension exit $ext_rc"
result() { sed -n "s/^RESULT $1=//p" "$work/host.out" "$work/ext.out" | head -1; }
t_device="$(result device)"
t_driver="$(head -1 /proc/driver/nvidia/version | grep -o '[0-9]\+\.[0-9.]\+' | head -1)"
if [ -n "$(result ns_host)" ] && [ "$(result ns_host)" = "$(result ns_ext)" ]; then t_ns="yes"; else t_ns="no ($(result ns_host) vs $(result ns_ext))"; fi
t_handoff="open $(result open_ms) ms, round trip $(result round_trip_ms) ms"
[ "$host_rc" = 0 ] && [ "$ext_rc" = 0 ] || die "CUDA IPC across containers failed (see the log: $LOG)"
t_result="PASS"
echo "PASS: CUDA tensor changed in place across containers"
table
