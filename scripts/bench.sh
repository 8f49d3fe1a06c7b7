#!/usr/bin/env bash
# The bench command: builds the release binaries, starts a private PostgreSQL (tuned for throughput, still
# durable: fsync and synchronous_commit stay on) on a free loopback port, and runs `ticket-bench` against it.
#   scripts/bench.sh crud [--seconds S] [--clients 8,32,64] [--env K=V]... [--perf-dir DIR] [--no-pin]
#   scripts/bench.sh sla [--tickets N] [--burst N] [--spread-seconds S] [--lead-seconds S]
#   scripts/bench.sh ingest [--messages N] [--partitions P] [--format json|avro] [--audit]
#   scripts/bench.sh webhooks [--deliveries N]
#   scripts/bench.sh tls [--seconds S] [--clients N] [--rounds R]
#   scripts/bench.sh cluster [--replicas N] [--kills K] [--kill-every-seconds S] [--lease-ttl-ms T] [--clients C]
#                            [--seconds S] [--sla-per-second R] [--kafka-per-second R]
#   scripts/bench.sh retention [--tickets N] [--rate CALLS_PER_SECOND]
# Results are printed and appended to BENCHMARKS.md (BENCH_APPEND=FILE appends them to FILE instead, e.g. for a
# smoke run).
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-}"
case "$kind" in crud|sla|ingest|webhooks|tls|cluster|retention) shift ;; *) echo "usage: scripts/bench.sh crud|sla|ingest|webhooks|tls|cluster|retention [ticket-bench flags]" >&2; exit 2 ;; esac
source scripts/lib/build-deps.sh
cargo build --release -p ticket-supervisor -p ticket-bench --bin ticket-supervisor --bin ticket-bench
PG_EXTRA_OPTS="-c shared_buffers=512MB -c max_wal_size=4GB -c checkpoint_timeout=30min" source scripts/lib/postgres.sh
extra=()
if [ "$kind" = ingest ]; then
  source scripts/lib/test-servers.sh
  extra+=(--tansu "$TANSU_BIN")
  args=()
  for a in "$@"; do
    if [ "$a" = --audit ]; then extra+=(--nx-27017 "$NX_27017_BIN"); else args+=("$a"); fi
  done
  set -- "${args[@]+"${args[@]}"}"
fi
# cluster also ingests tickets from Kafka during its failover drill.
if [ "$kind" = cluster ]; then
  source scripts/lib/test-servers.sh
  extra+=(--tansu "$TANSU_BIN")
fi
# crud compares the service with pgbench from the same PostgreSQL installation.
if [ "$kind" = crud ]; then extra+=(--pgbench "$PG_BIN/pgbench"); fi
target/release/ticket-bench "$kind" --database-url "$PG_URL" --service target/release/ticket-supervisor \
  "${extra[@]+"${extra[@]}"}" --append "${BENCH_APPEND:-BENCHMARKS.md}" "$@"
