#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine (PostgreSQL, the Python gRPC tools),
# starts a private PostgreSQL on a free loopback port, runs every test of the workspace (unit, property,
# actor, SLA, REST and gRPC integration, auth, cross-toolchain, crash), and removes the server again. Safe to
# run twice in a row and alongside other instances. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

# The cross-toolchain gRPC test generates a Python client with grpcio-tools.
if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
  echo "== installing grpcio and grpcio-tools (PyPI)"
  python3 -m pip install --quiet --disable-pip-version-check 'grpcio>=1.60' 'grpcio-tools>=1.60'
fi

source scripts/lib/postgres.sh

export TEST_DATABASE_URL="$PG_URL"
echo "== cargo test --workspace"
cargo test --workspace "$@"
