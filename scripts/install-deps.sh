#!/usr/bin/env bash
# Installs what pyisolate-oci needs to build and test on Debian 12, as root.
# Idempotent and quick when everything is present already.
set -euo pipefail

# Build: gcc and libseccomp for libcontainer's cgo parts. Run and test:
# busybox-static for minimal rootfs trees, Debian's numpy for the Python
# extensions, containerd for the shim tests, runc, crun and bubblewrap as the
# peers in the security report and benchmarks. apparmor for apparmor_parser,
# which compiles the profile of 'pyisolate install --apparmor' in its tests;
# the CNI plugins (ptp, host-local) for the pod network of the Kubernetes
# chain test and the conformance run (make conformance). docker.io (Docker
# 20.10) and podman (4.3) are the clients that drive pyisolate-runc in its
# end-to-end tests.
PKGS=(gcc libc6-dev make pkg-config libseccomp-dev git ca-certificates
      containerd runc crun bubblewrap busybox-static python3 python3-numpy
      iproute2 procps util-linux apparmor containernetworking-plugins
      docker.io podman)
# torch is large (800 MB); set PYISOLATE_WITH_TORCH=1 to install it for the
# torch tests, which otherwise skip with a reason.
if [[ "${PYISOLATE_WITH_TORCH:-0}" == 1 ]]; then PKGS+=(python3-torch); fi

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) != 0 ]]; then
		echo "install-deps: missing packages (${missing[*]}); run as root" >&2
		exit 1
	fi
	echo "install-deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Go 1.26 or newer, from PATH or /usr/local/go.
if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then
	export PATH=/usr/local/go/bin:$PATH
fi
if ! command -v go >/dev/null; then
	echo "install-deps: Go 1.26 or newer is needed on PATH (or at /usr/local/go)" >&2
	exit 1
fi
# The conformance run's images need a busybox whose shell execs its commands
# (Debian's busybox-static runs applets in the shell). Debian's dynamic
# busybox conflicts with busybox-static, so its package is unpacked, not
# installed, into the test cache (test/conformance_images_test.go).
bbdeb=/var/cache/pyisolate-test/busybox-deb
if [[ ! -x $bbdeb/bin/busybox && $(id -u) == 0 ]]; then
	tmp=$(mktemp -d)
	if (cd "$tmp" && { apt-get download busybox >/dev/null 2>&1 ||
		{ apt-get update -qq && apt-get download busybox >/dev/null; }; }) &&
		mkdir -p "$bbdeb.tmp" && dpkg-deb -x "$tmp"/busybox_*.deb "$bbdeb.tmp"; then
		rm -rf "$bbdeb" && mv "$bbdeb.tmp" "$bbdeb"
	else
		echo "install-deps: could not unpack Debian's busybox package; the conformance run will use busybox-static" >&2
		rm -rf "$bbdeb.tmp"
	fi
	rm -rf "$tmp"
fi

cd "$(dirname "$0")/.."
go mod download
echo "install-deps: ok ($(go version | cut -d' ' -f3), containerd $(containerd --version | cut -d' ' -f3), runc $(runc --version | head -1 | cut -d' ' -f3))"
