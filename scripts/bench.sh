#!/usr/bin/env bash
# The bench command: builds the release binaries, starts a private PostgreSQL (tuned for throughput, still
# durable: fsync and synchronous_commit stay on) on a free loopback port, and runs `ticket-bench` against it.
#   scripts/bench.sh sla [--tickets N] [--burst N] [--spread-seconds S] [--lead-seconds S]
# Results are printed and appended to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${1:-}" = sla ] || { echo "usage: scripts/bench.sh sla [ticket-bench flags]" >&2; exit 2; }
shift
cargo build --release --bin ticket-supervisor --bin ticket-bench
PG_EXTRA_OPTS="-c shared_buffers=512MB -c max_wal_size=4GB -c checkpoint_timeout=30min" source scripts/lib/postgres.sh
target/release/ticket-bench sla --database-url "$PG_URL" --service target/release/ticket-supervisor \
  --append BENCHMARKS.md "$@"
