#!/usr/bin/env bash
# pgbench through cardgate: select-only (-S) with 8 clients against
# PostgreSQL directly, through the sidecar (audit and masking on) and, for
# reference, through pgbouncer in session mode; then a masking-heavy script
# that reads rows with card numbers; then the sidecar's memory with 100 idle
# sessions. Prints a table and writes target/bench/pgbench.json.
#
#   BENCH_SECONDS=20 e2e/scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
seconds=${BENCH_SECONDS:-15}
clients=8
work=$root/target/bench/work
out=$root/target/bench
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/pgbench" ] || { echo "bench: pgbench not found; run 'make deps'" >&2; exit 1; }
command -v pgbouncer >/dev/null || { echo "bench: pgbouncer not found; run 'make deps'" >&2; exit 1; }

cargo build -q --release -p cardgate-sidecar
sidecar=$root/target/release/cardgate-sidecar

pg_port=55432; sc_port=55433; bouncer_port=55434; admin_port=55435
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "${as_pg[@]}" "$bin/pg_ctl" -D "$work/pgdata" stop -m immediate >/dev/null 2>&1 || true
}
trap cleanup EXIT

[ -f "$work/pgdata/postmaster.pid" ] && "${as_pg[@]}" "$bin/pg_ctl" -D "$work/pgdata" stop -m immediate >/dev/null 2>&1 || true
rm -rf "$work"
mkdir -p "$work/pgdata" "$work/sock"
# The database runs as postgres when we are root: it writes its log here.
if [ ${#as_pg[@]} -gt 0 ]; then chown -R postgres "$work"; fi
"${as_pg[@]}" "$bin/initdb" -D "$work/pgdata" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  -E UTF8 --locale=C --no-sync >/dev/null
"${as_pg[@]}" "$bin/pg_ctl" -D "$work/pgdata" -l "$work/postgres.log" -w \
  -o "-p $pg_port -h 127.0.0.1 -k $work/sock -c max_connections=300 -c shared_buffers=128MB" start >/dev/null
password=bench-$(head -c 9 /dev/urandom | base64 | tr -d '/+=')
psql_admin() { "$bin/psql" -X -q -h "$work/sock" -p "$pg_port" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql_admin -d postgres -c "CREATE ROLE bench LOGIN PASSWORD '$password'" -c "CREATE DATABASE bench OWNER bench" >/dev/null
"$bin/pgbench" -i -q -s 10 -h "$work/sock" -p "$pg_port" -U bench bench >/dev/null 2>&1
"$bin/psql" -X -q -h "$work/sock" -p "$pg_port" -U bench -d bench -v ON_ERROR_STOP=1 \
  -f config/standalone/payments.sql >/dev/null
# 100 rows with a card number in free text, for the masking-heavy script.
"$bin/psql" -X -q -h "$work/sock" -p "$pg_port" -U bench -d bench -v ON_ERROR_STOP=1 \
  -c "CREATE TABLE card_notes AS SELECT g AS id, 'customer called about card ' || (ARRAY['4111111111111111','5555555555554444','378282246310005','6011111111111117'])[1 + g % 4] || ' on ' || now()::date AS note FROM generate_series(1, 100) g" >/dev/null
printf '%s\n' "$password" >"$work/password"

# The sidecar: audit to a file (fsync batch) and masking on; no recordings.
"$sidecar" dev keygen --dir "$work" >/dev/null
token=$("$sidecar" dev token --key "$work/dev-signing-key.pem" --issuer https://bench.cardgate.local \
  --audience cardgate --subject bench-agent --ttl 2h)
cat >"$work/cardgate.yaml" <<EOF
apiVersion: cardgate.dev/v1alpha1
kind: SidecarConfig
policy: {name: bench}
identity:
  issuers: [{issuer: https://bench.cardgate.local, audiences: [cardgate], jwksFile: dev-jwks.json}]
targets:
  - name: bench
    listen: 127.0.0.1:$sc_port
    upstream: {host: 127.0.0.1, port: $pg_port}
    credentials: {username: bench, passwordFile: password}
rules:
  - {action: allow, match: {classes: [read, control]}}
proxy: {maxConnections: 400}
masking:
  rules:
    - name: cvv
      spec: {detectors: [{type: column, columns: ["*.cvv"]}], action: {type: "null"}}
audit:
  sinks: [{type: file, path: audit.log, fsync: batch}]
admin: {listen: "127.0.0.1:$admin_port"}
EOF
"$sidecar" run --config "$work/cardgate.yaml" --log-format text >/dev/null 2>"$work/sidecar.log" &
sc_pid=$!; pids+=("$sc_pid")

cat >"$work/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$pg_port dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir =
auth_type = plain
auth_file = $work/userlist.txt
pool_mode = session
max_client_conn = 400
default_pool_size = 100
logfile = $work/pgbouncer.log
EOF
printf '"bench" "%s"\n' "$password" >"$work/userlist.txt"
if [ ${#as_pg[@]} -gt 0 ]; then chown postgres "$work"/pgbouncer.ini "$work"/userlist.txt; fi
"${as_pg[@]}" pgbouncer -q "$work/pgbouncer.ini" &
pids+=("$!")
for _ in $(seq 100); do
  "$bin/pg_isready" -q -h 127.0.0.1 -p "$sc_port" && "$bin/pg_isready" -q -h 127.0.0.1 -p "$bouncer_port" && break
  sleep 0.1
done

# One pgbench run; prints "tps mean_ms p99_ms" from its per-transaction log.
run() {
  local name=$1 port=$2 pass=$3; shift 3
  rm -f "$work"/log.*
  PGPASSWORD=$pass "$bin/pgbench" -n -h 127.0.0.1 -p "$port" -U bench -c "$clients" -j 2 -T "$seconds" \
    -l --log-prefix="$work/log" "$@" bench >"$work/$name.out" 2>&1 || { cat "$work/$name.out" >&2; exit 1; }
  local tps
  tps=$(grep -E '^tps = ' "$work/$name.out" | head -n 1 | awk '{print $3}')
  cat "$work"/log.* | awk '{print $3}' | sort -n | awk -v tps="$tps" '
    { v[NR] = $1; s += $1 }
    END { i = int(NR * 0.99); if (i < 1) i = 1; printf "%.1f %.3f %.3f\n", tps, s / NR / 1000, v[i] / 1000 }'
}

echo "pgbench -S, $clients clients, ${seconds}s each (scale 10)"
direct=$(run direct "$pg_port" "$password" -S)
via_sidecar=$(run sidecar "$sc_port" "$token" -S)
bouncer=$(run pgbouncer "$bouncer_port" "$password" -S)
cat >"$work/masking.sql" <<'EOF'
SELECT id, note FROM card_notes;
EOF
masking=$(run masking "$sc_port" "$token" -f "$work/masking.sql")
masking_direct=$(run masking-direct "$pg_port" "$password" -f "$work/masking.sql")

# Memory with 100 idle sessions.
cat >"$work/idle.sql" <<'EOF'
\sleep 4s
EOF
PGPASSWORD=$token "$bin/pgbench" -n -h 127.0.0.1 -p "$sc_port" -U bench -c 100 -j 4 -t 1 \
  -f "$work/idle.sql" bench >/dev/null 2>&1 &
idle=$!
sleep 2.5
rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$sc_pid/status")
wait "$idle" || true

row() {
  local name=$1 r=$2 ref=$3
  read -r tps mean p99 <<<"$r"
  read -r rtps _ rp99 <<<"$ref"
  printf '%-22s %10s %10s %10s %9s %12s\n' "$name" "$tps" "$mean" "$p99" \
    "$(awk -v a="$tps" -v b="$rtps" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="$p99" -v b="$rp99" 'BEGIN { printf "%+.3f", a - b }')"
}
printf '\n%-22s %10s %10s %10s %9s %12s\n' "" "tps" "mean ms" "p99 ms" "x direct" "p99 added ms"
row "direct" "$direct" "$direct"
row "cardgate sidecar" "$via_sidecar" "$direct"
row "pgbouncer (session)" "$bouncer" "$direct"
row "masking, direct" "$masking_direct" "$masking_direct"
row "masking, sidecar" "$masking" "$masking_direct"
printf '\nsidecar RSS with 100 idle sessions: %.1f MiB\n' "$(awk -v k="$rss_kib" 'BEGIN { print k / 1024 }')"

json() { read -r tps mean p99 <<<"$1"; printf '{"tps": %s, "latency_ms": %s, "p99_ms": %s}' "$tps" "$mean" "$p99"; }
mkdir -p "$out"
cat >"$out/pgbench.json" <<EOF
{"clients": $clients, "seconds": $seconds, "direct": $(json "$direct"), "sidecar": $(json "$via_sidecar"), "pgbouncer": $(json "$bouncer"), "masking": $(json "$masking"), "masking_direct": $(json "$masking_direct"), "sidecar_rss_mib_100_idle": $(awk -v k="$rss_kib" 'BEGIN { printf "%.1f", k / 1024 }')}
EOF
echo "wrote $out/pgbench.json"
