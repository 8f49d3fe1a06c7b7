#!/usr/bin/env bash
# Idle cost (issue #21): the service's CPU while nothing happens. Starts the release service on the embedded store
# and on a private PostgreSQL, creates 1 000 tickets with timers armed an hour ahead (half of them RUNNING, so
# their attempt timeouts are armed too), waits 10 s, then reads the process's CPU time (/proc/PID/stat, utime +
# stime) over WINDOW seconds (default 90). Prints "% of a core" per store; PostgreSQL's own CPU is not counted.
#   scripts/idle-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/build-deps.sh
cargo build --release --bin ticket-supervisor
BIN="$PWD/target/release/ticket-supervisor"
WINDOW="${WINDOW:-90}"
source scripts/lib/postgres.sh
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

measure() { # $1: embedded|postgres
  local dir port pid before after
  dir="$(mktemp -d)"; port="$(free_port)"
  (
    export AUTH_MODE=disabled LOG_LEVEL=warn DATA_DIR="$dir" BIND_HOST=127.0.0.1 HTTP_PORT="$port" \
      GRPC_PORT="$(free_port)" PROMETHEUS_PORT="$(free_port)"
    if [ "$1" = postgres ]; then export DATABASE_URL="$PG_URL"; fi
    exec "$BIN" >"$dir/service.log" 2>&1
  ) &
  pid=$!
  for _ in $(seq 1 150); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.2; done
  python3 - "$port" "$1" <<'PY'
import json, sys, urllib.request, concurrent.futures as cf
port, store = sys.argv[1], sys.argv[2]
def send(method, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(),
                                 {"content-type": "application/json"}, method=method)
    urllib.request.urlopen(req).read()
def make(i):
    tid = f"idle-{store}-{i}"
    send("POST", "/api/v1/tickets", {"ticket_id": tid, "plan_id": "p", "intent_id": "i", "decision_id": "d",
        "task_id": "t", "task_type": "deploy", "description": "idle", "dependencies": [], "priority": "high",
        "risk_band": "low", "sla": {"deadline": 1_900_000_000_000, "timeout_ms": 3_600_000, "max_retries": 1},
        "qos": {"delivery_mode": "AT_LEAST_ONCE", "consistency": "STRONG", "durability": "PERSISTENT"},
        "parameters": {}, "required_capabilities": [], "security_level": "INTERNAL", "metadata": {}})
    if i % 2 == 0:
        send("PATCH", f"/api/v1/tickets/{tid}/status", {"status": "RUNNING"})
with cf.ThreadPoolExecutor(8) as ex:
    list(ex.map(make, range(1000)))
PY
  sleep 10
  before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  sleep "$WINDOW"
  after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
  echo "$1: $(python3 -c "print(f'{($after - $before) / $WINDOW:.2f}')") % of a core over $WINDOW s idle (1 000 live tickets)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
}
measure embedded
measure postgres
