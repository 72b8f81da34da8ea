#!/usr/bin/env bash
# Runs the opencontainers/runtime-tools validation programs against OCI
# runtimes side by side and prints, per program, the TAP counts (ok, not ok,
# skip) of each.
#
#   scripts/runtime-tools.sh OUTDIR RUNTIME... [-- PROGRAM...]
#
# RUNTIME is NAME=PATH (e.g. pyisolate=bin/pyisolate-runc runc=/usr/sbin/runc);
# without PROGRAMs every validation program runs. Each program's TAP goes to
# OUTDIR/NAME/PROGRAM.tap, the table to OUTDIR/summary.tsv. The programs are
# built with go (into OUTDIR/bin, once) from the runtime-tools module at
# RUNTIME_TOOLS_VERSION. Environment variables of the caller (such as
# PYISOLATE_POLICY) reach the runtimes. Needs root.
set -euo pipefail
RUNTIME_TOOLS_VERSION=${RUNTIME_TOOLS_VERSION:-v0.9.1-0.20251205004911-5e639034dcdc}
PROGRAM_TIMEOUT=${PROGRAM_TIMEOUT:-120}
out=$1; shift
runtimes=()
while (($#)) && [[ $1 != -- ]]; do runtimes+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
programs=("$@")
mkdir -p "$out/bin"
out=$(cd "$out" && pwd)
mod=github.com/opencontainers/runtime-tools
# Only the programs asked for are built (all of them when none is named).
want=()
if ((${#programs[@]} == 0)); then
	[[ -x $out/bin/default && -x $out/bin/state ]] || want=("$mod/validation/...@$RUNTIME_TOOLS_VERSION")
else
	for p in "${programs[@]}"; do
		[[ -x $out/bin/$p ]] || want+=("$mod/validation/$p@$RUNTIME_TOOLS_VERSION")
	done
fi
if ((${#want[@]})); then
	GOBIN=$out/bin GOFLAGS= CGO_ENABLED=1 go install "${want[@]}"
fi
if [[ ! -x $out/bin/runtimetest ]]; then
	GOBIN=$out/bin GOFLAGS= CGO_ENABLED=0 go install -tags 'netgo osusergo' "$mod/cmd/runtimetest@$RUNTIME_TOOLS_VERSION"
fi
if ((${#programs[@]} == 0)); then
	for p in "$out"/bin/*; do
		b=$(basename "$p")
		[[ $b == runtimetest ]] || programs+=("$b")
	done
fi
modzip_dir=$(GOFLAGS= go env GOMODCACHE)/$mod@$RUNTIME_TOOLS_VERSION
work=$out/work
mkdir -p "$work"
cp "$out/bin/runtimetest" "$work/runtimetest"
install -m 0644 "$modzip_dir/rootfs-amd64.tar.gz" "$work/rootfs-amd64.tar.gz"
printf 'program' > "$out/summary.tsv"
for rt in "${runtimes[@]}"; do printf '\t%s ok\t%s not ok\t%s skip' "${rt%%=*}" "${rt%%=*}" "${rt%%=*}" >> "$out/summary.tsv"; done
echo >> "$out/summary.tsv"
for p in "${programs[@]}"; do
	line=$p
	for rt in "${runtimes[@]}"; do
		name=${rt%%=*} path=${rt#*=}
		mkdir -p "$out/$name"
		tap=$out/$name/$p.tap
		(cd "$work" && RUNTIME=$path timeout -k 5 "$PROGRAM_TIMEOUT" "$out/bin/$p" > "$tap" 2>&1) || true
		ok=$(grep -E '^ok ' "$tap" | grep -vc '# SKIP' || true)
		notok=$(grep -cE '^not ok ' "$tap" || true)
		skip=$(grep -cE '^ok .*# SKIP' "$tap" || true)
		line+=$'\t'"$ok"$'\t'"$notok"$'\t'"$skip"
	done
	echo "$line" >> "$out/summary.tsv"
done
column -t -s $'\t' "$out/summary.tsv"
