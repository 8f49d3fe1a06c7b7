#!/usr/bin/env bash
# The console's tickets page at scale: a private PostgreSQL holding 1 000 000 tickets (inserted by SQL, spread
# over 10 000 plans, every status, many sharing a millisecond), the service on it, and the time of the page
# request the console makes (`GET /api/v1/tickets?limit=100&cursor=…`: 100 rows, keyset) — the first page, a
# page half-way down (cursor of the 500 000th ticket), and filtered pages. Time = curl's total on loopback
# (request sent → last byte received), so it includes the server's whole work. Figures go to BENCHMARKS.md.
# PROFILE=release (default) or debug: which build of the service to run. TICKETS=1000000 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/build-deps.sh
PROFILE="${PROFILE:-release}"
TICKETS="${TICKETS:-1000000}"
RUNS="${RUNS:-30}"
if [ "$PROFILE" = release ]; then cargo build --release --bin ticket-supervisor; else cargo build --bin ticket-supervisor; fi
BIN="target/$PROFILE/ticket-supervisor"

source scripts/lib/postgres.sh
PSQL=("$PG_BIN/psql" -q -X -v ON_ERROR_STOP=1 "$PG_URL")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
HTTP_PORT="$(free_port)"
DATA_DIR="$(mktemp -d /tmp/console-bench.XXXXXX)"
SVC_PID=""
cleanup() {
  [ -n "$SVC_PID" ] && kill "$SVC_PID" 2>/dev/null && wait "$SVC_PID" 2>/dev/null
  rm -rf "$DATA_DIR"
  pg_cleanup
}
trap cleanup EXIT
BASE="http://127.0.0.1:$HTTP_PORT"

start() {
  DATABASE_URL="$PG_URL" AUTH_MODE=disabled LOG_LEVEL=warn DATA_DIR="$DATA_DIR" BIND_HOST=127.0.0.1 \
    HTTP_PORT="$HTTP_PORT" GRPC_PORT="$(free_port)" PROMETHEUS_PORT="$(free_port)" "$BIN" >"$DATA_DIR/service.log" 2>&1 &
  SVC_PID=$!
  for _ in $(seq 1 600); do
    curl -sf "$BASE/ready" >/dev/null && return 0
    sleep 0.2
  done
  echo "the service did not become ready"; tail -20 "$DATA_DIR/service.log"; exit 1
}

echo "== migrating (first start)"
start
kill "$SVC_PID"; wait "$SVC_PID" 2>/dev/null || true; SVC_PID=""

echo "== inserting $TICKETS tickets"
started=$(date +%s)
"${PSQL[@]}" <<SQL
INSERT INTO execution_tickets (ticket_id, plan_id, intent_id, decision_id, task_id, task_type, description,
  dependencies, status, priority, risk_band, sla_deadline, sla_timeout_ms, sla_max_retries, qos_delivery_mode,
  qos_consistency, qos_durability, security_level, created_at, version, updated_at, next_due_at)
SELECT 'bench-' || lpad(i::text, 8, '0'), 'plan-' || (i % 10000), 'intent-' || (i % 50000), 'decision', 'task-' || i,
  (ARRAY['BUILD','DEPLOY','TEST','VALIDATE','EXECUTE','QUERY','TRANSFORM'])[1 + i % 7], 'bench ticket',
  CASE WHEN i % 10 = 0 THEN '[]'::jsonb ELSE jsonb_build_array('bench-' || lpad((i - 1)::text, 8, '0')) END,
  (ARRAY['PENDING','RUNNING','COMPLETED','COMPLETED','COMPLETED','FAILED','CANCELLED'])[1 + i % 7],
  (ARRAY['LOW','NORMAL','HIGH','CRITICAL'])[1 + i % 4], 'medium',
  now() + interval '1 hour', 60000, 1, 'AT_LEAST_ONCE', 'STRONG', 'PERSISTENT', 'PUBLIC',
  -- three tickets per millisecond: the keyset's tie-break on the id is exercised
  now() - ((${TICKETS} - i) / 3) * interval '1 millisecond', 1, now(),
  CASE WHEN i % 7 IN (0, 1) THEN now() + (i % 3600) * interval '1 second' END
FROM generate_series(1, ${TICKETS}) AS i;
VACUUM ANALYZE execution_tickets;
SQL
echo "   $(( $(date +%s) - started )) s"
"${PSQL[@]}" -t -c "SELECT count(*) || ' tickets, table + indexes ' || pg_size_pretty(pg_total_relation_size('execution_tickets')) FROM execution_tickets"

start
cursor_at() { # the keyset cursor after the ticket at 0-based list position $1 (what the API would give)
  local row
  row=$("${PSQL[@]}" -t -A -F: -c "SELECT (extract(epoch FROM created_at) * 1000)::bigint, ticket_id FROM execution_tickets ORDER BY created_at DESC, ticket_id OFFSET $1 LIMIT 1")
  printf '%s' "$row" | base64 -w0 | tr '+/' '-_' | tr -d '='
}
MID="$(cursor_at 499999)"

measure() { # $1 label, $2 path: RUNS requests after one warm-up; median, p95 and max in ms; rows of the last
  local label="$1" path="$2" times=() rows
  curl -sf -o /dev/null "$BASE$path"
  for _ in $(seq 1 "$RUNS"); do
    times+=("$(curl -sf -o "$DATA_DIR/page.json" -w '%{time_total}' "$BASE$path")")
  done
  rows=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["tickets"]))' "$DATA_DIR/page.json")
  printf '%s\n' "${times[@]}" | python3 -c '
import sys
t = sorted(float(x) * 1000 for x in sys.stdin)
label, rows = sys.argv[1], sys.argv[2]
print(f"{label:<44} rows {rows:>4}  median {t[len(t)//2]:7.1f} ms  p95 {t[int(len(t)*0.95)-1]:7.1f} ms  max {t[-1]:7.1f} ms")
' "$label" "$rows"
}

echo "== GET /api/v1/tickets (limit=100), $RUNS requests each, $PROFILE build"
measure "first page (cursor=)" "/api/v1/tickets?limit=100&cursor="
measure "page after the 500 000th ticket (cursor)" "/api/v1/tickets?limit=100&cursor=$MID"
measure "plan filter (cursor=)" "/api/v1/tickets?limit=100&plan_id=plan-4242&cursor="
measure "status=FAILED (cursor=)" "/api/v1/tickets?limit=100&status=FAILED&cursor="
measure "id prefix bench-0049 (cursor=)" "/api/v1/tickets?limit=100&id_prefix=bench-0049&cursor="
measure "at risk (order=next_due)" "/api/v1/tickets?limit=100&order=next_due"
measure "offset paging, first page (counts all)" "/api/v1/tickets?limit=100"
