#!/usr/bin/env bash
# Schemathesis against the served /openapi.json: starts the service (debug build, so arithmetic overflow
# panics instead of wrapping; embedded store in a temporary directory; free loopback ports; a service token),
# runs schemathesis on every operation, and reports. Exit status: schemathesis's (non-zero on any failure) or 1
# if the service logged a panic.
#   scripts/schemathesis.sh [extra `st run` options…]
# Environment: ST_CHECKS (default not_a_server_error; `all` adds the schema-conformance checks),
# ST_MAX_EXAMPLES (default 100 per operation), SUPERVISOR_BIN (skip the build and use this binary).
# Needs: pip install schemathesis. Report files: schemathesis-report/ (junit).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v st >/dev/null || { echo "schemathesis missing: pip install schemathesis" >&2; exit 2; }
bin="${SUPERVISOR_BIN:-}"
if [ -z "$bin" ]; then
  source scripts/lib/build-deps.sh
  cargo build --bin ticket-supervisor
  bin=target/debug/ticket-supervisor
fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
work="$(mktemp -d)"
secret="schemathesis-service-secret-$RANDOM$RANDOM"
http_port=$(free_port); grpc_port=$(free_port); metrics_port=$(free_port)
BIND_HOST=127.0.0.1 HTTP_PORT=$http_port GRPC_PORT=$grpc_port PROMETHEUS_PORT=$metrics_port DATA_DIR="$work/data" \
  JWT_SECRET_KEY="schemathesis-ticket-secret" SERVICE_JWT_SECRET="$secret" LOG_LEVEL=warn \
  WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8 "$bin" >"$work/service.log" 2>&1 &
service=$!
cleanup() { kill "$service" 2>/dev/null || true; wait "$service" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
base="http://127.0.0.1:$http_port"
for _ in $(seq 1 120); do
  curl -fsS "$base/health" >/dev/null 2>&1 && break
  kill -0 "$service" 2>/dev/null || { cat "$work/service.log" >&2; exit 1; }
  sleep 0.5
done
# An HS256 service token for SERVICE_JWT_SECRET (audience: the service's default), valid for two hours.
token=$(SECRET="$secret" python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "schemathesis", "aud": "execution-ticket-service.neural-hive.local",
                       "iat": now, "exp": now + 7200}).encode())
sig = hmac.new(os.environ["SECRET"].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(sig)}")
PY
)
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "$base/api/v1/tickets")
[ "$code" = 200 ] || { echo "the service token is refused ($code)" >&2; exit 1; }
started=$(date +%s)
set +e
st run "$base/openapi.json" -H "Authorization: Bearer $token" --checks "${ST_CHECKS:-not_a_server_error}" \
  --max-examples "${ST_MAX_EXAMPLES:-100}" --report junit --report-dir schemathesis-report --seed 1 "$@"
rc=$?
set -e
echo "schemathesis: exit $rc after $(( $(date +%s) - started ))s (checks: ${ST_CHECKS:-not_a_server_error})"
if grep -q "panicked" "$work/service.log"; then
  echo "the service panicked:" >&2
  grep -A3 "panicked" "$work/service.log" | head -40 >&2
  exit 1
fi
errors=$(grep -c 'ERROR' "$work/service.log" || true)
echo "service log lines at ERROR: $errors"
grep 'ERROR' "$work/service.log" | head -5 | cut -c1-400
exit $rc
