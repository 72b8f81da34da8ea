# pyisolate-oci build. Seccomp support in libcontainer needs cgo, the
# "seccomp" build tag and libseccomp-dev; every target builds with them.
SHELL      := /bin/bash
GO         ?= go
export GOFLAGS := -tags=seccomp
export CGO_ENABLED := 1
BIN        := bin
PKGS       := ./...
PREFIX     ?= /usr/local
# Where `make static` puts its binary; the static binary test sets it.
STATIC_BIN ?= $(BIN)/static
GOARCH     ?= $(shell $(GO) env GOARCH)

.PHONY: all deps build static image release test test-short lint bench security-report conformance conformance-ci conformance-oci demo examples install uninstall clean

all: build

# Debian packages and Go modules the build and tests need (idempotent).
deps:
	./scripts/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/pyisolate ./cmd/pyisolate-shim
	ln -sf pyisolate $(BIN)/containerd-shim-pyisolate-v1
	ln -sf pyisolate $(BIN)/pyisolate-runc

# A fully static pyisolate (and its shim link) that starts on any Linux host,
# glibc or musl (Alpine), or in an image with no libc at all: as runc's
# release build, cgo with libseccomp's static library (libseccomp-dev has it),
# the netgo and osusergo tags so that no glibc NSS code (getpwnam,
# getaddrinfo, which would dlopen) is linked, and `-extldflags -static`.
# Stripped (-s -w); Go's own stack traces survive. `make build` is unchanged.
static:
	@lib=$$($$($(GO) env CC) -print-file-name=libseccomp.a); [[ $$lib == /* && -e $$lib ]] || \
		{ echo "make static: libseccomp.a not found (install libseccomp-dev)" >&2; exit 1; }
	@mkdir -p $(STATIC_BIN)
	$(GO) build -trimpath -tags 'seccomp netgo osusergo' \
		-ldflags '-s -w -linkmode external -extldflags "-static"' \
		-o $(STATIC_BIN)/pyisolate ./cmd/pyisolate-shim
	ln -sf pyisolate $(STATIC_BIN)/containerd-shim-pyisolate-v1
	ln -sf pyisolate $(STATIC_BIN)/pyisolate-runc

# Container images as docker-archive tars in $(IMAGE_DIR), built offline with
# no Docker engine (cmd/pyisolate-image, go-containerregistry): the node
# installer pyisolate-oci:latest (the static binary and a static busybox, as
# deploy/k8s/installer-daemonset.yaml runs it) and the example pod's members
# pyisolate-oci-example-host:latest and pyisolate-oci-example-ext:latest.
# Load them with `ctr -n k8s.io images import FILE`, `docker load -i FILE`
# or `podman load -i FILE`. Needs busybox-static (BUSYBOX= for another one).
IMAGE_DIR  ?= build/images
BUSYBOX    ?=
image: static
	$(GO) run -trimpath ./cmd/pyisolate-image -out $(IMAGE_DIR) -binary $(STATIC_BIN)/pyisolate $(if $(BUSYBOX),-busybox $(BUSYBOX))

# The release artefact: the static binary as dist/pyisolate-linux-ARCH with
# its SHA-256.
release:
	$(MAKE) --no-print-directory static STATIC_BIN=build/release
	@mkdir -p dist
	cp build/release/pyisolate dist/pyisolate-linux-$(GOARCH)
	cd dist && sha256sum pyisolate-linux-$(GOARCH) > pyisolate-linux-$(GOARCH).sha256

# The whole suite. Tests that need root, containerd or Python skip with a
# visible reason where those are missing.
test: deps build
	$(GO) test -count=1 -timeout 40m $(PKGS)

# Conformance suites too long for `make test`: runtime-tools for
# pyisolate-runc (conformance-oci), then critest (the recipe below).
conformance: conformance-oci

# Every opencontainers/runtime-tools validation program against
# pyisolate-runc and runc, side by side (`make test` runs a subset).
conformance-oci: deps build
	PYISOLATE_CONFORMANCE=full $(GO) test -count=1 -timeout 60m -v -run '^TestOCIRuntimeTools$$' ./test/

test-short:
	$(GO) test -count=1 -short $(PKGS)

lint:
	$(GO) vet $(PKGS)
	@if command -v staticcheck >/dev/null; then staticcheck $(PKGS); else echo "staticcheck not installed; go vet only"; fi

bench: build
	$(GO) test -run '^$$' -bench . -skip BenchmarkWarmStart -benchtime 20x -count 1 ./test/...
	$(GO) test -run '^$$' -bench BenchmarkWarmStart -benchtime 1x -count 1 ./test/

security-report: build
	$(GO) test -count=1 -v -run 'TestSecurityReport' ./test/

# Kubernetes' CRI validation suite (critest v1.37.0) on one private
# containerd 1.6 with three handlers: runc, pyisolate (hardened) and
# pyisolate-faithful; fully offline. Prints pass/fail/skip side by side and
# the specs that differ (build/conformance.txt). conformance-ci runs the
# policy subset (privilege, capabilities, seccomp, host namespaces,
# no-new-privs, read-only paths, users, sysctls, propagation, ports).
conformance: deps build
	PYISOLATE_CONFORMANCE=1 $(GO) test -count=1 -timeout 150m -v -run '^TestConformance$$' ./test/

conformance-ci: deps build
	PYISOLATE_CONFORMANCE=ci $(GO) test -count=1 -timeout 60m -v -run '^TestConformance$$' ./test/

examples:
	./examples/make-bundles.sh build/bundles

# The main job: host check, the sample extension sandboxed, a sandbox probe,
# and a host and an extension container handing tensors across zero-copy.
demo: deps build
	./scripts/demo.sh

install: build
	install -m 0755 $(BIN)/pyisolate $(PREFIX)/bin/pyisolate
	ln -sf pyisolate $(PREFIX)/bin/containerd-shim-pyisolate-v1
	ln -sf pyisolate $(PREFIX)/bin/pyisolate-runc

uninstall:
	rm -f $(PREFIX)/bin/pyisolate $(PREFIX)/bin/containerd-shim-pyisolate-v1 $(PREFIX)/bin/pyisolate-runc

clean:
	rm -rf $(BIN) build dist
