#!/usr/bin/env bash
# Installs the pinned PostgreSQL drivers of the driver matrix (e2e/tests/drivers.rs)
# under target/drivers: a Python venv, an npm folder, the pgx program built with
# Go, and the pgjdbc jar from Maven Central. Each part is redone only when its
# pins change (a stamp file holds the hash of what it installed), so a warm run
# does nothing. Called by install-deps.sh (`make deps`).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
src="$root/e2e/drivers"
out="${CARDGATE_DRIVERS_DIR:-$root/target/drivers}"
mkdir -p "$out"

# fresh NAME FILES...: true when the stamp for NAME does not match FILES.
fresh() {
  local name=$1; shift
  local want; want="$(cat "$@" | sha256sum | cut -d' ' -f1)"
  [ -f "$out/$name.stamp" ] && [ "$(cat "$out/$name.stamp")" = "$want" ] && return 1
  echo "$want" > "$out/$name.want"
}
stamp() { mv "$out/$1.want" "$out/$1.stamp"; }

if fresh python "$src/python/requirements.txt"; then
  echo "drivers: Python drivers (pip into $out/venv)"
  rm -rf "$out/venv"
  python3 -m venv "$out/venv"
  "$out/venv/bin/pip" install --quiet --disable-pip-version-check -r "$src/python/requirements.txt"
  stamp python
fi

if command -v npm >/dev/null && fresh node "$src/node/package.json" "$src/node/package-lock.json"; then
  echo "drivers: node-postgres (npm into $out/node)"
  rm -rf "$out/node" && mkdir -p "$out/node"
  cp "$src/node/package.json" "$src/node/package-lock.json" "$out/node/"
  (cd "$out/node" && npm ci --silent --no-audit --no-fund)
  stamp node
fi

if command -v go >/dev/null && fresh pgx "$src/pgx/go.mod" "$src/pgx/go.sum" "$src/pgx/main.go"; then
  echo "drivers: pgx (go build into $out/bin)"
  mkdir -p "$out/bin"
  (cd "$src/pgx" && GOFLAGS=-mod=readonly go build -o "$out/bin/pgx-driver" .)
  stamp pgx
fi

jdbc_version=42.7.14
if command -v mvn >/dev/null && fresh jdbc <(echo "$jdbc_version"); then
  echo "drivers: pgjdbc $jdbc_version (Maven Central into $out/jdbc)"
  mkdir -p "$out/jdbc"
  mvn -q -B dependency:copy -Dartifact="org.postgresql:postgresql:$jdbc_version" \
    -DoutputDirectory="$out/jdbc" -Dmdep.stripVersion=true
  stamp jdbc
fi
