#!/usr/bin/env bash
# Crash torture: builds the release binaries, starts a private PostgreSQL and provides the tansu broker, then
# runs `ticket-bench torture`, which kills the service with SIGKILL N times under mixed load (REST creates and
# updates, SLA timers, webhooks, Kafka ingest) and checks the invariants after every restart.
#   scripts/torture.sh [--kills N] [--seed S] [--workers W] [--kafka-per-second R]
# Loopback only; about two minutes for the default 20 kills. Exits non-zero when an invariant fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/build-deps.sh
cargo build --release -p ticket-supervisor -p ticket-bench --bin ticket-supervisor --bin ticket-bench
source scripts/lib/postgres.sh
source scripts/lib/test-servers.sh
target/release/ticket-bench torture --database-url "$PG_URL" --service target/release/ticket-supervisor \
  --tansu "$TANSU_BIN" "$@"
