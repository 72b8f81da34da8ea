#!/usr/bin/env bash
# The main job: checks the host, runs the sample extension sandboxed, probes
# the sandbox, then runs a host and an extension container of one isolation
# group that hand tensors to each other through the group's shared memory.
# Run by `make demo` (as root, after the build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
BIN=$PWD/bin/pyisolate
OUT=$PWD/build/demo
ROOT=${PYISOLATE_ROOT:-/run/pyisolate}
SIZES=${DEMO_SIZES:-1M,64M,256M,1G}
step() { printf '\n[%s] %s\n' "$1" "$2"; }

if [[ $(id -u) != 0 ]]; then echo "demo: run as root (the runtime creates namespaces and cgroups)" >&2; exit 1; fi
rm -rf "$OUT" && mkdir -p "$OUT"

step 1/5 "host check (pyisolate detect)"
"$BIN" detect --json >"$OUT/detect.json"
"$BIN" detect | sed 's/^/    /'

step 2/5 "bundles"
./examples/make-bundles.sh "$OUT/bundles" | sed 's/^/    /'

step 3/5 "the sample extension, sandboxed (pyisolate run build/demo/bundles/hello)"
"$BIN" run --root "$ROOT" "$OUT/bundles/hello" | sed 's/^/    /'

step 4/5 "what the sandbox blocks (a probe run inside it)"
mkdir -p "$OUT/probe"
CGO_ENABLED=0 GOFLAGS= go build -o "$OUT/probe/probe" ./test/probe
echo marker >/tmp/pyisolate-demo-marker
echo marker >/dev/shm/pyisolate-demo-marker
mkdir -p "$OUT/bundles/probe"
cat >"$OUT/bundles/probe/pyisolate.json" <<JSON
{"name": "probe", "module_path": "$OUT/probe",
 "command": ["$OUT/probe/probe", "-module", "$OUT/probe", "-tmp-marker", "/tmp/pyisolate-demo-marker",
             "-shm-marker", "/dev/shm/pyisolate-demo-marker", "-host-pid", "$$"],
 "limits": {"memory": "128Mi", "pids": 32}}
JSON
"$BIN" run --root "$ROOT" "$OUT/bundles/probe" >"$OUT/probe.jsonl"
rm -f /tmp/pyisolate-demo-marker /dev/shm/pyisolate-demo-marker
$PY - "$OUT/probe.jsonl" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in rows if r["detail"] != "not configured"]
blocked = [r for r in rows if r["blocked"]]
print(f"    {len(blocked)} of {len(rows)} escape attempts blocked")
for r in rows:
    print(f"      {'blocked' if r['blocked'] else 'OPEN   '}  {r['check']:<28} {r['detail']}")
PYEOF

step 5/5 "host and extension containers of group 'demo': tensor hand-off through the group's /dev/shm"
export DEMO_SIZES=$SIZES DEMO_ROUNDS=${DEMO_ROUNDS:-5} DEMO_COPY_MAX=${DEMO_COPY_MAX:-64M}
"$BIN" run --root "$ROOT" --id demo-host "$OUT/bundles/demo-host" >"$OUT/host.jsonl" &
host=$!
"$BIN" run --root "$ROOT" --id demo-ext "$OUT/bundles/demo-ext"
wait "$host"
$PY - "$OUT/host.jsonl" "$OUT/detect.json" <<'PYEOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
res = lines[-1]
prof = json.load(open(sys.argv[2]))
def h(n):
    for u, s in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= s:
            return f"{n / s:g} {u}"
    return f"{n} B"
print(f"    {'tensor':>8}  {'shared memory':>14}  {'socket copy':>12}  {'speed-up':>8}  in place")
for r in res["sizes"]:
    copy = "-" if r["copy_ms"] is None else f"{r['copy_ms']:.1f} ms"
    up = "-" if r["copy_ms"] is None else f"{r['copy_ms'] / max(r['shm_ms'], 1e-3):.0f}x"
    print(f"    {h(r['size']):>8}  {r['shm_ms']:>11.2f} ms  {copy:>12}  {up:>8}  {r['in_place']}")
print()
print(f"report: restriction model {prof['restriction']}; sandbox as above; "
      f"{len(res['sizes'])} tensors crossed containers zero-copy: {res['result']}")
sys.exit(0 if res["result"] == "ok" else 1)
PYEOF
