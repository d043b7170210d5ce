# cardgate — the two commands most people need:
#   make demo   the sidecar in front of a throwaway PostgreSQL
#   make test   lint, manifest checks and every test of the workspace
# Both install their own prerequisites (Debian packages, see e2e/scripts/install-deps.sh).

CARGO ?= cargo
MANIFESTS := target/manifests

.PHONY: all build test lint fmt manifests demo crds bench e2e deps clean cluster cluster-down

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

## e2e: the end-to-end suites, the real control plane's included
e2e: deps
	CARDGATE_E2E_REQUIRE_CLUSTER=1 $(CARGO) test -p cardgate-e2e -- --nocapture

CLUSTER_DIR := target/cluster

## cluster: a local control plane to play with (make cluster-down stops it)
cluster: deps
	@mkdir -p $(CLUSTER_DIR)
	@if [ -f $(CLUSTER_DIR)/pid ] && kill -0 "$$(cat $(CLUSTER_DIR)/pid)" 2>/dev/null; then \
		echo "already running"; \
	else \
		rm -f $(CLUSTER_DIR)/ready; \
		nohup target/controlplane/current/cardgate-controlplane up --dir $(CLUSTER_DIR) \
			> $(CLUSTER_DIR)/controlplane.log 2>&1 & echo $$! > $(CLUSTER_DIR)/pid; \
		for i in $$(seq 120); do [ -f $(CLUSTER_DIR)/ready ] && break; sleep 1; done; \
		[ -f $(CLUSTER_DIR)/ready ] || { cat $(CLUSTER_DIR)/controlplane.log; exit 1; }; \
	fi
	target/controlplane/current/kubectl --kubeconfig $(CLUSTER_DIR)/admin.kubeconfig apply --server-side -f config/crd/bases
	@echo "export KUBECONFIG=$(CURDIR)/$(CLUSTER_DIR)/admin.kubeconfig PATH=$(CURDIR)/target/controlplane/current:\$$PATH"
	@echo "kubectl get crd | grep cardgate"

## cluster-down: stop the control plane started by make cluster
cluster-down:
	@if [ -f $(CLUSTER_DIR)/pid ]; then kill "$$(cat $(CLUSTER_DIR)/pid)" 2>/dev/null || true; rm -f $(CLUSTER_DIR)/pid; fi

clean:
	$(CARGO) clean
