#!/usr/bin/env bash
# Fault tests on real servers: builds the release binaries, starts a private PostgreSQL (and provides the
# tansu Kafka broker and the nx-27017 MongoDB-wire server), and runs `ticket-bench faults`, which stops and
# restarts each server under load and offers 10× the saturated rate. Every scenario prints PASS or FAIL with
# its figures; the report is appended to FAULTS_REPORT (default target/faults.md). Exit code 1 if any failed.
#   scripts/faults.sh [--scenarios pg,mongo,kafka,overload,overload-grpc,abuse] [--outage-seconds 30] [--rate 200]
#                     [--service-env KEY=VALUE]…
# SUPERVISOR_BIN=PATH runs that service binary instead of the fresh release build (e.g. an older build, for a
# before/after pair).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/build-deps.sh
cargo build --release -p ticket-supervisor -p ticket-bench --bin ticket-supervisor --bin ticket-bench
source scripts/lib/postgres.sh
source scripts/lib/test-servers.sh
report="${FAULTS_REPORT:-target/faults.md}"
# The bench stops and starts this script's private cluster (never any other PostgreSQL) with these commands.
as_pg_prefix=""
[ "$(id -u)" = 0 ] && as_pg_prefix="runuser -u postgres --"
pg_ctl="cd / && $as_pg_prefix $PG_BIN/pg_ctl -D $PG_DIR/data"
pg_stop="$pg_ctl -m fast -w stop"
pg_start="$pg_ctl -l $PG_DIR/server.log -w -o '-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=300' start"
target/release/ticket-bench faults --database-url "$PG_URL" --service "${SUPERVISOR_BIN:-target/release/ticket-supervisor}" \
  --tansu "$TANSU_BIN" --nx-27017 "$NX_27017_BIN" --pg-stop "$pg_stop" --pg-start "$pg_start" \
  --report "$report" "$@"
