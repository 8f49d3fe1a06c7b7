#!/usr/bin/env bash
# The run command: installs the Debian packages the build needs if they are missing (cmake and the C
# libraries of the bundled librdkafka), then builds and runs the service with its embedded defaults (SQLite
# under ./data, REST :8000, gRPC :50052, metrics :9090). Arguments go to the service.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/build-deps.sh
exec cargo run --release --bin ticket-supervisor -- "$@"
