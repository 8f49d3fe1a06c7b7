#!/usr/bin/env bash
# Dependency policy (deny.toml): licenses, banned and duplicate crates, sources (crates.io only). Installs
# cargo-deny from crates.io when it is missing or not the pinned version (a build from source: a few minutes
# on a fresh machine). Run by .ci/run; extra arguments replace the checks (e.g. `scripts/deny.sh bans`).
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO_DENY_VERSION=0.20.2
if [ "$(cargo deny --version 2>/dev/null)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
  echo "== installing cargo-deny $CARGO_DENY_VERSION (crates.io)"
  cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION"
fi
if [ $# -eq 0 ]; then set -- licenses bans sources; fi
# Duplicates are listed without the path to each version (`cargo deny check bans` shows them).
cargo deny --log-level warn check --hide-inclusion-graph "$@"
