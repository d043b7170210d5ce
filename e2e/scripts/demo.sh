#!/usr/bin/env bash
# cardgate demo: the sidecar standalone in front of a throwaway PostgreSQL.
#
# It creates config/standalone/state/ (a database, a development key pair,
# the sidecar's upstream password), starts PostgreSQL and the sidecar with
# config/standalone/cardgate.yaml, and runs an agent's psql session that
# shows identity, masking, blocking, approval and audit. Everything it
# started is stopped on exit; state/ is kept for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
conf=config/standalone/cardgate.yaml
state=config/standalone/state
port=54329

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
say() { printf '%s\n' "$*"; }

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/postgres" ] || { echo "demo: PostgreSQL is not installed; run 'make deps' (make demo does)" >&2; exit 1; }

bold "Building cardgate-sidecar"
cargo build -q -p cardgate-sidecar
sidecar=$root/target/debug/cardgate-sidecar

pgdata=$root/$state/pgdata
pg_pid=""
sc_pid=""
cleanup() {
  [ -n "$sc_pid" ] && kill "$sc_pid" 2>/dev/null && wait "$sc_pid" 2>/dev/null || true
  if [ -n "$pg_pid" ]; then
    "${as_pg[@]}" "$bin/pg_ctl" -D "$pgdata" stop -m immediate >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

# PostgreSQL refuses to run as root: use Debian's postgres user then.
as_pg=()
if [ "$(id -u)" -eq 0 ]; then as_pg=(runuser -u postgres --); fi

# A demo interrupted hard may have left its database running.
if [ -f "$state/pgdata/postmaster.pid" ]; then
  "${as_pg[@]}" "$bin/pg_ctl" -D "$root/$state/pgdata" stop -m immediate >/dev/null 2>&1 || true
fi
rm -rf "$state"
mkdir -p "$state"
chmod 0755 "$state"
sock=$root/$state/sock
mkdir -p "$sock" "$pgdata" "$state/approvals"
chmod 0700 "$state/approvals"
if [ ${#as_pg[@]} -gt 0 ]; then chown postgres "$sock" "$pgdata"; fi

bold "Starting a throwaway PostgreSQL on 127.0.0.1:$port with a payments schema"
"${as_pg[@]}" "$bin/initdb" -D "$pgdata" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
  -E UTF8 --locale=C --no-sync >/dev/null
"${as_pg[@]}" "$bin/postgres" -D "$pgdata" -p "$port" -h 127.0.0.1 -k "$sock" -c fsync=off \
  >"$state/postgres.log" 2>&1 &
pg_pid=$!
for _ in $(seq 100); do "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" && break; sleep 0.1; done
upstream_pw=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
printf '%s\n' "$upstream_pw" >"$state/upstream-password"
chmod 0600 "$state/upstream-password"
psql_admin() { "$bin/psql" -X -q -h "$sock" -p "$port" -U postgres -v ON_ERROR_STOP=1 "$@"; }
psql_admin -d postgres -c "CREATE ROLE cardgate_proxy LOGIN PASSWORD '$upstream_pw'" >/dev/null
psql_admin -d postgres -c "CREATE DATABASE payments OWNER cardgate_proxy" >/dev/null
"$bin/psql" -X -q -h "$sock" -p "$port" -U cardgate_proxy -d payments -v ON_ERROR_STOP=1 \
  -f config/standalone/payments.sql >/dev/null
say "customers, cards (with PANs and CVVs) and orders are loaded; only the sidecar knows the"
say "password of the database role it uses (state/upstream-password)."

bold "Minting a development key pair and an agent token (dev tools, not for production)"
"$sidecar" dev keygen --dir "$state" --alg ES256 | sed 's/^/  /'
token=$("$sidecar" dev token --key "$state/dev-signing-key.pem" --issuer https://dev.cardgate.local \
  --audience cardgate --subject agent-7 --group payments-agents --ttl 15m)
say "  token for agent-7 (group payments-agents), valid 15 minutes: ${token:0:24}…"

bold "The policy (cardgate-sidecar config check)"
"$sidecar" config check --config "$conf"

bold "Starting the sidecar: 127.0.0.1:15432 -> 127.0.0.1:$port"
"$sidecar" run --config "$conf" --log-format text >"$state/stdout-audit.jsonl" 2>"$state/sidecar.log" &
sc_pid=$!
ready() {
  { exec 3<>/dev/tcp/127.0.0.1/9102; } 2>/dev/null || return 1
  printf 'GET /readyz HTTP/1.0\r\n\r\n' >&3
  head -n 1 <&3 | grep -q ' 200 '
  local ok=$?
  exec 3>&-
  return $ok
}
for _ in $(seq 100); do
  ready && break
  kill -0 "$sc_pid" 2>/dev/null || { cat "$state/sidecar.log" >&2; exit 1; }
  sleep 0.1
done
say "ready (GET /readyz on 127.0.0.1:9102; /metrics is there too)"

agent_psql() {
  PGPASSWORD="$1" "$bin/psql" -X -h 127.0.0.1 -p 15432 -U agent-7 -d payments \
    -v ON_ERROR_STOP=0 -v VERBOSITY=terse "${@:2}"
}

bold "1. A wrong token is refused, with the reason"
agent_psql "not-a-real-token" -c "SELECT 1" 2>&1 | sed 's/^/  /' || true

bold "2. The agent's session (psql, unchanged, with its token as the password)"
agent_psql "$token" -e <<'SQL' 2>&1 | sed 's/^/  /'
-- reads of orders and customers are allowed
SELECT o.id, c.name, o.amount_cents, o.status FROM orders o JOIN customers c ON c.id = o.customer_id ORDER BY o.id LIMIT 3;
-- card data comes back masked: BIN + last four, CVV as NULL, even inside free text
SELECT id, pan, cvv, expiry, note FROM cards ORDER BY id;
-- a card number in the database's own error message is masked too
SELECT '4111111111111111'::int;
-- DDL is denied; the session stays usable
DROP TABLE cards;
SELECT count(*) AS orders FROM orders;
SQL

bold "3. A write waits for a human: approved from a second terminal"
say "agent (terminal 1):  UPDATE orders SET status = 'refunded' WHERE id = 42;"
agent_psql "$token" -c "UPDATE orders SET status = 'refunded' WHERE id = 42" >"$state/held.out" 2>&1 &
held=$!
for _ in $(seq 100); do ls "$state"/approvals/*.json >/dev/null 2>&1 && break; sleep 0.1; done
sed 's/^/  /' "$state/held.out"
request=$(basename "$(ls "$state"/approvals/*.json | head -n 1)" .json)
say ""
say "approver (terminal 2):  cardgate-sidecar approvals list, then approve"
"$sidecar" approvals --config "$conf" list | sed 's/^/  /'
"$sidecar" approvals --config "$conf" approve "$request" --as alice --reason "refund ticket 4711" | sed 's/^/  /'
wait "$held" || true
say ""
say "agent (terminal 1), once approved:"
sed 's/^/  /' "$state/held.out"

bold "4. The audit trail: hash-chained JSON records (state/audit.log), verified"
kill "$sc_pid"; wait "$sc_pid" 2>/dev/null || true; sc_pid=""
"$sidecar" audit verify "$state/audit.log"
say ""
say "the DROP, as an auditor sees it:"
grep '"class":"ddl"' "$state/audit.log" | head -n 1 | sed 's/^/  /'
say ""
say "the approved UPDATE, with the request that allowed it:"
grep '"approval":"'"$request"'"' "$state/audit.log" | grep '"event":"statement"' | sed 's/^/  /'
say ""
say "who approved it, and the request's outcome:"
grep '"name":"'"$request"'"' "$state/audit.log" | grep -E '"event":"approval\.(review|decided)"' | sed 's/^/  /'

bold "5. Replay of the recorded sessions (masked, at 20x speed)"
for rec in "$state"/recordings/*.jsonl; do
  "$sidecar" replay --speed 20 "$rec" | sed 's/^/  /'
done

bold "Done"
say "Everything the demo wrote is in $state/ (audit.log, recordings/, sidecar.log)."
say "Not one full card number is in it:"
written=("$state/audit.log" "$state/stdout-audit.jsonl" "$state/sidecar.log" "$state/recordings")
if grep -rqE '4111111111111111|5555555555554444|378282246310005' "${written[@]}"; then
  say "  FOUND a raw PAN in what the sidecar wrote — this is a bug"; exit 1
else
  say "  the demo's PANs appear nowhere in audit.log, the stdout audit, the sidecar's log or recordings/"
  say "  (PostgreSQL's own log, state/postgres.log, is the database's: it logs the agent's failing statement)"
fi
