#!/usr/bin/env bash
# Installs what cardgate's tests, benchmarks and demo need from Debian's
# packages and PyPI, skipping anything already present. Used by `make deps`
# (and so by `make test`, `make demo`, `make bench`) and by CI.
set -euo pipefail

packages=(postgresql postgresql-contrib pgbouncer iptables iproute2 libclang-dev procps)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Offline schema checks of the generated manifests.
if ! command -v kubernetes-validate >/dev/null; then
  echo "install-deps: installing kubernetes-validate (PyPI)"
  # Debian's own python3 refuses system-wide installs (PEP 668); a pyenv or
  # venv python does not, so try the plain install first.
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kubernetes-validate
fi

# The pinned drivers of the driver matrix (e2e/tests/drivers.rs), under target/drivers.
"$(dirname "$0")/drivers.sh"
# The real control plane (kube-apiserver, etcd, kube-controller-manager),
# kubectl and helm for the cluster suites, built from their Go modules.
"$(dirname "$0")/controlplane.sh" build
