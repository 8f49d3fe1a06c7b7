#!/usr/bin/env bash
# Fuzz each cargo-fuzz target (fuzz/) for SECONDS (default 60), one after the other, with overflow checks on.
#   scripts/fuzz.sh [SECONDS] [TARGET…]
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly --profile minimal && cargo install cargo-fuzz --locked
# Seeds: fuzz/seeds/<target> (committed); the growing corpus: fuzz/corpus/<target>; crashes:
# fuzz/artifacts/<target>; full logs: fuzz/logs/<target>.log. Prints one line per target (runs, result) and
# exits non-zero if any target found a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kafka_decode status_machine create_body grpc_decode subscription_body)
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: cargo install cargo-fuzz --locked" >&2; exit 2; }
cd fuzz
mkdir -p logs
# -a: debug assertions and overflow checks, so an arithmetic overflow is a crash, as in a debug build.
cargo +nightly fuzz build -a >logs/build.log 2>&1 || { tail -40 logs/build.log >&2; exit 1; }
status=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  dict=()
  [ "$t" = status_machine ] || dict=(-dict=dict/tickets.dict)
  started=$(date +%s)
  set +e
  cargo +nightly fuzz run -a "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$seconds" -print_final_stats=1 \
    -rss_limit_mb=2048 "${dict[@]}" >"logs/$t.log" 2>&1
  rc=$?
  set -e
  elapsed=$(( $(date +%s) - started ))
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$' | tail -1)
  corpus=$(find "corpus/$t" -type f | wc -l)
  if [ $rc -eq 0 ]; then result="no crash"; else result="CRASH (exit $rc): see fuzz/logs/$t.log, fuzz/artifacts/$t"; status=1; fi
  summary+=("$t: ${elapsed}s, ${runs:-?} execs, corpus ${corpus} files, ${result}")
done
printf '%s\n' "${summary[@]}"
exit $status
