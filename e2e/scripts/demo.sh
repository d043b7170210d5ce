#!/usr/bin/env bash
# cardgate demo: validates the standalone configuration and the Kubernetes
# samples, and prints what the policy allows, masks, holds and denies.
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build -q -p cardgate-sidecar
bin=target/debug/cardgate-sidecar

echo "== Standalone configuration: config/standalone/cardgate.yaml"
"$bin" config check --config config/standalone/cardgate.yaml
echo
echo "== Kubernetes samples (config/samples) against the CRD schemas, CEL rules and validators"
cargo test -q -p cardgate-crds --test samples 2>&1 | grep -E "^test result" || true
