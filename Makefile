# cardgate — the two commands most people need:
#   make demo   the sidecar in front of a throwaway PostgreSQL
#   make test   lint, manifest checks and every test of the workspace
# Both install their own prerequisites (Debian packages, see e2e/scripts/install-deps.sh).

CARGO ?= cargo
MANIFESTS := target/manifests

.PHONY: all build test lint fmt manifests demo crds bench e2e deps clean

all: build

## build: compile every crate and binary
build:
	$(CARGO) build --workspace --all-targets

## deps: install Debian packages and tools the tests and demo need
deps:
	@e2e/scripts/install-deps.sh

## crds: regenerate config/crd/bases and charts/cardgate/crds from the Rust types
crds:
	$(CARGO) run -q -p cardgate-crds --bin crdgen

## lint: formatting and clippy, warnings are errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## fmt: format the code
fmt:
	$(CARGO) fmt --all

## manifests: build the kustomize layouts and schema-check them offline
manifests: deps
	@mkdir -p $(MANIFESTS)
	kubectl kustomize config/crd > $(MANIFESTS)/crd.yaml
	kubernetes-validate --strict --quiet $(MANIFESTS)/crd.yaml
	@if [ -f config/webhook/kustomization.yaml ]; then \
		echo "kubectl kustomize config/default"; \
		kubectl kustomize config/default > $(MANIFESTS)/default.yaml && \
		kubernetes-validate --strict --quiet $(MANIFESTS)/default.yaml; \
	else \
		echo "config/webhook is not there yet: checking config/rbac and config/manager on their own"; \
		kubectl kustomize config/rbac > $(MANIFESTS)/rbac.yaml && \
		kubectl kustomize config/manager > $(MANIFESTS)/manager.yaml && \
		kubernetes-validate --strict --quiet $(MANIFESTS)/rbac.yaml $(MANIFESTS)/manager.yaml; \
	fi
	kubernetes-validate --strict --quiet operator/tests/golden/*/networkpolicies.yaml operator/tests/golden/*/rbac.yaml

## test: lint, manifest checks and every test (needs root or sudo for packages)
test: deps lint manifests
	$(CARGO) test --workspace

## demo: the standalone sidecar in front of a throwaway PostgreSQL
demo: deps
	@e2e/scripts/demo.sh

## bench: criterion benchmarks and pgbench through the sidecar
bench: deps
	$(CARGO) bench --workspace
	@e2e/scripts/bench.sh

## e2e: the real-cluster suite (needs KUBECONFIG for a kind/k3d cluster)
e2e:
	CARDGATE_E2E_REQUIRE_CLUSTER=1 $(CARGO) test -p cardgate-e2e -- --nocapture

clean:
	$(CARGO) clean
