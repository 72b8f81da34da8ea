# pyisolate-oci build. Seccomp support in libcontainer needs cgo, the
# "seccomp" build tag and libseccomp-dev; every target builds with them.
SHELL      := /bin/bash
GO         ?= go
export GOFLAGS := -tags=seccomp
export CGO_ENABLED := 1
BIN        := bin
PKGS       := ./...
PREFIX     ?= /usr/local

.PHONY: all deps build test test-short lint bench security-report conformance conformance-ci demo examples install uninstall clean

all: build

# Debian packages and Go modules the build and tests need (idempotent).
deps:
	./scripts/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -o $(BIN)/pyisolate ./cmd/pyisolate-shim
	ln -sf pyisolate $(BIN)/containerd-shim-pyisolate-v1

# The whole suite. Tests that need root, containerd or Python skip with a
# visible reason where those are missing.
test: deps build
	$(GO) test -count=1 -timeout 40m $(PKGS)

test-short:
	$(GO) test -count=1 -short $(PKGS)

lint:
	$(GO) vet $(PKGS)
	@if command -v staticcheck >/dev/null; then staticcheck $(PKGS); else echo "staticcheck not installed; go vet only"; fi

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 20x -count 1 ./test/...

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

uninstall:
	rm -f $(PREFIX)/bin/pyisolate $(PREFIX)/bin/containerd-shim-pyisolate-v1

clean:
	rm -rf $(BIN) build
