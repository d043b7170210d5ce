#!/usr/bin/env bash
# Builds the test control plane (e2e/controlplane), kubectl and helm from
# their Go modules into target/controlplane/<hash>/, where <hash> covers
# go.mod, go.sum and main.go: a build is redone only when one of them
# changes. target/controlplane/current points at the latest build; the Rust
# harness (e2e/src/controlplane.rs) and `make cluster` use it.
#
#   e2e/scripts/controlplane.sh build      build (or reuse) the binaries
#   e2e/scripts/controlplane.sh up DIR     build, then run the control plane in DIR
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
src="$root/e2e/controlplane"
out_root="$root/target/controlplane"

build() {
  command -v go >/dev/null || { echo "controlplane: Go is not installed (needs Go 1.26)" >&2; exit 1; }
  local hash
  hash="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
  local out="$out_root/$hash"
  if [ ! -x "$out/cardgate-controlplane" ] || [ ! -x "$out/kubectl" ] || [ ! -x "$out/helm" ]; then
    echo "controlplane: building into $out (a cold build takes a long time; warm is about a minute)"
    local start=$SECONDS
    mkdir -p "$out.tmp"
    # -mod=mod: go.sum is committed, the module cache is filled on demand.
    (cd "$src" &&
      GOFLAGS=-mod=mod go build -o "$out.tmp/cardgate-controlplane" . &&
      GOFLAGS=-mod=mod go build -o "$out.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl &&
      GOFLAGS=-mod=mod go build -o "$out.tmp/helm" helm.sh/helm/v4/cmd/helm)
    rm -rf "$out"
    mv "$out.tmp" "$out"
    echo "controlplane: built in $((SECONDS - start))s"
  fi
  ln -sfn "$hash" "$out_root/current"
  # Earlier builds (about 400 MB each) are of no further use.
  find "$out_root" -mindepth 1 -maxdepth 1 -type d ! -name "$hash" -exec rm -rf {} +
}

case "${1:-build}" in
  build) build ;;
  up)
    build
    dir="${2:?usage: controlplane.sh up DIR}"
    exec "$out_root/current/cardgate-controlplane" up --dir "$dir"
    ;;
  *) echo "usage: $0 build|up DIR" >&2; exit 2 ;;
esac
